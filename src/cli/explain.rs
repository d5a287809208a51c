//! `itera explain FILE STAGE`: the parts of a stage's cache key (kind and version,
//! params, input digests, seed, fingerprint), whether the result is stored, and which
//! part changed since the last recorded run of that stage.

use std::collections::BTreeSet;

use clap::Args;
use itera_engine::exec::preview::{last_recorded_parts, preview, Fate};
use itera_engine::exec::Force;
use itera_engine::store::Store;

use super::load::{load, PipelineArgs};
use super::{exit, out, Global};

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// The stage to explain.
    pub stage: String,
}

pub fn main(g: &Global, args: ExplainArgs) -> anyhow::Result<u8> {
    let registry = itera_stages::registry();
    let loaded = load(&args.pipeline, &registry)?;
    loaded.check_stages(std::slice::from_ref(&args.stage), "explain")?;
    let store = Store::new(&g.runs_dir);
    let selected = BTreeSet::from([args.stage.clone()]);
    let previews = preview(&loaded.pipeline, &registry, &store, &selected, &Force::None);
    let Some(p) = previews.into_iter().find(|p| p.stage == args.stage) else {
        anyhow::bail!("internal error: no preview for stage `{}`", args.stage);
    };
    let spec = &loaded.pipeline.stages[&args.stage];
    let mut text = format!("stage `{}` (kind `{}`)\n", p.stage, spec.kind);
    match &p.fate {
        Fate::Cached { key, produced_by } => {
            text.push_str(&format!("key:    {key}\nstatus: stored ({produced_by})\n"))
        }
        Fate::Runs {
            key: Some(key),
            reason,
            ..
        } => text.push_str(&format!("key:    {key}\nstatus: would run ({reason})\n")),
        Fate::Runs {
            key: None, reason, ..
        } => text.push_str(&format!(
            "key:    not yet known: {reason}; it depends on their results\n"
        )),
        Fate::Unavailable { reason } => text.push_str(&format!("status: {reason}\n")),
        Fate::Broken { error } => text.push_str(&format!("status: error: {error}\n")),
    }
    if let Some(parts) = &p.parts {
        text.push_str(&format!(
            "parts:\n  kind:        {} (implementation version {})\n  seed:        {}\n  fingerprint: {}\n",
            parts.kind,
            parts.kind_version,
            parts.seed,
            parts.fingerprint.as_deref().unwrap_or("(none: the stage reads no outside state)")
        ));
        text.push_str("  inputs:");
        if parts.inputs.is_empty() {
            text.push_str("      (none)\n");
        } else {
            text.push('\n');
            for (name, list) in &parts.inputs {
                for (digest, r) in list.iter().zip(&spec.inputs[name]) {
                    text.push_str(&format!("    {name} = {r}: {}\n", digest.digest));
                }
            }
        }
        let params = serde_json::to_string_pretty(&parts.params)?;
        text.push_str("  params:\n");
        for line in params.lines() {
            text.push_str(&format!("    {line}\n"));
        }
        let history = last_recorded_parts(&g.runs_dir);
        match history.get(&args.stage) {
            None => text.push_str("history: no recorded run has this stage\n"),
            Some((run, old)) => {
                let changes = parts.changes_since(old);
                if changes.is_empty() {
                    text.push_str(&format!("since run {run}: nothing changed\n"));
                } else {
                    text.push_str(&format!("since run {run}:\n"));
                    for c in changes {
                        text.push_str(&format!("  changed: {c}\n"));
                    }
                }
            }
        }
    }
    out(&text)?;
    Ok(exit::OK)
}
