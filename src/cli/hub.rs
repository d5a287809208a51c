//! `itera hub import`: puts local files into the Hugging Face cache layout as a given
//! repository and revision, so `hf-fetch` stages (and Python tools) find them offline,
//! e.g. on HPC compute nodes without internet or in CI.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use itera_stages::fetch::{default_cache_dir, import_into_cache, RepoKind};

use super::{exit, invalid, out, Global};

#[derive(Debug, Args)]
pub struct HubArgs {
    #[command(subcommand)]
    command: HubCommand,
}

#[derive(Debug, Subcommand)]
enum HubCommand {
    /// Import local files into the hub cache as REPO at REVISION.
    ///
    /// Example: itera hub import roneneldan/TinyStories
    ///   --file TinyStories-train.txt=../shared/data/tinystories/train-sample-00.txt
    ///   --file TinyStories-valid.txt=../shared/data/tinystories/valid-part-00.txt
    /// then: HF_HUB_OFFLINE=1 itera run pipelines/phase8.toml
    Import(ImportArgs),
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// Repository id, e.g. `roneneldan/TinyStories`.
    repo: String,
    /// `PATH_IN_REPO=LOCAL_FILE`; repeat for several files.
    #[arg(long = "file", required = true, value_name = "PATH_IN_REPO=LOCAL_FILE")]
    files: Vec<String>,
    /// Branch, tag or 40-hex commit the files are imported as.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Kind of repository.
    #[arg(long, value_enum, default_value_t = RepoTypeArg::Dataset)]
    repo_type: RepoTypeArg,
    /// Cache folder (default: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`, as Python's huggingface_hub).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RepoTypeArg {
    Dataset,
    Model,
}

pub fn main(_g: &Global, args: HubArgs) -> anyhow::Result<u8> {
    match args.command {
        HubCommand::Import(a) => import(a),
    }
}

fn import(args: ImportArgs) -> anyhow::Result<u8> {
    let mut files = Vec::with_capacity(args.files.len());
    for spec in &args.files {
        let Some((in_repo, local)) = spec.split_once('=') else {
            return Err(invalid(format!(
                "--file `{spec}` is not PATH_IN_REPO=LOCAL_FILE\n  = help: e.g. --file TinyStories-valid.txt=data/valid.txt"
            )));
        };
        let local = PathBuf::from(local);
        if !local.is_file() {
            return Err(invalid(format!(
                "--file `{spec}`: `{}` is not a readable file",
                local.display()
            )));
        }
        files.push((in_repo.to_owned(), local));
    }
    let kind = match args.repo_type {
        RepoTypeArg::Dataset => RepoKind::Dataset,
        RepoTypeArg::Model => RepoKind::Model,
    };
    let cache_dir = args.cache_dir.unwrap_or_else(default_cache_dir);
    let resolved = import_into_cache(&args.repo, kind, &args.revision, &files, &cache_dir)
        .map_err(|e| invalid(format!("cannot import into {}: {e}", cache_dir.display())))?;
    out(&format!(
        "imported {} file(s) as {} @ {} (commit {}) into {}\n",
        files.len(),
        args.repo,
        resolved.requested,
        resolved.sha,
        cache_dir.display()
    ))?;
    Ok(exit::OK)
}
