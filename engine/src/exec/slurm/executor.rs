//! The SLURM executor: asks the [`Planner`], stage by stage in dependency order, and
//! carries out its decisions: a stage is cached (looked up in the store), runs on this host (`resources.local = true`, e.g.
//! downloads on a login node), or becomes a batch job depending on its upstream jobs with
//! `afterok`. The whole DAG is queued at once; with [`Follow::Wait`] it then follows the
//! jobs to their end ([`super::follow`]). A refused submission cancels what this
//! submission queued and reports the scheduler's message.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::jobs::{now_unix, JobRecord, JobsFile};
use super::sbatch::{self, JobId, RetryPolicy};
use super::script::{self, slurm_dir, ScriptSpec, StageFiles};
use super::{cancel, shared_fs};
use crate::exec::inputs::{key_parts, Resolved};
use crate::exec::one::{execute_stage, StageRequest};
use crate::exec::planner::{not_stored, Action, Decision, Planner, Upstream};
use crate::exec::{thread_budget, Event, ExecError, Executor, RunJob, RunOutcome};
use crate::record::{StageRecord, StageStatus};
use crate::spec::StageName;
use crate::store::{Lookup, Reuse};

/// What `itera run --executor slurm` does after queueing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Print the job ids and return (stages stay `pending` in the record).
    Return,
    /// Follow the jobs until every stage has ended (`--wait`).
    Wait,
}

/// How often to poll the scheduler while following.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollPolicy {
    /// First interval, and the interval again after every change.
    pub initial: Duration,
    /// The interval grows by half while nothing changes, up to this.
    pub max: Duration,
    /// How long a job's state may stay undeterminable before the stage counts as failed.
    pub unknown_grace: Duration,
}

impl Default for PollPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(30),
            unknown_grace: Duration::from_secs(120),
        }
    }
}

/// Runs stages as SLURM batch jobs.
#[derive(Debug, Clone)]
pub struct SlurmExecutor {
    pub follow: Follow,
    pub poll: PollPolicy,
    pub retry: RetryPolicy,
    /// Where jobs start (`--chdir`): the folder `itera run` was started in.
    pub workdir: PathBuf,
    /// The binary jobs run (`itera exec-stage`); see [`script::itera_bin`].
    pub itera_bin: PathBuf,
}

impl SlurmExecutor {
    /// An executor for jobs started from the current folder, running this binary.
    pub fn new(follow: Follow) -> Result<Self, ExecError> {
        let workdir = std::env::current_dir()
            .map_err(|e| ExecError::Backend(format!("cannot tell the current folder: {e}")))?;
        let itera_bin = script::itera_bin().map_err(|e| {
            ExecError::Backend(format!(
                "cannot tell which itera binary is running: {e}; set ITERA_BIN"
            ))
        })?;
        Ok(Self {
            follow,
            poll: PollPolicy::default(),
            retry: RetryPolicy::default(),
            workdir,
            itera_bin,
        })
    }
}

/// Where one stage stands during submission and following.
#[derive(Debug, Clone)]
pub(super) enum Slot {
    Waiting,
    /// Final: cached, ran, failed or skipped.
    Done(Box<StageRecord>, Option<Resolved>),
    Queued(Queued),
}

#[derive(Debug, Clone)]
pub(super) struct Queued {
    pub(super) job: JobId,
    pub(super) since: Instant,
    pub(super) running: bool,
    pub(super) unknown_since: Option<Instant>,
}

pub(super) struct Coordinator<'a> {
    pub(super) exec: &'a SlurmExecutor,
    pub(super) job: &'a RunJob,
    pub(super) plan: Planner,
    pub(super) slots: BTreeMap<StageName, Slot>,
    jobs: JobsFile,
    /// Jobs this invocation queued, in order (cancelled if a later submission is refused).
    queued_now: Vec<JobId>,
}

impl Executor for SlurmExecutor {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn execute(&self, job: &RunJob) -> Result<RunOutcome, ExecError> {
        if let Some(w) = shared_fs::node_local_warning(job.run.path()) {
            tracing::warn!("{w}");
        }
        std::fs::create_dir_all(slurm_dir(job.run.path())).map_err(|e| {
            ExecError::Backend(format!(
                "cannot create {}: {e}",
                slurm_dir(job.run.path()).display()
            ))
        })?;
        let plan = Planner::new(&job.pipeline, &job.selected, &job.force, &job.mode)?;
        let mut c = Coordinator {
            exec: self,
            job,
            slots: plan
                .stages()
                .iter()
                .map(|s| (s.clone(), Slot::Waiting))
                .collect(),
            plan,
            jobs: JobsFile::load(job.run.path())
                .unwrap_or_else(|_| JobsFile::new(job.run.id().as_str(), &job.pipeline.name)),
            queued_now: Vec::new(),
        };
        // Recorded from the start (even with nothing to submit), for `status` and `cancel`.
        c.save_jobs();
        c.run()?;
        Ok(c.outcome())
    }
}

impl Coordinator<'_> {
    fn run(&mut self) -> Result<(), ExecError> {
        let mut interval = self.exec.poll.initial;
        loop {
            self.advance()?;
            let waiting = self.count(|s| matches!(s, Slot::Waiting));
            let queued = self.count(|s| matches!(s, Slot::Queued(_)));
            let must_follow = match self.exec.follow {
                Follow::Wait => queued > 0,
                // Local stages downstream of a job can only run once it has finished.
                Follow::Return => waiting > 0 && queued > 0,
            };
            if !must_follow {
                return Ok(());
            }
            if self.job.cancel.is_cancelled() {
                tracing::warn!(
                    "stopped following; {queued} job(s) stay queued on SLURM: \
                     `itera status {run}` shows them, `itera cancel {run}` stops them",
                    run = self.job.run.id()
                );
                return Ok(());
            }
            let changed = self.follow_once();
            if changed {
                interval = self.exec.poll.initial;
                continue;
            }
            sleep_unless_cancelled(&self.job.cancel, interval);
            interval = (interval.mul_f64(1.5)).min(self.exec.poll.max);
        }
    }

    fn count(&self, f: impl Fn(&Slot) -> bool) -> usize {
        self.slots.values().filter(|s| f(s)).count()
    }

    /// Decides everything that can be decided now: lookups, local runs, submissions.
    fn advance(&mut self) -> Result<(), ExecError> {
        let mut changed = true;
        while changed {
            changed = false;
            let waiting: Vec<StageName> = self
                .slots
                .iter()
                .filter(|(_, s)| matches!(s, Slot::Waiting))
                .map(|(n, _)| n.clone())
                .collect();
            for name in waiting {
                match self.next_for(&name) {
                    Decision::Wait => continue,
                    Decision::Skip(why) => self.skip(&name, why),
                    Decision::Go(action) => self.resolve(&name, &action)?,
                    Decision::GoAfterJobs(action) => self.submit(&name, &action)?,
                }
                changed = true;
            }
        }
        Ok(())
    }

    fn next_for(&self, name: &str) -> Decision {
        let state = |u: &str| match self.slots.get(u) {
            Some(Slot::Done(_, Some(_))) => Upstream::Resolved,
            Some(Slot::Done(rec, None)) if rec.status == StageStatus::Skipped => Upstream::Skipped,
            Some(Slot::Done(_, None)) => Upstream::Failed,
            Some(Slot::Queued(_)) => Upstream::Queued,
            _ => Upstream::Pending,
        };
        self.plan
            .decide(name, state, self.job.cancel.is_cancelled())
    }

    fn resolved_map(&self) -> BTreeMap<StageName, Resolved> {
        self.slots
            .iter()
            .filter_map(|(n, s)| match s {
                Slot::Done(_, Some(r)) => Some((n.clone(), r.clone())),
                _ => None,
            })
            .collect()
    }

    fn kind_of(&self, name: &str) -> String {
        self.job
            .pipeline
            .stages
            .get(name)
            .map(|s| s.kind.clone())
            .unwrap_or_default()
    }

    /// Every upstream result exists: a cache hit, a local run, or a job without dependencies.
    fn resolve(&mut self, name: &str, action: &Action) -> Result<(), ExecError> {
        let job = self.job;
        let resolved = self.resolved_map();
        let selected = *action != Action::LookUp;
        if action.reuse() == Reuse::Allow {
            let mut rec = StageRecord::pending(&self.kind_of(name));
            match key_parts(&job.pipeline, &job.registry, name, &resolved) {
                Ok(parts) => {
                    let key = parts.key();
                    rec.key = Some(key.clone());
                    rec.parts = Some(parts);
                    crate::store::lease::take_or_warn(&job.store, &key);
                    if let Lookup::Hit(entry) = job.store.lookup(&key) {
                        rec.status = StageStatus::Cached;
                        rec.digest = Some(entry.meta.digest.clone());
                        rec.reason = Some(if selected {
                            format!("cached: produced by stage `{}`", entry.meta.stage)
                        } else {
                            "not selected; result taken from the store".to_owned()
                        });
                        job.events.event(Event::Cached {
                            stage: name.to_owned(),
                            key: key.to_string(),
                        });
                        self.write_stage(name, &rec);
                        self.slots.insert(
                            name.to_owned(),
                            Slot::Done(Box::new(rec), Some(Resolved::from_entry(&entry))),
                        );
                        return Ok(());
                    }
                    if !selected {
                        self.fail(name, rec, not_stored(name), Vec::new(), None);
                        return Ok(());
                    }
                }
                Err(e) => {
                    self.fail(name, rec, e.to_string(), Vec::new(), None);
                    return Ok(());
                }
            }
        }
        if self.plan.runs_on_host(name) {
            self.run_here(name, action, &resolved);
            Ok(())
        } else {
            self.submit(name, action)
        }
    }

    /// Runs a `local = true` stage in this process, as the local executor would.
    fn run_here(&mut self, name: &str, action: &Action, resolved: &BTreeMap<StageName, Resolved>) {
        let job = self.job;
        let req = StageRequest {
            stage: name.to_owned(),
            reuse: action.reuse(),
            verify_against: action.verify_against().cloned(),
            threads: thread_budget(&job.pipeline, name, job.cores, 1),
        };
        if !self.jobs.local.iter().any(|s| s == name) {
            self.jobs.local.push(name.to_owned());
            self.save_jobs();
        }
        let (rec, res) = execute_stage(job, &req, resolved);
        self.slots
            .insert(name.to_owned(), Slot::Done(Box::new(rec), res));
    }

    /// Writes the stage's script and queues it after its queued upstream jobs.
    fn submit(&mut self, name: &str, action: &Action) -> Result<(), ExecError> {
        let job = self.job;
        let spec = &job.pipeline.stages[name];
        let (runs_dir, run_dir) = absolute_dirs(job).map_err(|e| self.abort(name, e))?;
        let text = render_script(self.exec, job, name, action, &runs_dir, &run_dir)
            .map_err(|e| self.abort(name, e.to_string()))?;
        let files = StageFiles::new(&slurm_dir(&run_dir), name);
        crate::fs::write_atomic(&files.script, text.as_bytes(), crate::fs::Durability::Fsync)
            .map_err(|e| self.abort(name, e.to_string()))?;
        // Remove what an earlier attempt of this run left, so it is not taken for this job's.
        let _ = std::fs::remove_file(&files.exitcode);
        let mut after = Vec::new();
        let mut deps = Vec::new();
        for u in self.plan.upstream(name) {
            if let Some(Slot::Queued(q)) = self.slots.get(&u) {
                after.push(u.clone());
                deps.push(q.job.clone());
            }
        }
        // The pending record goes first: the job may start and write its own before
        // sbatch even returns.
        let mut rec = StageRecord::pending(&spec.kind);
        rec.reason = Some("queued on SLURM".to_owned());
        self.write_stage(name, &rec);
        let submitted = sbatch::submit(
            &files.script,
            &deps,
            &self.exec.workdir,
            &self.exec.retry,
            |attempt, message, delay| {
                tracing::warn!(
                    stage = name,
                    "sbatch failed (try {attempt}): {message}; retrying in {}s",
                    delay.as_secs()
                )
            },
        );
        let id = match submitted {
            Ok(id) => id,
            Err(e) => return Err(self.abort(name, e.to_string())),
        };
        self.jobs.jobs.insert(
            name.to_owned(),
            JobRecord {
                job: id.clone(),
                submitted_at: now_unix(),
                script: files.script,
                after,
            },
        );
        self.save_jobs();
        self.queued_now.push(id.clone());
        job.events.event(Event::Submitted {
            stage: name.to_owned(),
            job_id: id.to_string(),
        });
        self.slots.insert(
            name.to_owned(),
            Slot::Queued(Queued {
                job: id,
                since: Instant::now(),
                running: false,
                unknown_since: None,
            }),
        );
        Ok(())
    }

    /// A submission failed: cancel what this invocation queued, record why, and return
    /// the error to report.
    fn abort(&mut self, name: &str, message: String) -> ExecError {
        let cancelled = std::mem::take(&mut self.queued_now);
        let cancel_note =
            if cancelled.is_empty() {
                String::new()
            } else {
                match cancel::cancel(&cancelled) {
                    Ok(()) => {
                        format!(
                    "\n  the {} job(s) already queued by this submission were cancelled ({})",
                    cancelled.len(),
                    cancelled.iter().map(|j| j.to_string()).collect::<Vec<_>>().join(", ")
                )
                    }
                    Err(e) => format!("\n  cancelling the jobs already queued failed too: {e}"),
                }
            };
        let queued: Vec<StageName> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Queued(_)))
            .map(|(n, _)| n.clone())
            .collect();
        for q in queued {
            let mut rec = StageRecord::pending(&self.kind_of(&q));
            rec.status = StageStatus::Skipped;
            rec.reason = Some(format!(
                "submission aborted: stage `{name}` could not be submitted"
            ));
            self.write_stage(&q, &rec);
            self.slots.insert(q, Slot::Done(Box::new(rec), None));
        }
        let rec = StageRecord::pending(&self.kind_of(name));
        self.fail(name, rec, message.clone(), Vec::new(), None);
        ExecError::Backend(format!("stage `{name}`: {message}{cancel_note}"))
    }

    pub(super) fn fail(
        &mut self,
        name: &str,
        mut rec: StageRecord,
        error: String,
        log_tail: Vec<String>,
        log: Option<String>,
    ) {
        rec.status = StageStatus::Failed;
        rec.error = Some(error.clone());
        self.write_stage(name, &rec);
        self.job.events.event(Event::Failed {
            stage: name.to_owned(),
            error,
            log_tail,
            log,
        });
        self.slots
            .insert(name.to_owned(), Slot::Done(Box::new(rec), None));
    }

    pub(super) fn skip(&mut self, name: &str, why: String) {
        let mut rec = StageRecord::pending(&self.kind_of(name));
        rec.status = StageStatus::Skipped;
        rec.reason = Some(why.clone());
        self.write_stage(name, &rec);
        self.job.events.event(Event::Skipped {
            stage: name.to_owned(),
            reason: why,
        });
        self.slots
            .insert(name.to_owned(), Slot::Done(Box::new(rec), None));
    }

    fn write_stage(&self, name: &str, rec: &StageRecord) {
        if let Err(e) = self.job.run.write_stage(name, rec) {
            tracing::error!(stage = name, error = %e, "cannot record the stage's status");
        }
    }

    fn save_jobs(&self) {
        if let Err(e) = self.jobs.save(self.job.run.path()) {
            tracing::error!(error = %e, "cannot record the submitted jobs");
        }
    }

    fn outcome(self) -> RunOutcome {
        let interrupted = self.job.cancel.is_cancelled();
        let mut stages = std::collections::BTreeMap::new();
        for (name, slot) in &self.slots {
            let rec = match slot {
                Slot::Done(rec, _) => (**rec).clone(),
                Slot::Queued(q) => {
                    let mut rec = StageRecord::pending(&self.kind_of(name));
                    rec.reason = Some(format!("queued as SLURM job {}", q.job));
                    rec
                }
                Slot::Waiting => {
                    let mut rec = StageRecord::pending(&self.kind_of(name));
                    rec.status = StageStatus::Skipped;
                    rec.reason = Some("not submitted".to_owned());
                    rec
                }
            };
            stages.insert(name.clone(), rec);
        }
        RunOutcome {
            stages,
            interrupted,
        }
    }
}

/// The runs folder and the run's folder as absolute paths (jobs start elsewhere).
pub(super) fn absolute_dirs(job: &RunJob) -> Result<(PathBuf, PathBuf), String> {
    let abs = |p: &std::path::Path| {
        std::path::absolute(p).map_err(|e| format!("cannot make `{}` absolute: {e}", p.display()))
    };
    Ok((abs(job.store.runs_dir())?, abs(job.run.path())?))
}

/// The batch script of `stage` (what the submission and the dry run both write).
pub(super) fn render_script(
    exec: &SlurmExecutor,
    job: &RunJob,
    stage: &str,
    action: &Action,
    runs_dir: &std::path::Path,
    run_dir: &std::path::Path,
) -> Result<String, script::ScriptError> {
    let resources = job.pipeline.stages[stage].resources.or(&job.pipeline.slurm);
    script::render(&ScriptSpec {
        pipeline: &job.pipeline.name,
        stage,
        run_id: job.run.id().as_str(),
        runs_dir,
        run_dir,
        workdir: &exec.workdir,
        itera_bin: &exec.itera_bin,
        resources: &resources,
        action,
    })
}

fn sleep_unless_cancelled(cancel: &crate::stage::CancelToken, total: Duration) {
    let start = Instant::now();
    while start.elapsed() < total && !cancel.is_cancelled() {
        std::thread::sleep(Duration::from_millis(50).min(total));
    }
}
