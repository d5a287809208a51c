//! Executing a pipeline: the [`Executor`] trait (local threads here, SLURM jobs in
//! `exec::slurm`), the [`RunJob`] every executor is given, the [`Event`]s it reports, and
//! the pieces every executor shares: the scheduling rules ([`planner`]), computing a stage's cache key from its upstream
//! results ([`inputs`]) and executing one stage under its key's lock ([`one`]), which is
//! also what `itera exec-stage` runs inside a batch job.

pub mod inputs;
pub mod local;
pub mod one;
pub mod planner;
pub mod preview;
pub mod slurm;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::record::{RunDir, StageRecord, StageStatus};
use crate::spec::{Pipeline, StageName};
use crate::stage::{CancelToken, ProgressEvent, ProgressSink, Registry};
use crate::store::{Digest, LockHolder, Store};

pub use inputs::{key_parts, Resolved};
pub use local::LocalExecutor;
pub use one::{execute_stage, StageError, StageRequest};
pub use planner::{Action, Decision, Planner, Upstream};

/// Which stages to recompute even when cached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Force {
    #[default]
    None,
    /// These stages (`--force S`).
    Stages(BTreeSet<StageName>),
    /// Every selected stage (`--force-all`).
    All,
}

impl Force {
    pub fn applies_to(&self, stage: &str) -> bool {
        match self {
            Self::None => false,
            Self::Stages(s) => s.contains(stage),
            Self::All => true,
        }
    }
}

/// Normal runs reuse the store; `rerun --verify` recomputes every stage and compares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Run,
    /// Recompute every selected stage into a scratch folder and compare its digest with
    /// the recorded one (stage name -> digest).
    Verify(BTreeMap<StageName, Digest>),
}

/// Something an executor reports while it works. Rendered by the CLI (bars or lines).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The stage's result is in the store.
    Cached { stage: StageName, key: String },
    /// The stage starts executing, and why.
    Started {
        stage: StageName,
        reason: String,
        threads: usize,
    },
    /// Another process holds the stage's key; we wait for it.
    Waiting {
        stage: StageName,
        holder: Option<LockHolder>,
    },
    /// Progress reported by the running stage.
    Progress {
        stage: StageName,
        event: ProgressEvent,
    },
    /// The stage finished and its result was published.
    Finished {
        stage: StageName,
        elapsed: Duration,
        /// For `rerun --verify`: whether the digest matched the recorded one.
        verified: Option<bool>,
    },
    /// The stage failed; `log_tail` holds the last lines of its log.
    Failed {
        stage: StageName,
        error: String,
        log_tail: Vec<String>,
        log: Option<String>,
    },
    /// The stage was not run.
    Skipped { stage: StageName, reason: String },
    /// A batch job was submitted (SLURM).
    Submitted { stage: StageName, job_id: String },
}

/// Receives executor events. Must be cheap and thread-safe.
pub trait EventSink: Send + Sync {
    fn event(&self, event: Event);
}

/// Drops every event.
pub struct NullEvents;
impl EventSink for NullEvents {
    fn event(&self, _: Event) {}
}

/// Feeds a stage's progress reports into an [`EventSink`].
pub struct ProgressEvents(pub Arc<dyn EventSink>);
impl ProgressSink for ProgressEvents {
    fn event(&self, stage: &str, event: ProgressEvent) {
        self.0.event(Event::Progress {
            stage: stage.to_owned(),
            event,
        });
    }
}

/// Everything an executor needs to carry out a run.
#[derive(Clone)]
pub struct RunJob {
    pub pipeline: Arc<Pipeline>,
    pub registry: Registry,
    pub store: Store,
    pub run: RunDir,
    /// Stages to execute (after `--until` / `--only`); their unselected upstream stages
    /// must already be in the store.
    pub selected: BTreeSet<StageName>,
    pub force: Force,
    pub mode: Mode,
    /// Set on Ctrl-C; executors stop launching and running stages poll it.
    pub cancel: CancelToken,
    pub events: Arc<dyn EventSink>,
    /// Cores of this machine (thread budgets derive from it).
    pub cores: usize,
}

/// How a run ended, per stage.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub stages: BTreeMap<StageName, StageRecord>,
    pub interrupted: bool,
}

impl RunOutcome {
    /// Stages that failed, in name order.
    pub fn failed(&self) -> Vec<&str> {
        self.with_status(StageStatus::Failed)
    }
    pub fn with_status(&self, status: StageStatus) -> Vec<&str> {
        self.stages
            .iter()
            .filter(|(_, r)| r.status == status)
            .map(|(n, _)| n.as_str())
            .collect()
    }
    /// Stages whose recomputed digest differs from the record (`rerun --verify`).
    pub fn verify_mismatches(&self) -> Vec<&str> {
        self.stages
            .iter()
            .filter(|(_, r)| r.verify.as_ref().is_some_and(|v| !v.matches))
            .map(|(n, _)| n.as_str())
            .collect()
    }
    pub fn succeeded(&self) -> bool {
        !self.interrupted
            && self.failed().is_empty()
            && self.with_status(StageStatus::Skipped).is_empty()
            && self.verify_mismatches().is_empty()
    }
}

/// Executor failures that are not a stage failing (those are in [`RunOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Io(#[from] crate::fs::FsError),
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    /// `exec-stage` was asked for a stage the run does not have.
    #[error("run `{run}` has no stage `{stage}`")]
    UnknownStage { run: String, stage: String },
    /// A batch-system problem (submission, polling).
    #[error("{0}")]
    Backend(String),
    /// The pipeline's graph is broken (the loader rejects such pipelines).
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
}

/// A way to execute the stages of a run.
pub trait Executor {
    /// The name recorded in `run.json` (`local`, `slurm`).
    fn name(&self) -> &'static str;
    /// Executes (or, for a batch system, submits) the selected stages of `job`, writing
    /// each stage's status into the run folder as it changes.
    fn execute(&self, job: &RunJob) -> Result<RunOutcome, ExecError>;
}

/// The thread budget of `stage` when `jobs` stages may run at once on `cores` cores:
/// `resources.cpus` if set, else an equal share of the cores.
pub fn thread_budget(pipeline: &Pipeline, stage: &str, cores: usize, jobs: usize) -> usize {
    let from_spec = pipeline
        .stages
        .get(stage)
        .and_then(|s| s.resources.or(&pipeline.slurm).cpus);
    match from_spec {
        Some(c) => (c as usize).max(1),
        None => (cores / jobs.max(1)).max(1),
    }
}

/// The tail of a log file (at most `lines` lines), bounded: see [`crate::logcap::tail`].
pub fn log_tail(path: &std::path::Path, lines: usize) -> Vec<String> {
    crate::logcap::tail(path, lines)
}

#[cfg(test)]
pub(crate) mod testkit;
