//! `--executor slurm` end to end, against a real SLURM (`ci/slurm/start-local-slurm.sh`):
//! shell-stage DAGs submitted with afterok dependencies, followed, failed, cancelled,
//! resubmitted, refused. Each test skips, saying why, when `sinfo` does not answer, unless
//! `ITERA_SLURM_TESTS=required`; `SLURM_TEST_PARTITION` names the partition.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::test::{Test, DIAMOND};

/// Whether a SLURM controller answers; panics when the tests are required.
fn slurm_available(test: &str) -> bool {
    let answer = Command::new("sinfo").arg("-h").output();
    let problem = match answer {
        Ok(out) if out.status.success() => return true,
        Ok(out) => format!(
            "`sinfo` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("cannot run `sinfo`: {e}"),
    };
    if std::env::var("ITERA_SLURM_TESTS").as_deref() == Ok("required") {
        panic!("ITERA_SLURM_TESTS=required but no SLURM answers: {problem}");
    }
    eprintln!("skipping {test}: no SLURM here ({problem}); start one with `bash ci/slurm/start-local-slurm.sh`");
    false
}

/// `toml` with `[pipeline.slurm]` defaults for the test cluster added.
fn on_cluster(toml: &str, extra_defaults: &str) -> String {
    let partition = std::env::var("SLURM_TEST_PARTITION")
        .ok()
        .filter(|p| !p.is_empty())
        .map(|p| format!("partition = \"{p}\"\n"))
        .unwrap_or_default();
    let time = if extra_defaults.contains("time =") {
        ""
    } else {
        "time = \"00:05:00\"\n"
    };
    toml.replacen(
        "\n[stages.",
        &format!("\n[pipeline.slurm]\n{time}{partition}{extra_defaults}\n[stages."),
        1,
    )
}

const SUBMIT_WAIT: &[&str] = &[
    "run",
    "pipeline.toml",
    "--executor",
    "slurm",
    "--wait",
    "--poll-interval",
    "0.2",
    "--progress",
    "lines",
];

fn read(t: &Test, rel: &str) -> String {
    std::fs::read_to_string(t.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn run_json(t: &Test) -> Value {
    serde_json::from_str(&read(t, "runs/latest/run.json")).unwrap()
}

fn jobs_json(t: &Test) -> Value {
    serde_json::from_str(&read(t, "runs/latest/slurm/jobs.json")).unwrap()
}

fn submitted_stages(t: &Test) -> Vec<String> {
    jobs_json(t)["jobs"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

fn job_id(t: &Test, stage: &str) -> String {
    jobs_json(t)["jobs"][stage]["job"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn statuses(t: &Test) -> Vec<(String, String)> {
    let run = run_json(t);
    let mut v: Vec<(String, String)> = run["stages"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, r)| (k.clone(), r["status"].as_str().unwrap().to_owned()))
        .collect();
    v.sort();
    v
}

fn digests(t: &Test) -> Vec<(String, String)> {
    let run = run_json(t);
    run["stages"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, r)| (k.clone(), r["digest"].as_str().unwrap_or("-").to_owned()))
        .collect()
}

/// Job ids among `ids` that SLURM still has pending or running.
fn still_queued(ids: &[String]) -> Vec<String> {
    let out = Command::new("squeue")
        .args([
            "-h",
            "-t",
            "pending,running",
            "-o",
            "%i",
            "-j",
            &ids.join(","),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn scontrol(id: &str) -> String {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status_of(v: &[(String, String)], stage: &str) -> String {
    v.iter()
        .find(|(s, _)| s == stage)
        .map(|(_, st)| st.clone())
        .unwrap_or_default()
}

#[test]
fn fan_out_fan_in_dag_completes_via_afterok_with_local_digests() {
    if !slurm_available("fan_out_fan_in_dag_completes_via_afterok_with_local_digests") {
        return;
    }
    let t = Test::with_pipeline(&on_cluster(DIAMOND, ""));
    let out = t.itera(SUBMIT_WAIT, 0);
    assert_eq!(t.executions(), ["a", "b", "c", "d"], "{}", out.stderr);
    assert_eq!(submitted_stages(&t), ["a", "b", "c", "d"]);
    let jobs = jobs_json(&t);
    assert_eq!(jobs["jobs"]["d"]["after"], serde_json::json!(["b", "c"]));
    assert_eq!(jobs["jobs"]["b"]["after"], serde_json::json!(["a"]));
    assert!(
        statuses(&t).iter().all(|(_, s)| s == "ran"),
        "{:?}",
        statuses(&t)
    );
    assert_eq!(run_json(&t)["status"], "succeeded");
    assert_eq!(run_json(&t)["executor"], "slurm");
    let script = read(&t, "runs/latest/slurm/d.sbatch");
    assert!(
        script.contains("#SBATCH --job-name=itera-diamond-d"),
        "{script}"
    );
    // Every job really ran under SLURM (its own output file, its exit code).
    assert_eq!(read(&t, "runs/latest/slurm/d.exitcode"), "0\n");
    let slurm_digests = digests(&t);

    // The same pipeline run locally elsewhere produces the same digests.
    let local = Test::with_pipeline(&on_cluster(DIAMOND, ""));
    local.run(&[]);
    assert_eq!(digests(&local), slurm_digests);

    // A second SLURM run finds everything cached and submits nothing.
    let out = t.itera(SUBMIT_WAIT, 0);
    assert!(t.executions().is_empty());
    assert!(submitted_stages(&t).is_empty(), "{}", out.stdout);
    assert!(statuses(&t).iter().all(|(_, s)| s == "cached"));
}

#[test]
fn failing_stage_cancels_dependents_and_resubmission_submits_the_rest() {
    if !slurm_available("failing_stage_cancels_dependents_and_resubmission_submits_the_rest") {
        return;
    }
    let failing = DIAMOND.replace(
        "echo b >> executions.log;",
        "echo b >> executions.log; echo 'boom: no such token' >&2; exit 3;",
    );
    let t = Test::with_pipeline(&on_cluster(&failing, ""));
    let out = t.itera(SUBMIT_WAIT, 1);
    assert_eq!(t.executions(), ["a", "b", "c"]);
    let st = statuses(&t);
    assert_eq!(status_of(&st, "a"), "ran");
    assert_eq!(status_of(&st, "b"), "failed");
    assert_eq!(status_of(&st, "c"), "ran");
    assert_eq!(status_of(&st, "d"), "skipped", "{st:?}");
    assert_eq!(run_json(&t)["status"], "failed");
    assert!(
        out.stderr.contains("boom: no such token"),
        "log tail shown:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("stage `b` failed"), "{}", out.stderr);
    // SLURM itself cancelled d (afterok can never be satisfied).
    let d = job_id(&t, "d");
    let shown = scontrol(&d);
    assert!(shown.contains("JobState=CANCELLED"), "{shown}");

    // `itera status` on the failed run agrees, with exit code 1.
    let status = t.itera(&["status", "latest"], 1);
    assert!(status.stdout.contains("failed"), "{}", status.stdout);

    // Fixed: only b and d are submitted again; a and c come from the store.
    t.write("pipeline.toml", &on_cluster(DIAMOND, ""));
    t.itera(SUBMIT_WAIT, 0);
    assert_eq!(t.executions(), ["b", "d"]);
    assert_eq!(submitted_stages(&t), ["b", "d"]);
    let st = statuses(&t);
    assert_eq!(status_of(&st, "a"), "cached");
    assert_eq!(status_of(&st, "d"), "ran");
}

#[test]
fn without_wait_job_ids_are_printed_and_cancel_stops_the_dag() {
    if !slurm_available("without_wait_job_ids_are_printed_and_cancel_stops_the_dag") {
        return;
    }
    let slow = r#"
[pipeline]
name = "slow"

[stages.train]
kind = "shell"
command = "echo started > started.txt; sleep 60; echo x > {out}/x.txt"
outputs = ["x.txt"]

[stages.evaluate]
kind = "shell"
inputs = { model = "train" }
command = "cat {inputs.model}/x.txt > {out}/y.txt"
outputs = ["y.txt"]
"#;
    let t = Test::with_pipeline(&on_cluster(slow, ""));
    let out = t.itera(&["run", "pipeline.toml", "--executor", "slurm"], 0);
    let ids = vec![job_id(&t, "train"), job_id(&t, "evaluate")];
    for id in &ids {
        assert!(out.stdout.contains(&format!("job {id}")), "{}", out.stdout);
    }
    assert_eq!(run_json(&t)["status"], "submitted");
    let start = Instant::now();
    while !t.path("started.txt").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "train never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = t.itera(&["status", "latest"], 0);
    assert!(status.stdout.contains("RUNNING"), "{}", status.stdout);
    assert!(status.stdout.contains("PENDING"), "{}", status.stdout);

    let cancel = t.itera(&["cancel", "latest"], 0);
    assert!(
        cancel.stdout.contains("cancelled 2 job(s)"),
        "{}",
        cancel.stdout
    );
    let start = Instant::now();
    while !still_queued(&ids).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "jobs still queued: {:?}",
            still_queued(&ids)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = t.itera(&["status", "latest"], 1);
    assert!(status.stdout.contains("failed"), "{}", status.stdout);
    assert_eq!(run_json(&t)["status"], "failed");
    assert!(!t.path("runs/store").exists() || t.store_entries().is_empty());
}

#[test]
fn invalid_partition_fails_cleanly_with_nothing_left_queued() {
    if !slurm_available("invalid_partition_fails_cleanly_with_nothing_left_queued") {
        return;
    }
    let toml =
        on_cluster(DIAMOND, "") + "\n[stages.d.resources]\npartition = \"no_such_partition\"\n";
    let t = Test::with_pipeline(&toml);
    let out = t.itera(&["run", "pipeline.toml", "--executor", "slurm"], 1);
    assert!(
        out.stderr.contains("Invalid partition name specified"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("sinfo"), "hint shown: {}", out.stderr);
    assert!(out.stderr.contains("were cancelled"), "{}", out.stderr);
    let queued: Vec<String> = ["a", "b", "c"].iter().map(|s| job_id(&t, s)).collect();
    let start = Instant::now();
    while !still_queued(&queued).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "left queued: {:?}",
            still_queued(&queued)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(run_json(&t)["status"], "failed");
    assert_eq!(status_of(&statuses(&t), "d"), "failed");
}

#[test]
fn requested_resources_appear_in_scontrol() {
    if !slurm_available("requested_resources_appear_in_scontrol") {
        return;
    }
    let toml = on_cluster(
        r#"
[pipeline]
name = "res"

[stages.train]
kind = "shell"
command = "echo x > {out}/x.txt"
outputs = ["x.txt"]

[stages.train.resources]
cpus = 2
mem = "100M"
sbatch_args = ["--hold", "--comment=itera e2e"]
"#,
        "time = \"00:07:00\"\n",
    );
    let t = Test::with_pipeline(&toml);
    t.itera(&["run", "pipeline.toml", "--executor", "slurm"], 0);
    let id = job_id(&t, "train");
    let shown = scontrol(&id);
    t.itera(&["cancel", "latest"], 0);
    for expected in [
        "JobName=itera-res-train",
        "TimeLimit=00:07:00",
        "CPUs/Task=2",
        "MinMemoryNode=100M",
        "Comment=itera e2e",
    ] {
        assert!(shown.contains(expected), "`{expected}` not in {shown}");
    }
}

#[test]
fn dry_run_prints_scripts_and_submits_nothing() {
    if !slurm_available("dry_run_prints_scripts_and_submits_nothing") {
        return;
    }
    let toml = on_cluster(DIAMOND, "setup = [\"echo preparing\"]\n")
        + "\n[stages.a.resources]\nlocal = true\n";
    let t = Test::with_pipeline(&toml);
    let out = t.itera(
        &["run", "pipeline.toml", "--executor", "slurm", "--dry-run"],
        0,
    );
    assert!(
        out.stdout.contains("3 batch job(s) would be submitted"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("# a: runs on this host"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("#SBATCH --job-name=itera-diamond-d"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("--dependency=afterok:<job of b>:<job of c>"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("  echo preparing\n"), "{}", out.stdout);
    assert!(t.executions().is_empty());
    assert!(!t.path("runs/latest/slurm/jobs.json").exists());
}

#[test]
fn local_stage_runs_on_the_submit_host_before_its_dependents_are_queued() {
    if !slurm_available("local_stage_runs_on_the_submit_host_before_its_dependents_are_queued") {
        return;
    }
    let toml = on_cluster(DIAMOND, "") + "\n[stages.a.resources]\nlocal = true\n";
    let t = Test::with_pipeline(&toml);
    t.itera(SUBMIT_WAIT, 0);
    assert_eq!(t.executions(), ["a", "b", "c", "d"]);
    assert_eq!(submitted_stages(&t), ["b", "c", "d"]);
    assert_eq!(jobs_json(&t)["local"], serde_json::json!(["a"]));
    // b and c depended only on a local result: no afterok.
    assert!(jobs_json(&t)["jobs"]["b"].get("after").is_none());
    assert!(statuses(&t).iter().all(|(_, s)| s == "ran"));
}

#[test]
fn local_stage_after_a_job_runs_here_once_the_job_is_done() {
    if !slurm_available("local_stage_after_a_job_runs_here_once_the_job_is_done") {
        return;
    }
    // a (job) -> b (this host) -> d (job), c (job) beside them. Without --wait, `run`
    // stays until it has run b and queued d.
    let toml = on_cluster(DIAMOND, "") + "\n[stages.b.resources]\nlocal = true\n";
    let t = Test::with_pipeline(&toml);
    let out = t.itera(&["run", "pipeline.toml", "--executor", "slurm"], 0);
    assert_eq!(submitted_stages(&t), ["a", "c", "d"], "{}", out.stdout);
    assert_eq!(jobs_json(&t)["local"], serde_json::json!(["b"]));
    // d waits for c's job unless c had already finished; never for b, which ran here.
    let after = &jobs_json(&t)["jobs"]["d"]["after"];
    assert!(
        after.is_null() || after == &serde_json::json!(["c"]),
        "{after}"
    );
    assert_eq!(status_of(&statuses(&t), "b"), "ran");
    // d is queued (or already done); wait for it through `itera status`.
    let start = Instant::now();
    loop {
        let status = t.itera(&["status", "latest"], 0);
        if status.stdout.contains("succeeded") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            status.stdout
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(t.executions(), ["a", "b", "c", "d"]);
    assert_eq!(run_json(&t)["status"], "succeeded");
}

#[test]
fn smoke_phase8_pipeline_runs_under_slurm() {
    if !slurm_available("smoke_phase8_pipeline_runs_under_slurm") {
        return;
    }
    let t = Test::new();
    let smoke = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/smoke.toml");
    let mut args = SUBMIT_WAIT.to_vec();
    args[1] = smoke;
    let partition = std::env::var("SLURM_TEST_PARTITION").unwrap_or_default();
    let set = format!("pipeline.slurm.partition={partition}");
    if !partition.is_empty() {
        args.extend(["--set", &set]);
    }
    let out = t.itera(&args, 0);
    let st = statuses(&t);
    assert_eq!(st.len(), 6, "{st:?}\n{}", out.stderr);
    assert!(st.iter().all(|(_, s)| s == "ran"), "{st:?}");
    assert_eq!(submitted_stages(&t).len(), 6);
    assert_eq!(run_json(&t)["status"], "succeeded");
}

#[test]
fn sweep_variants_are_independent_jobs_that_run_in_parallel() {
    if !slurm_available("sweep_variants_are_independent_jobs_that_run_in_parallel") {
        return;
    }
    let sweep = r#"
[pipeline]
name = "sweep"

[stages.prep]
kind = "shell"
command = "echo prep >> executions.log; echo data > {out}/data.txt"
outputs = ["data.txt"]

[stages.train]
kind = "shell"
inputs = { data = "prep.data.txt" }
env = { LR = "0" }
command = "echo train-$LR >> executions.log; date +%s.%N > started-$LR; sleep 3; date +%s.%N > ended-$LR; echo $LR > {out}/model.txt"
outputs = ["model.txt"]

[stages.train.matrix]
"env.LR" = ["1e-3", "2e-3", "4e-3"]

[stages.report]
kind = "shell"
inputs = { models = "train[*].model.txt" }
command = "echo report >> executions.log; cat {inputs.models} > {out}/report.txt"
outputs = ["report.txt"]
"#;
    let t = Test::with_pipeline(&on_cluster(sweep, ""));
    let out = t.itera(SUBMIT_WAIT, 0);
    assert_eq!(
        t.executions(),
        ["prep", "report", "train-1e-3", "train-2e-3", "train-4e-3"],
        "{}",
        out.stderr
    );
    let variants = ["train@LR=1e-3", "train@LR=2e-3", "train@LR=4e-3"];
    let mut expected = vec!["prep", "report"];
    expected.extend(variants);
    assert_eq!(submitted_stages(&t), expected);
    let jobs = jobs_json(&t);
    for v in variants {
        // Each variant waits for `prep` only, not for the other variants.
        assert_eq!(jobs["jobs"][v]["after"], serde_json::json!(["prep"]), "{v}");
        let script = read(&t, &format!("runs/latest/slurm/{v}.sbatch"));
        assert!(
            script.contains(&format!("#SBATCH --job-name=itera-sweep-{v}")),
            "{script}"
        );
        assert!(scontrol(&job_id(&t, v)).contains(&format!("JobName=itera-sweep-{v}")));
    }
    assert_eq!(jobs["jobs"]["report"]["after"], serde_json::json!(variants));
    // They ran at the same time: every variant started before any of them ended.
    let time = |name: &str| -> f64 { read(&t, name).trim().parse().unwrap() };
    let last_start = ["1e-3", "2e-3", "4e-3"]
        .map(|lr| time(&format!("started-{lr}")))
        .into_iter()
        .fold(f64::MIN, f64::max);
    let first_end = ["1e-3", "2e-3", "4e-3"]
        .map(|lr| time(&format!("ended-{lr}")))
        .into_iter()
        .fold(f64::MAX, f64::min);
    assert!(last_start < first_end, "variants ran one after another");
    assert!(
        statuses(&t).iter().all(|(_, s)| s == "ran"),
        "{:?}",
        statuses(&t)
    );

    // A new value submits only the new variant and the gather.
    t.write(
        "pipeline.toml",
        &on_cluster(&sweep.replace(r#""4e-3"]"#, r#""4e-3", "8e-3"]"#), ""),
    );
    t.itera(SUBMIT_WAIT, 0);
    assert_eq!(t.executions(), ["report", "train-8e-3"]);
    assert_eq!(submitted_stages(&t), ["report", "train@LR=8e-3"]);
}

/// `rerun --verify --executor slurm` compares every job's result with the record, names
/// the stage that differs, exits 1, and leaves the recorded entries as they were: a local
/// verify afterwards still finds the deterministic stages reproduced.
#[test]
fn rerun_verify_under_slurm_verifies_and_keeps_the_recorded_entries() {
    if !slurm_available("rerun_verify_under_slurm_verifies_and_keeps_the_recorded_entries") {
        return;
    }
    let t = Test::with_pipeline(&on_cluster(
        &DIAMOND.replace("echo beta >> {out}/b.txt", "date +%N >> {out}/b.txt"),
        "",
    ));
    t.itera(SUBMIT_WAIT, 0);
    let recorded = digests(&t);
    let first = run_json(&t)["id"].as_str().unwrap().to_owned();
    t.executions();

    // Without --wait: a verification still waits for its verdict.
    let out = t.itera(
        &[
            "rerun",
            &first,
            "--verify",
            "--executor",
            "slurm",
            "--poll-interval",
            "0.2",
            "--progress",
            "lines",
        ],
        1,
    );
    assert_eq!(t.executions(), ["a", "b", "c", "d"], "{}", out.stderr);
    assert!(out.stderr.contains("NOT REPRODUCIBLE"), "{}", out.stderr);
    assert!(out.stderr.contains("\n  b: recorded "), "{}", out.stderr);
    for stage in ["a", "c", "d"] {
        assert!(
            !out.stderr.contains(&format!("\n  {stage}: recorded ")),
            "{stage} reproduced: {}",
            out.stderr
        );
    }
    let script = read(&t, "runs/latest/slurm/b.sbatch");
    assert!(script.contains(" --verify-against "), "{script}");
    let run = run_json(&t);
    assert_eq!(run["status"], "failed");
    assert_eq!(run["stages"]["b"]["verify"]["matches"], false);
    assert_eq!(run["stages"]["d"]["verify"]["matches"], true);
    // b's job produced a result (it just differs), so d's job ran and verified too.
    assert_eq!(read(&t, "runs/latest/slurm/b.exitcode"), "0\n");

    // The recorded entries were kept: the store still holds exactly the first run's
    // results, and a local verify of the first run finds only b different.
    let mut entries: Vec<String> = t
        .store_entries()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries.len(), 4, "{entries:?}");
    let out = t.itera(&["rerun", &first, "--verify"], 1);
    assert!(out.stderr.contains("\n  b: recorded "), "{}", out.stderr);
    assert_eq!(
        out.stderr.matches("reproduced the recorded digest").count(),
        3,
        "{}",
        out.stderr
    );
    let after =
        serde_json::from_str::<Value>(&read(&t, &format!("runs/{first}/run.json"))).unwrap();
    for (stage, digest) in &recorded {
        assert_eq!(after["stages"][stage]["digest"], digest.as_str());
    }
}
