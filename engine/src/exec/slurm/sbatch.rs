//! Submitting a batch script: `sbatch --parsable`, with dependencies on upstream jobs,
//! retries with backoff when the controller is briefly unreachable or busy, and a
//! classification of refusals (bad partition, impossible resources, bad account) that
//! keeps the scheduler's own message.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::command::{self, CommandError, Output};

/// A SLURM job id as `sbatch --parsable` printed it: `id` or `id;cluster`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId {
    pub id: String,
    /// The cluster, on multi-cluster (federated) installations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

impl JobId {
    /// Parses `sbatch --parsable` output (`"1234"`, `"1234;cluster"`).
    pub fn parse(parsable: &str) -> Option<JobId> {
        let line = parsable.lines().map(str::trim).rfind(|l| !l.is_empty())?;
        let (id, cluster) = match line.split_once(';') {
            Some((id, cluster)) => (id, Some(cluster.trim().to_owned())),
            None => (line, None),
        };
        let id = id.trim();
        let valid = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit() || b == b'_');
        valid.then(|| JobId {
            id: id.to_owned(),
            cluster: cluster.filter(|c| !c.is_empty()),
        })
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cluster {
            Some(c) => write!(f, "{};{}", self.id, c),
            None => f.write_str(&self.id),
        }
    }
}

/// How often and how patiently to retry a transient `sbatch` failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// Wait before the second try; doubled after each failure.
    pub initial_delay: Duration,
    /// Longest wait between tries.
    pub max_delay: Duration,
    /// Limit for one `sbatch` call.
    pub call_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 6,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            call_timeout: command::DEFAULT_TIMEOUT,
        }
    }
}

/// Why a submission failed.
#[derive(Debug, thiserror::Error)]
pub enum SbatchError {
    /// The scheduler refused the job; retrying will not help. `message` is sbatch's own.
    #[error("sbatch refused `{}`: {message}{}", script.display(), hint.map(|h| format!("\n  help: {h}")).unwrap_or_default())]
    Rejected {
        script: std::path::PathBuf,
        message: String,
        hint: Option<&'static str>,
    },
    /// Every try failed in a way that usually passes (controller busy or unreachable).
    #[error("sbatch kept failing for `{}` after {attempts} tries: {message}\n  help: check that slurmctld is up (`sinfo`), then submit again; cached stages are not redone", script.display())]
    GaveUp {
        script: std::path::PathBuf,
        attempts: u32,
        message: String,
    },
    /// sbatch succeeded but printed no job id.
    #[error("sbatch accepted `{}` but printed no job id (output: {output:?})", script.display())]
    NoJobId {
        script: std::path::PathBuf,
        output: String,
    },
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// What kind of failure an sbatch message describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Worth retrying after a pause.
    Transient,
    /// The request itself is wrong or cannot be met.
    Permanent,
}

/// Messages of failures that pass by themselves (controller restarting, overloaded, or
/// a network hiccup).
const TRANSIENT: &[&str] = &[
    "socket timed out",
    "resource temporarily unavailable",
    "temporarily unable",
    "connection refused",
    "unable to contact slurm controller",
    "zero bytes were transmitted",
    "slurmctld is busy",
    "communication connection failure",
    "connection timed out",
    "timed out",
];

/// Classifies sbatch's failure message.
pub fn classify(message: &str) -> FailureKind {
    let m = message.to_ascii_lowercase();
    if TRANSIENT.iter().any(|t| m.contains(t)) {
        FailureKind::Transient
    } else {
        FailureKind::Permanent
    }
}

/// A hint for a permanent refusal, when the message is one we recognise.
pub fn hint(message: &str) -> Option<&'static str> {
    let m = message.to_ascii_lowercase();
    if m.contains("invalid partition") {
        Some("`sinfo -s` lists the partitions; set `partition` in [pipeline.slurm] or [stages.NAME.resources]")
    } else if m.contains("requested node configuration is not available")
        || m.contains("memory specification can not be satisfied")
    {
        Some("no node of the partition has that much memory/CPUs/GPUs; `sinfo -o '%P %c %m %G'` shows what nodes offer")
    } else if m.contains("invalid account")
        || m.contains("invalid qos")
        || m.contains("association")
    {
        Some("`sacctmgr show assoc user=$USER` lists the accounts and QOS you may use")
    } else if m.contains("gres") {
        Some("`sinfo -o '%P %G'` shows the generic resources per partition (e.g. gres = \"gpu:1\")")
    } else if m.contains("time limit") || m.contains("--time") {
        Some("time is [days-]hours:minutes:seconds, within the partition's limit (`sinfo -o '%P %l'`)")
    } else {
        None
    }
}

/// Submits `script` (run from `cwd`) after the jobs in `after_ok` succeed; retries
/// transient failures per `policy`, and calls `on_retry(attempt, message, delay)` before
/// each pause.
pub fn submit(
    script: &Path,
    after_ok: &[JobId],
    cwd: &Path,
    policy: &RetryPolicy,
    mut on_retry: impl FnMut(u32, &str, Duration),
) -> Result<JobId, SbatchError> {
    let args = arguments(script, after_ok);
    let mut delay = policy.initial_delay;
    let mut attempt = 1;
    loop {
        let outcome = command::run("sbatch", &args, Some(cwd), policy.call_timeout);
        let message = match outcome {
            Ok(out) if out.success() => {
                return JobId::parse(&out.stdout).ok_or_else(|| SbatchError::NoJobId {
                    script: script.to_owned(),
                    output: out.stdout.clone(),
                })
            }
            Ok(out) => failure_message(&out),
            Err(CommandError::TimedOut { command, after }) => {
                format!("`{command}` timed out after {}s", after.as_secs())
            }
            Err(e) => return Err(e.into()),
        };
        if classify(&message) == FailureKind::Permanent {
            return Err(SbatchError::Rejected {
                script: script.to_owned(),
                hint: hint(&message),
                message,
            });
        }
        // A timed-out submission may have gone through: adopt the job instead of
        // queueing a second copy.
        if let Some(id) = find_submitted(script) {
            return Ok(id);
        }
        if attempt >= policy.attempts {
            return Err(SbatchError::GaveUp {
                script: script.to_owned(),
                attempts: attempt,
                message,
            });
        }
        on_retry(attempt, &message, delay);
        std::thread::sleep(delay);
        delay = (delay * 2).min(policy.max_delay);
        attempt += 1;
    }
}

/// The sbatch command line for `script` depending on `after_ok`.
pub fn arguments(script: &Path, after_ok: &[JobId]) -> Vec<String> {
    let mut args = vec!["--parsable".to_owned()];
    if !after_ok.is_empty() {
        let ids: Vec<&str> = after_ok.iter().map(|j| j.id.as_str()).collect();
        args.push(format!("--dependency=afterok:{}", ids.join(":")));
        args.push("--kill-on-invalid-dep=yes".to_owned());
    }
    args.push(script.to_string_lossy().into_owned());
    args
}

/// sbatch's message with its `sbatch: error: ` prefixes removed.
fn failure_message(out: &Output) -> String {
    let msg = out.message();
    let lines: Vec<&str> = msg
        .lines()
        .map(|l| l.trim())
        .map(|l| l.strip_prefix("sbatch: error: ").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        format!("sbatch exited with {:?} and printed nothing", out.code)
    } else {
        lines.join("; ")
    }
}

/// A queued or finished job whose command is `script`, if one exists (`squeue` `%o`).
fn find_submitted(script: &Path) -> Option<JobId> {
    let name = script.to_str()?;
    let out = command::run(
        "squeue",
        &[
            "-h".into(),
            "-t".into(),
            "all".into(),
            "--me".into(),
            "-o".into(),
            "%i|%o".into(),
        ],
        None,
        command::DEFAULT_TIMEOUT,
    )
    .ok()
    .filter(Output::success)?;
    out.stdout.lines().find_map(|l| {
        let (id, cmd) = l.split_once('|')?;
        (cmd == name).then(|| JobId {
            id: id.trim().to_owned(),
            cluster: None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_parsable_output() {
        assert_eq!(JobId::parse("1234\n").unwrap().to_string(), "1234");
        let j = JobId::parse("77;cluster2\n").unwrap();
        assert_eq!(
            (j.id.as_str(), j.cluster.as_deref()),
            ("77", Some("cluster2"))
        );
        // Site banners may precede the id.
        assert_eq!(JobId::parse("Submitted to gpu\n42\n").unwrap().id, "42");
        assert!(JobId::parse("").is_none());
        assert!(JobId::parse("Submitted batch job 12").is_none());
    }

    /// Messages captured from Slurm 22.05 (stderr of `sbatch --parsable`), and messages
    /// documented in Slurm's error table for the transient cases.
    #[test]
    fn classifies_real_messages() {
        let permanent = [
            "sbatch: error: invalid partition specified: nope\nsbatch: error: Batch job submission failed: Invalid partition name specified",
            "sbatch: error: Memory specification can not be satisfied\nsbatch: error: Batch job submission failed: Requested node configuration is not available",
            "sbatch: error: Invalid generic resource (gres) specification",
            "sbatch: error: Invalid --time specification",
            "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
            "sbatch: error: Batch job submission failed: Invalid qos specification",
            "sbatch: unrecognized option '--bogusflag'\nTry \"sbatch --help\" for more information",
        ];
        for m in permanent {
            assert_eq!(classify(m), FailureKind::Permanent, "{m}");
        }
        let transient = [
            "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation",
            "sbatch: error: Batch job submission failed: Resource temporarily unavailable",
            "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying",
            "sbatch: error: slurm_persist_conn_open_without_init: failed to open persistent connection to host:localhost:6819: Connection refused",
            "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
            "sbatch: error: Batch job submission failed: Zero Bytes were transmitted or received",
        ];
        for m in transient {
            assert_eq!(classify(m), FailureKind::Transient, "{m}");
        }
    }

    #[test]
    fn hints_for_common_refusals() {
        assert!(hint("Invalid partition name specified")
            .unwrap()
            .contains("sinfo"));
        assert!(hint("Requested node configuration is not available").is_some());
        assert!(
            hint("Invalid account or account/partition combination specified")
                .unwrap()
                .contains("sacctmgr")
        );
        assert!(hint("something new").is_none());
    }

    #[test]
    fn failure_message_strips_prefixes() {
        let out = Output {
            code: Some(1),
            stdout: String::new(),
            stderr: "sbatch: error: invalid partition specified: nope\nsbatch: error: Batch job submission failed: Invalid partition name specified\n".into(),
        };
        assert_eq!(
            failure_message(&out),
            "invalid partition specified: nope; Batch job submission failed: Invalid partition name specified"
        );
    }

    #[test]
    fn dependencies_go_on_the_command_line() {
        let a = JobId::parse("3").unwrap();
        let b = JobId::parse("5").unwrap();
        let args = arguments(Path::new("/r/slurm/x.sbatch"), &[a, b]);
        assert_eq!(
            args,
            [
                "--parsable",
                "--dependency=afterok:3:5",
                "--kill-on-invalid-dep=yes",
                "/r/slurm/x.sbatch"
            ]
        );
        assert_eq!(arguments(Path::new("/x"), &[]), ["--parsable", "/x"]);
    }
}
