//! `kind = "shell"`: runs a command with declared inputs and outputs, so a pipeline can
//! add a step without writing Rust. The command (a string for `sh -c`, or an argv list)
//! may use placeholders: `{inputs.NAME}` (an input's path; several paths are joined by
//! spaces), `{out}` (the artifact folder to write into), `{work}` (resumable scratch),
//! `{threads}` and `{seed}`. stdout and stderr go to the stage log. A non-zero exit fails
//! the stage; every declared output must exist afterwards.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use itera_engine::stage::{OutputDecl, ParamIssue, StageContext, StageKind};
use itera_engine::supervise;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Parameters of a `shell` stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellParams {
    /// Command line run with `sh -c`. Placeholders: `{inputs.NAME}`, `{out}`, `{work}`,
    /// `{threads}`, `{seed}`. Give either `command` or `argv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Program and arguments, run without a shell (same placeholders in every element).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Extra environment variables (they enter the cache key; the inherited environment
    /// does not).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Files or folders the command must create inside `{out}` (relative paths). Each is
    /// a named output, named by its file name: `inputs = { x = "stage.result.txt" }`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
}

/// The `shell` kind.
pub struct Shell;

/// The output name of a declared output path: its file name.
fn output_name(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
}

impl StageKind for Shell {
    type Params = ShellParams;
    const KIND: &'static str = "shell";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "Run a shell command (or argv) that writes its declared outputs into {out}";

    fn validate(p: &ShellParams) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        match (&p.command, &p.argv) {
            (None, None) => issues.push(
                ParamIssue::new("", "a shell stage needs `command` or `argv`")
                    .with_help("add e.g. `command = \"echo hi > {out}/hi.txt\"`"),
            ),
            (Some(_), Some(_)) => issues.push(
                ParamIssue::new("argv", "give either `command` or `argv`, not both")
                    .with_help("`command` runs through `sh -c`; `argv` runs a program directly"),
            ),
            (Some(c), None) if c.trim().is_empty() => {
                issues.push(ParamIssue::new("command", "the command is empty"))
            }
            (None, Some(a)) if a.is_empty() || a[0].is_empty() => issues.push(ParamIssue::new(
                "argv",
                "argv needs at least the program to run",
            )),
            _ => {}
        }
        let mut names = BTreeMap::new();
        for (i, out) in p.outputs.iter().enumerate() {
            let at = format!("outputs.{i}");
            let path = Path::new(out);
            if out.is_empty() || path.is_absolute() {
                issues.push(ParamIssue::new(
                    &at,
                    format!("output `{out}` must be a relative path inside {{out}}"),
                ));
            } else if path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                issues.push(ParamIssue::new(
                    &at,
                    format!("output `{out}` must not leave {{out}} (no `..`)"),
                ));
            } else if let Some(first) = names.insert(output_name(out), out) {
                issues.push(
                    ParamIssue::new(
                        &at,
                        format!(
                            "outputs `{first}` and `{out}` have the same name `{}`",
                            output_name(out)
                        ),
                    )
                    .with_help("outputs are referenced by file name, so file names must differ"),
                );
            }
        }
        for key in p.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                issues.push(ParamIssue::new(
                    &format!("env.{key}"),
                    format!("`{key}` is not a valid environment variable name"),
                ));
            }
        }
        issues
    }

    fn outputs(p: &ShellParams) -> Vec<OutputDecl> {
        p.outputs
            .iter()
            .map(|o| OutputDecl::new(output_name(o), o.trim_end_matches('/')))
            .collect()
    }

    fn run(p: &ShellParams, ctx: &StageContext) -> anyhow::Result<()> {
        let mut cmd = match (&p.command, &p.argv) {
            (Some(c), _) => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c").arg(expand(c, ctx)?);
                cmd
            }
            (None, Some(argv)) => {
                let argv: Vec<String> = argv
                    .iter()
                    .map(|a| expand(a, ctx))
                    .collect::<anyhow::Result<_>>()?;
                let mut cmd = Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                cmd
            }
            (None, None) => bail!("a shell stage needs `command` or `argv`"),
        };
        let threads = ctx.threads.to_string();
        let (log_pipe, pump) = ctx.log.child_pipe()?;
        cmd.current_dir(&ctx.base_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_pipe.try_clone()?))
            .stderr(Stdio::from(log_pipe))
            .env("ITERA_STAGE", &ctx.stage)
            .env("ITERA_OUT", &ctx.out_dir)
            .env("ITERA_WORK", &ctx.work_dir)
            .env("ITERA_SEED", ctx.seed.to_string())
            .env("ITERA_THREADS", &threads)
            .env("OMP_NUM_THREADS", &threads)
            .env("RAYON_NUM_THREADS", &threads)
            .envs(&p.env);
        contain(&mut cmd);
        let shown = p
            .command
            .clone()
            .unwrap_or_else(|| p.argv.clone().unwrap_or_default().join(" "));
        ctx.log.line(format!("$ {shown}"));
        let spawned = supervise::spawn(&mut cmd);
        // Our copies of the log pipe's write end: the pump ends once the command's close.
        drop(cmd);
        let mut running = spawned.with_context(|| format!("cannot start `{shown}`"))?;
        let status = wait(&mut running.child, ctx);
        running.finish();
        let _ = pump.join();
        check_status(status?)
    }
}

/// Waits for the child, terminating it if the run is cancelled.
fn wait(child: &mut std::process::Child, ctx: &StageContext) -> anyhow::Result<ExitStatus> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if ctx.cancel.is_cancelled() {
            terminate(child);
            let _ = child.wait();
            bail!("cancelled; the command was stopped");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// SIGTERM to the command's process group (the command and everything it started), then
/// SIGKILL after a grace period.
fn terminate(child: &mut std::process::Child) {
    let group = i32::try_from(child.id()).ok().map(|pid| -pid);
    let signal_group = |sig: libc::c_int| {
        if let Some(g) = group {
            // SAFETY: kill(2) on the process group our child leads.
            unsafe { libc::kill(g, sig) };
        }
    };
    signal_group(libc::SIGTERM);
    for _ in 0..50 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            signal_group(libc::SIGKILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    signal_group(libc::SIGKILL);
    let _ = child.kill();
}

/// The command leads its own session and process group ([`supervise::spawn`]), so
/// cancelling reaches everything it started, and its supervisor kills the group if itera
/// dies (`kill -9`, a second Ctrl-C), so no stray command keeps writing. On Linux the
/// command itself also dies with the itera thread that started it.
fn contain(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl is async-signal-safe and touches only the child's own state.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
}

fn check_status(status: ExitStatus) -> anyhow::Result<()> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return Ok(());
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => bail!("the command exited with status {code}"),
        (None, Some(sig)) => bail!("the command was killed by signal {sig}"),
        _ => bail!("the command failed ({status})"),
    }
}

/// Replaces the placeholders in `text`. Other braces (awk, shell brace expansion) are
/// left alone.
fn expand(text: &str, ctx: &StageContext) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return Ok(out);
        };
        let name = &after[..close];
        let value =
            match name {
                "out" => Some(ctx.out_dir.display().to_string()),
                "work" => Some(ctx.work_dir.display().to_string()),
                "threads" => Some(ctx.threads.to_string()),
                "seed" => Some(ctx.seed.to_string()),
                _ => match name.strip_prefix("inputs.") {
                    Some(input) => {
                        let list = ctx.inputs_of(input);
                        if list.is_empty() {
                            let known: Vec<&String> = ctx.inputs.keys().collect();
                            bail!(
                            "`{{inputs.{input}}}` names no input of stage `{}` (its inputs: {})",
                            ctx.stage,
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                            }
                        );
                        }
                        Some(
                            list.iter()
                                .map(|a| a.path.display().to_string())
                                .collect::<Vec<_>>()
                                .join(" "),
                        )
                    }
                    None => None,
                },
            };
        match value {
            Some(v) => out.push_str(&v),
            None => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use itera_engine::stage::{CancelToken, InputArtifact, Progress, StageLog};

    fn ctx(dir: &Path) -> StageContext {
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        StageContext {
            stage: "s".into(),
            inputs: BTreeMap::from([(
                "data".to_owned(),
                vec![InputArtifact {
                    stage: "up".into(),
                    output: None,
                    path: dir.join("in"),
                    digest: itera_engine::store::Digest::of_bytes(b"input"),
                }],
            )]),
            out_dir: out,
            work_dir: dir.join("work"),
            base_dir: dir.to_owned(),
            seed: 42,
            threads: 3,
            progress: Progress::null(),
            log: StageLog::open(&dir.join("s.log")).unwrap(),
            cancel: CancelToken::default(),
        }
    }

    fn params(toml_text: &str) -> Result<ShellParams, Vec<ParamIssue>> {
        let p: ShellParams =
            toml::from_str(toml_text).map_err(|e| vec![ParamIssue::new("", e.to_string())])?;
        let issues = Shell::validate(&p);
        if issues.is_empty() {
            Ok(p)
        } else {
            Err(issues)
        }
    }

    #[test]
    fn validation_table() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"command = "true""#, None),
            (r#"argv = ["true"]"#, None),
            ("", Some("a shell stage needs `command` or `argv`")),
            (
                r#"command = "x"
argv = ["x"]"#,
                Some("give either `command` or `argv`, not both"),
            ),
            (r#"command = "  ""#, Some("the command is empty")),
            ("argv = []", Some("argv needs at least the program to run")),
            (
                r#"command = "x"
outputs = ["/abs"]"#,
                Some("output `/abs` must be a relative path inside {out}"),
            ),
            (
                r#"command = "x"
outputs = ["../up"]"#,
                Some("output `../up` must not leave {out} (no `..`)"),
            ),
            (
                r#"command = "x"
outputs = ["a/r.txt", "b/r.txt"]"#,
                Some("outputs `a/r.txt` and `b/r.txt` have the same name `r.txt`"),
            ),
            (
                r#"command = "x"
cmd = 1"#,
                Some("unknown field `cmd`"),
            ),
        ];
        for (text, expected) in cases {
            let got = params(text).err().map(|i| i[0].message.clone());
            match expected {
                None => assert_eq!(got, None, "{text}"),
                Some(e) => assert!(got.as_deref().unwrap_or("").contains(e), "{text}: {got:?}"),
            }
        }
    }

    #[test]
    fn placeholders_expand_and_other_braces_stay() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(dir.path());
        let s = expand(
            "cp {inputs.data}/x {out}/y; awk '{print $1}' {threads} {seed} {work}",
            &c,
        )
        .unwrap();
        let d = dir.path().display();
        assert_eq!(
            s,
            format!("cp {d}/in/x {d}/out/y; awk '{{print $1}}' 3 42 {d}/work")
        );
        let err = expand("{inputs.nope}", &c).unwrap_err().to_string();
        assert!(err.contains("its inputs: data"), "{err}");
    }

    #[test]
    fn runs_the_command_logs_output_and_reports_failure() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(dir.path());
        let ok = params(
            r#"command = "echo hello; echo oops >&2; echo $GREETING $ITERA_THREADS > {out}/r.txt"
env = { GREETING = "hi" }
outputs = ["r.txt"]"#,
        )
        .unwrap();
        Shell::run(&ok, &c).unwrap();
        assert_eq!(
            std::fs::read_to_string(c.out_dir.join("r.txt")).unwrap(),
            "hi 3\n"
        );
        let log = std::fs::read_to_string(dir.path().join("s.log")).unwrap();
        assert!(log.contains("hello\n") && log.contains("oops\n"), "{log}");
        assert_eq!(Shell::outputs(&ok), [OutputDecl::new("r.txt", "r.txt")]);

        let bad = params(r#"argv = ["sh", "-c", "exit 3"]"#).unwrap();
        let err = Shell::run(&bad, &c).unwrap_err().to_string();
        assert_eq!(err, "the command exited with status 3");
    }

    #[test]
    fn a_cancelled_command_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(dir.path());
        let p = params(r#"command = "sleep 30""#).unwrap();
        let cancel = c.cancel.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            cancel.cancel();
        });
        let started = std::time::Instant::now();
        let err = Shell::run(&p, &c).unwrap_err().to_string();
        t.join().unwrap();
        assert!(err.contains("cancelled"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
