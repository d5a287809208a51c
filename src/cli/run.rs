//! `itera run FILE`: load and validate the pipeline (nothing is written if it is
//! invalid), create the run record, execute the selected stages, write the final record
//! and summarize. [`execute`] is shared with `itera rerun`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use clap::{Args, ValueEnum};
use itera_engine::exec::{Executor, Force, LocalExecutor, Mode, RunJob};
use itera_engine::host;
use itera_engine::live;
use itera_engine::record::{
    RunDir, RunId, RunRecord, RunStatus, StageRecord, StageStatus, RUN_FORMAT,
};
use itera_engine::spec::StageName;
use itera_engine::store::Store;

use super::load::{load, Loaded, PipelineArgs, SelectArgs};
use super::progress::Display;
use super::{exit, Global};
use serde_json::json;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
    /// Recompute this stage even if its result is stored (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub force: Vec<String>,
    /// Recompute every selected stage.
    #[arg(long, conflicts_with = "force")]
    pub force_all: bool,
    /// Only show what would run (same as `itera status`).
    #[arg(long)]
    pub dry_run: bool,
}

/// Where and how wide to execute.
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Stages that may run at once. Each gets `resources.cpus` threads, or an equal share
    /// of the cores (default 1: one stage at a time with every core).
    #[arg(long, short = 'j', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: u32,
    /// Where stages execute.
    #[arg(long, value_enum, default_value_t = ExecutorKind::Local)]
    pub executor: ExecutorKind,
    #[command(flatten)]
    pub slurm: super::slurm::SlurmRunArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExecutorKind {
    /// Threads of this process.
    Local,
    /// One SLURM batch job per stage that is not cached (see docs/HPC.md).
    Slurm,
}

pub fn main(g: &Global, args: RunArgs) -> anyhow::Result<u8> {
    let registry = itera_stages::registry();
    let loaded = load(&args.pipeline, &registry)?;
    let selected = loaded.select(&args.select)?;
    let forced = loaded.resolve_stages(&args.force, "--force")?;
    let force = if args.force_all {
        Force::All
    } else if args.force.is_empty() {
        Force::None
    } else {
        Force::Stages(forced.into_iter().collect())
    };
    if args.dry_run && args.exec.executor == ExecutorKind::Slurm {
        return super::slurm::dry_run(g, loaded.pipeline, selected, force, &args.exec.slurm);
    }
    if args.dry_run {
        return super::status::print_preview(g, &loaded, &registry, &selected, &force);
    }
    execute(
        g,
        loaded,
        Plan {
            selected,
            force,
            mode: Mode::Run,
            rerun_of: None,
            exec: args.exec,
        },
    )
}

/// What to execute.
pub struct Plan {
    pub selected: BTreeSet<StageName>,
    pub force: Force,
    pub mode: Mode,
    pub rerun_of: Option<RunId>,
    pub exec: ExecArgs,
}

/// Creates the run record, executes, records the outcome and prints a summary.
pub fn execute(g: &Global, loaded: Loaded, plan: Plan) -> anyhow::Result<u8> {
    let Loaded { pipeline, dag } = loaded;
    let executor: Box<dyn Executor> = match plan.exec.executor {
        ExecutorKind::Local => Box::new(LocalExecutor {
            jobs: plan.exec.jobs as usize,
        }),
        ExecutorKind::Slurm => Box::new(plan.exec.slurm.executor()?),
    };
    let cores = host::cores();
    let run = RunDir::create(&g.runs_dir, &pipeline.name)
        .map_err(|e| super::failed(format!("cannot create the run folder: {e}")))?;
    let needed = dag.with_ancestors(&plan.selected);
    let order = dag.topo_order();
    let mut record = RunRecord {
        format: RUN_FORMAT,
        id: run.id().clone(),
        status: RunStatus::Running,
        selected: order
            .iter()
            .filter(|s| plan.selected.contains(*s))
            .cloned()
            .collect(),
        executor: executor.name().to_owned(),
        jobs: plan.exec.jobs as usize,
        command: std::env::args().collect(),
        rerun_of: plan.rerun_of.clone(),
        verify: matches!(plan.mode, Mode::Verify(_)),
        tool_version: env!("CARGO_PKG_VERSION").to_owned(),
        git_commit: host::git_commit(&pipeline.base_dir),
        host: host::hostname(),
        pid: Some(std::process::id()),
        cores,
        started: host::timestamp(SystemTime::now()),
        finished: None,
        stages: needed
            .iter()
            .map(|s| (s.clone(), StageRecord::pending(&pipeline.stages[s].kind)))
            .collect(),
        pipeline: pipeline.clone(),
    };
    let display = Arc::new(Display::new(g.progress).for_run(&run));
    let clock = Instant::now();
    // From here on the run exists: every way out finalises its record.
    let result = started(
        g,
        &run,
        &mut record,
        executor.as_ref(),
        plan,
        &display,
        clock,
    );
    result.map_err(|e| {
        let text = super::error_text(&e);
        let closed = run
            .load()
            .map(|loaded| record.stages.extend(loaded.stages))
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                let why = format!("the run stopped: {text}");
                Ok(live::close_unfinished(
                    &run,
                    &mut record,
                    RunStatus::Failed,
                    &why,
                )?)
            });
        let finalised = closed.as_ref().err().map(super::error_text);
        display.say(
            "error",
            "run.failed",
            &format!(
                "run {} failed after {:.1}s: {}",
                run.id(),
                clock.elapsed().as_secs_f64(),
                match &finalised {
                    None => "its record is finalised".to_owned(),
                    Some(e) => format!("its record could not be finalised: {e}"),
                }
            ),
            json!({
                "run": run.id().as_str(),
                "status": "failed",
                "error": text,
                "duration_s": clock.elapsed().as_secs_f64(),
                "record_finalised": finalised.is_none(),
            }),
        );
        anyhow::Error::new(super::Reported {
            code: exit::FAILED,
            text: format!("error: run {} failed: {text}", run.id()),
        })
    })
}

/// The part of [`execute`] after the run folder exists.
fn started(
    g: &Global,
    run: &RunDir,
    record: &mut RunRecord,
    executor: &dyn Executor,
    plan: Plan,
    display: &Arc<Display>,
    clock: Instant,
) -> anyhow::Result<u8> {
    let registry = itera_stages::registry();
    let pipeline = record.pipeline.clone();
    let cores = record.cores;
    let needed = record.stages.len();
    run.write_record(record)?;
    if let Err(e) = run.mark_latest(&g.runs_dir) {
        display.say(
            "warn",
            "run.warning",
            &format!(
                "warning: cannot point {} at this run: {e}; remove it so `latest` works again",
                g.runs_dir.join("latest").display()
            ),
            json!({ "run": run.id().as_str(), "latest": g.runs_dir.join("latest") }),
        );
    }
    let finalised = live::finalise_all(&g.runs_dir);
    if !finalised.is_empty() {
        tracing::info!(count = finalised.len(), "finalised abandoned run records");
    }
    {
        let run = run.clone();
        let base = record.clone();
        super::interrupt::on_hard_stop(move || {
            let mut rec = base.clone();
            if let Ok(loaded) = run.load() {
                rec.stages.extend(loaded.stages);
            }
            let _ = live::close_unfinished(
                &run,
                &mut rec,
                RunStatus::Interrupted,
                "interrupted: Ctrl-C twice stopped it at once",
            );
        });
    }

    display.say(
        "info",
        "run.started",
        &format!(
            "run {} of `{}`: {} stage(s), {} executor, {} job(s) on {cores} cores",
            run.id(),
            pipeline.name,
            needed,
            executor.name(),
            plan.exec.jobs
        ),
        json!({
            "run": run.id().as_str(),
            "pipeline": pipeline.name,
            "file": pipeline.source,
            "stages": needed,
            "executor": executor.name(),
            "jobs": plan.exec.jobs,
            "cores": cores,
            "run_dir": run.path(),
        }),
    );
    let job = RunJob {
        pipeline: Arc::new(pipeline.clone()),
        registry,
        store: Store::new(&g.runs_dir),
        run: run.clone(),
        selected: plan.selected,
        force: plan.force,
        mode: plan.mode,
        cancel: super::interrupt::cancel_on_signal(),
        events: display.clone(),
        cores,
    };
    let outcome = match executor.execute(&job) {
        Ok(outcome) => outcome,
        Err(e) => {
            record
                .stages
                .extend(run.load().map(|r| r.stages).unwrap_or_default());
            return Err(anyhow::Error::new(e));
        }
    };
    // Queued batch jobs (without `--wait`): the run goes on without us.
    let submitted = !outcome.with_status(StageStatus::Pending).is_empty();

    record.stages.extend(outcome.stages.clone());
    record.finished = Some(host::timestamp(SystemTime::now()));
    record.status = if outcome.interrupted {
        RunStatus::Interrupted
    } else if submitted && outcome.failed().is_empty() {
        RunStatus::Submitted
    } else if outcome.succeeded() {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    };
    run.write_record(record)?;

    let count = |s: StageStatus| outcome.with_status(s).len();
    let interrupted = match count(StageStatus::Interrupted) {
        0 => String::new(),
        n => format!(", {n} interrupted"),
    };
    let stages: serde_json::Map<String, serde_json::Value> = record
        .stages
        .iter()
        .map(|(name, r)| {
            let value = json!({
                "status": r.status.to_string(),
                "key": r.key.as_ref().map(|k| k.to_string()),
                "digest": r.digest.as_ref().map(|d| d.as_str().to_owned()),
                "duration_s": r.duration_ms.map(|ms| ms as f64 / 1000.0),
            });
            (name.clone(), value)
        })
        .collect();
    display.say(
        if outcome.succeeded() { "info" } else { "error" },
        "run.finished",
        &format!(
            "run {} {}: {} ran, {} cached, {} failed{interrupted}, {} skipped in {:.1}s",
            run.id(),
            record.status,
            count(StageStatus::Ran),
            count(StageStatus::Cached),
            count(StageStatus::Failed),
            count(StageStatus::Skipped),
            clock.elapsed().as_secs_f64()
        ),
        json!({
            "run": run.id().as_str(),
            "status": record.status.to_string(),
            "ran": count(StageStatus::Ran),
            "cached": count(StageStatus::Cached),
            "failed": count(StageStatus::Failed),
            "interrupted": count(StageStatus::Interrupted),
            "skipped": count(StageStatus::Skipped),
            "duration_s": clock.elapsed().as_secs_f64(),
            "stages": stages,
        }),
    );
    report_failures(display, &outcome.stages, run);
    if record.status == RunStatus::Submitted {
        super::slurm::print_submitted(run)?;
    }
    let mismatches = outcome.verify_mismatches();
    if !mismatches.is_empty() {
        let mut text = format!(
            "error: NOT REPRODUCIBLE: {} stage(s) produced a different result than recorded:",
            mismatches.len()
        );
        for name in &mismatches {
            let rec = &outcome.stages[*name];
            if let (Some(v), Some(now)) = (&rec.verify, &rec.digest) {
                text.push_str(&format!(
                    "\n  {name}: recorded {}, now {}",
                    v.recorded.short(),
                    now.short()
                ));
                if let Some(note) = &v.note {
                    text.push_str(&format!("\n    ({note})"));
                }
            }
        }
        display.say(
            "error",
            "run.not_reproducible",
            &text,
            json!({ "stages": mismatches }),
        );
    }
    Ok(if outcome.interrupted {
        exit::INTERRUPTED
    } else if outcome.succeeded() {
        exit::OK
    } else {
        exit::FAILED
    })
}

fn report_failures(display: &Display, stages: &BTreeMap<StageName, StageRecord>, run: &RunDir) {
    for (name, rec) in stages {
        if rec.status == StageStatus::Failed {
            let log = rec
                .log
                .as_ref()
                .map(|l| format!(" (log: {})", run.path().join(l).display()))
                .unwrap_or_default();
            let error = rec.error.as_deref().unwrap_or("unknown error");
            display.say(
                "error",
                "stage.error",
                &format!("error: stage `{name}` failed: {error}{log}"),
                json!({ "stage": name, "error": error, "log": rec.log.as_ref().map(|l| run.path().join(l)) }),
            );
        }
    }
}
