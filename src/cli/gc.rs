//! `itera gc --keep N`: removes store entries that none of the newest N runs refers to,
//! plus abandoned work and staging folders, retired entry versions and run folders that
//! never got a record. Nothing a live run reads (leased) or computes (locked) is touched,
//! and every key of a run still going on is kept whatever N is. Abandoned run records are
//! finalised first (`itera_engine::live`).

use std::collections::BTreeSet;

use clap::Args;
use itera_engine::live;
use itera_engine::record::{list_runs, RunStatus};
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
    if !args.dry_run {
        live::finalise_all(&g.runs_dir);
    }
    let runs = list_runs(&g.runs_dir);
    let mut keep = BTreeSet::new();
    let mut text = String::new();
    for (i, run) in runs.iter().rev().enumerate() {
        let record = match run.load() {
            Ok(r) => r,
            Err(e) if i < args.keep => {
                text.push_str(&format!(
                    "warning: run {} is unreadable ({e}); it counts as one of the newest {} \
                     but protects nothing: remove its folder if it is garbage\n",
                    run.id(),
                    args.keep
                ));
                continue;
            }
            Err(_) => continue,
        };
        // The newest N runs, and every run still going on (live, or queued on SLURM).
        let going_on = live::is_live(run.path())
            || matches!(record.status, RunStatus::Submitted | RunStatus::Running)
                && !live::is_abandoned(run.path(), &record);
        if i >= args.keep && !going_on {
            continue;
        }
        for stage in record.stages.values() {
            if stage.status.succeeded() || !stage.status.is_final() || going_on {
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
    for item in &report.removed {
        let what = match item.kind {
            GcItemKind::Entry => "entry",
            GcItemKind::Work => "work dir",
            GcItemKind::Staging => "staging dir",
            GcItemKind::Retired => "retired entry",
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
    for dir in live::dead_run_folders(&g.runs_dir) {
        if !args.dry_run {
            itera_engine::fs::remove_dir_all_if_exists(&dir)?;
        }
        text.push_str(&format!(
            "{verb} run folder {} (no record: itera was killed while creating it)\n",
            dir.display()
        ));
    }
    if report.quarantined > 0 {
        text.push_str(&format!(
            "{} quarantined entr{} (changed on disk, found by `itera verify`) {verb} although \
             kept runs refer to them; they are recomputed when needed\n",
            report.quarantined,
            if report.quarantined == 1 { "y" } else { "ies" }
        ));
    }
    for path in &report.busy {
        text.push_str(&format!("kept {} (in use by a live run)\n", path.display()));
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
