//! `itera exec-stage` (one stage of a recorded run, as a batch job runs it) and Ctrl-C.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::test::{Test, DIAMOND};

#[test]
fn exec_stage_runs_one_recorded_stage_against_the_store() {
    let t = Test::with_pipeline(DIAMOND);
    t.run(&[]);
    t.executions();
    let run = std::fs::canonicalize(t.path("runs/latest")).unwrap();
    let run = run.to_str().unwrap();

    let cached = t.itera(&["exec-stage", "--run", run, "--stage", "d"], 0);
    assert!(cached.stderr.contains("d: cached"), "{}", cached.stderr);
    assert!(t.executions().is_empty());

    t.itera(&["exec-stage", "--run", run, "--stage", "d", "--force"], 0);
    assert_eq!(t.executions(), ["d"]);
    let stage: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{run}/stages/d.json")).unwrap())
            .unwrap();
    assert_eq!(stage["status"], "ran");
    assert_eq!(stage["reason"], "forced");
    assert!(stage["log"].as_str().unwrap().ends_with("logs/d.log"));

    let err = t.itera(&["exec-stage", "--run", run, "--stage", "nope"], 2);
    assert!(err.stderr.contains("has no stage `nope`"), "{}", err.stderr);
}

#[test]
fn exec_stage_refuses_a_stage_whose_upstream_has_no_result() {
    let t = Test::with_pipeline(&DIAMOND.replace(
        "echo b >> executions.log;",
        "echo b >> executions.log; exit 1;",
    ));
    t.itera(&["run", "pipeline.toml"], 1);
    let run = std::fs::canonicalize(t.path("runs/latest")).unwrap();
    let err = t.itera(
        &["exec-stage", "--run", run.to_str().unwrap(), "--stage", "d"],
        2,
    );
    assert!(
        err.stderr
            .contains("needs upstream stage `b`, which has no result in run"),
        "{}",
        err.stderr
    );
}

#[test]
fn ctrl_c_stops_the_running_stage_and_records_an_interrupted_run() {
    let t = Test::with_pipeline(
        r#"
[pipeline]
name = "interrupt"

[stages.long]
kind = "shell"
command = "touch started; sleep 60; echo done > {out}/r"
outputs = ["r"]
"#,
    );
    let child = t
        .command(&["run", "pipeline.toml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !t.path("started").exists() {
        assert!(Instant::now() < deadline, "the stage never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(130));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("long: FAILED: interrupted"), "{stderr}");
    assert!(stderr.contains("0 failed, 1 interrupted"), "{stderr}");
    let runs = t.itera(&["runs"], 0);
    assert!(runs.stdout.contains("interrupted"), "{}", runs.stdout);
    assert!(t.store_entries().is_empty());
}
