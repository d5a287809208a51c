//! Fault trials against the binary: gc racing live runs, corrupted entries, `kill -9` and
//! double Ctrl-C (records and orphaned commands), exit codes of operational errors, a full
//! disk, `--force` under readers, records that do not parse, links leaving an artifact.
//! Looped trials run `ITERA_FAULT_TRIALS` times (default 10, enough for CI; raise it to
//! hunt races).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::test::{Test, DIAMOND};

fn trials() -> usize {
    std::env::var("ITERA_FAULT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spawn(t: &Test, args: &[&str]) -> Child {
    t.command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Pids of live processes whose environment holds `FAULT_TAG=<tag>`.
fn tagged(tag: &str) -> Vec<u32> {
    let needle = format!("FAULT_TAG={tag}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// Waits up to 5 s for every process tagged `tag` to be gone.
fn assert_no_orphans(tag: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = tagged(tag);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for pid in &left {
                // SAFETY: cleaning up our own test's processes.
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            }
            panic!("orphaned processes still running: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tag_of(t: &Test) -> String {
    t.root().file_name().unwrap().to_string_lossy().into_owned()
}

/// A pipeline whose `use` stage reads `fetch` and `tok` only after `go` exists.
const LONG: &str = r#"
[pipeline]
name = "long"

[stages.fetch]
kind = "shell"
command = "echo data > {out}/d"
outputs = ["d"]

[stages.tok]
kind = "shell"
inputs = { d = "fetch.d" }
command = "cat {inputs.d} > {out}/t"
outputs = ["t"]

[stages.train]
kind = "shell"
inputs = { t = "tok.t", d = "fetch.d" }
command = "touch train-started; while [ ! -f go ]; do sleep 0.02; done; cat {inputs.t} {inputs.d} > {out}/m"
outputs = ["m"]
"#;

const OTHER: &str = r#"
[pipeline]
name = "other"

[stages.x]
kind = "shell"
command = "echo other > {out}/x"
outputs = ["x"]
"#;

#[test]
fn gc_never_removes_what_a_live_run_reads() {
    let t = Test::with_pipeline(LONG);
    t.write("other.toml", OTHER);
    t.write("go", "");
    t.run(&[]);
    // A new version of `train`, so the long run below recomputes it.
    std::fs::remove_file(t.path("go")).unwrap();
    std::fs::remove_file(t.path("train-started")).unwrap();
    let long = spawn(&t, &["run", "pipeline.toml", "--set", "train.env.V=\"2\""]);
    wait_for(&t.path("train-started"), "the long stage starting");
    t.itera(&["run", "other.toml"], 0);
    let gc = t.itera(&["gc", "--keep", "1"], 0);
    assert!(gc.stdout.contains("in use by a live run"), "{}", gc.stdout);
    t.write("go", "");
    let (code, stderr) = finish(long);
    assert_eq!(code, 0, "the long run lost its inputs to gc:\n{stderr}");
    t.itera(&["verify"], 0);
}

#[test]
fn gc_racing_the_start_of_a_run_never_fails_it() {
    let t = Test::with_pipeline(
        r#"
[pipeline]
name = "race"

[stages.a]
kind = "shell"
command = "echo a > {out}/a"
outputs = ["a"]

[stages.b]
kind = "shell"
inputs = { a = "a.a" }
command = "cat {inputs.a} > {out}/b; sleep 0.01; cat {inputs.a} >> {out}/b"
outputs = ["b"]
"#,
    );
    t.write("other.toml", OTHER);
    t.run(&[]);
    let n = trials();
    for i in 0..n {
        t.itera(&["run", "other.toml"], 0);
        let run = spawn(&t, &["run", "pipeline.toml", "--force", "b"]);
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64 % 8_000);
        std::thread::sleep(Duration::from_micros(jitter));
        let gc = t.itera(&["gc", "--keep", "1"], 0);
        let (code, stderr) = finish(run);
        assert_eq!(
            code, 0,
            "trial {i}/{n}: the run failed next to gc\n{stderr}\n{}",
            gc.stdout
        );
    }
    t.itera(&["verify"], 0);
}

#[test]
fn a_corrupted_entry_found_by_verify_is_never_reused() {
    let t = Test::with_pipeline(DIAMOND);
    t.run(&[]);
    t.executions();
    let b = t
        .store_entries()
        .into_iter()
        .find(|e| e.join("out/b.txt").exists())
        .unwrap();
    // Same size, different bytes: only a full re-hash can notice.
    std::fs::write(b.join("out/b.txt"), "alpha\nBETA\n").unwrap();
    let bad = t.itera(&["verify"], 1);
    assert!(
        bad.stdout
            .contains("1 changed entry is quarantined: no run reuses them"),
        "{}",
        bad.stdout
    );
    let out = t.run(&[]);
    assert_eq!(t.executions(), ["b"], "{}", out.stderr);
    assert!(out.stderr.contains("quarantined"), "{}", out.stderr);
    let entry = t
        .store_entries()
        .into_iter()
        .find(|e| e.join("out/b.txt").exists())
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(entry.join("out/b.txt")).unwrap(),
        "alpha\nbeta\n"
    );
    t.itera(&["verify"], 0);
    // `verify --repair` moves a quarantined entry out at once.
    std::fs::write(entry.join("out/b.txt"), "alpha\nBETA\n").unwrap();
    let repaired = t.itera(&["verify", "--repair"], 1);
    assert!(
        repaired.stdout.contains("repaired: moved"),
        "{}",
        repaired.stdout
    );
    t.itera(&["verify"], 0);
    t.run(&[]);
    assert_eq!(t.executions(), ["b"]);
    // The damaged versions were set aside (a reader may have had it open); gc removes it.
    let gc = t.itera(&["gc", "--keep", "1"], 0);
    assert!(gc.stdout.contains("retired entry"), "{}", gc.stdout);
}

#[test]
fn kill_9_leaves_an_abandoned_record_that_the_next_run_finalises_and_no_orphans() {
    let tag = tag_of(&Test::new());
    let text = format!(
        r#"
[pipeline]
name = "orphans"

[stages.long]
kind = "shell"
env = {{ FAULT_TAG = "{tag}" }}
command = "touch started; sleep 3001 | cat; echo done > {{out}}/r"
outputs = ["r"]
"#
    );
    let t = Test::with_pipeline(&text);
    let mut child = spawn(&t, &["run", "pipeline.toml"]);
    wait_for(&t.path("started"), "the stage starting");
    std::thread::sleep(Duration::from_millis(100));
    assert!(!tagged(&tag).is_empty(), "the command runs");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_no_orphans(&tag);

    let runs = t.itera(&["runs"], 0);
    assert!(runs.stdout.contains("abandoned"), "{}", runs.stdout);
    assert!(
        runs.stdout.contains("0 failed, 1 interrupted"),
        "{}",
        runs.stdout
    );
    let show = t.itera(&["show", "latest"], 0);
    assert!(show.stdout.contains(": abandoned"), "{}", show.stdout);
    assert!(show.stdout.contains("interrupted"), "{}", show.stdout);
    let killed = t.itera(&["show", "latest", "--json"], 0).stdout;

    std::fs::remove_file(t.path("started")).unwrap();
    t.write("pipeline.toml", &text.replace("sleep 3001 | cat", "true"));
    t.run(&[]);
    let id = killed
        .split("\"id\": \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let record = std::fs::read_to_string(t.path(&format!("runs/{id}/run.json"))).unwrap();
    assert!(record.contains("\"status\": \"abandoned\""), "{record}");
    assert!(record.contains("\"status\": \"interrupted\""), "{record}");
}

#[test]
fn double_ctrl_c_on_a_command_ignoring_sigterm_exits_130_and_leaves_nothing_running() {
    let tag = tag_of(&Test::new());
    let t = Test::with_pipeline(&format!(
        r#"
[pipeline]
name = "stubborn"

[stages.stubborn]
kind = "shell"
env = {{ FAULT_TAG = "{tag}" }}
command = "trap '' TERM; touch started; sleep 3002 & sleep 3002; wait"
outputs = ["r"]
"#
    ));
    let child = spawn(&t, &["run", "pipeline.toml"]);
    wait_for(&t.path("started"), "the stage starting");
    std::thread::sleep(Duration::from_millis(100));
    let pid = child.id() as i32;
    let start = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(100));
    unsafe { libc::kill(pid, libc::SIGINT) };
    let (code, stderr) = finish(child);
    assert_eq!(code, 130, "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(3), "{stderr}");
    assert_no_orphans(&tag);
    let runs = t.itera(&["runs"], 0);
    assert!(runs.stdout.contains("interrupted"), "{}", runs.stdout);
    let show = t.itera(&["show", "latest"], 0).stdout;
    assert!(!show.contains("running"), "{show}");
}

#[test]
fn kill_9_at_several_points_of_a_run_then_verify_and_resume() {
    let t = Test::with_pipeline(
        r#"
[pipeline]
name = "points"

[stages.a]
kind = "shell"
command = "sleep 0.05; head -c 300000 /dev/urandom > {out}/a"
outputs = ["a"]

[stages.b]
kind = "shell"
inputs = { a = "a.a" }
command = "sleep 0.05; cat {inputs.a} {inputs.a} > {out}/b"
outputs = ["b"]

[stages.c]
kind = "shell"
inputs = { b = "b.b" }
command = "sleep 0.05; wc -c < {inputs.b} > {out}/c"
outputs = ["c"]
"#,
    );
    for (i, ms) in [5u64, 40, 80, 120, 160, 220]
        .iter()
        .cycle()
        .take(trials())
        .enumerate()
    {
        let mut child = spawn(&t, &["run", "pipeline.toml", "--force-all"]);
        std::thread::sleep(Duration::from_millis(*ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let v = t.itera(&["verify"], 0);
        assert!(v.stdout.contains(" 0 changed"), "trial {i}: {}", v.stdout);
        t.run(&[]);
        let c = t
            .store_entries()
            .into_iter()
            .find_map(|e| std::fs::read_to_string(e.join("out/c")).ok());
        assert_eq!(c.as_deref().map(str::trim), Some("600000"), "trial {i}");
    }
    let runs = t.itera(&["runs"], 0).stdout;
    assert!(!runs.contains("running"), "{runs}");
}

#[test]
fn operational_errors_after_the_run_started_exit_1_and_finalise_the_record() {
    let t = Test::with_pipeline(DIAMOND);
    // `runs/latest` is a folder: the run still works, and says how to fix it.
    std::fs::create_dir_all(t.path("runs/latest")).unwrap();
    let out = t.run(&[]);
    assert!(out.stderr.contains("cannot point"), "{}", out.stderr);
    let runs = t.itera(&["runs"], 0);
    assert!(runs.stdout.contains("succeeded"), "{}", runs.stdout);

    // A truncated record does not stop gc (it warns and protects nothing of it).
    let run_dir = std::fs::read_dir(t.path("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("run.json").exists())
        .unwrap();
    let json = std::fs::read_to_string(run_dir.join("run.json")).unwrap();
    std::fs::write(run_dir.join("run.json"), &json[..json.len() / 2]).unwrap();
    let dry = t.itera(&["gc", "--keep", "1", "--dry-run"], 0);
    assert!(dry.stdout.contains("unreadable"), "{}", dry.stdout);
    t.itera(&["gc", "--keep", "1"], 0);
}

#[test]
fn a_run_folder_left_without_a_record_is_removed_by_gc() {
    let t = Test::with_pipeline(DIAMOND);
    t.run(&[]);
    // What a kill between creating the folder and writing run.json leaves.
    let dead = t.path("runs/20260101-000000-diamond-abcd");
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join("run.lock"), "").unwrap();
    let gc = t.itera(&["gc", "--keep", "1"], 0);
    assert!(gc.stdout.contains("no record"), "{}", gc.stdout);
    assert!(!dead.exists());
}

/// Mounts a small tmpfs at `dir`; `None` (with the reason) where that is not allowed.
fn small_tmpfs(dir: &Path, size: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).unwrap();
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_run_with_exit_1_a_summary_and_a_final_record() {
    let t = Test::with_pipeline(
        r#"
[pipeline]
name = "full"

[stages.small]
kind = "shell"
command = "echo ok > {out}/s"
outputs = ["s"]

[stages.big]
kind = "shell"
inputs = { s = "small" }
command = "head -c 3000000 /dev/zero > {out}/big"
outputs = ["big"]
"#,
    );
    let runs = t.path("runs");
    if let Err(why) = small_tmpfs(&runs, "2m") {
        eprintln!("skipped: cannot mount a small tmpfs here ({why})");
        return;
    }
    let _unmount = Unmount(runs.clone());
    let out = t.itera(&["run", "pipeline.toml"], 1);
    assert!(
        out.stderr.contains("1 ran, 0 cached, 1 failed"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("(os error 28): "),
        "printed twice: {}",
        out.stderr
    );
    let show = t.itera(&["show", "latest"], 0).stdout;
    assert!(show.contains(": failed"), "{show}");
    t.itera(&["verify"], 0);

    // The disk fills up outside any stage's output, so writing the record fails after
    // the run started: still exit 1, with the summary line, never "invalid input".
    t.write(
        "pipeline.toml",
        r#"
[pipeline]
name = "full"

[stages.filler]
kind = "shell"
command = "head -c 3000000 /dev/zero > {work}/../../filler; echo x > {out}/x"
outputs = ["x"]
"#,
    );
    let out = t.itera(&["run", "pipeline.toml"], 1);
    assert!(out.stderr.contains("failed after"), "{}", out.stderr);
    assert!(
        out.stderr.contains("No space left on device"),
        "{}",
        out.stderr
    );
    // Once there is room again, the record that could not be written is finalised.
    std::fs::remove_file(runs.join("filler")).unwrap();
    t.itera(&["gc", "--keep", "5"], 0);
    let runs_list = t.itera(&["runs"], 0).stdout;
    assert!(!runs_list.contains("running"), "{runs_list}");
    t.itera(&["verify"], 0);
}

#[test]
fn force_never_pulls_a_published_entry_from_under_a_reader() {
    let t = Test::with_pipeline(
        r#"
[pipeline]
name = "readers"

[stages.s]
kind = "shell"
command = "head -c 100000 /dev/zero > {out}/v"
outputs = ["v"]
"#,
    );
    t.run(&[]);
    let entry = t.store_entries().remove(0);
    let file = entry.join("out/v");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut reads, mut failures) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match std::fs::read(&file) {
                    Ok(bytes) if bytes.len() == 100_000 => {}
                    Ok(bytes) => failures.push(format!("read {} bytes", bytes.len())),
                    Err(e) => failures.push(e.to_string()),
                }
                reads += 1;
            }
            (reads, failures)
        })
    };
    for _ in 0..trials() {
        t.run(&["--force", "s"]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, failures) = reader.join().unwrap();
    assert!(reads > 0);
    assert!(
        failures.is_empty(),
        "{} of {reads} reads failed: {failures:?}",
        failures.len()
    );
    let gc = t.itera(&["gc", "--keep", "1"], 0);
    assert!(gc.stdout.contains("retired entry"), "{}", gc.stdout);
}

#[test]
fn links_that_leave_an_artifact_are_refused_and_links_inside_are_kept() {
    let t = Test::with_pipeline(
        r#"
[pipeline]
name = "links"

[stages.out]
kind = "shell"
command = "echo x > {out}/real; ln -s /etc/passwd {out}/x; ln -s .. {out}/up"
outputs = ["real"]

[stages.inside]
kind = "shell"
command = "mkdir {out}/d; echo x > {out}/d/real; ln -s d/real {out}/alias; ln -s ../alias {out}/d/back"
outputs = ["alias"]
"#,
    );
    let out = t.itera(&["run", "pipeline.toml"], 1);
    assert!(
        out.stderr.contains("`x` -> `/etc/passwd`"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("`up` -> `..`"), "{}", out.stderr);
    assert!(out.stderr.contains("cp -L"), "{}", out.stderr);
    t.itera(&["run", "pipeline.toml", "--only", "inside"], 0);
}

#[test]
fn exec_stage_reports_bad_recorded_params_and_another_build_without_panicking() {
    let t = Test::with_pipeline(DIAMOND);
    t.run(&[]);
    let run = std::fs::canonicalize(t.path("runs/latest")).unwrap();
    let json = std::fs::read_to_string(run.join("run.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["pipeline"]["stages"]["a"]["params"]["command"] = serde_json::json!(42);
    std::fs::write(run.join("run.json"), v.to_string()).unwrap();
    let run_arg = run.display().to_string();
    let out = t.itera(&["exec-stage", "--run", &run_arg, "--stage", "a"], 1);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(out.stderr.contains("`command`"), "{}", out.stderr);

    v["pipeline"]["stages"]["a"]["params"]["command"] = serde_json::json!("true");
    v["tool_version"] = serde_json::json!("0.0.1-other");
    std::fs::write(run.join("run.json"), v.to_string()).unwrap();
    let out = t.itera(&["exec-stage", "--run", &run_arg, "--stage", "a"], 1);
    assert!(
        out.stderr.contains("recorded by itera 0.0.1-other"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_failing_stage_with_a_huge_log_prints_a_short_tail_and_keeps_a_bounded_log() {
    let t = Test::with_pipeline(
        r#"
[pipeline]
name = "noisy"

[stages.noisy]
kind = "shell"
command = "echo first; head -c 20000000 /dev/zero | tr '\\0' y; exit 1"
outputs = ["never"]
"#,
    );
    let out = t.itera(&["run", "pipeline.toml"], 1);
    assert!(
        out.stderr.len() < 16_000,
        "{} bytes on stderr",
        out.stderr.len()
    );
    assert!(out.stderr.contains("line cut"), "{}", out.stderr);
    let log = t.path("runs/latest/logs/noisy.log");
    let len = std::fs::metadata(&log).unwrap().len();
    assert!(len < 10 << 20, "the log holds {len} bytes");
    let text = std::fs::read(&log).unwrap();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.starts_with("# itera: stage `noisy`"),
        "the head is kept"
    );
    assert!(text.contains("[log cut: "), "the cut is marked");
    assert!(text.contains("exited with status 1"), "the end is kept");
}

#[test]
fn a_files_stage_follows_a_named_link_but_refuses_links_leaving_a_folder() {
    let t = Test::with_pipeline(
        r#"
[pipeline]
name = "snap"

[stages.named]
kind = "files"
paths = ["alias.txt"]

[stages.folder]
kind = "files"
paths = ["data"]
"#,
    );
    t.write("real.txt", "real\n");
    std::os::unix::fs::symlink("real.txt", t.path("alias.txt")).unwrap();
    t.write("data/in.txt", "in\n");
    std::os::unix::fs::symlink("in.txt", t.path("data/ok")).unwrap();
    t.itera(&["run", "pipeline.toml"], 0);
    let copied = t
        .store_entries()
        .into_iter()
        .find_map(|e| std::fs::read_to_string(e.join("out/alias.txt")).ok());
    assert_eq!(
        copied.as_deref(),
        Some("real\n"),
        "the named link was followed"
    );

    std::os::unix::fs::symlink("/etc/passwd", t.path("data/x")).unwrap();
    let out = t.itera(&["run", "pipeline.toml"], 1);
    assert!(
        out.stderr.contains("`data/x` -> `/etc/passwd`"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_files_path_that_does_not_exist_is_invalid_input_found_by_validate() {
    let t = Test::with_pipeline(
        r#"
[pipeline]
name = "missing"

[stages.corpus]
kind = "files"
paths = ["nowhere.txt"]
"#,
    );
    let out = t.itera(&["validate", "pipeline.toml"], 2);
    assert!(
        out.stderr.contains("`nowhere.txt` does not exist"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("`paths.0`"), "{}", out.stderr);
    t.itera(&["run", "pipeline.toml"], 2);
    assert!(!t.path("runs").exists(), "nothing written under runs/");
}

#[test]
fn a_failed_stage_leaves_no_empty_work_folder() {
    let t = Test::with_pipeline(
        r#"
[pipeline]
name = "nowork"

[stages.bad]
kind = "shell"
command = "exit 3"
outputs = ["x"]
"#,
    );
    t.itera(&["run", "pipeline.toml"], 1);
    let left: Vec<_> = std::fs::read_dir(t.path("runs/work"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn four_concurrent_runs_and_a_gc_compute_each_stage_once() {
    let t = Test::with_pipeline(
        r#"
[pipeline]
name = "four"

[stages.a]
kind = "shell"
command = "echo a >> executions.log; sleep 0.2; echo 1 > {out}/v"
outputs = ["v"]

[stages.b]
kind = "shell"
inputs = { x = "a.v" }
command = "echo b >> executions.log; sleep 0.1; cat {inputs.x} > {out}/v"
outputs = ["v"]
"#,
    );
    let runs: Vec<Child> = (0..4)
        .map(|_| spawn(&t, &["run", "pipeline.toml"]))
        .collect();
    t.itera(&["gc", "--keep", "1"], 0);
    for run in runs {
        let (code, stderr) = finish(run);
        assert_eq!(code, 0, "{stderr}");
    }
    assert_eq!(t.executions(), ["a", "b"], "each stage ran once");
    t.itera(&["verify"], 0);
}
