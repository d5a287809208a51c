//! `--dry-run`: what `itera run --executor slurm` would do, without doing it. Stages whose
//! result is in the store are cached; `local = true` stages would run on this host; every
//! other stage gets its batch script, rendered exactly as it would be submitted, and the
//! upstream stages its job would wait for. Nothing is written or submitted.

use std::collections::BTreeMap;

use super::executor::{absolute_dirs, SlurmExecutor};
use super::sbatch;
use super::script::{self, slurm_dir, ScriptSpec, StageFiles};
use crate::exec::inputs::{key_parts, Resolved};
use crate::exec::{upstream_of, with_ancestors, ExecError, Mode, RunJob};
use crate::spec::StageName;
use crate::store::Lookup;

/// What would happen to one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// Its result is in the store.
    Cached { key: String },
    /// It would run on this host (`resources.local = true`).
    Local,
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
    let mut todo: Vec<StageName> = with_ancestors(&job.pipeline, &job.selected)
        .into_iter()
        .collect();
    let mut resolved: BTreeMap<StageName, Resolved> = BTreeMap::new();
    let mut out: Vec<(StageName, Planned)> = Vec::new();
    let mut placed: BTreeMap<StageName, bool> = BTreeMap::new(); // stage -> is a job
    let (runs_dir, run_dir) = absolute_dirs(job).map_err(ExecError::Backend)?;
    while !todo.is_empty() {
        let ready = todo
            .iter()
            .position(|s| {
                upstream_of(&job.pipeline, s)
                    .iter()
                    .all(|u| placed.contains_key(u))
            })
            .ok_or_else(|| {
                ExecError::Backend("the pipeline's stages depend on each other in a cycle".into())
            })?;
        let name = todo.remove(ready);
        let ups = upstream_of(&job.pipeline, &name);
        let recompute = job.force.applies_to(&name) || matches!(job.mode, Mode::Verify(_));
        if !recompute && ups.iter().all(|u| resolved.contains_key(u)) {
            if let Ok(parts) = key_parts(&job.pipeline, &job.registry, &name, &resolved) {
                let key = parts.key();
                if let Lookup::Hit(entry) = job.store.lookup(&key) {
                    resolved.insert(name.clone(), Resolved::from_entry(&entry));
                    placed.insert(name.clone(), false);
                    out.push((
                        name,
                        Planned::Cached {
                            key: key.to_string(),
                        },
                    ));
                    continue;
                }
            }
        }
        let spec = &job.pipeline.stages[&name];
        let resources = spec.resources.or(&job.pipeline.slurm);
        if resources.local == Some(true) {
            placed.insert(name.clone(), false);
            out.push((name, Planned::Local));
            continue;
        }
        let script = script::render(&ScriptSpec {
            pipeline: &job.pipeline.name,
            stage: &name,
            run_id: job.run.id().as_str(),
            runs_dir: &runs_dir,
            run_dir: &run_dir,
            workdir: &exec.workdir,
            itera_bin: &exec.itera_bin,
            resources: &resources,
            force: recompute,
        })
        .map_err(|e| ExecError::Backend(e.to_string()))?;
        let after: Vec<StageName> = ups
            .into_iter()
            .filter(|u| placed.get(u) == Some(&true))
            .collect();
        let script_path = StageFiles::new(&slurm_dir(&run_dir), &name).script;
        let mut args = sbatch::arguments(&script_path, &[]);
        if !after.is_empty() {
            let ids: Vec<String> = after.iter().map(|u| format!("<job of {u}>")).collect();
            args.insert(1, format!("--dependency=afterok:{}", ids.join(":")));
            args.insert(2, "--kill-on-invalid-dep=yes".to_owned());
        }
        let command = super::command::display("sbatch", &args);
        placed.insert(name.clone(), true);
        out.push((
            name,
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
