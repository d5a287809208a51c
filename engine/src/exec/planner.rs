//! The scheduling rules, in one place. Given a pipeline, the selected stages, `--force` and
//! the mode (`run` or `rerun --verify`), the [`Planner`] says which stages a run touches
//! and in what order (taken from [`graph::Dag`](crate::graph::Dag)), what each stage does
//! ([`Action`]: look its result up only, reuse it or compute it, recompute and perhaps
//! verify it) and, while a run goes on, what each waiting stage does next ([`Decision`]:
//! wait, skip because an upstream stage did not succeed, or go). The local executor, the
//! SLURM executor and its dry run, `status`, `run --dry-run` and `explain` all ask the
//! planner; none of them re-derives edges or rules.

use std::collections::BTreeSet;

use super::{Force, Mode};
use crate::graph::{Dag, GraphError};
use crate::spec::{Pipeline, StageName};
use crate::store::{Digest, Reuse};

/// What a selected or needed stage does when its upstream results exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Not selected (`--only`): its result must already be in the store.
    LookUp,
    /// Reuse the stored result, or compute it when there is none.
    Reuse,
    /// Compute even when stored: `--force`, or `rerun --verify` (then with the recorded
    /// digest to compare against, when the recorded run has one for this stage).
    Recompute { verify_against: Option<Digest> },
}

impl Action {
    /// Whether a stored result may be taken instead of computing.
    pub fn reuse(&self) -> Reuse {
        match self {
            Action::LookUp | Action::Reuse => Reuse::Allow,
            Action::Recompute { .. } => Reuse::Recompute,
        }
    }

    /// The recorded digest to compare with (`rerun --verify`).
    pub fn verify_against(&self) -> Option<&Digest> {
        match self {
            Action::Recompute { verify_against } => verify_against.as_ref(),
            _ => None,
        }
    }
}

/// Where an upstream stage stands, as the asking executor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// Not decided or not finished yet.
    Pending,
    /// Its result exists (cached or computed).
    Resolved,
    /// Queued as a batch job that has not ended.
    Queued,
    Failed,
    Skipped,
}

/// What to do next with a waiting stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Some upstream stage has not ended.
    Wait,
    /// Will not run, because of this.
    Skip(String),
    /// Every upstream result exists: do this now.
    Go(Action),
    /// Every upstream stage has a result or is a queued batch job: a batch system may
    /// queue this stage after those jobs (never returned for `LookUp`, or for stages
    /// that run on the submitting host).
    GoAfterJobs(Action),
}

/// The rules of one run; see the module documentation.
#[derive(Debug, Clone)]
pub struct Planner {
    dag: Dag,
    order: Vec<StageName>,
    selected: BTreeSet<StageName>,
    on_host: BTreeSet<StageName>,
    force: Force,
    mode: Mode,
}

impl Planner {
    /// The plan for running `selected` (and what it needs) of `pipeline`.
    pub fn new(
        pipeline: &Pipeline,
        selected: &BTreeSet<StageName>,
        force: &Force,
        mode: &Mode,
    ) -> Result<Self, GraphError> {
        let dag = Dag::new(pipeline)?;
        let needed = dag.with_ancestors(selected);
        let order = dag
            .topo_order()
            .into_iter()
            .filter(|s| needed.contains(s))
            .collect();
        let on_host = pipeline
            .stages
            .iter()
            .filter(|(_, s)| s.resources.or(&pipeline.slurm).local == Some(true))
            .map(|(n, _)| n.clone())
            .collect();
        Ok(Self {
            dag,
            order,
            selected: selected.clone(),
            on_host,
            force: force.clone(),
            mode: mode.clone(),
        })
    }

    /// Every stage the run touches (the selection and everything upstream of it),
    /// upstream before downstream, ties broken by name.
    pub fn stages(&self) -> &[StageName] {
        &self.order
    }

    pub fn is_selected(&self, stage: &str) -> bool {
        self.selected.contains(stage)
    }

    /// The stages `stage` reads from directly, sorted.
    pub fn upstream(&self, stage: &str) -> Vec<StageName> {
        self.dag.upstream(stage)
    }

    /// Whether `stage` reads `upstream`'s result, directly or through other stages.
    pub fn depends_on(&self, stage: &str, upstream: &str) -> bool {
        self.dag
            .with_ancestors(&BTreeSet::from([stage.to_owned()]))
            .contains(upstream)
            && stage != upstream
    }

    /// Whether `stage` runs on the submitting host under a batch system
    /// (`resources.local = true`, e.g. a download on a login node).
    pub fn runs_on_host(&self, stage: &str) -> bool {
        self.on_host.contains(stage)
    }

    /// What `stage` does once its upstream results exist.
    pub fn action(&self, stage: &str) -> Action {
        if !self.is_selected(stage) {
            return Action::LookUp;
        }
        match &self.mode {
            Mode::Verify(recorded) => Action::Recompute {
                verify_against: recorded.get(stage).cloned(),
            },
            Mode::Run if self.force.applies_to(stage) => Action::Recompute {
                verify_against: None,
            },
            Mode::Run => Action::Reuse,
        }
    }

    /// What a waiting `stage` does next, given where its upstream stages stand and
    /// whether the run was interrupted.
    pub fn decide(
        &self,
        stage: &str,
        upstream: impl Fn(&str) -> Upstream,
        interrupted: bool,
    ) -> Decision {
        let ups = self.upstream(stage);
        let states: Vec<(&StageName, Upstream)> = ups.iter().map(|u| (u, upstream(u))).collect();
        for (u, state) in &states {
            match state {
                Upstream::Failed => return Decision::Skip(format!("upstream stage `{u}` failed")),
                Upstream::Skipped => {
                    return Decision::Skip(format!("upstream stage `{u}` was skipped"))
                }
                _ => {}
            }
        }
        if interrupted {
            return Decision::Skip("the run was interrupted before this stage started".into());
        }
        let action = self.action(stage);
        if states.iter().all(|(_, s)| *s == Upstream::Resolved) {
            return Decision::Go(action);
        }
        let placed = states
            .iter()
            .all(|(_, s)| matches!(s, Upstream::Resolved | Upstream::Queued));
        if placed && action != Action::LookUp && !self.runs_on_host(stage) {
            Decision::GoAfterJobs(action)
        } else {
            Decision::Wait
        }
    }
}

/// The error of a stage that was not selected and whose result is not stored.
pub fn not_stored(stage: &str) -> String {
    format!(
        "stage `{stage}` was not selected and its result is not in the store; \
         run it first, or add it to --only"
    )
}

#[cfg(test)]
mod tests;
