//! Concurrency and crashes: two runs on one runs folder compute each stage once; a run
//! killed with SIGKILL in the middle of a stage leaves the store consistent.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::test::Test;

const SLOW: &str = r#"
[pipeline]
name = "slow"

[stages.first]
kind = "shell"
command = "echo first >> executions.log; sleep 0.5; echo 1 > {out}/v"
outputs = ["v"]

[stages.second]
kind = "shell"
inputs = { x = "first" }
command = "echo second >> executions.log; sleep 0.3; cat {inputs.x}/v > {out}/v"
outputs = ["v"]

[stages.side]
kind = "shell"
command = "echo side >> executions.log; sleep 0.3; echo 2 > {out}/v"
outputs = ["v"]
"#;

#[test]
fn two_concurrent_runs_compute_each_stage_once_and_both_succeed() {
    let t = Test::with_pipeline(SLOW);
    let spawn = |extra: &[&str]| {
        let mut args = vec!["run", "pipeline.toml"];
        args.extend_from_slice(extra);
        t.command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn(&[]);
    let second = spawn(&["--jobs", "2"]);
    let a = first.wait_with_output().unwrap();
    let b = second.wait_with_output().unwrap();
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert_eq!(
        t.executions(),
        ["first", "second", "side"],
        "each stage ran once"
    );
    assert_eq!(t.store_entries().len(), 3);
    let runs = t.itera(&["runs"], 0);
    assert_eq!(runs.stdout.lines().count(), 2, "{}", runs.stdout);
    assert!(
        runs.stdout.lines().all(|l| l.contains("succeeded")),
        "{}",
        runs.stdout
    );
}

#[test]
fn a_run_killed_mid_stage_leaves_the_store_consistent_and_the_next_run_completes() {
    let t = Test::with_pipeline(
        r#"
[pipeline]
name = "crash"

[stages.quick]
kind = "shell"
command = "echo 1 > {out}/q"
outputs = ["q"]

[stages.long]
kind = "shell"
inputs = { q = "quick" }
command = "echo partial > {out}/half; if [ ! -f started ]; then touch started; sleep 60; fi; echo done > {out}/r"
outputs = ["r"]
"#,
    );
    let mut child = t
        .command(&["run", "pipeline.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !t.path("started").exists() {
        assert!(Instant::now() < deadline, "the long stage never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL: no cleanup code runs in itera.
    child.kill().unwrap();
    child.wait().unwrap();

    // Only `quick` is in the store, complete with its meta.json.
    let entries = t.store_entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].join("meta.json").exists());
    let verify = t.itera(&["verify"], 0);
    assert!(
        verify.stdout.contains("1 entry checked, 0 changed"),
        "{}",
        verify.stdout
    );

    let out = t.run(&[]);
    assert!(out.stderr.contains("1 ran, 1 cached"), "{}", out.stderr);
    assert_eq!(t.store_entries().len(), 2);
    // The killed attempt's staging folder was cleaned up under the key's lock.
    assert_eq!(std::fs::read_dir(t.path("runs/tmp")).unwrap().count(), 0);
    // The killed run's record was finalised by the next run: nobody held its lock.
    let killed = t.itera(&["runs"], 0).stdout;
    assert!(
        killed.lines().next().unwrap().contains("abandoned"),
        "{killed}"
    );
}
