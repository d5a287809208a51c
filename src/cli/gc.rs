//! `itera gc --keep N`: removes store entries that none of the newest N runs refers to,
//! plus abandoned work and staging folders. Keys locked by a running stage are left.

use std::collections::BTreeSet;

use clap::Args;
use itera_engine::record::list_runs;
use itera_engine::store::maintain::{gc, GcItemKind, GcMode};
use itera_engine::store::Store;

use super::{exit, out, Global};

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Keep every result the newest N runs refer to.
    #[arg(long, value_name = "N")]
    pub keep: usize,
    /// Only list what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn main(g: &Global, args: GcArgs) -> anyhow::Result<u8> {
    let runs = list_runs(&g.runs_dir);
    let mut keep = BTreeSet::new();
    for run in runs.iter().rev().take(args.keep) {
        let record = run.load()?;
        for stage in record.stages.values() {
            if stage.status.succeeded() || !stage.status.is_final() {
                keep.extend(stage.key.clone());
            }
        }
    }
    let mode = if args.dry_run {
        GcMode::DryRun
    } else {
        GcMode::Delete
    };
    let report = gc(&Store::new(&g.runs_dir), &keep, mode)?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut text = String::new();
    for item in &report.removed {
        let what = match item.kind {
            GcItemKind::Entry => "entry",
            GcItemKind::Work => "work dir",
            GcItemKind::Staging => "staging dir",
        };
        let stage = item
            .stage
            .as_ref()
            .map(|s| format!(" (stage `{s}`)"))
            .unwrap_or_default();
        text.push_str(&format!(
            "{verb} {what} {}{stage}, {} bytes\n",
            item.path.display(),
            item.bytes
        ));
    }
    for path in &report.busy {
        text.push_str(&format!(
            "kept {} (in use by a running stage)\n",
            path.display()
        ));
    }
    let bytes: u64 = report.removed.iter().map(|i| i.bytes).sum();
    text.push_str(&format!(
        "gc: {verb} {} item(s), {bytes} bytes; kept {} entr{} referenced by the newest {} run(s)\n",
        report.removed.len(),
        report.kept,
        if report.kept == 1 { "y" } else { "ies" },
        args.keep.min(runs.len())
    ));
    out(&text)?;
    Ok(exit::OK)
}
