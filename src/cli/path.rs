//! `itera path RUN STAGE[.OUTPUT]`: prints where a recorded stage's result (or one of its
//! declared outputs) is in the store, for scripts (`cat $(itera path latest report.markdown)`).
//! Also the helpers `itera show` uses to name result folders and the report.

use std::path::PathBuf;

use clap::Args;
use itera_engine::record::{find_run, RunRecord, StageRecord};
use itera_engine::store::Store;

use super::{exit, invalid, out, Global, Reported};

#[derive(Debug, Args)]
pub struct PathArgs {
    /// Run id (or unique prefix/suffix), `latest`, or a run folder.
    pub run: String,
    /// `STAGE` (its result folder) or `STAGE.OUTPUT` (one declared output, e.g.
    /// `report.markdown`, `tokenize.tokenizer`, `fetch.valid-sample.txt`).
    #[arg(value_name = "STAGE[.OUTPUT]")]
    pub target: String,
}

/// The stage's result folder (`runs/store/<key>/out`), when it has a result.
pub fn result_dir(store: &Store, rec: &StageRecord) -> Option<PathBuf> {
    rec.digest.as_ref()?;
    rec.key.as_ref().map(|k| store.entry_dir(k).join("out"))
}

/// The declared outputs (name, path inside the result) of a recorded stage.
pub fn outputs(r: &RunRecord, stage: &str) -> Vec<(String, String)> {
    let Some(spec) = r.pipeline.stages.get(stage) else {
        return Vec::new();
    };
    itera_stages::registry()
        .get(&spec.kind)
        .map(|kind| {
            kind.outputs(&spec.params)
                .into_iter()
                .map(|o| (o.name, o.path))
                .collect()
        })
        .unwrap_or_default()
}

/// The report file of a `report` stage (its `markdown` output).
pub fn report_file(store: &Store, r: &RunRecord, stage: &str) -> Option<PathBuf> {
    let rec = r.stages.get(stage).filter(|s| s.kind == "report")?;
    let (_, file) = outputs(r, stage)
        .into_iter()
        .find(|(n, _)| n == "markdown")?;
    Some(result_dir(store, rec)?.join(file))
}

pub fn main(g: &Global, args: PathArgs) -> anyhow::Result<u8> {
    let run = find_run(&g.runs_dir, &args.run).map_err(|e| invalid(e.to_string()))?;
    let r = run.load()?;
    // `STAGE` as a whole, else the first `STAGE.OUTPUT` split whose stage exists (stage
    // names of sweeps may hold dots, output names too).
    let split = std::iter::once((args.target.as_str(), None))
        .chain(
            args.target
                .match_indices('.')
                .map(|(i, _)| (&args.target[..i], Some(&args.target[i + 1..]))),
        )
        .find(|(stage, _)| r.stages.contains_key(*stage));
    let Some((stage, output)) = split else {
        let names: Vec<&str> = r.stages.keys().map(String::as_str).collect();
        return Err(invalid(format!(
            "run {} has no stage `{}`; its stages: {}",
            r.id,
            args.target,
            names.join(", ")
        )));
    };
    let rec = &r.stages[stage];
    let store = Store::new(&std::path::absolute(&g.runs_dir)?);
    let Some(dir) = result_dir(&store, rec) else {
        return Err(anyhow::Error::new(Reported {
            code: exit::FAILED,
            text: format!(
                "error: stage `{stage}` of run {} has no result (it {}); run the pipeline again, or see `itera show {}`",
                r.id, rec.status, r.id
            ),
        }));
    };
    let path = match output {
        None => dir,
        Some(name) => {
            let outs = outputs(&r, stage);
            match outs.iter().find(|(n, _)| n == name) {
                Some((_, file)) => dir.join(file),
                None => {
                    let names: Vec<&str> = outs.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(invalid(format!(
                        "stage `{stage}` has no output `{name}`; its outputs: {}",
                        if names.is_empty() {
                            "none (use the stage alone for its folder)".to_owned()
                        } else {
                            names.join(", ")
                        }
                    )));
                }
            }
        }
    };
    if !path.exists() {
        return Err(anyhow::Error::new(Reported {
            code: exit::FAILED,
            text: format!(
                "error: {} no longer exists (removed by `itera gc`?); rerun the pipeline to recreate it",
                path.display()
            ),
        }));
    }
    out(&format!("{}\n", path.display()))?;
    Ok(exit::OK)
}
