//! Failures: a failing stage stops its dependents and is reported with its log tail;
//! an invalid pipeline exits 2 before anything runs or is written.

use crate::test::{snapshot_settings, Test, DIAMOND};

#[test]
fn a_failing_stage_stops_its_dependents_and_reports_its_log() {
    let failing = DIAMOND.replace(
        "echo b >> executions.log;",
        "echo b >> executions.log; echo 'reading the corpus'; echo 'boom: no such token' >&2; exit 3;",
    );
    let t = Test::with_pipeline(&failing);
    let out = t.itera(&["run", "pipeline.toml"], 1);
    assert_eq!(
        t.executions(),
        ["a", "b", "c"],
        "c is independent of b and still runs"
    );
    snapshot_settings().bind(|| {
        insta::assert_snapshot!("failing_stage_stderr", t.redact(&out.stderr));
    });

    let show = t.itera(&["show", "latest"], 0);
    assert!(show.stdout.contains("run "), "{}", show.stdout);
    snapshot_settings().bind(|| {
        insta::assert_snapshot!("failing_stage_show", t.redact(&show.stdout));
    });

    // Nothing of b was published: the store has a, c only; tmp/ has no leftovers.
    assert_eq!(t.store_entries().len(), 2);
    assert_eq!(std::fs::read_dir(t.path("runs/tmp")).unwrap().count(), 0);

    // Fixing b runs b and d only.
    t.write("pipeline.toml", DIAMOND);
    t.run(&[]);
    assert_eq!(t.executions(), ["b", "d"]);
}

#[test]
fn a_missing_declared_output_fails_the_stage() {
    let t = Test::with_pipeline(
        r#"
[pipeline]
name = "outputs"

[stages.gen]
kind = "shell"
command = "echo hi > {out}/other.txt"
outputs = ["result.txt"]
"#,
    );
    let out = t.itera(&["run", "pipeline.toml"], 1);
    assert!(
        out.stderr.contains(
            "stage `gen` declares output `result.txt` at `result.txt` but did not create it"
        ),
        "{}",
        out.stderr
    );
    assert!(t.store_entries().is_empty());
}

#[test]
fn an_invalid_pipeline_exits_2_and_writes_nothing() {
    let t = Test::with_pipeline(&DIAMOND.replace("outputs = [\"b.txt\"]", "outptus = [\"b.txt\"]"));
    let out = t.itera(&["run", "pipeline.toml"], 2);
    assert!(out.stderr.contains("outptus"), "{}", out.stderr);
    assert!(!t.path("runs").exists(), "nothing is written under runs/");
    assert!(t.executions().is_empty());

    let t = Test::with_pipeline(DIAMOND);
    let out = t.itera(&["run", "pipeline.toml", "--until", "nope"], 2);
    assert!(
        out.stderr.contains("unknown stage `nope`"),
        "{}",
        out.stderr
    );
    let out = t.itera(&["run", "pipeline.toml", "--force", "bb"], 2);
    assert!(out.stderr.contains("did you mean `b`?"), "{}", out.stderr);
    let out = t.itera(&["run", "missing.toml"], 2);
    assert!(out.stderr.contains("missing.toml"), "{}", out.stderr);
    assert!(!t.path("runs").exists());
}
