//! `itera runs`: lists recorded runs, oldest first, with their status and stage counts.
//! A record that says `running` while no process holds the run's lock shows `abandoned`.

use clap::Args;
use itera_engine::record::{list_runs, StageStatus};

use super::{exit, out, Global};

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Show only the newest N runs.
    #[arg(long, short = 'n')]
    pub last: Option<usize>,
}

pub fn main(g: &Global, args: RunsArgs) -> anyhow::Result<u8> {
    let runs = list_runs(&g.runs_dir);
    let skip = args.last.map_or(0, |n| runs.len().saturating_sub(n));
    let mut text = String::new();
    for run in runs.into_iter().skip(skip) {
        match run.load() {
            Ok(mut r) => {
                itera_engine::live::as_seen(run.path(), &mut r);
                let count = |s: StageStatus| r.stages.values().filter(|x| x.status == s).count();
                let interrupted = match count(StageStatus::Interrupted) {
                    0 => String::new(),
                    n => format!(", {n} interrupted"),
                };
                text.push_str(&format!(
                    "{}  {:<11}  {} ran, {} cached, {} failed{interrupted}, {} skipped{}\n",
                    r.id,
                    r.status.to_string(),
                    count(StageStatus::Ran),
                    count(StageStatus::Cached),
                    count(StageStatus::Failed),
                    count(StageStatus::Skipped),
                    if r.verify { "  (verify)" } else { "" }
                ));
            }
            Err(e) => text.push_str(&format!("{}  unreadable: {e}\n", run.id())),
        }
    }
    if text.is_empty() {
        text = format!("no runs in {}\n", g.runs_dir.display());
    }
    out(&text)?;
    Ok(exit::OK)
}
