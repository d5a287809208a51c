//! Finding a model folder from what the user typed (`itera generate`, `itera score`): a
//! folder holding `model.safetensors`, or a recorded run whose `train` stage (or the stage
//! named with `--stage`) produced one.

use std::path::{Path, PathBuf};

use itera_engine::record::find_run;
use itera_engine::store::Store;

use super::{invalid, Global};

/// The model folder: the argument itself, or the chosen stage's result in a recorded run.
pub fn model_dir(g: &Global, model: &str, stage: Option<&str>) -> anyhow::Result<PathBuf> {
    let as_path = Path::new(model);
    if as_path.join("model.safetensors").is_file() {
        return Ok(as_path.to_owned());
    }
    let run = find_run(&g.runs_dir, model).map_err(|e| {
        invalid(format!(
            "`{}` is neither a model folder (no model.safetensors) nor a run: {e}",
            model
        ))
    })?;
    let record = run.load()?;
    let stage = match stage {
        Some(s) => s.to_owned(),
        None => {
            let trains: Vec<&String> = record
                .stages
                .iter()
                .filter(|(_, r)| r.kind == "train")
                .map(|(n, _)| n)
                .collect();
            match trains.as_slice() {
                [one] => (*one).clone(),
                [] => {
                    return Err(invalid(format!(
                        "run {} has no `train` stage: name the model's stage with --stage",
                        record.id.0
                    )))
                }
                many => {
                    let names: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
                    return Err(invalid(format!(
                        "run {} has several train stages ({}): pick one with --stage",
                        record.id.0,
                        names.join(", ")
                    )));
                }
            }
        }
    };
    let Some(rec) = record.stages.get(&stage) else {
        let names: Vec<&str> = record.stages.keys().map(String::as_str).collect();
        return Err(invalid(format!(
            "run {} has no stage `{stage}` (stages: {})",
            record.id.0,
            names.join(", ")
        )));
    };
    let key = rec
        .key
        .as_ref()
        .filter(|_| rec.status.succeeded())
        .ok_or_else(|| {
            invalid(format!(
                "stage `{stage}` of run {} has no result ({:?}): run the pipeline first",
                record.id.0, rec.status
            ))
        })?;
    let dir = Store::new(&g.runs_dir).entry_dir(key).join("out");
    if !dir.join("model.safetensors").is_file() {
        return Err(invalid(format!(
            "the result of stage `{stage}` ({}) holds no model.safetensors: is it a train or half-convert stage?",
            dir.display()
        )));
    }
    Ok(dir)
}
