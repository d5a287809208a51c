//! Per-key file locks (`runs/locks/<key>.lock`, `flock` through fs4). The kernel drops a
//! lock when its holder dies, so a lock left by a killed run is recovered automatically.
//! The holder writes its pid, host, run and stage into the file, so a waiting run can say
//! whom it waits for. Lock files are never deleted: deleting one while another process has
//! it open would let two processes hold "the" lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::fs::{FsError, IoContext};
use crate::stage::CancelToken;

/// Who holds (or wants) a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub pid: u32,
    pub host: String,
    /// The run id, when the holder is a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The stage (or maintenance task) holding the key.
    pub task: String,
}

impl LockHolder {
    /// This process, doing `task` for `run`.
    pub fn me(run: Option<&str>, task: &str) -> Self {
        Self {
            pid: std::process::id(),
            host: crate::host::hostname(),
            run: run.map(str::to_owned),
            task: task.to_owned(),
        }
    }
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.run {
            Some(run) => write!(
                f,
                "run {run} (stage `{}`, pid {} on {})",
                self.task, self.pid, self.host
            ),
            None => write!(f, "`{}` (pid {} on {})", self.task, self.pid, self.host),
        }
    }
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(transparent)]
    Io(#[from] FsError),
    /// The run was interrupted while waiting.
    #[error("interrupted while waiting for the lock `{}`", path.display())]
    Cancelled { path: PathBuf },
}

/// A held exclusive lock; released on drop (or by the kernel if the process dies).
#[derive(Debug)]
pub struct KeyLock {
    file: File,
    path: PathBuf,
}

impl KeyLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        let _ = fs4::FileExt::unlock(&self.file);
    }
}

fn open(path: &Path) -> Result<File, FsError> {
    if let Some(dir) = path.parent() {
        crate::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .at("open lock file", path)
}

/// Reads whoever wrote the lock file last (the holder, if it is held).
pub fn read_holder(path: &Path) -> Option<LockHolder> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

fn claim(mut file: File, path: &Path, me: &LockHolder) -> Result<KeyLock, FsError> {
    let json = serde_json::to_vec(me).expect("holder serializes");
    file.set_len(0).at("truncate lock file", path)?;
    file.rewind().at("write lock file", path)?;
    file.write_all(&json).at("write lock file", path)?;
    Ok(KeyLock {
        file,
        path: path.to_owned(),
    })
}

/// Takes the lock without waiting; `None` when someone else holds it.
pub fn try_acquire(path: &Path, me: &LockHolder) -> Result<Option<KeyLock>, FsError> {
    let file = open(path)?;
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => claim(file, path, me).map(Some),
        Err(fs4::TryLockError::WouldBlock) => Ok(None),
        Err(fs4::TryLockError::Error(e)) => Err(FsError::new("lock", path, e)),
    }
}

/// Takes the lock, waiting as long as another live process holds it. `on_wait` is called
/// once, with the current holder, if we have to wait. Polls `cancel` while waiting.
pub fn acquire(
    path: &Path,
    me: &LockHolder,
    cancel: &CancelToken,
    on_wait: &mut dyn FnMut(Option<LockHolder>),
) -> Result<KeyLock, LockError> {
    let file = open(path)?;
    let mut pause = Duration::from_millis(5);
    let mut waiting_since: Option<Instant> = None;
    loop {
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => return Ok(claim(file, path, me)?),
            Err(fs4::TryLockError::WouldBlock) => {}
            Err(fs4::TryLockError::Error(e)) => {
                return Err(FsError::new("lock", path, e).into());
            }
        }
        if cancel.is_cancelled() {
            return Err(LockError::Cancelled {
                path: path.to_owned(),
            });
        }
        if waiting_since.is_none() {
            waiting_since = Some(Instant::now());
            on_wait(read_holder(path));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claimant_waits_until_the_first_releases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks/k.lock");
        let me = LockHolder::me(Some("run-a"), "train");
        let first = acquire(&path, &me, &CancelToken::default(), &mut |_| {}).unwrap();
        // flock locks belong to the open file description, so a second open in the same
        // process contends like another process would.
        assert!(try_acquire(&path, &me).unwrap().is_none());

        let path2 = path.clone();
        let waiter = std::thread::spawn(move || {
            let mut seen = None;
            let other = LockHolder::me(Some("run-b"), "train");
            let lock = acquire(&path2, &other, &CancelToken::default(), &mut |h| seen = h).unwrap();
            drop(lock);
            seen
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(first);
        let seen = waiter.join().unwrap().expect("waiter saw the holder");
        assert_eq!(seen.run.as_deref(), Some("run-a"));
        assert!(seen.to_string().contains("run run-a (stage `train`, pid"));
    }

    #[test]
    fn waiting_stops_when_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.lock");
        let me = LockHolder::me(None, "gc");
        let _held = acquire(&path, &me, &CancelToken::default(), &mut |_| {}).unwrap();
        let cancel = CancelToken::default();
        cancel.cancel();
        let err = acquire(&path, &me, &cancel, &mut |_| {}).unwrap_err();
        assert!(matches!(err, LockError::Cancelled { .. }));
    }
}
