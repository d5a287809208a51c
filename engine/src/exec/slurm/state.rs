//! What became of submitted jobs. The job wrapper's exit-code file is the first witness;
//! for jobs without one, one batched `squeue -t all` per poll, then per job
//! `scontrol show job -o` and `sacct -n -P -X` as fallbacks. A state none of them can
//! establish is [`JobStatus::Unknown`], never success; a job SLURM calls COMPLETED that
//! wrote no exit-code file is not trusted either (the wrapper never ran to its end).

use std::collections::BTreeMap;
use std::path::Path;

use super::command::{self, Output};
use super::sbatch::JobId;

/// A state name as `squeue %T`, `scontrol JobState=` and `sacct State` print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedState {
    /// Waiting (PENDING, REQUEUED, REQUEUE_HOLD, SPECIAL_EXIT, RESV_DEL_HOLD, ...).
    Pending,
    /// Holding resources (RUNNING, CONFIGURING, COMPLETING, SUSPENDED, STAGE_OUT, ...).
    Running,
    Completed,
    Failed,
    /// CANCELLED, including sacct's `CANCELLED by <uid>`.
    Cancelled,
    Timeout,
    OutOfMemory,
    NodeFail,
    Preempted,
    BootFail,
    Deadline,
    /// A name this version does not know.
    Other(String),
}

impl SchedState {
    pub fn parse(s: &str) -> SchedState {
        let s = s.trim();
        if s.starts_with("CANCELLED") {
            return SchedState::Cancelled;
        }
        match s {
            "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "SPECIAL_EXIT"
            | "RESV_DEL_HOLD" => SchedState::Pending,
            "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED" | "STOPPED" | "SIGNALING"
            | "STAGE_OUT" | "RESIZING" => SchedState::Running,
            "COMPLETED" => SchedState::Completed,
            "FAILED" => SchedState::Failed,
            "TIMEOUT" => SchedState::Timeout,
            "OUT_OF_MEMORY" => SchedState::OutOfMemory,
            "NODE_FAIL" => SchedState::NodeFail,
            "PREEMPTED" => SchedState::Preempted,
            "BOOT_FAIL" => SchedState::BootFail,
            "DEADLINE" => SchedState::Deadline,
            other => SchedState::Other(other.to_owned()),
        }
    }

    /// Whether the job will not change any more.
    pub fn is_terminal(&self) -> bool {
        !matches!(
            self,
            SchedState::Pending | SchedState::Running | SchedState::Other(_)
        )
    }
}

/// One job as the scheduler reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedReport {
    pub id: String,
    pub state: SchedState,
    /// `Reason` (squeue `%r`, scontrol), when given and not `None`.
    pub reason: Option<String>,
    /// `ExitCode` as `code:signal`, when given.
    pub exit_code: Option<(i32, i32)>,
}

/// Why a job ended without success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The stage's command exited with this code (from the exit-code file).
    ExitCode(i32),
    /// SLURM says FAILED; `exit_code` as it reported it.
    Failed {
        exit_code: Option<(i32, i32)>,
    },
    /// Cancelled because an upstream job failed (`afterok` can never be satisfied).
    DependencyNeverSatisfied,
    /// Cancelled (by `scancel`, an administrator, or the scheduler).
    Cancelled,
    Timeout,
    OutOfMemory,
    NodeFail,
    Preempted,
    BootFail,
    Deadline,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::ExitCode(c) => write!(f, "exited with code {c}"),
            Failure::Failed {
                exit_code: Some((c, s)),
            } => write!(f, "FAILED (exit code {c}, signal {s})"),
            Failure::Failed { exit_code: None } => f.write_str("FAILED"),
            Failure::DependencyNeverSatisfied => {
                f.write_str("cancelled: an upstream job did not succeed")
            }
            Failure::Cancelled => f.write_str("CANCELLED"),
            Failure::Timeout => f.write_str("TIMEOUT: the job hit its time limit (raise `time`)"),
            Failure::OutOfMemory => {
                f.write_str("OUT_OF_MEMORY: the job exceeded its memory (raise `mem`)")
            }
            Failure::NodeFail => f.write_str("NODE_FAIL: its node failed"),
            Failure::Preempted => f.write_str("PREEMPTED by a higher-priority job"),
            Failure::BootFail => f.write_str("BOOT_FAIL: its node did not boot"),
            Failure::Deadline => f.write_str("DEADLINE: not started before its deadline"),
        }
    }
}

/// What the submitting side knows about one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    Pending {
        reason: Option<String>,
    },
    Running,
    /// The wrapper recorded exit code 0.
    Completed,
    Ended(Failure),
    /// Nothing established the state; `detail` says what was tried.
    Unknown {
        detail: String,
    },
}

impl JobStatus {
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Ended(_))
    }
}

/// A submitted job and the exit-code file its wrapper writes.
#[derive(Debug, Clone, Copy)]
pub struct Tracked<'a> {
    pub job: &'a JobId,
    pub exitcode_file: &'a Path,
}

/// Reads an exit-code file: `Ok(None)` when the wrapper has not written it (yet).
pub fn read_exitcode(path: &Path) -> Result<Option<i32>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse::<i32>().map(Some).map_err(|_| {
            format!(
                "exit-code file {} holds {:?}, not a number",
                path.display(),
                text.trim()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The status of every tracked job, keyed by job id: at most one `squeue` call for all
/// jobs without an exit-code file (one per cluster), then fallbacks per missing job.
pub fn poll(jobs: &[Tracked<'_>]) -> BTreeMap<JobId, JobStatus> {
    let mut result = BTreeMap::new();
    let mut ask: Vec<&Tracked<'_>> = Vec::new();
    // Exit codes of 128 + a signal: a job `scancel`led (SIGTERM) or killed at its time
    // limit may write one before the scheduler's state says why; the scheduler decides.
    let mut signalled: BTreeMap<&str, i32> = BTreeMap::new();
    for t in jobs {
        match read_exitcode(t.exitcode_file) {
            Ok(Some(0)) => {
                result.insert(t.job.clone(), JobStatus::Completed);
            }
            Ok(Some(code)) if code > 128 => {
                signalled.insert(t.job.id.as_str(), code);
                ask.push(t);
            }
            Ok(Some(code)) => {
                result.insert(t.job.clone(), JobStatus::Ended(Failure::ExitCode(code)));
            }
            Ok(None) => ask.push(t),
            Err(detail) => {
                result.insert(t.job.clone(), JobStatus::Unknown { detail });
            }
        }
    }
    let mut by_cluster: BTreeMap<Option<&str>, Vec<&Tracked<'_>>> = BTreeMap::new();
    for t in ask {
        by_cluster
            .entry(t.job.cluster.as_deref())
            .or_default()
            .push(t);
    }
    for (cluster, group) in by_cluster {
        let ids: Vec<&str> = group.iter().map(|t| t.job.id.as_str()).collect();
        let (reports, squeue_problem) = match squeue(&ids, cluster) {
            Ok(r) => (r, None),
            Err(p) => (BTreeMap::new(), Some(p)),
        };
        for t in group {
            let report = reports
                .get(&t.job.id)
                .cloned()
                .map(Ok)
                .unwrap_or_else(|| fallback(&t.job.id, cluster));
            let status = match report {
                Ok(r) => from_report(&r, t.exitcode_file),
                Err(_) if signalled.contains_key(t.job.id.as_str()) => {
                    JobStatus::Ended(Failure::ExitCode(signalled[t.job.id.as_str()]))
                }
                Err(detail) => JobStatus::Unknown {
                    detail: match &squeue_problem {
                        Some(p) => format!("{p}; {detail}"),
                        None => detail,
                    },
                },
            };
            result.insert(t.job.clone(), status);
        }
    }
    result
}

/// Turns the scheduler's report into a status; `exitcode_file` is read again in case
/// the job finished between the first read and the query.
pub fn from_report(r: &SchedReport, exitcode_file: &Path) -> JobStatus {
    match r.state {
        SchedState::Pending if r.reason.as_deref() == Some("DependencyNeverSatisfied") => {
            JobStatus::Ended(Failure::DependencyNeverSatisfied)
        }
        SchedState::Pending => JobStatus::Pending {
            reason: r.reason.clone(),
        },
        SchedState::Running => JobStatus::Running,
        SchedState::Completed | SchedState::Failed => match read_exitcode(exitcode_file) {
            Ok(Some(0)) => JobStatus::Completed,
            Ok(Some(code)) => JobStatus::Ended(Failure::ExitCode(code)),
            Ok(None) if r.state == SchedState::Failed => JobStatus::Ended(Failure::Failed {
                exit_code: r.exit_code,
            }),
            Ok(None) => JobStatus::Unknown {
                detail: format!(
                    "SLURM reports job {} COMPLETED but its wrapper wrote no exit code to {} \
                     (the job may never have run, or the runs folder is not shared with the compute nodes)",
                    r.id,
                    exitcode_file.display()
                ),
            },
            Err(detail) => JobStatus::Unknown { detail },
        },
        SchedState::Cancelled if r.reason.as_deref() == Some("DependencyNeverSatisfied") => {
            JobStatus::Ended(Failure::DependencyNeverSatisfied)
        }
        SchedState::Cancelled => JobStatus::Ended(Failure::Cancelled),
        SchedState::Timeout => JobStatus::Ended(Failure::Timeout),
        SchedState::OutOfMemory => JobStatus::Ended(Failure::OutOfMemory),
        SchedState::NodeFail => JobStatus::Ended(Failure::NodeFail),
        SchedState::Preempted => JobStatus::Ended(Failure::Preempted),
        SchedState::BootFail => JobStatus::Ended(Failure::BootFail),
        SchedState::Deadline => JobStatus::Ended(Failure::Deadline),
        SchedState::Other(ref s) => JobStatus::Unknown {
            detail: format!("job {} is in state {s}, which itera does not know", r.id),
        },
    }
}

fn cluster_args(cluster: Option<&str>) -> Vec<String> {
    cluster
        .map(|c| vec!["--clusters".to_owned(), c.to_owned()])
        .unwrap_or_default()
}

/// One `squeue -h -t all -j a,b,c -o '%i|%T|%r'` call.
fn squeue(ids: &[&str], cluster: Option<&str>) -> Result<BTreeMap<String, SchedReport>, String> {
    let mut args: Vec<String> = ["-h", "-t", "all", "-j", &ids.join(","), "-o", "%i|%T|%r"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(cluster_args(cluster));
    let out = run("squeue", &args)?;
    if !out.success() {
        // All ids purged: "Invalid job id specified". Fallbacks take over.
        return Err(format!("squeue: {}", out.message()));
    }
    Ok(parse_squeue(&out.stdout)
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect())
}

/// `scontrol show job -o ID`, then `sacct -n -P -X -j ID`.
fn fallback(id: &str, cluster: Option<&str>) -> Result<SchedReport, String> {
    let mut args: Vec<String> = vec!["show".into(), "job".into(), "-o".into(), id.into()];
    args.extend(cluster_args(cluster));
    let scontrol_problem = match run("scontrol", &args) {
        Ok(out) if out.success() => match parse_scontrol(&out.stdout) {
            Some(r) => return Ok(r),
            None => format!("scontrol printed no JobState for job {id}"),
        },
        Ok(out) => format!("scontrol: {}", out.message()),
        Err(e) => e,
    };
    let mut args: Vec<String> = ["-n", "-P", "-X", "-j", id, "-o", "JobID,State,ExitCode"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(cluster_args(cluster));
    let sacct_problem = match run("sacct", &args) {
        Ok(out) if out.success() => {
            match parse_sacct(&out.stdout).into_iter().rfind(|r| r.id == id) {
                Some(r) => return Ok(r),
                None => format!("sacct has no record of job {id}"),
            }
        }
        Ok(out) => format!("sacct: {}", out.message()),
        Err(e) => e,
    };
    Err(format!(
        "state of job {id} unknown ({scontrol_problem}; {sacct_problem})"
    ))
}

fn run(program: &str, args: &[String]) -> Result<Output, String> {
    command::run(program, args, None, command::DEFAULT_TIMEOUT).map_err(|e| e.to_string())
}

fn reason(r: &str) -> Option<String> {
    let r = r.trim();
    (!r.is_empty() && r != "None" && r != "(null)").then(|| r.to_owned())
}

fn exit_code(s: &str) -> Option<(i32, i32)> {
    let (c, sig) = s.trim().split_once(':')?;
    Some((c.parse().ok()?, sig.parse().ok()?))
}

/// Parses `squeue -h -o '%i|%T|%r'` lines (with `--clusters`, `CLUSTER:` headers are skipped).
pub fn parse_squeue(stdout: &str) -> Vec<SchedReport> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("CLUSTER:"))
        .filter_map(|l| {
            let mut parts = l.splitn(3, '|');
            let id = parts.next()?.trim();
            let state = parts.next()?;
            Some(SchedReport {
                id: id.to_owned(),
                state: SchedState::parse(state),
                reason: parts.next().and_then(reason),
                exit_code: None,
            })
        })
        .collect()
}

/// Parses one `scontrol show job -o` line (JobId, JobState, Reason, ExitCode).
pub fn parse_scontrol(stdout: &str) -> Option<SchedReport> {
    let line = stdout.lines().find(|l| l.contains("JobState="))?;
    let field = |key: &str| {
        line.split(' ')
            .find_map(|tok| tok.strip_prefix(key))
            .map(str::to_owned)
    };
    Some(SchedReport {
        id: field("JobId=")?,
        state: SchedState::parse(&field("JobState=")?),
        reason: field("Reason=").as_deref().and_then(reason),
        exit_code: field("ExitCode=").as_deref().and_then(exit_code),
    })
}

/// Parses `sacct -n -P -X -o JobID,State,ExitCode` lines.
pub fn parse_sacct(stdout: &str) -> Vec<SchedReport> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut parts = l.split('|');
            let id = parts.next()?.trim();
            let state = parts.next()?;
            if id.is_empty() {
                return None;
            }
            Some(SchedReport {
                id: id.to_owned(),
                state: SchedState::parse(state),
                reason: None,
                exit_code: parts.next().and_then(exit_code),
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
