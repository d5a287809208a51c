//! Cancelling a run's jobs: `scancel` for every tracked job that is still pending or
//! running (or whose state cannot be told), one call per cluster.

use std::collections::BTreeMap;

use super::command::{self, CommandError};
use super::sbatch::JobId;
use super::state::{self, JobStatus, Tracked};

/// A cancellation the scheduler refused.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("scancel {ids} failed: {message}")]
    Refused { ids: String, message: String },
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// Cancels the jobs that have not ended; returns the ids it asked `scancel` to stop.
pub fn cancel_unfinished(jobs: &[Tracked<'_>]) -> Result<Vec<JobId>, CancelError> {
    let statuses = state::poll(jobs);
    let open: Vec<JobId> = jobs
        .iter()
        .filter(|t| !statuses.get(t.job).is_some_and(JobStatus::is_terminal))
        .map(|t| t.job.clone())
        .collect();
    cancel(&open)?;
    Ok(open)
}

/// `scancel` the given jobs (a finished or unknown id is not an error to scancel).
pub fn cancel(jobs: &[JobId]) -> Result<(), CancelError> {
    let mut by_cluster: BTreeMap<Option<&str>, Vec<&str>> = BTreeMap::new();
    for j in jobs {
        by_cluster
            .entry(j.cluster.as_deref())
            .or_default()
            .push(j.id.as_str());
    }
    for (cluster, ids) in by_cluster {
        let mut args: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        if let Some(c) = cluster {
            args.push(format!("--clusters={c}"));
        }
        let out = command::run("scancel", &args, None, command::DEFAULT_TIMEOUT)?;
        if !out.success() {
            return Err(CancelError::Refused {
                ids: ids.join(" "),
                message: out.message(),
            });
        }
    }
    Ok(())
}
