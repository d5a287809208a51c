//! The `Test` builder: a temporary folder with pipeline files, the `itera` binary run in
//! it (runs go to `./runs`), and a redactor for snapshots (run ids, digests, durations,
//! clock times and the temporary path are masked).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const ITERA: &str = env!("CARGO_BIN_EXE_itera");

/// The binary under test: `ITERA_TEST_BIN` when set (to run the suite against another
/// build, e.g. to check that a new test fails on the old code), else this build's.
pub fn itera_bin() -> String {
    std::env::var("ITERA_TEST_BIN").unwrap_or_else(|_| ITERA.to_owned())
}

/// A diamond of shell stages: `a` -> `b`, `c` -> `d`. Every stage appends its name to
/// `executions.log` (in the pipeline folder, the commands' working folder).
pub const DIAMOND: &str = r#"
[pipeline]
name = "diamond"
seed = 7

[stages.a]
kind = "shell"
command = "echo a >> executions.log; echo alpha > {out}/a.txt"
outputs = ["a.txt"]

[stages.b]
kind = "shell"
inputs = { up = "a" }
command = "echo b >> executions.log; cat {inputs.up}/a.txt > {out}/b.txt; echo beta >> {out}/b.txt"
outputs = ["b.txt"]

[stages.c]
kind = "shell"
inputs = { text = "a.a.txt" }
env = { LEVEL = "1" }
command = "echo c >> executions.log; tr a-z A-Z < {inputs.text} > {out}/c.txt; echo $LEVEL >> {out}/c.txt"
outputs = ["c.txt"]

[stages.d]
kind = "shell"
inputs = { left = "b", right = "c.c.txt" }
command = "echo d >> executions.log; cat {inputs.left}/b.txt {inputs.right} > {out}/d.txt"
outputs = ["d.txt"]
"#;

pub struct Test {
    dir: tempfile::TempDir,
}

/// What a command printed and returned.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Test {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A test folder holding `pipeline.toml`.
    pub fn with_pipeline(toml: &str) -> Self {
        let t = Self::new();
        t.write("pipeline.toml", toml);
        t
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) -> &Self {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
        self
    }

    /// A command running `itera args...` in the test folder.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(itera_bin());
        cmd.args(args)
            .current_dir(self.root())
            .env_remove("ITERA_RUNS_DIR")
            .env_remove("RUST_LOG")
            .env_remove("ITERA_KERNELS")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `itera args...` and checks its exit code.
    pub fn itera(&self, args: &[&str], expected_code: i32) -> Output {
        let out = self.command(args).output().expect("itera runs");
        let output = Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert_eq!(
            output.code, expected_code,
            "itera {args:?} exited with {}, expected {expected_code}\n--- stdout\n{}\n--- stderr\n{}",
            output.code, output.stdout, output.stderr
        );
        output
    }

    /// `itera run pipeline.toml extra...`, expecting success.
    pub fn run(&self, extra: &[&str]) -> Output {
        let mut args = vec!["run", "pipeline.toml"];
        args.extend_from_slice(extra);
        self.itera(&args, 0)
    }

    /// The stage names in `executions.log` (sorted), clearing it.
    pub fn executions(&self) -> Vec<String> {
        let path = self.path("executions.log");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        let mut names: Vec<String> = text.lines().map(str::to_owned).collect();
        names.sort();
        names
    }

    /// Store entry folders (`runs/store/<key>`).
    pub fn store_entries(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.path("runs/store"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Masks what changes between runs so output can be snapshotted.
    pub fn redact(&self, text: &str) -> String {
        let root = self.root().display().to_string();
        let canonical = std::fs::canonicalize(self.root())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| root.clone());
        text.replace(&itera_bin(), "itera")
            .replace(&canonical, "[DIR]")
            .replace(&root, "[DIR]")
    }
}

/// insta settings with the redaction filters.
pub fn snapshot_settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path("snapshots");
    s.set_prepend_module_to_snapshot(false);
    s.add_filter(r"\d{8}-\d{6}-[A-Za-z0-9_-]+-[0-9a-f]{4}", "[RUN]");
    s.add_filter(r"\b[0-9a-f]{64}\b", "[DIGEST]");
    s.add_filter(r"\b[0-9a-f]{12}\b", "[SHORT]");
    s.add_filter(r"\b\d+\.\ds\b", "[DUR]");
    s.add_filter(r"\[\d{2}:\d{2}:\d{2}\]", "[TIME]");
    s.add_filter(
        r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z",
        "[TIMESTAMP]",
    );
    s.add_filter(r"pid \d+ on [^)\s]+", "pid [PID] on [HOST]");
    s.add_filter(r"on \d+ cores", "on [N] cores");
    s.add_filter(r"host:( +)\S+ \(\d+ cores\)", "host:$1[HOST] ([N] cores)");
    s.add_filter(r"\d+ thread\(s\)|\d+ threads?\b", "[N] threads");
    s
}
