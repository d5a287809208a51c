//! Table-driven tests of the scheduling rules: the planner alone (selection x force x mode
//! x upstream state), then the local executor carrying them out over a real store
//! (selection x cache state x failures x force).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{Action, Decision, Planner, Upstream};
use crate::exec::testkit::{job, pipeline, set_fail, take_executions, Recorder};
use crate::exec::{Executor, Force, LocalExecutor, Mode};
use crate::record::StageStatus;
use crate::spec::{Pipeline, StageName};
use crate::store::Digest;

/// a -> b, a -> c, (b, c) -> d, and e on its own.
fn diamond(base: &std::path::Path) -> Pipeline {
    pipeline(
        base,
        &[
            ("a", "A", &[]),
            ("b", "B", &["a"]),
            ("c", "C", &["a"]),
            ("d", "D", &["b", "c"]),
            ("e", "E", &[]),
        ],
    )
}

fn set(names: &[&str]) -> BTreeSet<StageName> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn digest(byte: u8) -> Digest {
    Digest::of_bytes(&[byte])
}

#[test]
fn stages_are_the_selection_and_its_ancestors_in_dependency_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = diamond(dir.path());
    let cases: &[(&[&str], &[&str])] = &[
        (&["a", "b", "c", "d", "e"], &["a", "b", "c", "d", "e"]),
        (&["d"], &["a", "b", "c", "d"]),
        (&["b"], &["a", "b"]),
        (&["e"], &["e"]),
        (&["c", "e"], &["a", "c", "e"]),
    ];
    for (selected, expected) in cases {
        let planner = Planner::new(&p, &set(selected), &Force::None, &Mode::Run).unwrap();
        assert_eq!(planner.stages(), *expected, "selection {selected:?}");
    }
    let planner = Planner::new(&p, &set(&["d"]), &Force::None, &Mode::Run).unwrap();
    assert!(planner.depends_on("d", "a"));
    assert!(!planner.depends_on("a", "d"));
    assert!(!planner.depends_on("b", "c"));
    assert!(!planner.depends_on("d", "d"));
}

#[test]
fn actions_follow_selection_force_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let p = diamond(dir.path());
    let verify = Mode::Verify(BTreeMap::from([("b".to_owned(), digest(1))]));
    let recompute = |d: Option<Digest>| Action::Recompute { verify_against: d };
    // (selected, force, mode, stage, expected action)
    let cases: Vec<(&[&str], Force, Mode, &str, Action)> = vec![
        (&["d"], Force::None, Mode::Run, "a", Action::LookUp),
        (&["d"], Force::None, Mode::Run, "d", Action::Reuse),
        (&["b", "d"], Force::All, Mode::Run, "b", recompute(None)),
        (&["b", "d"], Force::All, Mode::Run, "a", Action::LookUp),
        (
            &["b", "d"],
            Force::Stages(set(&["d"])),
            Mode::Run,
            "b",
            Action::Reuse,
        ),
        (
            &["b", "d"],
            Force::Stages(set(&["d"])),
            Mode::Run,
            "d",
            recompute(None),
        ),
        // --force of an unselected stage does not make it run.
        (
            &["d"],
            Force::Stages(set(&["a"])),
            Mode::Run,
            "a",
            Action::LookUp,
        ),
        (
            &["a", "b"],
            Force::None,
            verify.clone(),
            "b",
            recompute(Some(digest(1))),
        ),
        // A stage the recorded run has no digest for is recomputed, with nothing to compare.
        (
            &["a", "b"],
            Force::None,
            verify.clone(),
            "a",
            recompute(None),
        ),
        (&["b"], Force::None, verify, "a", Action::LookUp),
    ];
    for (selected, force, mode, stage, expected) in cases {
        let planner = Planner::new(&p, &set(selected), &force, &mode).unwrap();
        assert_eq!(
            planner.action(stage),
            expected,
            "selected {selected:?}, {force:?}, {mode:?}, stage {stage}"
        );
    }
}

#[test]
fn decisions_follow_upstream_states() {
    use Upstream::*;
    let dir = tempfile::tempdir().unwrap();
    let mut p = diamond(dir.path());
    p.stages.get_mut("c").unwrap().resources.local = Some(true);
    let all = set(&["a", "b", "c", "d", "e"]);
    let planner = Planner::new(&p, &all, &Force::None, &Mode::Run).unwrap();
    let go = Decision::Go(Action::Reuse);
    let after = Decision::GoAfterJobs(Action::Reuse);
    let skip = |s: &str| Decision::Skip(s.to_owned());
    // (stage, state of b, state of c, state of a, interrupted, expected)
    let cases = vec![
        ("d", Resolved, Resolved, Resolved, false, go.clone()),
        ("d", Resolved, Pending, Resolved, false, Decision::Wait),
        ("d", Queued, Resolved, Resolved, false, after.clone()),
        ("d", Queued, Queued, Resolved, false, after),
        (
            "d",
            Failed,
            Pending,
            Resolved,
            false,
            skip("upstream stage `b` failed"),
        ),
        (
            "d",
            Resolved,
            Skipped,
            Resolved,
            false,
            skip("upstream stage `c` was skipped"),
        ),
        // An upstream failure explains more than the interruption does.
        (
            "d",
            Failed,
            Resolved,
            Resolved,
            true,
            skip("upstream stage `b` failed"),
        ),
        (
            "d",
            Resolved,
            Resolved,
            Resolved,
            true,
            skip("the run was interrupted before this stage started"),
        ),
        ("a", Pending, Pending, Pending, false, go.clone()),
        ("e", Failed, Failed, Failed, false, go.clone()),
        ("b", Pending, Pending, Resolved, false, go),
        // A stage that runs on the submitting host waits for its upstream job to end.
        ("c", Pending, Pending, Queued, false, Decision::Wait),
    ];
    for (stage, b, c, a, interrupted, expected) in cases {
        let state = |u: &str| match u {
            "a" => a,
            "b" => b,
            "c" => c,
            _ => Pending,
        };
        assert_eq!(
            planner.decide(stage, state, interrupted),
            expected,
            "stage {stage} with a={a:?} b={b:?} c={c:?} interrupted={interrupted}"
        );
    }
    // An unselected stage is only ever looked up, never queued after a job.
    let only_d = Planner::new(&p, &set(&["d"]), &Force::None, &Mode::Run).unwrap();
    assert_eq!(
        only_d.decide("b", |_| Queued, false),
        Decision::Wait,
        "b is not selected"
    );
    assert_eq!(
        only_d.decide("b", |_| Resolved, false),
        Decision::Go(Action::LookUp)
    );
}

/// What the local executor does with `selected`, given which stages are stored, which
/// fail and which are forced: (executions, status per stage).
fn carry_out(
    stored: &[&str],
    failing: &[&str],
    selected: &[&str],
    force: Force,
) -> (Vec<String>, BTreeMap<String, StageStatus>) {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let p = diamond(dir.path());
    if !stored.is_empty() {
        let mut warm = job(p.clone(), &runs, Arc::new(Recorder::default()));
        warm.selected = set(stored);
        let out = LocalExecutor::default().execute(&warm).unwrap();
        assert!(out.succeeded(), "warming the store with {stored:?}");
        take_executions(dir.path());
    }
    let mut p = p;
    for f in failing {
        set_fail(&mut p, f);
    }
    let mut j = job(p, &runs, Arc::new(Recorder::default()));
    j.selected = set(selected);
    j.force = force;
    let out = LocalExecutor { jobs: 2 }.execute(&j).unwrap();
    let statuses = out
        .stages
        .iter()
        .map(|(n, r)| (n.clone(), r.status))
        .collect();
    (take_executions(dir.path()), statuses)
}

#[test]
fn the_local_executor_carries_out_the_rules() {
    use StageStatus::*;
    struct Case {
        stored: &'static [&'static str],
        failing: &'static [&'static str],
        selected: &'static [&'static str],
        force: Force,
        executed: &'static [&'static str],
        statuses: &'static [(&'static str, StageStatus)],
    }
    let cases = [
        // Nothing stored: an unselected upstream stage is missing, so nothing runs.
        Case {
            stored: &[],
            failing: &[],
            selected: &["d"],
            force: Force::None,
            executed: &[],
            statuses: &[
                ("a", Failed),
                ("b", Skipped),
                ("c", Skipped),
                ("d", Skipped),
            ],
        },
        // Nothing stored: everything selected runs.
        Case {
            stored: &[],
            failing: &[],
            selected: &["a", "b", "c", "d"],
            force: Force::None,
            executed: &["a", "b", "c", "d"],
            statuses: &[("a", Ran), ("b", Ran), ("c", Ran), ("d", Ran)],
        },
        // Stored upstream: only the selection runs (--only).
        Case {
            stored: &["a", "b", "c"],
            failing: &[],
            selected: &["d"],
            force: Force::None,
            executed: &["d"],
            statuses: &[("a", Cached), ("b", Cached), ("c", Cached), ("d", Ran)],
        },
        // Everything stored: nothing runs; forcing one stage runs exactly it and what its
        // changed result feeds (here the same digest, so d stays cached).
        Case {
            stored: &["a", "b", "c", "d"],
            failing: &[],
            selected: &["a", "b", "c", "d"],
            force: Force::Stages(set(&["b"])),
            executed: &["b"],
            statuses: &[("a", Cached), ("b", Ran), ("c", Cached), ("d", Cached)],
        },
        Case {
            stored: &["a", "b", "c", "d"],
            failing: &[],
            selected: &["b", "d"],
            force: Force::All,
            executed: &["b", "d"],
            statuses: &[("a", Cached), ("b", Ran), ("c", Cached), ("d", Ran)],
        },
        // A failure skips what depends on it; independent branches carry on.
        Case {
            stored: &[],
            failing: &["b"],
            selected: &["a", "b", "c", "d", "e"],
            force: Force::None,
            executed: &["a", "b", "c", "e"],
            statuses: &[
                ("a", Ran),
                ("b", Failed),
                ("c", Ran),
                ("d", Skipped),
                ("e", Ran),
            ],
        },
    ];
    for (i, c) in cases.into_iter().enumerate() {
        let (executed, statuses) = carry_out(c.stored, c.failing, c.selected, c.force.clone());
        assert_eq!(executed, c.executed, "case {i}: executions");
        let expected: BTreeMap<String, StageStatus> = c
            .statuses
            .iter()
            .map(|(n, s)| ((*n).to_owned(), *s))
            .collect();
        let got: BTreeMap<String, StageStatus> = statuses
            .into_iter()
            .filter(|(n, _)| expected.contains_key(n))
            .collect();
        assert_eq!(got, expected, "case {i}: statuses");
    }
}
