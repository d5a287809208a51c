//! The SLURM side of the command line: the `run` flags of the SLURM executor, printing a
//! `--dry-run` plan and the submitted job ids, `itera status RUN` for a submitted run and
//! `itera cancel RUN`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use itera_engine::exec::slurm::executor::{Follow, PollPolicy, SlurmExecutor};
use itera_engine::exec::slurm::jobs::JobsFile;
use itera_engine::exec::slurm::plan::{self, Planned};
use itera_engine::exec::slurm::state::JobStatus;
use itera_engine::exec::slurm::status::{self, RunView};
use itera_engine::exec::{Force, Mode, NullEvents, RunJob};
use itera_engine::record::{find_run, RunDir, RunStatus, StageStatus};
use itera_engine::spec::{Pipeline, StageName};
use itera_engine::stage::CancelToken;
use itera_engine::store::Store;

use super::{exit, out, Global};

/// `itera run` flags for `--executor slurm`.
#[derive(Debug, Clone, Args)]
pub struct SlurmRunArgs {
    /// With `--executor slurm`: follow the jobs until every stage has ended, then exit as
    /// a local run would (without it, print the job ids and return).
    #[arg(long)]
    pub wait: bool,
    /// With `--executor slurm --wait`: first poll interval, in seconds; it backs off to
    /// 30 s while nothing changes.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    pub poll_interval: f64,
}

impl SlurmRunArgs {
    /// The executor these flags describe.
    pub fn executor(&self) -> anyhow::Result<SlurmExecutor> {
        let mut exec = SlurmExecutor::new(if self.wait {
            Follow::Wait
        } else {
            Follow::Return
        })?;
        if !(self.poll_interval.is_finite() && self.poll_interval > 0.0) {
            return Err(super::invalid(format!(
                "--poll-interval must be a positive number of seconds, not {}",
                self.poll_interval
            )));
        }
        let initial = Duration::from_secs_f64(self.poll_interval);
        exec.poll = PollPolicy {
            initial,
            max: PollPolicy::default().max.max(initial),
            ..PollPolicy::default()
        };
        Ok(exec)
    }
}

/// `itera run --executor slurm --dry-run`: prints the scripts that would be submitted.
/// Writes nothing (the run folder the scripts name is not created).
pub fn dry_run(
    g: &Global,
    pipeline: Pipeline,
    selected: BTreeSet<StageName>,
    force: Force,
    args: &SlurmRunArgs,
) -> anyhow::Result<u8> {
    let exec = args.executor()?;
    let runs_existed = g.runs_dir.exists();
    let run = RunDir::create(&g.runs_dir, &pipeline.name)?;
    let job = RunJob {
        pipeline: Arc::new(pipeline),
        registry: itera_stages::registry(),
        store: Store::new(&g.runs_dir),
        run: run.clone(),
        selected,
        force,
        mode: Mode::Run,
        cancel: CancelToken::default(),
        events: Arc::new(NullEvents),
        cores: itera_engine::host::cores(),
    };
    let planned = plan::plan(&exec, &job);
    let _ = std::fs::remove_dir(run.path());
    if !runs_existed {
        let _ = std::fs::remove_dir(&g.runs_dir);
    }
    print_plan(&planned?)?;
    Ok(exit::OK)
}

/// Prints what `--dry-run` found: per stage cached / local / the script it would submit.
pub fn print_plan(plan: &[(StageName, Planned)]) -> anyhow::Result<()> {
    let mut s = String::new();
    let jobs = plan
        .iter()
        .filter(|(_, p)| matches!(p, Planned::Job { .. }))
        .count();
    let _ = writeln!(
        s,
        "dry run: {jobs} batch job(s) would be submitted; nothing was submitted\n"
    );
    for (stage, p) in plan {
        match p {
            Planned::Cached { key } => {
                let _ = writeln!(s, "# {stage}: cached ({key}), not submitted\n");
            }
            Planned::Local => {
                let _ = writeln!(
                    s,
                    "# {stage}: runs on this host (resources.local = true) before its dependents are submitted\n"
                );
            }
            Planned::Unavailable { reason } => {
                let _ = writeln!(s, "# {stage}: cannot run: {reason}\n");
            }
            Planned::Job {
                script_path,
                script,
                command,
                ..
            } => {
                let _ = writeln!(s, "# {stage}: {}", script_path.display());
                let _ = writeln!(s, "# $ {command}");
                s.push_str(script);
                s.push('\n');
            }
        }
    }
    out(&s)
}

/// Prints the submitted jobs of a run that `itera run` did not follow.
pub fn print_submitted(run: &RunDir) -> anyhow::Result<()> {
    let jobs = JobsFile::load(run.path())?;
    let mut s = String::new();
    if jobs.jobs.is_empty() {
        let _ = writeln!(s, "nothing to submit: every stage is cached");
    } else {
        let _ = writeln!(
            s,
            "submitted {} job(s) for run {}:",
            jobs.jobs.len(),
            run.id()
        );
        for (stage, rec) in &jobs.jobs {
            let after = if rec.after.is_empty() {
                String::new()
            } else {
                format!("  (after {})", rec.after.join(", "))
            };
            let _ = writeln!(s, "  {stage:<20} job {}{after}", rec.job);
        }
        let _ = writeln!(
            s,
            "follow with `itera status {}`; stop with `itera cancel {}`",
            run.id(),
            run.id()
        );
    }
    out(&s)
}

/// `itera status RUN` for a run with SLURM jobs: polls, records, prints; exit code 1 once
/// a stage failed.
pub fn status_main(g: &Global, query: &str) -> anyhow::Result<u8> {
    let run = find_run(&g.runs_dir, query).map_err(|e| super::invalid(e.to_string()))?;
    let view = status::status(&run).with_context(|| format!("reading run {}", run.id()))?;
    out(&render_view(&run, &view))?;
    Ok(
        if view
            .stages
            .iter()
            .any(|s| matches!(s.status, StageStatus::Failed | StageStatus::Skipped))
        {
            exit::FAILED
        } else {
            exit::OK
        },
    )
}

/// Arguments of `itera cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The run: `latest`, its id (or a unique part of it), or its folder.
    pub run: String,
}

/// `itera cancel RUN`: scancel every pending or running job of the run.
pub fn cancel_main(g: &Global, args: CancelArgs) -> anyhow::Result<u8> {
    let run = find_run(&g.runs_dir, &args.run).map_err(|e| super::invalid(e.to_string()))?;
    let cancelled =
        status::cancel_run(&run).with_context(|| format!("cancelling run {}", run.id()))?;
    let mut s = String::new();
    if cancelled.is_empty() {
        let _ = writeln!(s, "run {}: no pending or running jobs", run.id());
    } else {
        let _ = writeln!(s, "run {}: cancelled {} job(s)", run.id(), cancelled.len());
        for (stage, job) in &cancelled {
            let _ = writeln!(s, "  {stage:<20} job {job}");
        }
    }
    out(&s)?;
    Ok(exit::OK)
}

fn render_view(run: &RunDir, view: &RunView) -> String {
    let mut s = String::new();
    let done = view.stages.iter().filter(|v| v.status.is_final()).count();
    let _ = writeln!(
        s,
        "run {}: {} ({done} of {} stages ended)",
        run.id(),
        match view.status {
            RunStatus::Submitted | RunStatus::Running if done < view.stages.len() =>
                "in progress".to_owned(),
            other => other.to_string(),
        },
        view.stages.len()
    );
    for v in &view.stages {
        let job = match (&v.job, v.local) {
            (Some(j), _) => format!("job {j}"),
            (None, true) => "this host".to_owned(),
            (None, false) => String::new(),
        };
        let sched = match &v.scheduler {
            Some(JobStatus::Pending { reason: Some(r) }) => format!("PENDING ({r})"),
            Some(JobStatus::Pending { reason: None }) => "PENDING".to_owned(),
            Some(JobStatus::Running) => "RUNNING".to_owned(),
            Some(JobStatus::Unknown { detail }) => format!("unknown: {detail}"),
            _ => String::new(),
        };
        let detail = match (v.status, &v.detail) {
            (StageStatus::Failed | StageStatus::Skipped, Some(d)) => d.clone(),
            _ => sched,
        };
        let line = format!(
            "  {:<20} {:<8} {:<12} {}",
            v.stage,
            v.status.to_string(),
            job,
            detail
        );
        let _ = writeln!(s, "{}", line.trim_end());
    }
    let failed: Vec<&str> = view
        .stages
        .iter()
        .filter(|v| v.status == StageStatus::Failed)
        .map(|v| v.stage.as_str())
        .collect();
    for stage in failed {
        // The stage's own log when it ran; the job's stderr when it never got that far.
        let stage_log = run.log_path(stage);
        let log = if stage_log.exists() {
            stage_log
        } else {
            run.path().join("slurm").join(format!("{stage}.err"))
        };
        let tail = itera_engine::exec::log_tail(&log, 10);
        if !tail.is_empty() {
            let _ = writeln!(s, "\n{stage}: last lines of {}:", log.display());
            for l in tail {
                let _ = writeln!(s, "  | {l}");
            }
        }
    }
    s
}
