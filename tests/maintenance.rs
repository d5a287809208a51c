//! `gc` and `verify`.

use crate::test::{Test, DIAMOND};

#[test]
fn gc_keeps_what_the_newest_runs_use_and_removes_the_rest() {
    let t = Test::with_pipeline(DIAMOND);
    t.run(&[]);
    t.run(&["--set", "c.env.LEVEL=\"2\""]);
    assert_eq!(t.store_entries().len(), 6, "c and d have two versions each");

    let dry = t.itera(&["gc", "--keep", "1", "--dry-run"], 0);
    assert!(
        dry.stdout.contains("gc: would remove 2 item(s)"),
        "{}",
        dry.stdout
    );
    assert_eq!(t.store_entries().len(), 6);

    let done = t.itera(&["gc", "--keep", "1"], 0);
    assert!(
        done.stdout.contains("(stage `c`)") && done.stdout.contains("(stage `d`)"),
        "{}",
        done.stdout
    );
    assert_eq!(t.store_entries().len(), 4);
    t.executions();
    t.run(&["--set", "c.env.LEVEL=\"2\""]);
    assert!(
        t.executions().is_empty(),
        "the kept run's results are all there"
    );
    t.run(&[]);
    assert_eq!(
        t.executions(),
        ["c", "d"],
        "the collected ones are recomputed"
    );
}

#[test]
fn verify_reports_a_corrupted_entry_and_a_run_recomputes_a_damaged_one() {
    let t = Test::with_pipeline(DIAMOND);
    t.run(&[]);
    t.executions();
    let ok = t.itera(&["verify"], 0);
    assert!(
        ok.stdout.contains("4 entries checked, 0 changed"),
        "{}",
        ok.stdout
    );

    let b = t
        .store_entries()
        .into_iter()
        .find(|e| e.join("out/b.txt").exists())
        .unwrap();
    // Same size, different content: only a full re-hash notices.
    std::fs::write(b.join("out/b.txt"), "alpha\nBETA\n").unwrap();
    let bad = t.itera(&["verify"], 1);
    assert!(bad.stdout.contains("(stage `b`)"), "{}", bad.stdout);
    assert!(
        bad.stdout.contains("b.txt changed (content)"),
        "{}",
        bad.stdout
    );
    assert!(
        bad.stdout.contains("4 entries checked, 1 changed"),
        "{}",
        bad.stdout
    );

    // A size change is caught by the cheap check on every hit: the entry is recomputed.
    std::fs::write(b.join("out/b.txt"), "tampered with\n").unwrap();
    let out = t.run(&[]);
    assert_eq!(t.executions(), ["b"], "{}", out.stderr);
    assert!(
        out.stderr.contains("store entry is damaged"),
        "{}",
        out.stderr
    );
    t.itera(&["verify"], 0);
}
