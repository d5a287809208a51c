//! Liveness of runs, by lock. Every process working on a run (the `itera run` that
//! created it, each `itera exec-stage` batch job) holds a *shared* `flock` on
//! `runs/<run-id>/run.lock` for as long as it lives; the kernel drops it when the process
//! dies, however it dies. A run is live while someone holds that lock: [`is_held`] tries
//! to take it exclusively. Never timestamps, never pids alone (pids are reused, hosts
//! differ).
//!
//! A record that says `running` although nobody holds its lock was left by a killed
//! itera: it is *abandoned*. `itera runs` and `itera show` say so, and the next `itera
//! run` or `itera gc` finalises it ([`finalise_abandoned`]): the run becomes `abandoned`,
//! its running stages `interrupted`, its pending stages `skipped`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::fs::{FsError, IoContext};
use crate::record::{RecordError, RunDir, RunRecord, RunStatus, StageStatus};

/// The lock file in a run folder.
pub const RUN_LOCK: &str = "run.lock";

/// A held shared lock on a run's `run.lock`.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

fn open(path: &Path, create: bool) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

/// Takes a shared lock on `dir/run.lock` (created if missing), waiting while a checker
/// holds it exclusively for a moment.
pub fn hold(dir: &Path) -> Result<RunLock, FsError> {
    let path = dir.join(RUN_LOCK);
    let file = open(&path, true).at("open run lock", &path)?;
    fs4::FileExt::lock_shared(&file).at("lock", &path)?;
    Ok(RunLock { _file: file })
}

/// Whether some process holds the lock at `path` (`false` if there is no such file).
pub fn is_held(path: &Path) -> Result<bool, FsError> {
    let file = match open(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(FsError::new("open run lock", path, e)),
    };
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => Ok(false),
        Err(fs4::TryLockError::WouldBlock) => Ok(true),
        Err(fs4::TryLockError::Error(e)) => Err(FsError::new("lock", path, e)),
    }
}

/// Whether a process is working on the run in `dir`.
pub fn is_live(dir: &Path) -> bool {
    is_held(&dir.join(RUN_LOCK)).unwrap_or(true)
}

/// Whether `record` (of the run in `dir`) says `running` although nobody works on it.
pub fn is_abandoned(dir: &Path, record: &RunRecord) -> bool {
    record.status == RunStatus::Running && !is_live(dir)
}

/// Shows `record` (of the run in `dir`) as the next `run` or `gc` will finalise it when it
/// is abandoned: the run `abandoned`, its running stages `interrupted`. Writes nothing.
/// Returns whether it was abandoned.
pub fn as_seen(dir: &Path, record: &mut RunRecord) -> bool {
    if !is_abandoned(dir, record) {
        return false;
    }
    record.status = RunStatus::Abandoned;
    for stage in record.stages.values_mut() {
        if stage.status == StageStatus::Running {
            stage.status = StageStatus::Interrupted;
        }
    }
    true
}

/// Marks an abandoned run's record as such (see the module doc). Returns whether it did.
/// Holds the run's lock exclusively meanwhile, so no process can attach to the run.
pub fn finalise_abandoned(run: &RunDir) -> Result<bool, RecordError> {
    let path = run.path().join(RUN_LOCK);
    let file = match open(&path, false) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(FsError::new("open run lock", path, e).into()),
    };
    if let Some(f) = &file {
        match fs4::FileExt::try_lock(f) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => return Ok(false),
            Err(fs4::TryLockError::Error(e)) => return Err(FsError::new("lock", path, e).into()),
        }
    }
    let mut record = run.load()?;
    if record.status != RunStatus::Running {
        return Ok(false);
    }
    let who = match record.pid {
        Some(pid) => format!("itera (pid {pid} on {})", record.host),
        None => format!("itera on {}", record.host),
    };
    close_unfinished(
        run,
        &mut record,
        RunStatus::Abandoned,
        &format!(
            "abandoned: {who} ended without finishing this stage (killed?); the next run \
             resumes or recomputes it"
        ),
    )?;
    Ok(true)
}

/// Ends a run's record with `status`: running stages become `interrupted` (with `why`),
/// pending ones `skipped`; the stage files and `run.json` are written.
pub fn close_unfinished(
    run: &RunDir,
    record: &mut RunRecord,
    status: RunStatus,
    why: &str,
) -> Result<(), RecordError> {
    for (name, stage) in record.stages.iter_mut() {
        let changed = match stage.status {
            StageStatus::Running => {
                stage.status = StageStatus::Interrupted;
                stage.error = Some(why.to_owned());
                true
            }
            StageStatus::Pending => {
                stage.status = StageStatus::Skipped;
                stage.reason = Some(format!("the run ended early ({status})"));
                true
            }
            _ => false,
        };
        if changed {
            run.write_stage(name, stage)?;
        }
    }
    record.status = status;
    record.finished = Some(crate::host::timestamp(SystemTime::now()));
    run.write_record(record)?;
    Ok(())
}

/// Finalises every abandoned run under `runs_dir` (unreadable records are left alone).
/// Returns the ones it finalised.
pub fn finalise_all(runs_dir: &Path) -> Vec<RunDir> {
    crate::record::list_runs(runs_dir)
        .into_iter()
        .filter(|run| {
            crate::record::peek_status(run.path()) == Some(RunStatus::Running)
                && finalise_abandoned(run).unwrap_or(false)
        })
        .collect()
}

/// Run folders under `runs_dir` that will never hold a record: no `run.json`, and their
/// `run.lock` is missing or held by nobody (itera was killed while creating the run).
pub fn dead_run_folders(runs_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(runs_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| crate::record::looks_like_run_id(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .filter(|p| !p.join("run.json").exists() && !is_live(p))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_live_and_a_dropped_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_live(dir.path()), "no lock file: nobody");
        let lock = hold(dir.path()).unwrap();
        let second = hold(dir.path()).unwrap();
        assert!(is_live(dir.path()));
        drop(lock);
        assert!(is_live(dir.path()), "the second holder still works on it");
        drop(second);
        assert!(!is_live(dir.path()));
    }
}
