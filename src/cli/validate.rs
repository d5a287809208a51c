//! `itera validate FILE`: loads and checks a pipeline without running or writing anything.

use std::collections::BTreeMap;

use clap::Args;
use itera_engine::spec;

use super::load::{load, PipelineArgs};
use super::{exit, out, Global};

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

pub fn main(_: &Global, args: ValidateArgs) -> anyhow::Result<u8> {
    let loaded = load(&args.pipeline, &itera_stages::registry())?;
    let p = &loaded.pipeline;
    // Swept stages (as written) and their numbers of variants.
    let mut sweeps: BTreeMap<&str, usize> = BTreeMap::new();
    for name in p.stages.keys() {
        let base = spec::base_name(name);
        if base != name {
            *sweeps.entry(base).or_default() += 1;
        }
    }
    let swept = if sweeps.is_empty() {
        String::new()
    } else {
        let parts: Vec<String> = sweeps
            .iter()
            .map(|(base, n)| format!("{base} x{n}"))
            .collect();
        format!(" (sweeps: {})", parts.join(", "))
    };
    out(&format!(
        "ok: pipeline `{}` ({}): {} stage(s){swept}, seed {}\n",
        p.name,
        args.pipeline.file.display(),
        p.stages.len(),
        p.seed
    ))?;
    Ok(exit::OK)
}
