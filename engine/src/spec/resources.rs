//! The values of `[pipeline.slurm]` and `[stages.NAME.resources]` that SLURM would
//! otherwise refuse only at `sbatch` time: the wall-time syntax of `time`. Checked at load,
//! with the value's location, so a bad value never reaches a cluster.

use super::diagnostic::Diagnostic;
use super::tree::{Node, Sources};

/// Whether `text` is a SLURM time limit: `MINUTES`, `MINUTES:SECONDS`,
/// `HOURS:MINUTES:SECONDS`, `DAYS-HOURS`, `DAYS-HOURS:MINUTES`,
/// `DAYS-HOURS:MINUTES:SECONDS`, or `UNLIMITED`/`INFINITE`.
pub fn is_slurm_time(text: &str) -> bool {
    if matches!(text, "UNLIMITED" | "INFINITE" | "unlimited" | "infinite") {
        return true;
    }
    let number = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
    let (days, clock) = match text.split_once('-') {
        Some((d, rest)) => (Some(d), rest),
        None => (None, text),
    };
    if days.is_some_and(|d| !number(d)) {
        return false;
    }
    let parts: Vec<&str> = clock.split(':').collect();
    if !parts.iter().all(|p| number(p)) {
        return false;
    }
    match (days.is_some(), parts.len()) {
        // MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS
        (false, 1..=3) => true,
        // DAYS-HOURS, DAYS-HOURS:MINUTES, DAYS-HOURS:MINUTES:SECONDS
        (true, 1..=3) => true,
        _ => false,
    }
}

/// Diagnostics for the SLURM values of one resources table (`owner` names it, e.g.
/// "`[stages.train.resources]`").
pub(crate) fn check_values(table: &Node, owner: &str, sources: &Sources) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let Some(time) = table.as_table().and_then(|t| t.get("time")) else {
        return diags;
    };
    if let Some(text) = time.as_str() {
        if !is_slurm_time(text) {
            diags.push(
                Diagnostic::new(
                    format!("`time = {text:?}` in {owner} is not a SLURM time limit"),
                    Some(sources.locate(&time.origin)),
                )
                .with_label("SLURM would refuse this at submission")
                .with_help(
                    "write MINUTES, HOURS:MINUTES:SECONDS or DAYS-HOURS:MINUTES:SECONDS, \
                     e.g. \"30\", \"02:00:00\" or \"1-12:00:00\" (or \"UNLIMITED\")",
                ),
            );
        }
    }
    diags
}

#[cfg(test)]
mod tests {
    use super::is_slurm_time;

    #[test]
    fn slurm_time_formats() {
        for ok in [
            "30",
            "30:00",
            "02:00:00",
            "1-0",
            "1-12",
            "1-12:30",
            "1-12:30:00",
            "0:0:10",
            "UNLIMITED",
            "INFINITE",
            "10080",
        ] {
            assert!(is_slurm_time(ok), "{ok}");
        }
        for bad in [
            "forever",
            "",
            "1:2:3:4",
            "1-",
            "-5",
            "1-2-3",
            "2h",
            "1.5",
            " 30",
            "02:00:00 ",
            "1-1:2:3:4",
            ":30",
            "1::2",
        ] {
            assert!(!is_slurm_time(bad), "{bad:?}");
        }
    }
}
