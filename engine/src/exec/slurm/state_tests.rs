//! Parsing tests on output captured from Slurm 22.05 (the local test cluster), plus the
//! `sacct` form with accounting (`CANCELLED by 0`) recorded in shared/slurm/README.md.

use super::*;

/// `squeue -h -t all -o '%i|%T|%r'` over a chain A -> B(exit 3) -> C (kill-on-invalid-dep)
/// and D (without), a `--time=0:05` job, a cancelled running job, and a job asking for
/// more CPUs than any node has.
const SQUEUE_ALL: &str = "\
1|COMPLETED|None
2|FAILED|NonZeroExitCode
3|CANCELLED|DependencyNeverSatisfied
4|PENDING|DependencyNeverSatisfied
8|PENDING|PartitionConfig
10|TIMEOUT|TimeLimit
11|CANCELLED|None
";

const SQUEUE_EARLY: &str = "1|PENDING|None\n2|PENDING|Dependency\n11|RUNNING|None\n";

const SCONTROL_FAILED: &str = "JobId=2 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901758 Nice=0 Account=(null) QOS=(null) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=3:0 RunTime=00:00:00 TimeLimit=365-00:00:00 TimeMin=N/A SubmitTime=2026-11-26T12:35:27 EligibleTime=2026-11-26T12:35:32 AccrueTime=Unknown StartTime=2026-11-26T12:35:32 EndTime=2026-11-26T12:35:32 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-26T12:35:32 Scheduler=Backfill Partition=debug AllocNode:Sid=localhost:5275 ReqNodeList=(null) ExcNodeList=(null) NodeList=vm BatchHost=vm NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=(null) WorkDir=/tmp/sx StdErr=/tmp/sx/slurm-2.out StdIn=/dev/null StdOut=/tmp/sx/slurm-2.out Power= KillOInInvalidDependent=Yes \n";

const SCONTROL_DEP_PENDING: &str = "JobId=3 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901757 Nice=0 Account=(null) QOS=(null) JobState=PENDING Reason=Dependency Dependency=afterok:2(unfulfilled) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A SubmitTime=2026-11-26T12:35:27 EligibleTime=Unknown AccrueTime=Unknown StartTime=Unknown EndTime=Unknown Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-26T12:35:27 Scheduler=Main Partition=debug AllocNode:Sid=localhost:5275 ReqNodeList=(null) ExcNodeList=(null) NodeList= NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=21315M,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=(null) WorkDir=/tmp/sx StdErr=/tmp/sx/slurm-3.out StdIn=/dev/null StdOut=/tmp/sx/slurm-3.out Power= KillOInInvalidDependent=Yes \n";

const SCONTROL_TIMEOUT: &str = "JobId=10 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901750 Nice=0 Account=(null) QOS=(null) JobState=TIMEOUT Reason=TimeLimit Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=143:0 RunTime=00:01:11 TimeLimit=00:01:00 TimeMin=N/A SubmitTime=2026-11-26T12:35:43 EligibleTime=2026-11-26T12:35:43 AccrueTime=2026-11-26T12:35:43 StartTime=2026-11-26T12:35:44 EndTime=2026-11-26T12:36:55 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-26T12:35:44 Scheduler=Backfill Partition=debug AllocNode:Sid=localhost:5275 ReqNodeList=(null) ExcNodeList=(null) NodeList=vm BatchHost=vm NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=(null) WorkDir=/tmp/sx StdErr=/tmp/sx/slurm-10.out StdIn=/dev/null StdOut=/tmp/sx/slurm-10.out Power= \n";

/// `sacct -c -n -P -j 1,4,7 -o JobID,State,ExitCode` (jobcomp log) and, with slurmdbd,
/// `sacct -n -P -X` (which names the canceller).
const SACCT_JOBCOMP: &str = "1|COMPLETED|0:0\n2|FAILED|3:0\n10|TIMEOUT|0:0\n11|CANCELLED|0:0\n";
const SACCT_DBD: &str = "1|COMPLETED|0:0\n4|FAILED|3:0\n7|CANCELLED by 0|0:0\n";

fn no_file() -> std::path::PathBuf {
    std::path::PathBuf::from("/nonexistent/itera-test/x.exitcode")
}

fn status_of(report: &SchedReport) -> JobStatus {
    from_report(report, &no_file())
}

#[test]
fn squeue_states_and_reasons() {
    let r = parse_squeue(SQUEUE_ALL);
    let got: Vec<(&str, &SchedState, Option<&str>)> = r
        .iter()
        .map(|r| (r.id.as_str(), &r.state, r.reason.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("1", &SchedState::Completed, None),
            ("2", &SchedState::Failed, Some("NonZeroExitCode")),
            (
                "3",
                &SchedState::Cancelled,
                Some("DependencyNeverSatisfied")
            ),
            ("4", &SchedState::Pending, Some("DependencyNeverSatisfied")),
            ("8", &SchedState::Pending, Some("PartitionConfig")),
            ("10", &SchedState::Timeout, Some("TimeLimit")),
            ("11", &SchedState::Cancelled, None),
        ]
    );
}

#[test]
fn squeue_reports_become_statuses() {
    let statuses: Vec<JobStatus> = parse_squeue(SQUEUE_ALL).iter().map(status_of).collect();
    assert!(
        matches!(&statuses[0], JobStatus::Unknown { detail } if detail.contains("COMPLETED") && detail.contains("no exit code")),
        "COMPLETED without the wrapper's exit code must not count as success: {:?}",
        statuses[0]
    );
    assert_eq!(
        statuses[1],
        JobStatus::Ended(Failure::Failed { exit_code: None })
    );
    assert_eq!(
        statuses[2],
        JobStatus::Ended(Failure::DependencyNeverSatisfied)
    );
    assert_eq!(
        statuses[3],
        JobStatus::Ended(Failure::DependencyNeverSatisfied)
    );
    assert_eq!(
        statuses[4],
        JobStatus::Pending {
            reason: Some("PartitionConfig".into())
        }
    );
    assert_eq!(statuses[5], JobStatus::Ended(Failure::Timeout));
    assert_eq!(statuses[6], JobStatus::Ended(Failure::Cancelled));
    let early: Vec<JobStatus> = parse_squeue(SQUEUE_EARLY).iter().map(status_of).collect();
    assert_eq!(early[0], JobStatus::Pending { reason: None });
    assert_eq!(
        early[1],
        JobStatus::Pending {
            reason: Some("Dependency".into())
        }
    );
    assert_eq!(early[2], JobStatus::Running);
}

#[test]
fn scontrol_lines() {
    let r = parse_scontrol(SCONTROL_FAILED).unwrap();
    assert_eq!(r.id, "2");
    assert_eq!(r.state, SchedState::Failed);
    assert_eq!(r.reason.as_deref(), Some("NonZeroExitCode"));
    assert_eq!(r.exit_code, Some((3, 0)));
    assert_eq!(
        status_of(&r),
        JobStatus::Ended(Failure::Failed {
            exit_code: Some((3, 0))
        })
    );
    let r = parse_scontrol(SCONTROL_DEP_PENDING).unwrap();
    assert_eq!(
        (r.state.clone(), r.reason.as_deref()),
        (SchedState::Pending, Some("Dependency"))
    );
    let r = parse_scontrol(SCONTROL_TIMEOUT).unwrap();
    assert_eq!(r.exit_code, Some((143, 0)));
    assert_eq!(status_of(&r), JobStatus::Ended(Failure::Timeout));
    assert!(parse_scontrol("slurm_load_jobs error: Invalid job id specified\n").is_none());
}

#[test]
fn sacct_lines() {
    let r = parse_sacct(SACCT_JOBCOMP);
    assert_eq!(r.len(), 4);
    assert_eq!(r[1].exit_code, Some((3, 0)));
    assert_eq!(r[2].state, SchedState::Timeout);
    let r = parse_sacct(SACCT_DBD);
    assert_eq!(r[2].id, "7");
    assert_eq!(
        r[2].state,
        SchedState::Cancelled,
        "`CANCELLED by <uid>` is a prefix match"
    );
    assert!(parse_sacct("").is_empty());
}

#[test]
fn every_terminal_state_is_recognised() {
    let table = [
        ("COMPLETED", SchedState::Completed),
        ("FAILED", SchedState::Failed),
        ("CANCELLED", SchedState::Cancelled),
        ("CANCELLED by 1000", SchedState::Cancelled),
        ("TIMEOUT", SchedState::Timeout),
        ("OUT_OF_MEMORY", SchedState::OutOfMemory),
        ("NODE_FAIL", SchedState::NodeFail),
        ("PREEMPTED", SchedState::Preempted),
        ("BOOT_FAIL", SchedState::BootFail),
        ("DEADLINE", SchedState::Deadline),
    ];
    for (text, state) in table {
        let parsed = SchedState::parse(text);
        assert_eq!(parsed, state, "{text}");
        assert!(parsed.is_terminal(), "{text}");
        let status = status_of(&SchedReport {
            id: "1".into(),
            state: parsed,
            reason: None,
            exit_code: None,
        });
        assert_ne!(
            status,
            JobStatus::Completed,
            "{text} without exit code file"
        );
    }
    for text in [
        "PENDING",
        "RUNNING",
        "COMPLETING",
        "CONFIGURING",
        "SUSPENDED",
        "REQUEUED",
    ] {
        assert!(!SchedState::parse(text).is_terminal(), "{text}");
    }
    let odd = SchedState::parse("REVOKED_SOMEHOW");
    assert!(matches!(
        status_of(&SchedReport {
            id: "9".into(),
            state: odd,
            reason: None,
            exit_code: None
        }),
        JobStatus::Unknown { .. }
    ));
}

#[test]
fn exit_code_file_is_the_first_witness() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.exitcode");
    let completed_report = &parse_squeue(SQUEUE_ALL)[0];
    std::fs::write(&file, "0\n").unwrap();
    assert_eq!(from_report(completed_report, &file), JobStatus::Completed);
    std::fs::write(&file, "3\n").unwrap();
    assert_eq!(
        from_report(completed_report, &file),
        JobStatus::Ended(Failure::ExitCode(3))
    );
    assert_eq!(read_exitcode(&file), Ok(Some(3)));
    std::fs::write(&file, "garbage").unwrap();
    assert!(read_exitcode(&file).unwrap_err().contains("not a number"));
    assert_eq!(read_exitcode(&dir.path().join("missing")), Ok(None));
}
