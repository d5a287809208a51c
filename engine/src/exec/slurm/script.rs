//! The batch script of one stage: `#SBATCH` headers from the stage's resources, the
//! `setup` lines, and a wrapper that runs `itera exec-stage` and records its exit code in
//! `runs/<run>/slurm/<stage>.exitcode` (written atomically, also when the stage fails), so
//! the submitting side learns the outcome without trusting the scheduler's accounting.
//!
//! Everything that goes into the script is shell-quoted; the same POSIX single-quote form
//! is understood by sbatch's own `#SBATCH` line parser. Paths in `--output`/`--error` also
//! have `%` doubled, since sbatch expands `%j`-style patterns there.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::exec::Action;
use crate::spec::Resources;
use crate::store::Reuse;

/// Files of one stage's job inside `runs/<run>/slurm/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageFiles {
    /// `<stage>.sbatch`: the script.
    pub script: PathBuf,
    /// `<stage>.out`: the job's stdout.
    pub stdout: PathBuf,
    /// `<stage>.err`: the job's stderr.
    pub stderr: PathBuf,
    /// `<stage>.exitcode`: the wrapper's record of the command's exit code.
    pub exitcode: PathBuf,
}

impl StageFiles {
    /// The files of `stage` under `slurm_dir` (`runs/<run>/slurm`).
    pub fn new(slurm_dir: &Path, stage: &str) -> Self {
        Self {
            script: slurm_dir.join(format!("{stage}.sbatch")),
            stdout: slurm_dir.join(format!("{stage}.out")),
            stderr: slurm_dir.join(format!("{stage}.err")),
            exitcode: slurm_dir.join(format!("{stage}.exitcode")),
        }
    }
}

/// The folder of a run's SLURM files: `<run_dir>/slurm`.
pub fn slurm_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("slurm")
}

/// What goes into one stage's script.
#[derive(Debug, Clone)]
pub struct ScriptSpec<'a> {
    pub pipeline: &'a str,
    pub stage: &'a str,
    pub run_id: &'a str,
    /// The runs folder holding the store (absolute; shared with the compute nodes).
    pub runs_dir: &'a Path,
    /// The run's folder (absolute; on a filesystem the compute nodes share).
    pub run_dir: &'a Path,
    /// The job's working directory (absolute): where `itera run` was started, as with a
    /// plain `sbatch`, so relative paths in `setup` lines mean the same as on the login node.
    pub workdir: &'a Path,
    /// The `itera` binary the job runs (absolute).
    pub itera_bin: &'a Path,
    /// The stage's resources, already merged over `[pipeline.slurm]` (see [`Resources::or`]).
    pub resources: &'a Resources,
    /// What the job does (the [`Planner`](crate::exec::Planner)'s action): reuse or
    /// compute, recompute (`--force`), or recompute and compare with the recorded digest
    /// (`rerun --verify`: `exec-stage --verify-against DIGEST`).
    pub action: &'a Action,
}

/// A value that cannot be put into a batch script.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScriptError {
    /// A path is not valid UTF-8 (scripts are text).
    #[error("the path `{}` is not valid UTF-8 and cannot be written into a batch script; use a folder with a UTF-8 name", path.display())]
    NonUtf8Path { path: PathBuf },
    /// A path is relative where the job needs an absolute one.
    #[error("the {what} `{}` must be absolute: jobs start in another process, possibly on another node", path.display())]
    RelativePath { what: &'static str, path: PathBuf },
    /// A resource value that would break the `#SBATCH` header.
    #[error("stage `{stage}`: resources.{field} = {value:?} {problem}")]
    InvalidResource {
        stage: String,
        field: &'static str,
        value: String,
        problem: &'static str,
    },
}

/// The `itera` binary jobs should run: `$ITERA_BIN` if set, else the running executable.
pub fn itera_bin() -> std::io::Result<PathBuf> {
    match std::env::var_os("ITERA_BIN") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => std::env::current_exe(),
    }
}

/// Renders the batch script of one stage.
pub fn render(spec: &ScriptSpec<'_>) -> Result<String, ScriptError> {
    let files = StageFiles::new(&slurm_dir(spec.run_dir), spec.stage);
    let runs_dir = abs_utf8("runs folder", spec.runs_dir)?;
    let run_dir = abs_utf8("run folder", spec.run_dir)?;
    let workdir = abs_utf8("job working directory", spec.workdir)?;
    let bin = abs_utf8("itera binary", spec.itera_bin)?;
    let stdout = abs_utf8("job output file", &files.stdout)?;
    let stderr = abs_utf8("job error file", &files.stderr)?;
    let exitcode = abs_utf8("exit-code file", &files.exitcode)?;
    let res = spec.resources;

    let mut headers: Vec<String> = vec![
        format!("--job-name={}", job_name(spec.pipeline, spec.stage)),
        format!("--output={}", output_pattern(stdout)),
        format!("--error={}", output_pattern(stderr)),
        format!("--chdir={workdir}"),
    ];
    let field = |name: &'static str, value: &str| -> Result<(), ScriptError> {
        check_header_value(spec.stage, name, value)
    };
    if let Some(t) = &res.time {
        field("time", t)?;
        headers.push(format!("--time={t}"));
    }
    if let Some(c) = res.cpus {
        headers.push(format!("--cpus-per-task={c}"));
    }
    if let Some(m) = &res.mem {
        field("mem", m)?;
        headers.push(format!("--mem={m}"));
    }
    if let Some(g) = res.gpus {
        headers.push(format!("--gpus={g}"));
    }
    if let Some(g) = &res.gres {
        field("gres", g)?;
        headers.push(format!("--gres={g}"));
    }
    if let Some(p) = &res.partition {
        field("partition", p)?;
        headers.push(format!("--partition={p}"));
    }
    if let Some(a) = &res.account {
        field("account", a)?;
        headers.push(format!("--account={a}"));
    }
    if let Some(q) = &res.qos {
        field("qos", q)?;
        headers.push(format!("--qos={q}"));
    }
    for arg in &res.sbatch_args {
        field("sbatch_args", arg)?;
        if !arg.starts_with('-') {
            return Err(ScriptError::InvalidResource {
                stage: spec.stage.to_owned(),
                field: "sbatch_args",
                value: arg.clone(),
                problem: "is not an option: give each sbatch option as one element, with its value after `=` (e.g. \"--constraint=a100\")",
            });
        }
        headers.push(arg.clone());
    }
    for line in &res.setup {
        if line.contains('\0') {
            return Err(ScriptError::InvalidResource {
                stage: spec.stage.to_owned(),
                field: "setup",
                value: line.clone(),
                problem: "contains a NUL byte",
            });
        }
    }

    let mut s = String::from("#!/bin/bash\n");
    for h in &headers {
        let _ = writeln!(s, "#SBATCH {}", shell_quote(h));
    }
    let _ = writeln!(
        s,
        "#\n# Stage `{}` of pipeline `{}`, run {}; written by itera {}.",
        one_line(spec.stage),
        one_line(spec.pipeline),
        one_line(spec.run_id),
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        s,
        "# Submitted with `sbatch --parsable [--dependency=afterok:<upstream jobs> --kill-on-invalid-dep=yes] <this file>`."
    );
    let _ = writeln!(
        s,
        "# The wrapper writes the stage's exit code to {exitcode}, also when it fails.\n"
    );
    let _ = writeln!(s, "itera_exitcode_file={}", shell_quote(exitcode));
    s.push_str("(\n  set -e\n");
    if !res.setup.is_empty() {
        s.push_str("  # setup\n");
        for line in &res.setup {
            for l in line.lines() {
                let _ = writeln!(s, "  {l}");
            }
        }
    }
    let _ = writeln!(
        s,
        "  exec {} --runs-dir {} exec-stage --run {} --stage {}{}",
        shell_quote(bin),
        shell_quote(runs_dir),
        shell_quote(run_dir),
        shell_quote(spec.stage),
        match (spec.action.reuse(), spec.action.verify_against()) {
            (_, Some(digest)) => format!(" --verify-against {digest}"),
            (Reuse::Recompute, None) => " --force".to_owned(),
            (Reuse::Allow, None) => String::new(),
        }
    );
    s.push_str(")\n");
    s.push_str(concat!(
        "itera_status=$?\n",
        "printf '%s\\n' \"$itera_status\" > \"$itera_exitcode_file.tmp.$$\" \\\n",
        "  && mv -f \"$itera_exitcode_file.tmp.$$\" \"$itera_exitcode_file\"\n",
        "exit \"$itera_status\"\n",
    ));
    Ok(s)
}

/// `itera-<pipeline>-<stage>`: the job name shown by `squeue`.
pub fn job_name(pipeline: &str, stage: &str) -> String {
    one_line(&format!("itera-{pipeline}-{stage}")).into_owned()
}

/// Quotes `s` for a POSIX shell (and sbatch's `#SBATCH` parser); safe words stay bare.
pub fn shell_quote(s: &str) -> Cow<'_, str> {
    let safe = !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b'/' | b':' | b'=' | b',' | b'+' | b'@'
                )
        });
    if safe {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("'{}'", s.replace('\'', r"'\''")))
    }
}

/// sbatch expands `%j`, `%x`, ... in `--output`/`--error`; `%%` is a literal `%`.
fn output_pattern(path: &str) -> String {
    path.replace('%', "%%")
}

fn one_line(s: &str) -> Cow<'_, str> {
    if s.contains(['\n', '\r']) {
        Cow::Owned(s.replace(['\n', '\r'], " "))
    } else {
        Cow::Borrowed(s)
    }
}

fn abs_utf8<'p>(what: &'static str, path: &'p Path) -> Result<&'p str, ScriptError> {
    if !path.is_absolute() {
        return Err(ScriptError::RelativePath {
            what,
            path: path.to_owned(),
        });
    }
    path.to_str().ok_or_else(|| ScriptError::NonUtf8Path {
        path: path.to_owned(),
    })
}

fn check_header_value(stage: &str, field: &'static str, value: &str) -> Result<(), ScriptError> {
    let problem = if value.is_empty() {
        Some("is empty")
    } else if value.contains(['\n', '\r', '\0']) {
        Some("contains a line break, which would end the #SBATCH line")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ScriptError::InvalidResource {
            stage: stage.to_owned(),
            field,
            value: value.to_owned(),
            problem,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(res: &'a Resources, run_dir: &'a Path, stage: &'a str) -> ScriptSpec<'a> {
        ScriptSpec {
            pipeline: "phase8",
            stage,
            run_id: "20261126-1200-abcd",
            runs_dir: run_dir.parent().unwrap_or(run_dir),
            run_dir,
            workdir: Path::new("/home/me/study"),
            itera_bin: Path::new("/opt/itera/bin/itera"),
            resources: res,
            action: &Action::Reuse,
        }
    }

    #[test]
    fn seed_resources_become_headers() {
        let res = Resources {
            time: Some("02:00:00".into()),
            cpus: Some(4),
            mem: Some("32GB".into()),
            gres: Some("gpu:1".into()),
            partition: Some("gpu".into()),
            account: Some("lab".into()),
            qos: Some("normal".into()),
            gpus: Some(1),
            sbatch_args: vec!["--constraint=a100".into()],
            setup: vec![
                "module load cuda/12.1".into(),
                "source .venv/bin/activate".into(),
            ],
            local: None,
        };
        let run = Path::new("/shared/runs/r1");
        let s = render(&spec(&res, run, "train")).unwrap();
        let expected_headers = [
            "#SBATCH --job-name=itera-phase8-train",
            "#SBATCH --output=/shared/runs/r1/slurm/train.out",
            "#SBATCH --error=/shared/runs/r1/slurm/train.err",
            "#SBATCH --chdir=/home/me/study",
            "#SBATCH --time=02:00:00",
            "#SBATCH --cpus-per-task=4",
            "#SBATCH --mem=32GB",
            "#SBATCH --gpus=1",
            "#SBATCH --gres=gpu:1",
            "#SBATCH --partition=gpu",
            "#SBATCH --account=lab",
            "#SBATCH --qos=normal",
            "#SBATCH --constraint=a100",
        ];
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "#!/bin/bash");
        assert_eq!(&lines[1..=expected_headers.len()], &expected_headers);
        // Setup lines come before the command, in order, inside the `set -e` subshell.
        let cuda = s.find("  module load cuda/12.1\n").unwrap();
        let venv = s.find("  source .venv/bin/activate\n").unwrap();
        let exec = s
            .find("  exec /opt/itera/bin/itera --runs-dir /shared/runs exec-stage --run /shared/runs/r1 --stage train\n")
            .unwrap();
        assert!(s.find("set -e").unwrap() < cuda && cuda < venv && venv < exec);
        assert!(s.contains("itera_exitcode_file=/shared/runs/r1/slurm/train.exitcode\n"));
        assert!(s.ends_with("exit \"$itera_status\"\n"));
    }

    #[test]
    fn nothing_requested_means_scheduler_defaults() {
        let res = Resources::default();
        let s = render(&spec(&res, Path::new("/r"), "fetch")).unwrap();
        let headers: Vec<&str> = s.lines().filter(|l| l.starts_with("#SBATCH")).collect();
        assert_eq!(headers.len(), 4, "{s}");
        assert!(!s.contains("# setup"));
    }

    #[test]
    fn quoting_survives_nasty_names() {
        let res = Resources::default();
        let run = Path::new("/tmp/it's a \"run\" $HOME `x` 100%");
        let s = render(&spec(&res, run, "st'age")).unwrap();
        assert!(
            s.contains(r#"#SBATCH '--job-name=itera-phase8-st'\''age'"#),
            "{s}"
        );
        assert!(
            s.contains(
                r#"#SBATCH '--output=/tmp/it'\''s a "run" $HOME `x` 100%%/slurm/st'\''age.out'"#
            ),
            "{s}"
        );
        assert!(s.contains(r#"--run '/tmp/it'\''s a "run" $HOME `x` 100%' --stage 'st'\''age'"#));
    }

    #[test]
    fn quote_round_trips_through_sh() {
        for word in [
            "plain", "", "a b", "it's", "$HOME", "`id`", "a\nb", "100%", "\\", "'",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(word)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), word);
        }
    }

    #[test]
    fn header_breaking_values_are_refused() {
        let res = Resources {
            partition: Some("gpu\n#SBATCH --mem=1T".into()),
            ..Resources::default()
        };
        let err = render(&spec(&res, Path::new("/r"), "train")).unwrap_err();
        assert!(matches!(
            err,
            ScriptError::InvalidResource {
                field: "partition",
                ..
            }
        ));
        let res = Resources {
            sbatch_args: vec!["constraint=a100".into()],
            ..Resources::default()
        };
        let err = render(&spec(&res, Path::new("/r"), "train")).unwrap_err();
        assert!(err.to_string().contains("--constraint=a100"), "{err}");
    }

    #[test]
    fn relative_run_dir_is_refused() {
        let res = Resources::default();
        let err = render(&spec(&res, Path::new("runs/r1"), "train")).unwrap_err();
        assert!(matches!(err, ScriptError::RelativePath { .. }), "{err}");
    }
}
