//! `rerun`: re-executing a recorded run, and `--verify` checking reproducibility.

use crate::test::{snapshot_settings, Test, DIAMOND};

#[test]
fn rerun_verify_passes_for_a_deterministic_pipeline() {
    let t = Test::with_pipeline(DIAMOND);
    t.run(&["--set", "c.env.LEVEL=\"5\""]);
    t.executions();
    let out = t.itera(&["rerun", "latest", "--verify"], 0);
    assert_eq!(
        t.executions(),
        ["a", "b", "c", "d"],
        "every stage recomputed"
    );
    assert_eq!(
        out.stderr.matches("reproduced the recorded digest").count(),
        4,
        "{}",
        out.stderr
    );
    // The override came along from the record, so nothing differs and nothing is new.
    assert_eq!(t.store_entries().len(), 4);
    let show = t.itera(&["show", "latest"], 0).stdout;
    assert!(show.contains("rerun of: "), "{show}");
    assert_eq!(show.matches("  reproduced").count(), 4, "{show}");

    // A plain rerun reuses everything.
    t.itera(&["rerun", "latest"], 0);
    assert!(t.executions().is_empty());
}

#[test]
fn rerun_verify_fails_loudly_for_a_non_deterministic_stage() {
    let t = Test::with_pipeline(
        &DIAMOND.replace("echo beta >> {out}/b.txt", "date +%N >> {out}/b.txt"),
    );
    t.run(&[]);
    let out = t.itera(&["rerun", "latest", "--verify"], 1);
    snapshot_settings().bind(|| {
        let tail: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.contains("NOT REPRODUCIBLE") || l.starts_with("  b:"))
            .collect();
        insta::assert_snapshot!("verify_mismatch", tail.join("\n"));
    });
    assert!(out.stderr.contains("b: done in"), "{}", out.stderr);
    assert!(
        out.stderr.contains("DIFFERS from the recorded digest"),
        "{}",
        out.stderr
    );
    // Only b differs: d was checked against b's recorded result and reproduced.
    assert_eq!(
        out.stderr.matches("reproduced the recorded digest").count(),
        3,
        "{}",
        out.stderr
    );
    let runs = t.itera(&["runs"], 0).stdout;
    assert!(runs.lines().last().unwrap().contains("failed"), "{runs}");
}
