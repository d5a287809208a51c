//! `itera verify`: re-hashes every store entry, reports those whose files changed on disk
//! since they were published, and quarantines them so no run reuses them (exit 1 if any).

use clap::Args;
use itera_engine::store::maintain::{retire_quarantined, verify};
use itera_engine::store::Store;

use super::{exit, out, Global};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Also move quarantined entries out of the store now (into `runs/retired/`, which
    /// `itera gc` empties), instead of leaving them for the next run or gc.
    #[arg(long)]
    pub repair: bool,
}

pub fn main(g: &Global, args: VerifyArgs) -> anyhow::Result<u8> {
    let store = Store::new(&g.runs_dir);
    let results = verify(&store)?;
    let mut text = String::new();
    let mut bad = 0;
    let mut busy = 0;
    for r in &results {
        if r.is_ok() {
            continue;
        }
        bad += 1;
        let stage = r
            .stage
            .as_ref()
            .map(|s| format!(" (stage `{s}`)"))
            .unwrap_or_default();
        text.push_str(&format!("CHANGED {}{stage}\n", r.dir.display()));
        match &r.outcome {
            Ok(changes) => {
                for c in changes {
                    text.push_str(&format!("  {c}\n"));
                }
            }
            Err(problem) => text.push_str(&format!("  {problem}\n")),
        }
        if !r.quarantined {
            busy += 1;
            text.push_str("  not quarantined: a stage is computing this key right now\n");
        }
    }
    text.push_str(&format!(
        "verify: {} entr{} checked, {bad} changed\n",
        results.len(),
        if results.len() == 1 { "y" } else { "ies" }
    ));
    if bad > busy {
        text.push_str(&format!(
            "{} changed entr{} quarantined: no run reuses them; the next run that needs one \
             recomputes it, and `itera gc` removes them\n",
            bad - busy,
            if bad - busy == 1 { "y is" } else { "ies are" }
        ));
    }
    if args.repair && bad > 0 {
        let (moved, busy) = retire_quarantined(&store)?;
        for dir in &moved {
            text.push_str(&format!(
                "repaired: moved {} out of the store\n",
                dir.display()
            ));
        }
        for dir in &busy {
            text.push_str(&format!(
                "not moved: {} is in use by a live run; run `itera verify --repair` again later\n",
                dir.display()
            ));
        }
    }
    out(&text)?;
    Ok(if bad > 0 { exit::FAILED } else { exit::OK })
}
