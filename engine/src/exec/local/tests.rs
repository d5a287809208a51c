//! Local executor tests on `concat` pipelines.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::LocalExecutor;
use crate::exec::testkit::{job, pipeline, set_fail, set_text, take_executions, Recorder};
use crate::exec::{Event, Executor, Force, Mode};
use crate::record::StageStatus;

fn diamond(base: &std::path::Path) -> crate::spec::Pipeline {
    pipeline(
        base,
        &[
            ("a", "A", &[]),
            ("b", "B", &["a"]),
            ("c", "C", &["a"]),
            ("d", "D", &["b", "c"]),
        ],
    )
}

#[test]
fn runs_everything_then_nothing_then_exactly_the_changed_part() {
    let base = tempfile::tempdir().unwrap();
    let runs = base.path().join("runs");
    let mut p = diamond(base.path());
    let ex = LocalExecutor { jobs: 2 };

    let out = ex
        .execute(&job(p.clone(), &runs, Default::default()))
        .unwrap();
    assert!(out.succeeded());
    assert_eq!(take_executions(base.path()), ["a", "b", "c", "d"]);
    let d = out.stages["d"].digest.clone().unwrap();
    let entry = runs
        .join("store")
        .join(out.stages["d"].key.as_ref().unwrap().as_str());
    assert_eq!(
        std::fs::read_to_string(entry.join("out/result.txt")).unwrap(),
        "DBACA"
    );

    let out = ex
        .execute(&job(p.clone(), &runs, Default::default()))
        .unwrap();
    assert_eq!(out.with_status(StageStatus::Cached).len(), 4);
    assert!(take_executions(base.path()).is_empty());
    assert_eq!(out.stages["d"].digest.as_ref(), Some(&d));

    set_text(&mut p, "c", "C2");
    let out = ex
        .execute(&job(p.clone(), &runs, Default::default()))
        .unwrap();
    assert_eq!(take_executions(base.path()), ["c", "d"]);
    assert_eq!(out.with_status(StageStatus::Cached), ["a", "b"]);

    // Renaming a stage keeps its key: nothing runs.
    let mut renamed = p.clone();
    let spec = renamed.stages.remove("a").unwrap();
    renamed.stages.insert("first".into(), spec);
    for s in renamed.stages.values_mut() {
        for refs in s.inputs.values_mut() {
            for r in refs {
                if r.stage == "a" {
                    r.stage = "first".into();
                }
            }
        }
    }
    let out = ex
        .execute(&job(renamed, &runs, Default::default()))
        .unwrap();
    assert!(take_executions(base.path()).is_empty());
    assert_eq!(out.with_status(StageStatus::Cached).len(), 4);
}

#[test]
fn a_failure_skips_downstream_but_not_independent_branches() {
    let base = tempfile::tempdir().unwrap();
    let runs = base.path().join("runs");
    let mut p = diamond(base.path());
    set_fail(&mut p, "b");
    let events = Arc::new(Recorder::default());
    let out = LocalExecutor::default()
        .execute(&job(p, &runs, events.clone()))
        .unwrap();
    assert_eq!(out.failed(), ["b"]);
    assert_eq!(out.with_status(StageStatus::Ran), ["a", "c"]);
    assert_eq!(out.with_status(StageStatus::Skipped), ["d"]);
    assert_eq!(
        out.stages["d"].reason.as_deref(),
        Some("upstream stage `b` failed")
    );
    let failed = events
        .0
        .lock()
        .unwrap()
        .iter()
        .find_map(|e| match e {
            Event::Failed {
                stage,
                error,
                log_tail,
                ..
            } => Some((stage.clone(), error.clone(), log_tail.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(failed.0, "b");
    assert_eq!(failed.1, "asked to fail");
    assert!(failed.2.iter().any(|l| l == "concat B"), "{:?}", failed.2);
    // Nothing of b is in the store; tmp/ holds no leftovers.
    let store_entries = std::fs::read_dir(runs.join("store")).unwrap().count();
    assert_eq!(store_entries, 2);
    assert_eq!(std::fs::read_dir(runs.join("tmp")).unwrap().count(), 0);
}

#[test]
fn only_uses_stored_upstream_results_and_force_recomputes() {
    let base = tempfile::tempdir().unwrap();
    let runs = base.path().join("runs");
    let p = diamond(base.path());
    let ex = LocalExecutor::default();

    let mut j = job(p.clone(), &runs, Default::default());
    j.selected = BTreeSet::from(["b".to_owned()]);
    let out = ex.execute(&j).unwrap();
    assert_eq!(out.failed(), ["a"], "a is not stored yet");
    assert!(out.stages["a"]
        .error
        .as_ref()
        .unwrap()
        .contains("add it to --only"));
    take_executions(base.path());

    ex.execute(&job(p.clone(), &runs, Default::default()))
        .unwrap();
    take_executions(base.path());
    let mut j = job(p.clone(), &runs, Default::default());
    j.selected = BTreeSet::from(["d".to_owned()]);
    j.force = Force::Stages(BTreeSet::from(["d".to_owned()]));
    let out = ex.execute(&j).unwrap();
    assert!(out.succeeded());
    assert_eq!(take_executions(base.path()), ["d"]);
    assert_eq!(
        out.stages.len(),
        4,
        "upstream stages are recorded as cached"
    );
}

#[test]
fn verify_mode_recomputes_and_compares_digests() {
    let base = tempfile::tempdir().unwrap();
    let runs = base.path().join("runs");
    let p = diamond(base.path());
    let ex = LocalExecutor::default();
    let first = ex
        .execute(&job(p.clone(), &runs, Default::default()))
        .unwrap();
    take_executions(base.path());
    let mut recorded: std::collections::BTreeMap<String, crate::store::Digest> = first
        .stages
        .iter()
        .map(|(n, r)| (n.clone(), r.digest.clone().unwrap()))
        .collect();
    let mut j = job(p.clone(), &runs, Default::default());
    j.mode = Mode::Verify(recorded.clone());
    let out = ex.execute(&j).unwrap();
    assert!(out.succeeded(), "{:?}", out.verify_mismatches());
    assert_eq!(take_executions(base.path()), ["a", "b", "c", "d"]);

    recorded.insert("c".into(), crate::store::Digest::of_bytes(b"other"));
    let mut j = job(p, &runs, Default::default());
    j.mode = Mode::Verify(recorded);
    let out = ex.execute(&j).unwrap();
    assert_eq!(out.verify_mismatches(), ["c"]);
    assert!(!out.succeeded());
    // The store still holds the original results.
    let again = ex
        .execute(&job(diamond(base.path()), &runs, Default::default()))
        .unwrap();
    assert_eq!(again.with_status(StageStatus::Cached).len(), 4);
}

#[test]
fn a_cancelled_run_starts_nothing() {
    let base = tempfile::tempdir().unwrap();
    let runs = base.path().join("runs");
    let j = job(diamond(base.path()), &runs, Default::default());
    j.cancel.cancel();
    let out = LocalExecutor::default().execute(&j).unwrap();
    assert!(out.interrupted);
    assert_eq!(out.with_status(StageStatus::Skipped).len(), 4);
    assert!(take_executions(base.path()).is_empty());
}
