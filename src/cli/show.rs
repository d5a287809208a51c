//! `itera show RUN`: one run's record: pipeline, command, machine, and every stage in
//! DAG order with its status, digest, duration, result folder and log; the report file
//! of the last `report` stage is named at the end.

use clap::Args;
use itera_engine::graph::Dag;
use itera_engine::record::{find_run, RunDir};
use itera_engine::store::Store;

use super::{exit, invalid, out, Global};

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Run id (or unique prefix/suffix), `latest`, or a run folder.
    #[arg(default_value = "latest")]
    pub run: String,
    /// Print the raw merged record as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn main(g: &Global, args: ShowArgs) -> anyhow::Result<u8> {
    let run = find_run(&g.runs_dir, &args.run).map_err(|e| invalid(e.to_string()))?;
    if args.json {
        let mut record = run.load()?;
        itera_engine::live::as_seen(run.path(), &mut record);
        out(&format!("{}\n", serde_json::to_string_pretty(&record)?))?;
        return Ok(exit::OK);
    }
    print_run(&run, &Store::new(&std::path::absolute(&g.runs_dir)?))
}

/// Prints a run's record (merged with its stage files).
pub fn print_run(run: &RunDir, store: &Store) -> anyhow::Result<u8> {
    let mut r = run.load()?;
    // Nobody holds the run's lock: its itera died. Show what the next run or gc will
    // write into the record.
    itera_engine::live::as_seen(run.path(), &mut r);
    let mut text = format!(
        "run {}: {}\n  pipeline: {} ({})\n  started:  {}{}\n  command:  {}\n  host:     {} ({} cores), {} executor, {} job(s)\n",
        r.id,
        r.status,
        r.pipeline.name,
        r.pipeline.source.display(),
        r.started,
        r.finished.as_ref().map(|f| format!(", finished {f}")).unwrap_or_default(),
        r.command.join(" "),
        r.host,
        r.cores,
        r.executor,
        r.jobs,
    );
    if let Some(commit) = &r.git_commit {
        text.push_str(&format!("  git:      {commit}\n"));
    }
    if !r.pipeline.overrides.is_empty() {
        text.push_str(&format!("  --set:    {}\n", r.pipeline.overrides.join(" ")));
    }
    if let Some(of) = &r.rerun_of {
        text.push_str(&format!(
            "  rerun of: {of}{}\n",
            if r.verify { " (verify)" } else { "" }
        ));
    }
    text.push_str("stages:\n");
    let width = r.stages.keys().map(String::len).max().unwrap_or(0);
    // DAG order (upstream first), as the run executed them; names for stages the graph
    // does not know (cannot happen with a record this build wrote) come last.
    let mut order: Vec<String> = Dag::new(&r.pipeline)
        .map(|d| d.topo_order())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| r.stages.contains_key(n))
        .collect();
    for name in r.stages.keys() {
        if !order.contains(name) {
            order.push(name.clone());
        }
    }
    let mut report = None;
    for name in &order {
        let s = &r.stages[name];
        let digest = s
            .digest
            .as_ref()
            .map(|d| d.short().to_owned())
            .unwrap_or_else(|| "-".into());
        let time = s
            .duration_ms
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_default();
        text.push_str(&format!(
            "  {name:width$}  {:<8} {digest:<12} {time:>7}",
            s.status.to_string()
        ));
        if let Some(v) = &s.verify {
            text.push_str(if v.matches {
                "  reproduced"
            } else {
                "  NOT REPRODUCED"
            });
        }
        if let Some(e) = &s.error {
            text.push_str(&format!("  error: {e}"));
        } else if let Some(reason) = &s.reason {
            text.push_str(&format!("  {reason}"));
        }
        if let Some(dir) = super::path::result_dir(store, s) {
            let gone = if dir.exists() { "" } else { " (removed)" };
            text.push_str(&format!(
                "\n  {:width$}  result: {}{gone}",
                "",
                dir.display()
            ));
        }
        if let Some(log) = &s.log {
            text.push_str(&format!(
                "\n  {:width$}  log: {}",
                "",
                run.path().join(log).display()
            ));
        }
        text.push('\n');
        if let Some(file) = super::path::report_file(store, &r, name) {
            report = Some(file);
        }
    }
    if let Some(file) = report {
        text.push_str(&format!("report: {}\n", file.display()));
    }
    out(&text)?;
    Ok(exit::OK)
}
