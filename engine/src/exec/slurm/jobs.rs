//! `runs/<run>/slurm/jobs.json`: which job runs which stage of a run, written atomically
//! after every submission, so `itera status` and `itera cancel` work from any process, and
//! a submission cut short still leaves a record of what it queued.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::sbatch::JobId;
use super::script::{slurm_dir, StageFiles};

/// Version of the jobs.json layout.
pub const JOBS_FORMAT: u32 = 1;

/// The jobs of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobsFile {
    pub format: u32,
    pub run_id: String,
    pub pipeline: String,
    /// Stage -> its batch job.
    pub jobs: BTreeMap<String, JobRecord>,
    /// Stages that run on the submitting host (`resources.local = true`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local: Vec<String>,
}

/// One submitted stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job: JobId,
    /// Seconds since the Unix epoch.
    pub submitted_at: u64,
    /// The submitted script.
    pub script: PathBuf,
    /// Upstream stages whose jobs this one waits for (`afterok`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

/// jobs.json could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("run {} has no SLURM jobs ({} is missing): was it run with `--executor slurm`?", run_dir.display(), path.display())]
    Missing { run_dir: PathBuf, path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid jobs record: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl JobsFile {
    pub fn new(run_id: &str, pipeline: &str) -> Self {
        Self {
            format: JOBS_FORMAT,
            run_id: run_id.to_owned(),
            pipeline: pipeline.to_owned(),
            jobs: BTreeMap::new(),
            local: Vec::new(),
        }
    }

    /// `<run_dir>/slurm/jobs.json`.
    pub fn path(run_dir: &Path) -> PathBuf {
        slurm_dir(run_dir).join("jobs.json")
    }

    pub fn load(run_dir: &Path) -> Result<Self, JobsError> {
        let path = Self::path(run_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(JobsError::Missing {
                    run_dir: run_dir.to_owned(),
                    path,
                })
            }
            Err(source) => return Err(JobsError::Read { path, source }),
        };
        serde_json::from_str(&text).map_err(|source| JobsError::Parse { path, source })
    }

    /// Writes the record atomically (temp file beside it, then rename).
    pub fn save(&self, run_dir: &Path) -> Result<(), JobsError> {
        let path = Self::path(run_dir);
        let mut text = serde_json::to_string_pretty(self).expect("jobs record serialises");
        text.push('\n');
        crate::fs::write_atomic(&path, text.as_bytes(), crate::fs::Durability::Fsync).map_err(|e| {
            JobsError::Write {
                path,
                source: e.source,
            }
        })
    }

    /// The exit-code file of each job (for [`super::state::poll`]).
    pub fn exitcode_files(&self, run_dir: &Path) -> BTreeMap<String, PathBuf> {
        let dir = slurm_dir(run_dir);
        self.jobs
            .keys()
            .map(|stage| (stage.clone(), StageFiles::new(&dir, stage).exitcode))
            .collect()
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        std::fs::create_dir_all(slurm_dir(run)).unwrap();
        let err = JobsFile::load(run).unwrap_err();
        assert!(err.to_string().contains("--executor slurm"), "{err}");
        let mut f = JobsFile::new("r1", "demo");
        f.jobs.insert(
            "train".into(),
            JobRecord {
                job: JobId::parse("42").unwrap(),
                submitted_at: 1_700_000_000,
                script: slurm_dir(run).join("train.sbatch"),
                after: vec!["tokenize".into()],
            },
        );
        f.local.push("fetch".into());
        f.save(run).unwrap();
        assert_eq!(JobsFile::load(run).unwrap(), f);
        let text = std::fs::read_to_string(JobsFile::path(run)).unwrap();
        assert!(text.contains("\"id\": \"42\""), "{text}");
        assert_eq!(
            f.exitcode_files(run)["train"],
            slurm_dir(run).join("train.exitcode")
        );
        std::fs::write(JobsFile::path(run), "{").unwrap();
        assert!(matches!(JobsFile::load(run), Err(JobsError::Parse { .. })));
    }
}
