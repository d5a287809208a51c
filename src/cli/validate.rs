//! `itera validate FILE`: loads and checks a pipeline without running or writing anything.

use clap::Args;

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
    out(&format!(
        "ok: pipeline `{}` ({}): {} stage(s), seed {}\n",
        p.name,
        args.pipeline.file.display(),
        p.stages.len(),
        p.seed
    ))?;
    Ok(exit::OK)
}
