//! Leases: how a live run tells `gc` (and `--force`, through retired versions) which
//! entries it reads. Before a run looks a key up it takes a *shared* `flock` on
//! `locks/<key>.use` and keeps it until the process ends; `gc` removes an entry (or a
//! retired version of it) only while it holds that lock *exclusively*. The kernel drops
//! the leases of a dead process, so liveness is decided by locks, never by timestamps.
//!
//! The race the lease closes: a run registers (locks) a key before its lookup, so either
//! gc took the exclusive lock first (and the run then finds no entry and recomputes it),
//! or the run did (and gc leaves the entry alone).
//!
//! `.use` files are separate from the claim locks (`locks/<key>.lock`), so a reader never
//! makes a stage computing the key wait, and like them they are never deleted.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::key::CacheKey;
use crate::fs::{FsError, IoContext};

/// The leases this process holds (shared by every clone of a [`super::Store`]).
#[derive(Debug, Clone, Default)]
pub struct Leases {
    held: Arc<Mutex<BTreeMap<CacheKey, File>>>,
}

/// The lease file of `key` under `runs_dir`.
pub fn lease_path(runs_dir: &Path, key: &CacheKey) -> PathBuf {
    runs_dir.join("locks").join(format!("{key}.use"))
}

fn open(path: &Path) -> Result<File, FsError> {
    if let Some(dir) = path.parent() {
        crate::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .at("open lease file", path)
}

impl Leases {
    /// Takes (once per process) a shared lease on `key`, waiting while `gc` holds it
    /// exclusively (it does so only for the moment it takes to remove one entry).
    pub fn take(&self, runs_dir: &Path, key: &CacheKey) -> Result<(), FsError> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.contains_key(key) {
            return Ok(());
        }
        let path = lease_path(runs_dir, key);
        let file = open(&path)?;
        fs4::FileExt::lock_shared(&file).at("take a shared lock on", &path)?;
        held.insert(key.clone(), file);
        Ok(())
    }

    /// Whether this process holds a lease on `key`.
    pub fn holds(&self, key: &CacheKey) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }
}

/// Leases `key` for `store`'s process; a failure (an unwritable `locks/`) only weakens
/// gc's protection of the entry, so it is logged rather than fatal. For schedulers that
/// look entries up outside `exec::one`.
pub fn take_or_warn(store: &super::Store, key: &CacheKey) {
    if let Err(e) = store.lease(key) {
        tracing::warn!(key = %key, error = %e, "cannot lease a store entry; gc may remove it");
    }
}

/// An exclusive hold on a key's lease file: nobody reads the key's entries meanwhile.
#[derive(Debug)]
pub struct Exclusive {
    _file: File,
}

/// Takes the key's lease exclusively without waiting; `None` when a live run leases it.
pub fn try_exclusive(runs_dir: &Path, key: &CacheKey) -> Result<Option<Exclusive>, FsError> {
    let path = lease_path(runs_dir, key);
    let file = open(&path)?;
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => Ok(Some(Exclusive { _file: file })),
        Err(fs4::TryLockError::WouldBlock) => Ok(None),
        Err(fs4::TryLockError::Error(e)) => Err(FsError::new("lock", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> CacheKey {
        CacheKey(crate::store::Digest::parse(&format!("{n:02x}").repeat(32)).unwrap())
    }

    #[test]
    fn a_lease_blocks_exclusive_holders_until_the_holder_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(1);
        let leases = Leases::default();
        leases.take(dir.path(), &k).unwrap();
        leases.take(dir.path(), &k).unwrap();
        assert!(leases.holds(&k));
        assert!(try_exclusive(dir.path(), &k).unwrap().is_none());
        assert!(try_exclusive(dir.path(), &key(2)).unwrap().is_some());
        drop(leases);
        assert!(try_exclusive(dir.path(), &k).unwrap().is_some());
    }
}
