//! The stage graph of real (fixture) pipelines: order, neighbours, selections, cycle
//! reports and the three renderings.

mod spec_support;

use std::collections::BTreeSet;
use std::path::Path;

use itera_engine::graph::{Dag, GraphError};
use itera_engine::spec::{self, InputRef, Pipeline};

fn study() -> Pipeline {
    spec::load(
        Path::new("tests/fixtures/valid/study.toml"),
        &[],
        &spec_support::registry(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn topological_order_is_deterministic_with_ties_by_name() {
    let dag = Dag::new(&study()).unwrap();
    assert_eq!(
        dag.topo_order(),
        names(&["fetch", "tokenize", "train", "train_small", "compare"])
    );
    // Independent stages come out alphabetically.
    let p = spec::load(
        Path::new("tests/fixtures/valid/child.toml"),
        &[],
        &spec_support::registry(),
    )
    .unwrap();
    let order = Dag::new(&p).unwrap().topo_order();
    assert_eq!(order.last().map(String::as_str), Some("summary"));
    for (i, name) in order.iter().enumerate() {
        for up in Dag::new(&p).unwrap().upstream(name) {
            assert!(order[..i].contains(&up), "{up} comes before {name}");
        }
    }
}

#[test]
fn direct_neighbours() {
    let dag = Dag::new(&study()).unwrap();
    assert_eq!(
        dag.upstream("compare"),
        names(&["tokenize", "train", "train_small"])
    );
    assert_eq!(
        dag.downstream("tokenize"),
        names(&["compare", "train", "train_small"])
    );
    assert!(dag.upstream("fetch").is_empty());
    assert!(dag.downstream("compare").is_empty());
    assert!(dag.upstream("nope").is_empty());
}

#[test]
fn selections() {
    let dag = Dag::new(&study()).unwrap();
    let set = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(dag.select(None, &[]).unwrap().len(), 5);
    assert_eq!(
        dag.select(Some("train"), &[]).unwrap(),
        set(&["fetch", "tokenize", "train"])
    );
    assert_eq!(
        dag.select(Some("train_small"), &[]).unwrap(),
        set(&["fetch", "tokenize", "train", "train_small"])
    );
    assert_eq!(
        dag.select(None, &names(&["compare", "train"])).unwrap(),
        set(&["compare", "train"])
    );
    assert_eq!(
        dag.select(None, &names(&["trian"])).unwrap_err(),
        GraphError::UnknownStage {
            name: "trian".into(),
            suggestion: Some("train".into())
        }
    );
    let err = dag.select(Some("comapre"), &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown stage `comapre` (did you mean `compare`?)"
    );
    assert_eq!(
        dag.select(Some("train"), &names(&["fetch"])).unwrap_err(),
        GraphError::ConflictingSelection
    );
}

#[test]
fn cycles_and_unknown_stages_are_errors_even_past_load() {
    let mut p = study();
    p.stages.get_mut("fetch").unwrap().inputs.insert(
        "again".into(),
        vec![InputRef {
            stage: "compare".into(),
            output: None,
        }],
    );
    let err = Dag::new(&p).unwrap_err();
    assert_eq!(
        err,
        GraphError::CycleDetected {
            path: names(&["compare", "fetch", "tokenize", "compare"])
        }
    );
    assert_eq!(
        err.to_string(),
        "dependency cycle: compare -> fetch -> tokenize -> compare"
    );

    let mut p = study();
    p.stages.get_mut("fetch").unwrap().inputs.insert(
        "self".into(),
        vec![InputRef {
            stage: "fetch".into(),
            output: None,
        }],
    );
    assert_eq!(
        Dag::new(&p).unwrap_err(),
        GraphError::CycleDetected {
            path: names(&["fetch", "fetch"])
        }
    );

    let mut p = study();
    p.stages.get_mut("fetch").unwrap().inputs.insert(
        "x".into(),
        vec![InputRef {
            stage: "tokenise".into(),
            output: None,
        }],
    );
    assert_eq!(
        Dag::new(&p).unwrap_err(),
        GraphError::UnknownStage {
            name: "tokenise".into(),
            suggestion: Some("tokenize".into())
        }
    );
}

#[test]
fn renderings() {
    let dag = Dag::new(&study()).unwrap();
    insta::assert_snapshot!("text", dag.render_text());
    insta::assert_snapshot!("dot", dag.render_dot());
    insta::assert_snapshot!("mermaid", dag.render_mermaid());
}

#[test]
fn a_swept_stage_is_selected_by_its_name_or_one_variant_by_its_full_name() {
    let p = spec::load(
        Path::new("tests/fixtures/valid/sweep.toml"),
        &[],
        &spec_support::registry(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dag = Dag::new(&p).unwrap();
    let trains = [
        "train@lr=1e-3,hidden_size=128",
        "train@lr=1e-3,hidden_size=64",
        "train@lr=2e-3,hidden_size=128",
        "train@lr=2e-3,hidden_size=64",
    ];
    assert_eq!(dag.resolve("train").unwrap(), names(&trains));
    assert_eq!(
        dag.select(None, &names(&["train"])).unwrap(),
        trains
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
    );
    assert_eq!(
        dag.select(None, &names(&["train@lr=2e-3,hidden_size=64"]))
            .unwrap()
            .len(),
        1
    );
    // `--until` a follower's variant: its own chain only.
    let until = dag
        .select(Some("train_small@lr=2e-3,hidden_size=64"), &[])
        .unwrap();
    assert_eq!(
        until,
        names(&[
            "fetch",
            "tokenize",
            "train@lr=2e-3,hidden_size=64",
            "train_small@lr=2e-3,hidden_size=64"
        ])
        .into_iter()
        .collect()
    );
    assert_eq!(
        dag.select(Some("train_small"), &[]).unwrap().len(),
        2 + 4 + 4
    );
    assert!(matches!(
        dag.select(None, &names(&["trian"])),
        Err(GraphError::UnknownStage { suggestion: Some(s), .. }) if s == "train"
    ));
}
