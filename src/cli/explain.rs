//! `itera explain FILE STAGE`: the parts of a stage's cache key (kind and version,
//! params, input digests, seed, fingerprint), whether the result is stored, and which
//! part changed since the last recorded run of that stage. A swept stage's name explains
//! each of its variants.

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use itera_engine::exec::preview::{last_recorded_parts, preview, Fate, StagePreview};
use itera_engine::exec::Force;
use itera_engine::record::RunId;
use itera_engine::spec::{Pipeline, StageName};
use itera_engine::store::key::KeyParts;
use itera_engine::store::Store;

use super::load::{load, PipelineArgs};
use super::{exit, out, Global};

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// The stage to explain (a swept stage's name explains each of its variants).
    pub stage: String,
}

pub fn main(g: &Global, args: ExplainArgs) -> anyhow::Result<u8> {
    let registry = itera_stages::registry();
    let loaded = load(&args.pipeline, &registry)?;
    let stages = loaded.resolve_stages(std::slice::from_ref(&args.stage), "explain")?;
    let store = Store::new(&g.runs_dir);
    let selected: BTreeSet<String> = stages.iter().cloned().collect();
    let previews = preview(&loaded.pipeline, &registry, &store, &selected, &Force::None);
    let history = last_recorded_parts(&g.runs_dir);
    let mut text = String::new();
    for stage in &stages {
        let Some(p) = previews.iter().find(|p| &p.stage == stage) else {
            anyhow::bail!("internal error: no preview for stage `{stage}`");
        };
        if !text.is_empty() {
            text.push('\n');
        }
        explain_one(&loaded.pipeline, p, &history, &mut text)?;
    }
    out(&text)?;
    Ok(exit::OK)
}

/// The explanation of one stage, appended to `text`.
fn explain_one(
    pipeline: &Pipeline,
    p: &StagePreview,
    history: &BTreeMap<StageName, (RunId, KeyParts)>,
    text: &mut String,
) -> anyhow::Result<()> {
    let spec = &pipeline.stages[&p.stage];
    text.push_str(&format!("stage `{}` (kind `{}`)\n", p.stage, spec.kind));
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
        match history.get(&p.stage) {
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
    Ok(())
}
