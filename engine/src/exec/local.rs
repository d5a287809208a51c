//! The local executor: runs the selected stages on this machine, each as soon as its
//! upstream results exist (the [`Planner`] decides what each stage does), at most `jobs` at a time (one thread per running stage). A
//! failed stage makes its downstream stages `skipped`; independent branches carry on (like
//! `make -k`), so everything that can be cached is. Unselected upstream stages (`--only`)
//! are only looked up in the store. On cancellation no new stage starts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;

use super::inputs::{key_parts, Resolved};
use super::one::{execute_stage, StageRequest};
use super::planner::{not_stored, Action, Decision, Planner, Upstream};
use super::{thread_budget, Event, ExecError, Executor};
use super::{RunJob, RunOutcome};
use crate::record::{StageRecord, StageStatus};
use crate::spec::StageName;
use crate::store::Lookup;

/// Runs stages as threads of this process.
#[derive(Debug, Clone)]
pub struct LocalExecutor {
    /// Stages that may run at once (`--jobs`, default 1: every stage gets the whole
    /// machine, and thread budgets do not depend on scheduling).
    pub jobs: usize,
}

impl Default for LocalExecutor {
    fn default() -> Self {
        Self { jobs: 1 }
    }
}

struct Scheduler<'a> {
    job: &'a RunJob,
    plan: Planner,
    records: BTreeMap<StageName, StageRecord>,
    resolved: BTreeMap<StageName, Resolved>,
    waiting: BTreeSet<StageName>,
}

impl Scheduler<'_> {
    fn next_for(&self, name: &str) -> Decision {
        let state = |u: &str| match self.records.get(u) {
            _ if self.resolved.contains_key(u) => Upstream::Resolved,
            Some(r) if r.status == StageStatus::Failed => Upstream::Failed,
            Some(r) if r.status == StageStatus::Skipped => Upstream::Skipped,
            _ => Upstream::Pending,
        };
        self.plan
            .decide(name, state, self.job.cancel.is_cancelled())
    }

    fn finish(&mut self, name: &str, rec: StageRecord, res: Option<Resolved>) {
        if let Some(r) = res {
            self.resolved.insert(name.to_owned(), r);
        }
        self.records.insert(name.to_owned(), rec);
    }

    fn skip(&mut self, name: &str, why: String) {
        let kind = self
            .job
            .pipeline
            .stages
            .get(name)
            .map(|s| s.kind.as_str())
            .unwrap_or_default();
        let mut rec = StageRecord::pending(kind);
        rec.status = StageStatus::Skipped;
        rec.reason = Some(why.clone());
        if let Err(e) = self.job.run.write_stage(name, &rec) {
            tracing::error!(stage = name, error = %e, "cannot record the stage's status");
        }
        self.job.events.event(Event::Skipped {
            stage: name.to_owned(),
            reason: why,
        });
        self.finish(name, rec, None);
    }

    /// An unselected upstream stage (`--only`): its result must already be stored.
    fn look_up(&mut self, name: &str) {
        let job = self.job;
        let kind = job.pipeline.stages[name].kind.clone();
        let mut rec = StageRecord::pending(&kind);
        let found = key_parts(&job.pipeline, &job.registry, name, &self.resolved)
            .map_err(|e| e.to_string())
            .and_then(|parts| {
                let key = parts.key();
                rec.key = Some(key.clone());
                rec.parts = Some(parts);
                job.store.lease(&key).map_err(|e| e.to_string())?;
                match job.store.lookup(&key) {
                    Lookup::Hit(e) => Ok(e),
                    _ => Err(not_stored(name)),
                }
            });
        match found {
            Ok(entry) => {
                rec.status = StageStatus::Cached;
                rec.digest = Some(entry.meta.digest.clone());
                rec.reason = Some("not selected; result taken from the store".to_owned());
                job.events.event(Event::Cached {
                    stage: name.to_owned(),
                    key: entry.meta.key.to_string(),
                });
                let _ = job.run.write_stage(name, &rec);
                self.finish(name, rec, Some(Resolved::from_entry(&entry)));
            }
            Err(error) => {
                rec.status = StageStatus::Failed;
                rec.error = Some(error.clone());
                let _ = job.run.write_stage(name, &rec);
                job.events.event(Event::Failed {
                    stage: name.to_owned(),
                    error,
                    log_tail: Vec::new(),
                    log: None,
                });
                self.finish(name, rec, None);
            }
        }
    }
}

impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
    }

    fn execute(&self, job: &RunJob) -> Result<RunOutcome, ExecError> {
        let jobs = self.jobs.max(1);
        let plan = Planner::new(&job.pipeline, &job.selected, &job.force, &job.mode)?;
        let mut s = Scheduler {
            job,
            waiting: plan.stages().iter().cloned().collect(),
            plan,
            records: BTreeMap::new(),
            resolved: BTreeMap::new(),
        };
        let (tx, rx) = mpsc::channel::<(StageName, StageRecord, Option<Resolved>)>();
        std::thread::scope(|scope| {
            let mut running = 0usize;
            loop {
                // Decide everything that can be decided now, launching while slots are free.
                let mut changed = true;
                while changed {
                    changed = false;
                    for name in s.waiting.clone() {
                        match s.next_for(&name) {
                            Decision::Wait | Decision::GoAfterJobs(_) => continue,
                            Decision::Skip(why) => s.skip(&name, why),
                            Decision::Go(Action::LookUp) => s.look_up(&name),
                            Decision::Go(action) if running < jobs => {
                                let req = request(job, &name, &action, jobs);
                                let resolved = s.resolved.clone();
                                let tx = tx.clone();
                                std::thread::Builder::new()
                                    .name(format!("stage-{name}"))
                                    .spawn_scoped(scope, move || {
                                        let (rec, res) = execute_stage(job, &req, &resolved);
                                        let _ = tx.send((req.stage, rec, res));
                                    })
                                    .map_err(|e| {
                                        ExecError::Backend(format!("cannot start a thread: {e}"))
                                    })?;
                                running += 1;
                            }
                            Decision::Go(_) => continue,
                        }
                        s.waiting.remove(&name);
                        changed = true;
                    }
                }
                if running == 0 {
                    break;
                }
                let (name, rec, res) = rx
                    .recv()
                    .map_err(|_| ExecError::Backend("a stage thread vanished".into()))?;
                running -= 1;
                s.finish(&name, rec, res);
            }
            Ok::<(), ExecError>(())
        })?;
        // Unreachable for a validated (acyclic) pipeline; kept so nothing is silently lost.
        for name in std::mem::take(&mut s.waiting) {
            s.skip(&name, "its upstream stages never finished".to_owned());
        }
        Ok(RunOutcome {
            stages: s.records,
            interrupted: job.cancel.is_cancelled(),
        })
    }
}

fn request(job: &RunJob, name: &str, action: &Action, jobs: usize) -> StageRequest {
    StageRequest {
        stage: name.to_owned(),
        reuse: action.reuse(),
        verify_against: action.verify_against().cloned(),
        threads: thread_budget(&job.pipeline, name, job.cores, jobs),
    }
}

#[cfg(test)]
mod tests;
