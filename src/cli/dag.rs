//! `itera dag FILE`: prints the stage graph as text, Graphviz DOT or Mermaid.

use clap::{Args, ValueEnum};

use super::load::{load, PipelineArgs};
use super::{exit, out, Global};

#[derive(Debug, Args)]
pub struct DagArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[arg(long, value_enum, default_value_t = DagFormat::Text)]
    pub format: DagFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

pub fn main(_: &Global, args: DagArgs) -> anyhow::Result<u8> {
    let loaded = load(&args.pipeline, &itera_stages::registry())?;
    let mut text = match args.format {
        DagFormat::Text => loaded.dag.render_text(),
        DagFormat::Dot => loaded.dag.render_dot(),
        DagFormat::Mermaid => loaded.dag.render_mermaid(),
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    out(&text)?;
    Ok(exit::OK)
}
