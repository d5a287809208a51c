//! `itera schema`: writes the JSON schema of pipeline files (generated from every kind's
//! params) to `schemas/pipeline.schema.json`, or with `--check` fails if the committed
//! file differs from what this build generates (CI's drift check).

use std::path::PathBuf;

use clap::Args;

use super::{exit, invalid, out, Global};

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Where the schema lives.
    #[arg(long, default_value = "schemas/pipeline.schema.json")]
    pub output: PathBuf,
    /// Do not write; exit 1 if the file is out of date.
    #[arg(long)]
    pub check: bool,
    /// Print the schema to stdout instead of writing it.
    #[arg(long, conflicts_with = "check")]
    pub stdout: bool,
}

pub fn main(_: &Global, args: SchemaArgs) -> anyhow::Result<u8> {
    let schema = itera_engine::schema::pipeline_schema(&itera_stages::registry());
    let mut text = serde_json::to_string_pretty(&schema)?;
    text.push('\n');
    if args.stdout {
        out(&text)?;
        return Ok(exit::OK);
    }
    if args.check {
        let current = std::fs::read_to_string(&args.output).unwrap_or_default();
        if current == text {
            out(&format!("ok: {} is up to date\n", args.output.display()))?;
            return Ok(exit::OK);
        }
        return Err(anyhow::Error::new(super::Reported {
            code: exit::FAILED,
            text: format!(
                "error: {} is out of date with the stage kinds of this build; run `itera schema` and commit the result",
                args.output.display()
            ),
        }));
    }
    if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| invalid(format!("cannot create `{}`: {e}", dir.display())))?;
    }
    itera_engine::fs::write_atomic(
        &args.output,
        text.as_bytes(),
        itera_engine::fs::Durability::Fsync,
    )?;
    out(&format!("wrote {}\n", args.output.display()))?;
    Ok(exit::OK)
}
