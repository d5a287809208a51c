//! Store maintenance: garbage collection (`itera gc`: remove entries no kept run refers to,
//! plus abandoned work and staging folders) and verification (`itera verify`: re-hash every
//! entry, report those whose files changed on disk and quarantine them). Both skip keys
//! whose lock is held, so they never pull an entry from under a running stage that is
//! computing it, and `gc` removes an entry (or a retired version) only while it holds the
//! key's lease exclusively, so never one a live run reads ([`super::lease`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::digest::{self, TreeChange};
use super::entry::{self, EntryProblem};
use super::key::CacheKey;
use super::lease;
use super::lock::{self, LockHolder};
use super::{Store, StoreError};
use crate::fs;

/// What a garbage-collected path was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcItemKind {
    /// `store/<key>`: a result no kept run refers to.
    Entry,
    /// `work/<key>`: scratch of an interrupted stage.
    Work,
    /// `tmp/...`: staging of a killed attempt.
    Staging,
    /// `retired/...`: a version replaced by `--force`, or a damaged entry set aside.
    Retired,
}

/// One path `gc` removes (or would remove).
#[derive(Debug, Clone)]
pub struct GcItem {
    pub kind: GcItemKind,
    pub path: PathBuf,
    pub bytes: u64,
    /// The stage that produced an entry, when known.
    pub stage: Option<String>,
}

/// Whether `gc` deletes or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcMode {
    Delete,
    DryRun,
}

/// What `gc` did.
#[derive(Debug, Default)]
pub struct GcReport {
    pub removed: Vec<GcItem>,
    /// Entries kept because a kept run refers to them.
    pub kept: usize,
    /// Paths skipped because their key is locked by a running stage.
    pub busy: Vec<PathBuf>,
    /// Quarantined entries removed although a kept run refers to them.
    pub quarantined: usize,
}

fn names_in(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(name, _)| !name.starts_with(".itera"))
        .collect();
    out.sort();
    out
}

fn size_of(path: &Path) -> u64 {
    digest::scan(path).map(|m| m.total_size()).unwrap_or(0)
}

/// The key a store/work/tmp folder name belongs to (its first 64 characters).
fn key_of(name: &str) -> Option<CacheKey> {
    name.get(..64).and_then(digest::Digest::parse).map(CacheKey)
}

/// Removes store entries whose key is not in `keep` (and quarantined ones whatever
/// `keep` says), retired versions, and every abandoned work and staging folder. Nothing
/// whose key is locked (being computed) or leased (read by a live run) is touched.
pub fn gc(store: &Store, keep: &BTreeSet<CacheKey>, mode: GcMode) -> Result<GcReport, StoreError> {
    let me = LockHolder::me(None, "gc");
    let mut report = GcReport::default();
    let sources = [
        (GcItemKind::Entry, store.entries_dir()),
        (GcItemKind::Retired, store.retired_dir()),
        (GcItemKind::Work, store.runs_dir().join("work")),
        (GcItemKind::Staging, store.tmp_dir()),
    ];
    for (kind, dir) in sources {
        for (name, path) in names_in(&dir) {
            let key = key_of(&name);
            let quarantined = kind == GcItemKind::Entry && entry::quarantined(&path).is_some();
            if kind == GcItemKind::Entry && !quarantined {
                if let Some(k) = &key {
                    if keep.contains(k) {
                        report.kept += 1;
                        continue;
                    }
                }
            }
            if kind == GcItemKind::Staging && key.is_none() && run_staging_is_live(&path)? {
                report.busy.push(path);
                continue;
            }
            // Hold the key's lock while deleting so no stage is writing it meanwhile, and
            // its lease exclusively so no live run is reading it.
            let guard = match &key {
                Some(k) => match lock::try_acquire(&store.lock_path(k), &me)? {
                    Some(g) => Some(g),
                    None => {
                        report.busy.push(path);
                        continue;
                    }
                },
                None => None,
            };
            let lease = match (&key, kind) {
                (Some(k), GcItemKind::Entry | GcItemKind::Retired) => {
                    match lease::try_exclusive(store.runs_dir(), k)? {
                        Some(l) => Some(l),
                        None => {
                            report.busy.push(path);
                            continue;
                        }
                    }
                }
                _ => None,
            };
            let stage = (kind == GcItemKind::Entry)
                .then(|| entry::read_meta(&path).ok().map(|m| m.stage))
                .flatten();
            let item = GcItem {
                kind,
                bytes: size_of(&path),
                path,
                stage,
            };
            if mode == GcMode::Delete {
                fs::remove_dir_all_if_exists(&item.path)?;
            }
            drop(lease);
            drop(guard);
            if quarantined && key.as_ref().is_some_and(|k| keep.contains(k)) {
                report.quarantined += 1;
            }
            report.removed.push(item);
        }
    }
    Ok(report)
}

/// A run folder being created (`tmp/run.<id>`, see `record::RunDir::create`) is live
/// while its `run.lock` is held.
fn run_staging_is_live(path: &Path) -> Result<bool, StoreError> {
    Ok(crate::live::is_held(&path.join(crate::live::RUN_LOCK))?)
}

/// The outcome of re-hashing one entry.
#[derive(Debug)]
pub struct VerifyResult {
    pub dir: PathBuf,
    /// The producing stage, when `meta.json` is readable.
    pub stage: Option<String>,
    /// `Ok(changes)`: empty when the entry is intact.
    pub outcome: Result<Vec<TreeChange>, EntryProblem>,
    /// A changed entry was marked: lookups refuse it from now on.
    pub quarantined: bool,
}

impl VerifyResult {
    pub fn is_ok(&self) -> bool {
        matches!(&self.outcome, Ok(c) if c.is_empty())
    }
}

/// Re-hashes every store entry (all of `out/`) against its manifest, and quarantines each
/// one that changed ([`entry::quarantine`]) unless a stage is computing its key right now.
pub fn verify(store: &Store) -> Result<Vec<VerifyResult>, StoreError> {
    let me = LockHolder::me(None, "verify");
    let mut results = Vec::new();
    for (name, dir) in names_in(&store.entries_dir()) {
        let stage = entry::read_meta(&dir).ok().map(|m| m.stage);
        let outcome = match entry::quarantined(&dir) {
            Some(why) => Err(EntryProblem::Quarantined(why)),
            None => entry::verify(&dir),
        };
        let mut r = VerifyResult {
            dir,
            stage,
            outcome,
            quarantined: false,
        };
        if let Some(key) = key_of(&name).filter(|_| !r.is_ok()) {
            r.quarantined = matches!(r.outcome, Err(EntryProblem::Quarantined(_)));
            if !r.quarantined {
                if let Some(_guard) = lock::try_acquire(&store.lock_path(&key), &me)? {
                    let why = match &r.outcome {
                        Ok(changes) => changes.iter().map(|c| format!("{c}\n")).collect::<String>(),
                        Err(problem) => format!("{problem}\n"),
                    };
                    entry::quarantine(&r.dir, &why)?;
                    r.quarantined = true;
                }
            }
        }
        results.push(r);
    }
    Ok(results)
}

/// `verify --repair`: moves each quarantined entry out of `store/` into `retired/` (where
/// `gc` removes it), unless its key is being computed or read by a live run. Returns the
/// entries moved and those left because they are busy.
pub fn retire_quarantined(store: &Store) -> Result<(Vec<PathBuf>, Vec<PathBuf>), StoreError> {
    let me = LockHolder::me(None, "verify --repair");
    let (mut moved, mut busy) = (Vec::new(), Vec::new());
    for (name, dir) in names_in(&store.entries_dir()) {
        let Some(key) = key_of(&name).filter(|_| entry::quarantined(&dir).is_some()) else {
            continue;
        };
        let Some(_guard) = lock::try_acquire(&store.lock_path(&key), &me)? else {
            busy.push(dir);
            continue;
        };
        let Some(_lease) = lease::try_exclusive(store.runs_dir(), &key)? else {
            busy.push(dir);
            continue;
        };
        store.retire(&key, &dir)?;
        moved.push(dir);
    }
    Ok((moved, busy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::CancelToken;
    use crate::store::{Claim, KeyParts, PublishInfo, PublishMode, Reuse};
    use std::time::SystemTime;

    fn publish(store: &Store, seed: u64, content: &str) -> CacheKey {
        let parts = KeyParts {
            format: 1,
            kind: "shell".into(),
            kind_version: 1,
            params: serde_json::json!({}),
            inputs: Default::default(),
            seed,
            fingerprint: None,
        };
        let key = parts.key();
        let me = LockHolder::me(None, "test");
        let Claim::Miss(c) = store
            .claim(
                &key,
                &me,
                Reuse::Allow,
                &CancelToken::default(),
                &mut |_| {},
            )
            .unwrap()
        else {
            panic!()
        };
        std::fs::write(c.out_dir().join("f.txt"), content).unwrap();
        let info = PublishInfo {
            parts,
            stage: format!("stage{seed}"),
            run: None,
            started: SystemTime::now(),
            finished: SystemTime::now(),
            environment: Default::default(),
        };
        c.publish(info, PublishMode::Publish).unwrap();
        key
    }

    #[test]
    fn gc_keeps_referenced_entries_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let a = publish(&store, 1, "a");
        let b = publish(&store, 2, "bb");
        std::fs::create_dir_all(store.work_dir(&b).join("x")).unwrap();
        let keep = BTreeSet::from([a.clone()]);

        let dry = gc(&store, &keep, GcMode::DryRun).unwrap();
        assert_eq!(dry.removed.len(), 2);
        assert!(store.entry_dir(&b).exists(), "dry run deletes nothing");

        let meta_len = std::fs::metadata(store.entry_dir(&b).join("meta.json"))
            .unwrap()
            .len();
        let done = gc(&store, &keep, GcMode::Delete).unwrap();
        assert_eq!(done.kept, 1);
        assert_eq!(done.removed[0].stage.as_deref(), Some("stage2"));
        assert_eq!(
            done.removed[0].bytes,
            2 + meta_len,
            "out/f.txt and meta.json"
        );
        assert!(store.entry_dir(&a).exists());
        assert!(!store.entry_dir(&b).exists());
        assert!(!store.work_dir(&b).exists());
    }

    #[test]
    fn gc_skips_keys_that_are_locked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let a = publish(&store, 1, "a");
        let _held = lock::try_acquire(&store.lock_path(&a), &LockHolder::me(None, "x"))
            .unwrap()
            .unwrap();
        let report = gc(&store, &BTreeSet::new(), GcMode::Delete).unwrap();
        assert_eq!(report.busy.len(), 1);
        assert!(store.entry_dir(&a).exists());
    }

    #[test]
    fn verify_reports_a_corrupted_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let a = publish(&store, 1, "abc");
        let b = publish(&store, 2, "ok");
        assert!(verify(&store).unwrap().iter().all(VerifyResult::is_ok));
        std::fs::write(store.entry_dir(&a).join("out/f.txt"), "abd").unwrap();
        let results = verify(&store).unwrap();
        let bad: Vec<&VerifyResult> = results.iter().filter(|r| !r.is_ok()).collect();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].stage.as_deref(), Some("stage1"));
        let changes = bad[0].outcome.as_ref().unwrap();
        assert_eq!(changes[0].to_string(), "f.txt changed (content)");
        assert!(bad[0].quarantined);
        // Quarantined: never a hit again, and gc removes it although it is "kept".
        assert!(matches!(
            store.lookup(&a),
            crate::store::Lookup::Damaged(EntryProblem::Quarantined(_))
        ));
        let report = gc(
            &store,
            &BTreeSet::from([a.clone(), b.clone()]),
            GcMode::Delete,
        )
        .unwrap();
        assert_eq!((report.removed.len(), report.quarantined), (1, 1));
        assert!(!store.entry_dir(&a).exists());
        assert!(store.entry_dir(&b).exists());
    }

    #[test]
    fn repair_moves_quarantined_entries_out_unless_a_live_run_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let a = publish(&store, 1, "abc");
        std::fs::write(store.entry_dir(&a).join("out/f.txt"), "abd").unwrap();
        verify(&store).unwrap();
        let reader = Store::new(dir.path());
        reader.lease(&a).unwrap();
        let (moved, busy) = retire_quarantined(&store).unwrap();
        assert_eq!((moved.len(), busy.len()), (0, 1));
        drop(reader);
        let (moved, busy) = retire_quarantined(&store).unwrap();
        assert_eq!((moved.len(), busy.len()), (1, 0));
        assert!(!store.entry_dir(&a).exists());
        let report = gc(&store, &BTreeSet::new(), GcMode::Delete).unwrap();
        assert_eq!(report.removed[0].kind, GcItemKind::Retired);
    }

    #[test]
    fn gc_never_removes_an_entry_a_live_run_leases() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let a = publish(&store, 1, "a");
        let reader = Store::new(dir.path());
        reader.lease(&a).unwrap();
        let report = gc(&store, &BTreeSet::new(), GcMode::Delete).unwrap();
        assert_eq!(report.busy.len(), 1);
        assert!(store.entry_dir(&a).exists());
        drop(reader);
        let report = gc(&store, &BTreeSet::new(), GcMode::Delete).unwrap();
        assert_eq!(report.removed.len(), 1);
        assert!(!store.entry_dir(&a).exists());
    }
}
