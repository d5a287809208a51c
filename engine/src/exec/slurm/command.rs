//! Running one SLURM client command (`sbatch`, `squeue`, `scontrol`, `sacct`, `scancel`)
//! with a time limit, capturing its output. A client whose controller is unreachable can
//! hang for a minute or more; the limit keeps a poll or a submission from stalling forever.

use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::script::shell_quote;

/// Default limit for one client command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// What a finished client command printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stderr, or stdout when stderr is empty, trimmed: the scheduler's message.
    pub fn message(&self) -> String {
        let err = self.stderr.trim();
        if err.is_empty() {
            self.stdout.trim().to_owned()
        } else {
            err.to_owned()
        }
    }
}

/// A client command that could not be run to completion.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program is not on `PATH`.
    #[error("`{program}` was not found on PATH: is this a SLURM login node? (load the slurm module or add its bin folder to PATH)")]
    NotFound { program: String },
    /// Starting the program failed for another reason.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// The program ran longer than allowed and was killed.
    #[error("`{command}` did not answer within {}s and was stopped (is slurmctld reachable?)", after.as_secs())]
    TimedOut { command: String, after: Duration },
}

/// Runs `program args...` (in `cwd` if given), waiting at most `timeout`.
pub fn run(
    program: &str,
    args: &[String],
    cwd: Option<&Path>,
    timeout: Duration,
) -> Result<Output, CommandError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            CommandError::NotFound {
                program: program.to_owned(),
            }
        } else {
            CommandError::Spawn {
                command: display(program, args),
                source,
            }
        }
    })?;
    // Read both pipes on threads so a chatty command cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().expect("stdout is piped");
    let mut err_pipe = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let status: ExitStatus = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CommandError::TimedOut {
                    command: display(program, args),
                    after: timeout,
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(source) => {
                return Err(CommandError::Spawn {
                    command: display(program, args),
                    source,
                })
            }
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Output {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// `program args...` as a shell would need it typed.
pub fn display(program: &str, args: &[String]) -> String {
    let mut s = shell_quote(program).into_owned();
    for a in args {
        s.push(' ');
        s.push_str(&shell_quote(a));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_code() {
        let out = run(
            "sh",
            &["-c".into(), "echo out; echo err >&2; exit 4".into()],
            None,
            DEFAULT_TIMEOUT,
        )
        .unwrap();
        assert_eq!(out.code, Some(4));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.message(), "err");
    }

    #[test]
    fn missing_program_is_named() {
        let err = run("itera-no-such-program", &[], None, DEFAULT_TIMEOUT).unwrap_err();
        assert!(matches!(err, CommandError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("itera-no-such-program"));
    }

    #[test]
    fn slow_program_is_stopped() {
        let start = Instant::now();
        let err = run("sleep", &["30".into()], None, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, CommandError::TimedOut { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
