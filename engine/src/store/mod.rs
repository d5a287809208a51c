//! The content-addressed artifact store under the runs folder:
//!
//! ```text
//! runs/store/<key>/out/        the artifact (immutable once published)
//! runs/store/<key>/meta.json   written last: marks the entry complete
//! runs/work/<key>/             resumable scratch of a stage being computed
//! runs/tmp/<key>.<pid>.<rand>/ private staging folders (same filesystem, for the rename)
//! runs/locks/<key>.lock        per-key flock (held while computing the key)
//! runs/locks/<key>.use         per-key lease (shared by every live run reading the key)
//! runs/retired/<key>.<tag>/    an entry version replaced by `--force`, until gc
//! ```
//!
//! [`Store::lookup`] declares a hit only for a checked entry. [`Store::claim`] takes the
//! key's lock, re-checks (another run may have published meanwhile) and hands back either
//! the hit or a [`Claimed`] staging area; only a `Claimed` can publish. A run takes a
//! [`lease`] on every key before looking it up, so `gc` never removes what it reads.

pub mod digest;
pub mod entry;
pub mod key;
pub mod lease;
pub mod links;
pub mod lock;
pub mod maintain;

use std::path::{Path, PathBuf};

use crate::fs::{self, FsError, IoContext};
use crate::stage::CancelToken;

pub use digest::{Digest, Manifest};
pub use entry::{Claimed, Entry, EntryProblem, Meta, PublishInfo, PublishMode, Published};
pub use key::{CacheKey, InputDigest, KeyParts};
pub use lock::{LockError, LockHolder};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Io(#[from] FsError),
    #[error(transparent)]
    Digest(#[from] digest::DigestError),
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The artifact holds symbolic links that point outside it.
    #[error(
        "stage `{stage}` wrote symbolic link(s) that leave its artifact: {}; no cache key \
         captures what they point to. Copy the target into the output instead (e.g. \
         `cp -L`), or point the link at a path inside the output",
        links.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    EscapingLinks {
        stage: String,
        links: Vec<links::EscapingLink>,
    },
}

/// The result of looking a key up.
#[derive(Debug)]
pub enum Lookup {
    Hit(Box<Entry>),
    Miss,
    /// Something is there but it is not a usable result (it will be recomputed).
    Damaged(EntryProblem),
}

/// The result of claiming a key.
#[derive(Debug)]
pub enum Claim {
    /// Published (possibly by another run while we waited for the lock).
    Hit(Box<Entry>),
    /// Ours to compute.
    Miss(Claimed),
}

/// Whether a claim may return an existing entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Return a valid entry as a hit.
    Allow,
    /// Always compute (`--force`, `rerun --verify`).
    Recompute,
}

/// The store inside a runs folder.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    leases: lease::Leases,
}

impl Store {
    /// The store of the runs folder `runs_dir`. Nothing is created until something is written.
    pub fn new(runs_dir: &Path) -> Self {
        Self {
            root: runs_dir.to_owned(),
            leases: lease::Leases::default(),
        }
    }
    /// Registers this process as a reader of `key` (a shared lease held until the process
    /// ends): `gc` never removes an entry of a leased key. Call it before [`Self::lookup`].
    pub fn lease(&self, key: &CacheKey) -> Result<(), FsError> {
        self.leases.take(&self.root, key)
    }
    /// Where `--force` moves replaced entry versions (removed by `gc` once unleased).
    pub fn retired_dir(&self) -> PathBuf {
        self.root.join("retired")
    }
    pub fn runs_dir(&self) -> &Path {
        &self.root
    }
    pub fn entries_dir(&self) -> PathBuf {
        self.root.join("store")
    }
    pub fn entry_dir(&self, key: &CacheKey) -> PathBuf {
        self.entries_dir().join(key.as_str())
    }
    pub fn work_dir(&self, key: &CacheKey) -> PathBuf {
        self.root.join("work").join(key.as_str())
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn lock_path(&self, key: &CacheKey) -> PathBuf {
        self.root.join("locks").join(format!("{key}.lock"))
    }

    /// A checked entry for `key`, if there is one. Takes no lock: published entries are
    /// immutable and appear by an atomic rename.
    pub fn lookup(&self, key: &CacheKey) -> Lookup {
        let dir = self.entry_dir(key);
        if !dir.exists() {
            return Lookup::Miss;
        }
        match entry::check(&dir, key) {
            Ok(e) => Lookup::Hit(Box::new(e)),
            Err(problem) => Lookup::Damaged(problem),
        }
    }

    /// Takes the key's lock (waiting for another holder; `on_wait` hears about it), then
    /// re-checks the store. On a miss, clears leftovers of killed attempts and any damaged
    /// entry, and returns a fresh staging folder.
    pub fn claim(
        &self,
        key: &CacheKey,
        me: &LockHolder,
        reuse: Reuse,
        cancel: &CancelToken,
        on_wait: &mut dyn FnMut(Option<LockHolder>),
    ) -> Result<Claim, StoreError> {
        let lock = lock::acquire(&self.lock_path(key), me, cancel, on_wait)?;
        let dir = self.entry_dir(key);
        if reuse == Reuse::Allow {
            match self.lookup(key) {
                Lookup::Hit(e) => return Ok(Claim::Hit(e)),
                Lookup::Damaged(problem) => {
                    tracing::warn!(key = %key, %problem, "retiring a damaged store entry");
                    self.retire(key, &dir)?;
                }
                Lookup::Miss => {}
            }
        }
        let tmp = self.tmp_dir();
        fs::create_dir_all(&tmp)?;
        fs::create_dir_all(&self.entries_dir())?;
        self.remove_staging_leftovers(key)?;
        let tag = format!("{}.{}.{:08x}", key, std::process::id(), fastrand::u32(..));
        let staging = tmp.join(&tag);
        fs::create_dir_all(&staging.join("out"))?;
        Ok(Claim::Miss(Claimed {
            key: key.clone(),
            staging,
            entry_dir: dir,
            work_dir: self.work_dir(key),
            retired: self.retired_dir().join(&tag),
            lock,
        }))
    }

    /// Moves an entry version out of `store/` into `retired/` (readers may still have it
    /// open; `gc` removes it once no live run leases the key).
    pub(crate) fn retire(&self, key: &CacheKey, dir: &Path) -> Result<(), FsError> {
        let retired = self.retired_dir();
        fs::create_dir_all(&retired)?;
        let to = retired.join(format!(
            "{key}.{}.{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        match std::fs::rename(dir, &to) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other.at("retire", dir),
        }
    }

    /// Removes `tmp/<key>.*`: only the key's lock holder stages it, so under the lock any
    /// such folder is the remains of a killed attempt.
    fn remove_staging_leftovers(&self, key: &CacheKey) -> Result<(), FsError> {
        let prefix = format!("{key}.");
        let tmp = self.tmp_dir();
        let Ok(list) = std::fs::read_dir(&tmp) else {
            return Ok(());
        };
        for item in list.flatten() {
            if item.file_name().to_string_lossy().starts_with(&prefix) {
                fs::remove_dir_all_if_exists(&item.path())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    fn parts(seed: u64) -> KeyParts {
        KeyParts {
            format: key::KEY_FORMAT,
            kind: "shell".into(),
            kind_version: 1,
            params: serde_json::json!({}),
            inputs: BTreeMap::new(),
            seed,
            fingerprint: None,
        }
    }

    fn info(p: &KeyParts) -> PublishInfo {
        PublishInfo {
            parts: p.clone(),
            stage: "s".into(),
            run: None,
            started: SystemTime::now(),
            finished: SystemTime::now(),
            environment: Default::default(),
        }
    }

    fn claim(store: &Store, key: &CacheKey, reuse: Reuse) -> Claim {
        let me = LockHolder::me(None, "test");
        store
            .claim(key, &me, reuse, &CancelToken::default(), &mut |_| {})
            .unwrap()
    }

    #[test]
    fn publish_then_hit_then_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let p = parts(1);
        let key = p.key();
        assert!(matches!(store.lookup(&key), Lookup::Miss));
        let Claim::Miss(c) = claim(&store, &key, Reuse::Allow) else {
            panic!("expected a miss")
        };
        std::fs::write(c.out_dir().join("a.txt"), "hello").unwrap();
        let work = c.work_dir().unwrap();
        std::fs::write(work.join("ckpt"), "1").unwrap();
        let published = c.publish(info(&p), PublishMode::Publish).unwrap();
        assert!(!work.exists(), "work dir removed after publishing");
        let Lookup::Hit(e) = store.lookup(&key) else {
            panic!("expected a hit")
        };
        assert_eq!(e.meta.digest, published.digest);
        assert!(matches!(claim(&store, &key, Reuse::Allow), Claim::Hit(_)));
        // Nothing left in tmp/.
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);

        std::fs::write(e.out_dir().join("a.txt"), "hello, longer").unwrap();
        match store.lookup(&key) {
            Lookup::Damaged(EntryProblem::Changed(c)) => {
                assert_eq!(c[0].to_string(), "a.txt changed (size)")
            }
            other => panic!("expected damage, got {other:?}"),
        }
        // A claim replaces the damaged entry.
        assert!(matches!(claim(&store, &key, Reuse::Allow), Claim::Miss(_)));
        assert!(matches!(store.lookup(&key), Lookup::Miss));
    }

    #[test]
    fn an_entry_without_meta_is_never_a_hit_and_dropped_claims_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let key = parts(2).key();
        std::fs::create_dir_all(store.entry_dir(&key).join("out")).unwrap();
        assert!(matches!(
            store.lookup(&key),
            Lookup::Damaged(EntryProblem::NoMeta(_))
        ));
        let Claim::Miss(c) = claim(&store, &key, Reuse::Allow) else {
            panic!()
        };
        std::fs::write(c.out_dir().join("partial"), "x").unwrap();
        drop(c);
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
        assert!(!store.entry_dir(&key).exists());
    }

    #[test]
    fn leftovers_of_a_killed_attempt_are_removed_by_the_next_claim() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let key = parts(3).key();
        let stale = store.tmp_dir().join(format!("{key}.999999.deadbeef/out"));
        std::fs::create_dir_all(&stale).unwrap();
        let Claim::Miss(_c) = claim(&store, &key, Reuse::Allow) else {
            panic!()
        };
        assert!(!stale.exists());
    }

    #[test]
    fn forced_recompute_never_deletes_the_version_a_reader_has_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let p = parts(5);
        let key = p.key();
        let publish = |content: &str| {
            let Claim::Miss(c) = claim(&store, &key, Reuse::Recompute) else {
                panic!()
            };
            std::fs::write(c.out_dir().join("f"), content).unwrap();
            c.publish(info(&p), PublishMode::Publish).unwrap();
        };
        publish("one");
        // A reader holding the folder (as a shell stage does with its `cd`) reads files
        // from it later.
        let held = std::fs::File::open(store.entry_dir(&key).join("out")).unwrap();
        use std::os::fd::AsRawFd;
        let via_reader = format!("/proc/self/fd/{}/f", held.as_raw_fd());
        publish("two");
        assert_eq!(std::fs::read_to_string(&via_reader).unwrap(), "one");
        let Lookup::Hit(e) = store.lookup(&key) else {
            panic!()
        };
        assert_eq!(
            std::fs::read_to_string(e.out_dir().join("f")).unwrap(),
            "two"
        );
        assert_eq!(std::fs::read_dir(store.retired_dir()).unwrap().count(), 1);
    }

    #[test]
    fn forced_recompute_replaces_the_entry_and_discard_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let p = parts(4);
        let key = p.key();
        for (content, mode) in [
            ("one", PublishMode::Publish),
            ("two", PublishMode::Publish),
            ("three", PublishMode::Discard),
        ] {
            let Claim::Miss(c) = claim(&store, &key, Reuse::Recompute) else {
                panic!()
            };
            std::fs::write(c.out_dir().join("f"), content).unwrap();
            c.publish(info(&p), mode).unwrap();
        }
        let Lookup::Hit(e) = store.lookup(&key) else {
            panic!()
        };
        assert_eq!(
            std::fs::read_to_string(e.out_dir().join("f")).unwrap(),
            "two"
        );
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }
}
