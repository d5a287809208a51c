//! Where a submitted run stands, from any process and at any later time (`itera status`),
//! and stopping it (`itera cancel`). Reads the run record and `slurm/jobs.json`, polls the
//! jobs that have not ended, and writes back what the jobs could not record themselves (a
//! job killed for its time limit never updates its stage file; a job cancelled before it
//! started has none), and the run's final status once every stage has ended.

use std::collections::BTreeMap;

use super::cancel::{self, CancelError};
use super::follow::{self, JobEnd};
use super::jobs::{JobsError, JobsFile};
use super::sbatch::JobId;
use super::state::JobStatus;
use crate::record::{RecordError, RunDir, RunRecord, RunStatus, StageRecord, StageStatus};
use crate::spec::StageName;

/// One stage of a run as `itera status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageView {
    pub stage: StageName,
    /// The recorded status, after reconciliation with the scheduler.
    pub status: StageStatus,
    /// Its batch job, if it was submitted.
    pub job: Option<JobId>,
    /// What the scheduler said in this poll (jobs that had not ended before it).
    pub scheduler: Option<JobStatus>,
    /// Reason or error, in a few words.
    pub detail: Option<String>,
    pub local: bool,
}

/// A run's stages, in name order, and its overall status.
#[derive(Debug, Clone, PartialEq)]
pub struct RunView {
    pub status: RunStatus,
    pub stages: Vec<StageView>,
}

/// `itera status` / `itera cancel` failures.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Jobs(#[from] JobsError),
    #[error(transparent)]
    Cancel(#[from] CancelError),
    #[error(transparent)]
    Io(#[from] crate::fs::FsError),
}

/// The submitted jobs whose stages have not reached a final status in the record.
fn open_jobs(jobs: &JobsFile, record: &RunRecord) -> Vec<(StageName, JobId)> {
    jobs.jobs
        .iter()
        .filter(|(stage, _)| {
            record
                .stages
                .get(*stage)
                .is_none_or(|r| !r.status.is_final())
        })
        .map(|(stage, rec)| (stage.clone(), rec.job.clone()))
        .collect()
}

/// Polls the run's open jobs, records what they could not, and returns the picture.
pub fn status(run: &RunDir) -> Result<RunView, StatusError> {
    let jobs = JobsFile::load(run.path())?;
    let mut record = run.load()?;
    let open = open_jobs(&jobs, &record);
    let polled = follow::poll_stages(run.path(), &open);
    for (stage, id) in &open {
        let Some(status) = polled.get(stage) else {
            continue;
        };
        let current = record
            .stages
            .get(stage)
            .cloned()
            .unwrap_or_else(|| StageRecord::pending(""));
        let updated = match follow::classify(status) {
            JobEnd::Open { running } => {
                // The job writes `running` itself once the stage starts; nothing to add.
                let _ = running;
                None
            }
            JobEnd::Succeeded => {
                // The job wrote its final stage file just before exiting; re-read it.
                run.read_stage(stage)?.filter(|r| r.status.is_final())
            }
            JobEnd::UpstreamFailed => Some(StageRecord {
                status: StageStatus::Skipped,
                reason: Some(format!(
                    "an upstream job did not succeed; SLURM cancelled job {id}"
                )),
                ..current
            }),
            JobEnd::Failed(why) => Some(StageRecord {
                status: StageStatus::Failed,
                error: Some(match (&current.error, current.status) {
                    (Some(e), StageStatus::Failed) => format!("{e} (SLURM job {id}: {why})"),
                    _ => format!("SLURM job {id}: {why}"),
                }),
                ..current
            }),
            JobEnd::Unknown(_) => None,
        };
        if let Some(rec) = updated {
            run.write_stage(stage, &rec)?;
            record.stages.insert(stage.clone(), rec);
        }
    }
    let all_final = record.stages.values().all(|r| r.status.is_final());
    if all_final && matches!(record.status, RunStatus::Submitted | RunStatus::Running) {
        let failed = record.stages.values().any(|r| !r.status.succeeded());
        record.status = if failed {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        record.finished = Some(crate::host::timestamp(std::time::SystemTime::now()));
        run.write_record(&record)?;
    }
    let stages = record
        .stages
        .iter()
        .map(|(stage, rec)| StageView {
            stage: stage.clone(),
            status: rec.status,
            job: jobs.jobs.get(stage).map(|j| j.job.clone()),
            scheduler: polled.get(stage).cloned(),
            detail: rec.error.clone().or_else(|| rec.reason.clone()),
            local: jobs.local.iter().any(|l| l == stage),
        })
        .collect();
    Ok(RunView {
        status: record.status,
        stages,
    })
}

/// Cancels every pending or running job of the run and records the stages as failed
/// ("cancelled"); returns the stages whose jobs were cancelled.
pub fn cancel_run(run: &RunDir) -> Result<BTreeMap<StageName, JobId>, StatusError> {
    let jobs = JobsFile::load(run.path())?;
    let record = run.load()?;
    let open = open_jobs(&jobs, &record);
    let polled = follow::poll_stages(run.path(), &open);
    let to_cancel: BTreeMap<StageName, JobId> = open
        .into_iter()
        .filter(|(stage, _)| !polled.get(stage).is_some_and(JobStatus::is_terminal))
        .collect();
    let ids: Vec<JobId> = to_cancel.values().cloned().collect();
    cancel::cancel(&ids)?;
    for (stage, id) in &to_cancel {
        let mut rec = run
            .read_stage(stage)?
            .unwrap_or_else(|| StageRecord::pending(""));
        if !rec.status.is_final() {
            rec.status = StageStatus::Failed;
            rec.error = Some(format!("cancelled (`itera cancel`, SLURM job {id})"));
            run.write_stage(stage, &rec)?;
        }
    }
    // Settles the run's status (every stage is final now, unless a job was just finishing).
    status(run)?;
    Ok(to_cancel)
}
