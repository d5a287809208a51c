//! `itera rerun RUN`: re-executes a recorded run from its resolved pipeline (the file as
//! it was, after `extends` and `--set`). `--verify` recomputes every stage into a scratch
//! folder and compares its digest with the record, failing loudly on any difference; the
//! recorded entries are never replaced. Under SLURM every job compares its own stage
//! (`exec-stage --verify-against`) and `rerun` waits for all of them.

use std::collections::BTreeMap;

use clap::Args;
use itera_engine::exec::{Force, Mode};
use itera_engine::record::find_run;

use super::load::load_resolved;
use super::run::{execute, ExecArgs, Plan};
use super::{invalid, Global};

#[derive(Debug, Args)]
pub struct RerunArgs {
    /// Run id (or unique prefix/suffix), `latest`, or a run folder.
    pub run: String,
    /// Recompute every stage and check it reproduces the recorded digest.
    #[arg(long)]
    pub verify: bool,
    #[command(flatten)]
    pub exec: ExecArgs,
}

pub fn main(g: &Global, mut args: RerunArgs) -> anyhow::Result<u8> {
    // A verification is its verdict: under SLURM it follows the jobs to their end, as
    // with `--wait`, so that every recomputed stage is compared before itera exits.
    if args.verify {
        args.exec.slurm.wait = true;
    }
    let run = find_run(&g.runs_dir, &args.run).map_err(|e| invalid(e.to_string()))?;
    let record = run.load()?;
    let registry = itera_stages::registry();
    let p = &record.pipeline;
    let mut loaded = load_resolved(&p.resolved_toml, &p.source, &p.base_dir, &registry)?;
    loaded.pipeline.overrides = p.overrides.clone();
    let selected = record.selected.iter().cloned().collect();
    let mode = if args.verify {
        let recorded: BTreeMap<_, _> = record
            .stages
            .iter()
            .filter(|(name, s)| s.status.succeeded() && record.selected.contains(name))
            .filter_map(|(name, s)| s.digest.clone().map(|d| (name.clone(), d)))
            .collect();
        if recorded.is_empty() {
            return Err(invalid(format!(
                "run {} recorded no results to verify against",
                record.id
            )));
        }
        Mode::Verify(recorded)
    } else {
        Mode::Run
    };
    execute(
        g,
        loaded,
        Plan {
            selected,
            force: Force::None,
            mode,
            rerun_of: Some(record.id.clone()),
            exec: args.exec,
        },
    )
}
