//! `--dry-run`: what `itera run --executor slurm` would do, without doing it. Stages whose
//! result is in the store are cached; `local = true` stages would run on this host; every
//! other stage gets its batch script, rendered exactly as it would be submitted, and the
//! upstream stages its job would wait for. Nothing is written or submitted.

use std::collections::{BTreeMap, BTreeSet};

use super::executor::{absolute_dirs, render_script, SlurmExecutor};
use super::sbatch;
use super::script::{slurm_dir, StageFiles};
use crate::exec::inputs::{key_parts, Resolved};
use crate::exec::planner::{not_stored, Action, Decision, Planner, Upstream};
use crate::exec::{ExecError, RunJob};
use crate::spec::StageName;
use crate::store::{Lookup, Reuse};

/// What would happen to one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// Its result is in the store.
    Cached { key: String },
    /// It would run on this host (`resources.local = true`).
    Local,
    /// Not selected and not stored: the run would fail here.
    Unavailable { reason: String },
    /// It would be submitted with this script, after these stages' jobs.
    Job {
        script_path: std::path::PathBuf,
        script: String,
        after: Vec<StageName>,
        /// The `sbatch` command line, with `<job of STAGE>` for the upstream job ids.
        command: String,
    },
}

/// The plan for every stage the run would touch, in dependency order.
pub fn plan(exec: &SlurmExecutor, job: &RunJob) -> Result<Vec<(StageName, Planned)>, ExecError> {
    let planner = Planner::new(&job.pipeline, &job.selected, &job.force, &job.mode)?;
    let mut resolved: BTreeMap<StageName, Resolved> = BTreeMap::new();
    let mut out: Vec<(StageName, Planned)> = Vec::new();
    let mut jobs: BTreeSet<StageName> = BTreeSet::new();
    let (runs_dir, run_dir) = absolute_dirs(job).map_err(ExecError::Backend)?;
    for name in planner.stages() {
        let state = |u: &str| {
            if resolved.contains_key(u) {
                Upstream::Resolved
            } else if jobs.contains(u) {
                Upstream::Queued
            } else {
                // Neither stored nor a job: it runs on this host, before this stage.
                Upstream::Pending
            }
        };
        let decision = planner.decide(name, state, false);
        let action = planner.action(name);
        if action.reuse() == Reuse::Allow && matches!(decision, Decision::Go(_)) {
            if let Ok(parts) = key_parts(&job.pipeline, &job.registry, name, &resolved) {
                let key = parts.key();
                if let Lookup::Hit(entry) = job.store.lookup(&key) {
                    resolved.insert(name.clone(), Resolved::from_entry(&entry));
                    out.push((
                        name.clone(),
                        Planned::Cached {
                            key: key.to_string(),
                        },
                    ));
                    continue;
                }
            }
        }
        if action == Action::LookUp {
            out.push((
                name.clone(),
                Planned::Unavailable {
                    reason: not_stored(name),
                },
            ));
            continue;
        }
        if planner.runs_on_host(name) {
            out.push((name.clone(), Planned::Local));
            continue;
        }
        let script = render_script(exec, job, name, &action, &runs_dir, &run_dir)
            .map_err(|e| ExecError::Backend(e.to_string()))?;
        let after: Vec<StageName> = planner
            .upstream(name)
            .into_iter()
            .filter(|u| jobs.contains(u))
            .collect();
        let script_path = StageFiles::new(&slurm_dir(&run_dir), name).script;
        let mut args = sbatch::arguments(&script_path, &[]);
        if !after.is_empty() {
            let ids: Vec<String> = after.iter().map(|u| format!("<job of {u}>")).collect();
            args.insert(1, format!("--dependency=afterok:{}", ids.join(":")));
            args.insert(2, "--kill-on-invalid-dep=yes".to_owned());
        }
        let command = super::command::display("sbatch", &args);
        jobs.insert(name.clone());
        out.push((
            name.clone(),
            Planned::Job {
                script_path,
                script,
                after,
                command,
            },
        ));
    }
    Ok(out)
}
