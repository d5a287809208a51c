//! The SLURM executor's parts against a real SLURM (the local cluster of
//! `ci/slurm/start-local-slurm.sh`): generated scripts for small DAGs are submitted with
//! `afterok` dependencies and followed to their end through `state::poll`.
//!
//! The jobs run a small stand-in for `itera exec-stage` (a shell script that checks its
//! upstream outputs exist and writes its own), so these tests need no engine; the
//! end-to-end tests of the binary live in the workspace's `tests/`.
//!
//! They skip, saying why, when `sinfo` does not answer, unless `ITERA_SLURM_TESTS=required`.
//! `SLURM_TEST_PARTITION` names the partition to use (default: the cluster's default).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use itera_engine::exec::slurm::cancel;
use itera_engine::exec::slurm::command;
use itera_engine::exec::slurm::jobs::{now_unix, JobRecord, JobsFile};
use itera_engine::exec::slurm::sbatch::{self, JobId, RetryPolicy, SbatchError};
use itera_engine::exec::slurm::script::{self, slurm_dir, ScriptSpec, StageFiles};
use itera_engine::exec::slurm::state::{self, Failure, JobStatus, Tracked};
use itera_engine::spec::Resources;

/// Whether a SLURM controller answers; panics when the tests are required.
fn slurm_available(test: &str) -> bool {
    let answer = command::run("sinfo", &["-h".into()], None, Duration::from_secs(20));
    let problem = match answer {
        Ok(out) if out.success() => return true,
        Ok(out) => format!("`sinfo` failed: {}", out.message()),
        Err(e) => e.to_string(),
    };
    if std::env::var("ITERA_SLURM_TESTS").as_deref() == Ok("required") {
        panic!("ITERA_SLURM_TESTS=required but no SLURM answers: {problem}");
    }
    eprintln!("skipping {test}: no SLURM here ({problem}); start one with `bash ci/slurm/start-local-slurm.sh`");
    false
}

fn base_resources() -> Resources {
    Resources {
        partition: std::env::var("SLURM_TEST_PARTITION")
            .ok()
            .filter(|p| !p.is_empty()),
        time: Some("00:05:00".into()),
        ..Resources::default()
    }
}

/// A run folder with a stand-in stage program. The stage `fail*` exits 3; every stage
/// first checks that the outputs of the stages listed in `<run>/deps/<stage>` exist.
struct Fixture {
    _tmp: tempfile::TempDir,
    run_dir: PathBuf,
    program: PathBuf,
    jobs: JobsFile,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix(name)
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        Self::in_dir(tmp, "run")
    }

    fn in_dir(tmp: tempfile::TempDir, run_name: &str) -> Fixture {
        let run_dir = tmp.path().join(run_name);
        std::fs::create_dir_all(slurm_dir(&run_dir)).unwrap();
        std::fs::create_dir_all(run_dir.join("out")).unwrap();
        std::fs::create_dir_all(run_dir.join("deps")).unwrap();
        let program = tmp.path().join("fake-itera");
        std::fs::write(
            &program,
            r#"#!/bin/sh
# usage: fake-itera --runs-dir RUNS exec-stage --run RUN --stage NAME
while [ $# -gt 0 ]; do
  case "$1" in
    --runs-dir) runs=$2; shift 2 ;;
    exec-stage) sub=$1; shift ;;
    --run) run=$2; shift 2 ;;
    --stage) stage=$2; shift 2 ;;
    *) echo "unexpected argument $1" >&2; exit 64 ;;
  esac
done
[ "$sub" = exec-stage ] && [ -d "$runs" ] || exit 64
for dep in $(cat "$run/deps/$stage" 2>/dev/null); do
  [ -f "$run/out/$dep" ] || { echo "upstream $dep missing" >&2; exit 7; }
done
case "$stage" in
  fail*) echo "stage $stage is failing on purpose" >&2; exit 3 ;;
  slow*) sleep 60 ;;
esac
echo "ran $stage on $(hostname)"
date +%s.%N > "$run/out/$stage"
"#,
        )
        .unwrap();
        let mut perm = std::fs::metadata(&program).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&program, perm).unwrap();
        let run_id = run_dir.file_name().unwrap().to_string_lossy().into_owned();
        Fixture {
            jobs: JobsFile::new(&run_id, "testdag"),
            _tmp: tmp,
            run_dir,
            program,
        }
    }

    /// Writes and submits `stage` after `after` (stage names already submitted).
    fn submit(
        &mut self,
        stage: &str,
        after: &[&str],
        res: &Resources,
    ) -> Result<JobId, SbatchError> {
        std::fs::write(self.run_dir.join("deps").join(stage), after.join(" ")).unwrap();
        let text = script::render(&ScriptSpec {
            pipeline: "testdag",
            stage,
            run_id: &self.jobs.run_id,
            runs_dir: self.run_dir.parent().unwrap(),
            run_dir: &self.run_dir,
            workdir: &self.run_dir,
            itera_bin: &self.program,
            resources: res,
            action: &itera_engine::exec::Action::Reuse,
        })
        .unwrap();
        let files = StageFiles::new(&slurm_dir(&self.run_dir), stage);
        std::fs::write(&files.script, text).unwrap();
        let deps: Vec<JobId> = after
            .iter()
            .map(|s| self.jobs.jobs[*s].job.clone())
            .collect();
        let policy = RetryPolicy {
            attempts: 2,
            ..RetryPolicy::default()
        };
        let job = sbatch::submit(&files.script, &deps, &self.run_dir, &policy, |_, _, _| {})?;
        self.jobs.jobs.insert(
            stage.to_owned(),
            JobRecord {
                job: job.clone(),
                submitted_at: now_unix(),
                script: files.script,
                after: after.iter().map(|s| s.to_string()).collect(),
            },
        );
        self.jobs.save(&self.run_dir).unwrap();
        Ok(job)
    }

    fn exitcodes(&self) -> BTreeMap<String, PathBuf> {
        self.jobs.exitcode_files(&self.run_dir)
    }

    fn poll(&self) -> BTreeMap<String, JobStatus> {
        let files = self.exitcodes();
        let tracked: Vec<Tracked<'_>> = self
            .jobs
            .jobs
            .iter()
            .map(|(stage, rec)| Tracked {
                job: &rec.job,
                exitcode_file: &files[stage],
            })
            .collect();
        let by_job = state::poll(&tracked);
        self.jobs
            .jobs
            .iter()
            .map(|(stage, rec)| (stage.clone(), by_job[&rec.job].clone()))
            .collect()
    }

    /// Polls until every job has ended (at most `limit`).
    fn wait(&self, limit: Duration) -> BTreeMap<String, JobStatus> {
        let start = Instant::now();
        loop {
            let s = self.poll();
            if s.values().all(JobStatus::is_terminal) {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "jobs did not end within {limit:?}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn cancel_all(&self) -> Vec<JobId> {
        let files = self.exitcodes();
        let tracked: Vec<Tracked<'_>> = self
            .jobs
            .jobs
            .iter()
            .map(|(stage, rec)| Tracked {
                job: &rec.job,
                exitcode_file: &files[stage],
            })
            .collect();
        cancel::cancel_unfinished(&tracked).unwrap()
    }
}

/// Jobs among `ids` the scheduler still has pending or running.
fn still_queued(ids: &[&JobId]) -> Vec<String> {
    let list: Vec<&str> = ids.iter().map(|j| j.id.as_str()).collect();
    let out = command::run(
        "squeue",
        &[
            "-h".into(),
            "-t".into(),
            "pending,running".into(),
            "-j".into(),
            list.join(","),
            "-o".into(),
            "%i".into(),
        ],
        None,
        Duration::from_secs(30),
    )
    .unwrap();
    out.stdout.lines().map(str::to_owned).collect()
}

fn scontrol(job: &JobId) -> String {
    let out = command::run(
        "scontrol",
        &["show".into(), "job".into(), "-o".into(), job.id.clone()],
        None,
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(out.success(), "{}", out.message());
    out.stdout
}

fn out_time(f: &Fixture, stage: &str) -> f64 {
    std::fs::read_to_string(f.run_dir.join("out").join(stage))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn fan_out_fan_in_dag_completes_in_order() {
    if !slurm_available("fan_out_fan_in_dag_completes_in_order") {
        return;
    }
    let mut f = Fixture::new("fan");
    let res = base_resources();
    f.submit("prepare", &[], &res).unwrap();
    f.submit("left", &["prepare"], &res).unwrap();
    f.submit("right", &["prepare"], &res).unwrap();
    f.submit("join", &["left", "right"], &res).unwrap();
    let end = f.wait(Duration::from_secs(90));
    for (stage, status) in &end {
        assert_eq!(status, &JobStatus::Completed, "{stage}: {end:?}");
    }
    assert!(out_time(&f, "prepare") <= out_time(&f, "left"));
    assert!(out_time(&f, "prepare") <= out_time(&f, "right"));
    assert!(out_time(&f, "left") <= out_time(&f, "join"));
    assert!(out_time(&f, "right") <= out_time(&f, "join"));
    let files = StageFiles::new(&slurm_dir(&f.run_dir), "join");
    assert_eq!(std::fs::read_to_string(&files.exitcode).unwrap(), "0\n");
    let log = std::fs::read_to_string(&files.stdout).unwrap();
    assert!(log.starts_with("ran join on "), "{log}");
    // The record reads back as written.
    assert_eq!(JobsFile::load(&f.run_dir).unwrap(), f.jobs);
}

#[test]
fn failing_job_cancels_its_dependents() {
    if !slurm_available("failing_job_cancels_its_dependents") {
        return;
    }
    let mut f = Fixture::new("fail");
    let res = base_resources();
    f.submit("prepare", &[], &res).unwrap();
    f.submit("fail_train", &["prepare"], &res).unwrap();
    f.submit("evaluate", &["fail_train"], &res).unwrap();
    f.submit("report", &["evaluate", "prepare"], &res).unwrap();
    f.submit("side", &["prepare"], &res).unwrap();
    let end = f.wait(Duration::from_secs(90));
    assert_eq!(end["prepare"], JobStatus::Completed);
    assert_eq!(end["side"], JobStatus::Completed);
    assert_eq!(end["fail_train"], JobStatus::Ended(Failure::ExitCode(3)));
    assert_eq!(
        end["evaluate"],
        JobStatus::Ended(Failure::DependencyNeverSatisfied)
    );
    assert_eq!(
        end["report"],
        JobStatus::Ended(Failure::DependencyNeverSatisfied)
    );
    let err = std::fs::read_to_string(StageFiles::new(&slurm_dir(&f.run_dir), "fail_train").stderr)
        .unwrap();
    assert!(err.contains("failing on purpose"), "{err}");
    assert!(!f.run_dir.join("out/evaluate").exists());
}

#[test]
fn setup_failure_is_recorded_as_the_exit_code() {
    if !slurm_available("setup_failure_is_recorded_as_the_exit_code") {
        return;
    }
    let mut f = Fixture::new("setup");
    let res = Resources {
        setup: vec!["echo setting up".into(), "false".into()],
        ..base_resources()
    };
    f.submit("train", &[], &res).unwrap();
    let end = f.wait(Duration::from_secs(60));
    assert_eq!(end["train"], JobStatus::Ended(Failure::ExitCode(1)));
    assert!(
        !f.run_dir.join("out/train").exists(),
        "the command must not run after a failed setup line"
    );
}

#[test]
fn cancel_stops_a_running_dag() {
    if !slurm_available("cancel_stops_a_running_dag") {
        return;
    }
    let mut f = Fixture::new("cancel");
    let res = base_resources();
    let slow = f.submit("slow_train", &[], &res).unwrap();
    let after = f.submit("evaluate", &["slow_train"], &res).unwrap();
    let start = Instant::now();
    while f.poll()["slow_train"] != JobStatus::Running {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "slow_train never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let cancelled = f.cancel_all();
    assert_eq!(cancelled.len(), 2, "{cancelled:?}");
    let end = f.wait(Duration::from_secs(30));
    assert_eq!(end["slow_train"], JobStatus::Ended(Failure::Cancelled));
    assert!(
        matches!(
            end["evaluate"],
            JobStatus::Ended(Failure::Cancelled | Failure::DependencyNeverSatisfied)
        ),
        "{end:?}"
    );
    assert!(still_queued(&[&slow, &after]).is_empty());
    // Nothing left to cancel the second time.
    assert!(f.cancel_all().is_empty());
}

#[test]
fn invalid_partition_is_refused_with_the_schedulers_message() {
    if !slurm_available("invalid_partition_is_refused_with_the_schedulers_message") {
        return;
    }
    let mut f = Fixture::new("badpart");
    let good = f.submit(
        "prepare",
        &[],
        &Resources {
            time: Some("00:05:00".into()),
            ..base_resources()
        },
    );
    let good = good.unwrap();
    let bad = Resources {
        partition: Some("no_such_partition".into()),
        ..base_resources()
    };
    let err = f.submit("train", &["prepare"], &bad).unwrap_err();
    match &err {
        SbatchError::Rejected { message, hint, .. } => {
            assert!(
                message.contains("Invalid partition name specified"),
                "{message}"
            );
            assert!(hint.unwrap().contains("sinfo"));
        }
        other => panic!("expected a rejection, got {other}"),
    }
    cancel::cancel(std::slice::from_ref(&good)).unwrap();
    let start = Instant::now();
    while !still_queued(&[&good]).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn impossible_memory_is_refused() {
    if !slurm_available("impossible_memory_is_refused") {
        return;
    }
    let mut f = Fixture::new("bigmem");
    let res = Resources {
        mem: Some("100000G".into()),
        ..base_resources()
    };
    let err = f.submit("train", &[], &res).unwrap_err();
    assert!(
        err.to_string()
            .contains("Requested node configuration is not available"),
        "{err}"
    );
}

#[test]
fn requested_resources_reach_the_scheduler() {
    if !slurm_available("requested_resources_reach_the_scheduler") {
        return;
    }
    let mut f = Fixture::new("res");
    let res = Resources {
        time: Some("00:07:00".into()),
        cpus: Some(2),
        mem: Some("100M".into()),
        sbatch_args: vec!["--comment=itera resources test".into(), "--hold".into()],
        ..base_resources()
    };
    let job = f.submit("train", &[], &res).unwrap();
    let shown = scontrol(&job);
    cancel::cancel(std::slice::from_ref(&job)).unwrap();
    for expected in [
        "JobName=itera-testdag-train",
        "TimeLimit=00:07:00",
        "CPUs/Task=2",
        "MinMemoryNode=100M",
        "Comment=itera resources test",
        "JobState=PENDING",
    ] {
        assert!(shown.contains(expected), "`{expected}` not in {shown}");
    }
    let out = StageFiles::new(&slurm_dir(&f.run_dir), "train").stdout;
    assert!(
        shown.contains(&format!("StdOut={}", out.display())),
        "{shown}"
    );
}

#[test]
fn awkward_paths_and_names_survive_quoting() {
    if !slurm_available("awkward_paths_and_names_survive_quoting") {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("it's a \"dir\" $HOME %j")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let mut f = Fixture::in_dir(tmp, "run #1 `x`");
    f.submit("my stage", &[], &base_resources()).unwrap();
    let end = f.wait(Duration::from_secs(60));
    assert_eq!(end["my stage"], JobStatus::Completed, "{end:?}");
    let files = StageFiles::new(&slurm_dir(&f.run_dir), "my stage");
    let log = std::fs::read_to_string(&files.stdout).unwrap();
    assert!(log.starts_with("ran my stage on"), "{log}");
    assert!(f.run_dir.join("out/my stage").exists());
    assert!(Path::new(&files.exitcode).exists());
}
