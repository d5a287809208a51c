//! `itera exec-stage --run DIR --stage NAME` (hidden): executes one stage of a recorded
//! run, as a batch job does. Upstream results come from the run's stage records and the
//! store; the stage runs under its key's lock and its status is written into the run
//! folder (`stages/NAME.json`). With `--verify-against DIGEST` (`rerun --verify` under
//! SLURM) the stage is recomputed and compared, never published over the recorded entry.
//! Exit 0 when the stage has a result, 1 otherwise; a verification's verdict is in the
//! stage's record, so that dependent jobs verify against the recorded results too.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use itera_engine::exec::NullEvents;
use itera_engine::exec::{
    execute_stage, thread_budget, Force, Mode, Planner, Resolved, RunJob, StageRequest,
};
use itera_engine::graph::Dag;
use itera_engine::record::RunDir;
use itera_engine::store::{Digest, Lookup, Store};

use super::progress::Display;
use super::{exit, failed, invalid, Global};

#[derive(Debug, Args)]
pub struct ExecStageArgs {
    /// The run folder (`runs/<run-id>`).
    #[arg(long)]
    pub run: PathBuf,
    /// The stage to execute.
    #[arg(long)]
    pub stage: String,
    /// Recompute even if the result is stored.
    #[arg(long)]
    pub force: bool,
    /// `rerun --verify`: recompute, compare with this recorded digest, and keep the
    /// recorded entry (exit 1 when the result differs).
    #[arg(long, value_name = "DIGEST", conflicts_with = "force")]
    pub verify_against: Option<String>,
    /// Thread budget (default: `resources.cpus`, else `SLURM_CPUS_PER_TASK`, else all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn main(g: &Global, args: ExecStageArgs) -> anyhow::Result<u8> {
    let run = RunDir::open(&args.run).map_err(|e| invalid(e.to_string()))?;
    // Holding the run's lock marks the run live while this job works on it.
    let run = run.attach()?;
    let record = run.load()?;
    let pipeline = record.pipeline.clone();
    let Some(spec) = pipeline.stages.get(&args.stage) else {
        return Err(invalid(format!(
            "run {} has no stage `{}`",
            record.id, args.stage
        )));
    };
    let this = env!("CARGO_PKG_VERSION");
    if record.tool_version != this {
        return Err(failed(format!(
            "run {} was recorded by itera {} but this is itera {this}; a batch job must run \
             the build that submitted it. Submit the run again with this itera (`itera rerun \
             {} --executor slurm`)",
            record.id, record.tool_version, record.id
        )));
    }
    let registry = itera_stages::registry();
    let checked = match registry.get(&spec.kind) {
        Some(kind) => kind.recheck_params(&spec.params),
        None => Err(anyhow::anyhow!(
            "this itera has no stage kind `{}`; submit the run again with the build that knows it",
            spec.kind
        )),
    };
    if let Err(e) = checked {
        return Err(failed(format!(
            "stage `{}` of run {}: {e:#} (in {})",
            args.stage,
            record.id,
            run.path().join("run.json").display()
        )));
    }
    // The store is the run folder's parent: `runs/<id>` -> `runs/`.
    let runs_dir = run
        .path()
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| g.runs_dir.clone());
    let store = Store::new(&runs_dir);
    let mut resolved = BTreeMap::new();
    let verify_against = match &args.verify_against {
        None => None,
        Some(text) => Some(Digest::parse(text).ok_or_else(|| {
            invalid(format!(
                "--verify-against {text:?} is not a digest (64 lowercase hex digits)"
            ))
        })?),
    };
    let dag = Dag::new(&pipeline).map_err(|e| invalid(e.to_string()))?;
    for up in dag.upstream(&args.stage) {
        let rec = record.stages.get(&up);
        let key = rec
            .filter(|r| r.status.succeeded())
            .and_then(|r| r.key.clone());
        let Some(key) = key else {
            let status = rec
                .map(|r| r.status.to_string())
                .unwrap_or_else(|| "absent".into());
            return Err(invalid(format!(
                "stage `{}` needs upstream stage `{up}`, which has no result in run {} (status: {status})",
                args.stage, record.id
            )));
        };
        store.lease(&key)?;
        match store.lookup(&key) {
            Lookup::Hit(entry) => {
                resolved.insert(up, Resolved::from_entry(&entry));
            }
            _ => {
                return Err(invalid(format!(
                    "the result of upstream stage `{up}` (key {key}) is not in the store {}",
                    store.entries_dir().display()
                )))
            }
        }
    }
    let cores = itera_engine::host::cores();
    let threads = args.threads.unwrap_or_else(|| {
        let slurm = std::env::var("SLURM_CPUS_PER_TASK")
            .ok()
            .and_then(|v| v.parse().ok());
        let from_spec = pipeline.stages[&args.stage]
            .resources
            .or(&pipeline.slurm)
            .cpus;
        match (from_spec, slurm) {
            (Some(c), _) => c as usize,
            (None, Some(s)) => s,
            (None, None) => thread_budget(&pipeline, &args.stage, cores, 1),
        }
    });
    let events: Arc<dyn itera_engine::exec::EventSink> = match g.progress {
        super::ProgressMode::Quiet => Arc::new(NullEvents),
        _ => Arc::new(Display::new(super::ProgressMode::Lines)),
    };
    let job = RunJob {
        selected: [args.stage.clone()].into_iter().collect(),
        pipeline: Arc::new(pipeline),
        registry,
        store,
        run,
        force: if args.force { Force::All } else { Force::None },
        mode: match &verify_against {
            Some(d) => Mode::Verify([(args.stage.clone(), d.clone())].into_iter().collect()),
            None => Mode::Run,
        },
        cancel: super::interrupt::cancel_on_signal(),
        events,
        cores,
    };
    let action = Planner::new(&job.pipeline, &job.selected, &job.force, &job.mode)
        .map_err(|e| invalid(e.to_string()))?
        .action(&args.stage);
    let req = StageRequest {
        stage: args.stage.clone(),
        reuse: action.reuse(),
        verify_against: action.verify_against().cloned(),
        threads: threads.max(1),
    };
    let (rec, _) = execute_stage(&job, &req, &resolved);
    // A result that did not reproduce is still a result: the mismatch is in the stage's
    // record (read by the following `rerun`), and the dependent jobs go on to verify too.
    Ok(if rec.status.succeeded() {
        exit::OK
    } else {
        exit::FAILED
    })
}
