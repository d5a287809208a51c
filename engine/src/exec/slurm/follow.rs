//! From job states to stage results: polls a run's queued jobs, reads back what a
//! finished job recorded (its stage file and store entry), and assembles a failed job's
//! error and log tail (the stage log and the job's own stderr, where SLURM writes
//! time-limit and memory kills).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::cancel;
use super::executor::{Coordinator, Queued, Slot};
use crate::exec::Event;

use super::sbatch::JobId;
use super::script::{slurm_dir, StageFiles};
use super::state::{self, Failure, JobStatus, Tracked};
use crate::exec::inputs::Resolved;
use crate::exec::{log_tail, RunJob};
use crate::record::{StageRecord, StageStatus};
use crate::spec::StageName;
use crate::store::Lookup;

/// Lines of a failed stage's log shown with the error.
pub const TAIL_LINES: usize = 20;

/// What following a job has to do about its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// Still queued or running.
    Open {
        running: bool,
    },
    /// The wrapper recorded exit code 0.
    Succeeded,
    /// SLURM cancelled it because an upstream job failed.
    UpstreamFailed,
    Failed(String),
    Unknown(String),
}

/// Sorts a job status into what the follower does with it.
pub fn classify(status: &JobStatus) -> JobEnd {
    match status {
        JobStatus::Pending { .. } => JobEnd::Open { running: false },
        JobStatus::Running => JobEnd::Open { running: true },
        JobStatus::Completed => JobEnd::Succeeded,
        JobStatus::Ended(Failure::DependencyNeverSatisfied) => JobEnd::UpstreamFailed,
        JobStatus::Ended(f) => JobEnd::Failed(f.to_string()),
        JobStatus::Unknown { detail } => JobEnd::Unknown(detail.clone()),
    }
}

/// The status of each stage's job (one batched scheduler query for all of them).
pub fn poll_stages(run_dir: &Path, jobs: &[(StageName, JobId)]) -> BTreeMap<StageName, JobStatus> {
    let dir = slurm_dir(run_dir);
    let files: Vec<_> = jobs
        .iter()
        .map(|(stage, _)| StageFiles::new(&dir, stage).exitcode)
        .collect();
    let tracked: Vec<Tracked<'_>> = jobs
        .iter()
        .zip(&files)
        .map(|((_, job), exitcode_file)| Tracked { job, exitcode_file })
        .collect();
    let by_job = state::poll(&tracked);
    jobs.iter()
        .filter_map(|(stage, job)| by_job.get(job).map(|s| (stage.clone(), s.clone())))
        .collect()
}

/// The record and result a successful job left: its stage file, and the store entry of
/// the key recorded there.
pub fn result_of(job: &RunJob, stage: &str) -> Result<(StageRecord, Resolved), String> {
    let rec = job
        .run
        .read_stage(stage)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "the job exited 0 but left no status for stage `{stage}` in {} \
                 (is the runs folder shared with the compute nodes?)",
                job.run.path().display()
            )
        })?;
    if !rec.status.succeeded() {
        return Err(format!(
            "the job exited 0 but the stage's status is `{}`{}",
            rec.status,
            rec.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    let key = rec
        .key
        .clone()
        .ok_or_else(|| format!("stage `{stage}` finished without recording its cache key"))?;
    match job.store.lookup(&key) {
        Lookup::Hit(entry) => Ok((rec, Resolved::from_entry(&entry))),
        Lookup::Damaged(problem) => Err(format!(
            "the job's result (store entry {key}) is damaged: {problem}"
        )),
        Lookup::Miss => Err(format!(
            "the job reported success but its result (store entry {key}) is not in {} \
             (is the store on a filesystem shared with the compute nodes?)",
            job.store.runs_dir().display()
        )),
    }
}

/// A failed job's record (status failed), error, log tail and log path.
pub fn failure_of(
    job: &RunJob,
    stage: &str,
    id: &JobId,
    why: &str,
) -> (StageRecord, String, Vec<String>, Option<String>) {
    let kind = job
        .pipeline
        .stages
        .get(stage)
        .map(|s| s.kind.clone())
        .unwrap_or_default();
    let rec = job
        .run
        .read_stage(stage)
        .ok()
        .flatten()
        .unwrap_or_else(|| StageRecord::pending(&kind));
    let error = match (&rec.error, rec.status) {
        (Some(e), StageStatus::Failed) => format!("{e} (SLURM job {id}: {why})"),
        _ => format!("SLURM job {id}: {why}"),
    };
    let files = StageFiles::new(&slurm_dir(job.run.path()), stage);
    let stage_log = rec.log.as_ref().map(|l| job.run.path().join(l));
    let mut tail = Vec::new();
    if let Some(log) = &stage_log {
        tail.extend(log_tail(log, TAIL_LINES));
    }
    // When the stage recorded its own failure its log says it all; otherwise (setup
    // lines, time or memory limits, a lost node) the job's stderr has the story.
    let stage_reported = rec.status == StageStatus::Failed && rec.error.is_some();
    let err_tail = if stage_reported && !tail.is_empty() {
        Vec::new()
    } else {
        log_tail(&files.stderr, TAIL_LINES)
    };
    if !err_tail.is_empty() {
        if !tail.is_empty() {
            tail.push(format!("--- {} ---", files.stderr.display()));
        }
        tail.extend(err_tail);
    }
    let log = stage_log
        .filter(|p| p.exists())
        .unwrap_or(files.stderr)
        .display()
        .to_string();
    (rec, error, tail, Some(log))
}

impl Coordinator<'_> {
    /// One poll of every queued job; returns whether anything changed.
    pub(super) fn follow_once(&mut self) -> bool {
        let queued: Vec<(StageName, Queued)> = self
            .slots
            .iter()
            .filter_map(|(n, s)| match s {
                Slot::Queued(q) => Some((n.clone(), q.clone())),
                _ => None,
            })
            .collect();
        let statuses = poll_stages(
            self.job.run.path(),
            &queued
                .iter()
                .map(|(n, q)| (n.clone(), q.job.clone()))
                .collect::<Vec<_>>(),
        );
        let mut changed = false;
        for (name, mut q) in queued {
            // An earlier entry of this poll may have settled it (a failed upstream).
            if !matches!(self.slots.get(&name), Some(Slot::Queued(_))) {
                continue;
            }
            let Some(status) = statuses.get(&name) else {
                continue;
            };
            match classify(status) {
                JobEnd::Open { running } => {
                    q.unknown_since = None;
                    if running && !q.running {
                        q.running = true;
                        changed = true;
                        self.job.events.event(Event::Started {
                            stage: name.clone(),
                            reason: format!("SLURM job {} is running", q.job),
                            threads: self
                                .job
                                .pipeline
                                .stages
                                .get(&name)
                                .and_then(|s| s.resources.or(&self.job.pipeline.slurm).cpus)
                                .map_or(1, |c| c as usize),
                        });
                    }
                    self.slots.insert(name, Slot::Queued(q));
                }
                JobEnd::Unknown(detail) => {
                    let since = *q.unknown_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.exec.poll.unknown_grace {
                        changed = true;
                        self.job_failed(&name, &q.job, detail);
                    } else {
                        self.slots.insert(name, Slot::Queued(q));
                    }
                }
                JobEnd::Succeeded => {
                    changed = true;
                    self.job_succeeded(&name, &q);
                }
                JobEnd::UpstreamFailed => {
                    changed = true;
                    let why = self.failed_upstream(&name);
                    self.skip(&name, why);
                }
                JobEnd::Failed(why) => {
                    changed = true;
                    self.job_failed(&name, &q.job, why);
                }
            }
        }
        changed
    }

    fn failed_upstream(&self, name: &str) -> String {
        self.plan
            .upstream(name)
            .into_iter()
            .find(|u| matches!(self.slots.get(u), Some(Slot::Done(_, None))))
            .map(|u| format!("upstream stage `{u}` did not succeed; SLURM cancelled the job"))
            .unwrap_or_else(|| {
                "an upstream job did not succeed; SLURM cancelled the job".to_owned()
            })
    }

    fn job_succeeded(&mut self, name: &str, q: &Queued) {
        let job = self.job;
        match result_of(job, name) {
            Ok((rec, resolved)) => {
                job.events.event(Event::Finished {
                    stage: name.to_owned(),
                    elapsed: rec
                        .duration_ms
                        .map(Duration::from_millis)
                        .unwrap_or_else(|| q.since.elapsed()),
                    verified: rec.verify.as_ref().map(|v| v.matches),
                });
                self.slots
                    .insert(name.to_owned(), Slot::Done(Box::new(rec), Some(resolved)));
            }
            Err(problem) => self.job_failed(name, &q.job, problem),
        }
    }

    /// Records a failed job (with its log tail) and cancels its queued dependents, which
    /// SLURM would otherwise start when it did not see the failure itself.
    fn job_failed(&mut self, name: &str, id: &JobId, why: String) {
        let (rec, error, tail, log) = failure_of(self.job, name, id, &why);
        self.fail(name, rec, error, tail, log);
        // SLURM cancels them too when it saw the failure (`--kill-on-invalid-dep`), but
        // not when only we did (a job it calls COMPLETED that left no result).
        let dependents: Vec<(StageName, JobId)> = self
            .slots
            .iter()
            .filter_map(|(n, s)| match s {
                Slot::Queued(q) if self.plan.depends_on(n, name) => {
                    Some((n.clone(), q.job.clone()))
                }
                _ => None,
            })
            .collect();
        if dependents.is_empty() {
            return;
        }
        let ids: Vec<JobId> = dependents.iter().map(|(_, j)| j.clone()).collect();
        if let Err(e) = cancel::cancel(&ids) {
            tracing::warn!("cannot cancel the jobs that depend on `{name}`: {e}");
        }
        for (stage, job) in dependents {
            self.skip(
                &stage,
                format!(
                    "upstream stage `{name}` did not succeed; its SLURM job {job} was cancelled"
                ),
            );
        }
    }
}
