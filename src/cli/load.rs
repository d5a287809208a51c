//! Loading a pipeline file for a subcommand: spec diagnostics and graph errors become
//! exit code 2 with every problem shown; stage selections (`--until`, `--only`,
//! `--force`) are checked against the pipeline's stages.

use std::collections::BTreeSet;
use std::path::Path;

use clap::Args;
use itera_engine::graph::Dag;
use itera_engine::spec::{self, Pipeline, StageName};
use itera_engine::stage::Registry;

use super::{exit, invalid, Reported};

/// `FILE` and `--set` overrides.
#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// The pipeline file.
    pub file: std::path::PathBuf,
    /// Override a value: `--set stage.key=value` (TOML value syntax; repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

/// `--until` / `--only`.
#[derive(Debug, Clone, Default, Args)]
pub struct SelectArgs {
    /// Run this stage and everything it needs.
    #[arg(long, value_name = "STAGE", conflicts_with = "only")]
    pub until: Option<String>,
    /// Run exactly these stages; their inputs must already be stored.
    #[arg(long, value_name = "STAGE", num_args = 1..)]
    pub only: Vec<String>,
}

/// A loaded, validated pipeline with its graph.
pub struct Loaded {
    pub pipeline: Pipeline,
    pub dag: Dag,
}

/// Loads and validates `args.file` with its overrides.
pub fn load(args: &PipelineArgs, registry: &Registry) -> anyhow::Result<Loaded> {
    let pipeline = spec::load(&args.file, &args.sets, registry).map_err(reported)?;
    check_local(&pipeline, registry)?;
    graph(pipeline)
}

/// What only the machine can tell about a valid file (`StageKind::check_local`, e.g. a
/// `files` path that does not exist): invalid input, reported before anything runs.
fn check_local(pipeline: &itera_engine::spec::Pipeline, registry: &Registry) -> anyhow::Result<()> {
    let mut text = String::new();
    for (name, stage) in &pipeline.stages {
        let Some(kind) = registry.get(&stage.kind) else {
            continue;
        };
        for issue in kind.check_local(&stage.params, &pipeline.base_dir) {
            let at = if issue.path.is_empty() {
                String::new()
            } else {
                format!(" `{}`", issue.path.join("."))
            };
            text.push_str(&format!(
                "error: {}: stage `{name}` (kind `{}`){at}: {}\n",
                pipeline.source.display(),
                stage.kind,
                issue.message
            ));
            if let Some(help) = &issue.help {
                text.push_str(&format!("  help: {help}\n"));
            }
        }
    }
    if text.is_empty() {
        return Ok(());
    }
    Err(anyhow::Error::new(Reported {
        code: exit::INVALID,
        text,
    }))
}

/// Loads a recorded resolved pipeline again.
pub fn load_resolved(
    toml: &str,
    source: &Path,
    base_dir: &Path,
    registry: &Registry,
) -> anyhow::Result<Loaded> {
    let pipeline = spec::load_resolved(toml, source, base_dir, registry).map_err(reported)?;
    check_local(&pipeline, registry)?;
    graph(pipeline)
}

/// Invalid-input error showing the diagnostics; they stay attached (`downcast_ref`) for
/// the JSON log's structured records.
fn reported(d: spec::Diagnostics) -> anyhow::Error {
    let text = d.to_string();
    anyhow::Error::new(d).context(Reported {
        code: exit::INVALID,
        text,
    })
}

fn graph(pipeline: Pipeline) -> anyhow::Result<Loaded> {
    let dag = Dag::new(&pipeline).map_err(|e| invalid(e.to_string()))?;
    Ok(Loaded { pipeline, dag })
}

impl Loaded {
    /// The stages a selection picks.
    pub fn select(&self, sel: &SelectArgs) -> anyhow::Result<BTreeSet<StageName>> {
        self.dag
            .select(sel.until.as_deref(), &sel.only)
            .map_err(|e| invalid(e.to_string()))
    }

    /// The stages the names given with `flag` mean: a stage by its name, every variant of
    /// a swept stage by the name it is written with, or one variant by its full name.
    pub fn resolve_stages(&self, names: &[String], flag: &str) -> anyhow::Result<Vec<StageName>> {
        let mut out = Vec::new();
        for name in names {
            match self.dag.resolve(name) {
                Ok(found) => out.extend(found),
                Err(_) => {
                    let mut candidates: BTreeSet<&str> =
                        self.pipeline.stages.keys().map(String::as_str).collect();
                    candidates.extend(self.pipeline.stages.keys().map(|n| spec::base_name(n)));
                    let hint = spec::suggest(name, &candidates)
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    return Err(invalid(format!(
                        "{flag} names stage `{name}`, which pipeline `{}` does not have{hint}",
                        self.pipeline.name
                    )));
                }
            }
        }
        Ok(out)
    }
}
