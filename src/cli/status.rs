//! `itera status FILE`: what `itera run FILE` would do and why, without running anything
//! (also `run --dry-run`). Given a run id instead of a file, shows that run's progress
//! (useful for batch runs).

use std::collections::BTreeSet;

use clap::Args;
use itera_engine::exec::preview::{preview, Fate};
use itera_engine::exec::Force;
use itera_engine::spec::StageName;
use itera_engine::stage::Registry;
use itera_engine::store::Store;

use super::load::{load, Loaded, PipelineArgs, SelectArgs};
use super::{exit, out, Global};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub select: SelectArgs,
}

pub fn main(g: &Global, args: StatusArgs) -> anyhow::Result<u8> {
    if !args.pipeline.file.exists() {
        let query = args.pipeline.file.display().to_string();
        if let Ok(run) = itera_engine::record::find_run(&g.runs_dir, &query) {
            if itera_engine::exec::slurm::jobs::JobsFile::path(run.path()).exists() {
                return super::slurm::status_main(g, &query);
            }
            let store = itera_engine::store::Store::new(&std::path::absolute(&g.runs_dir)?);
            return super::show::print_run(&run, &store);
        }
    }
    let registry = itera_stages::registry();
    let loaded = load(&args.pipeline, &registry)?;
    let selected = loaded.select(&args.select)?;
    print_preview(g, &loaded, &registry, &selected, &Force::None)
}

/// Prints the predicted fate of every stage a run would touch.
pub fn print_preview(
    g: &Global,
    loaded: &Loaded,
    registry: &Registry,
    selected: &BTreeSet<StageName>,
    force: &Force,
) -> anyhow::Result<u8> {
    let store = Store::new(&std::path::absolute(&g.runs_dir)?);
    let previews = preview(&loaded.pipeline, registry, &store, selected, force);
    let width = previews.iter().map(|p| p.stage.len()).max().unwrap_or(0);
    let mut text = String::new();
    let (mut cached, mut runs, mut problems) = (0, 0, 0);
    for p in &previews {
        let line = match &p.fate {
            Fate::Cached { produced_by, .. } => {
                cached += 1;
                format!("cached     ({produced_by})")
            }
            Fate::Runs {
                reason, changes, ..
            } => {
                runs += 1;
                let mut s = format!("will run   ({reason})");
                for c in changes {
                    s.push_str(&format!("\n  {:width$}   changed: {c}", ""));
                }
                s
            }
            Fate::Unavailable { reason } => {
                problems += 1;
                format!("unavailable ({reason})")
            }
            Fate::Broken { error } => {
                problems += 1;
                format!("error      ({error})")
            }
        };
        text.push_str(&format!("  {:width$}  {line}\n", p.stage));
    }
    out(&format!(
        "pipeline `{}`: {runs} to run, {cached} cached{}\n{text}",
        loaded.pipeline.name,
        if problems > 0 {
            format!(", {problems} with problems")
        } else {
            String::new()
        }
    ))?;
    Ok(if problems > 0 { exit::FAILED } else { exit::OK })
}
