//! Valid pipeline files load into the expected `Pipeline`: params typed with defaults
//! filled, `[pipeline.defaults]` merged under stage params, inputs resolved, resources as
//! written, `extends` and `--set` applied, and the resolved document reloads to the same.

mod spec_support;

use std::path::Path;

use itera_engine::spec::{self, InputRef, Pipeline, Resources};
use serde_json::json;

fn load(file: &str, overrides: &[&str]) -> Pipeline {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    match spec::load(Path::new(file), &overrides, &spec_support::registry()) {
        Ok(p) => p,
        Err(e) => panic!("{file} should load:\n{e}"),
    }
}

fn refs(list: &[&str]) -> Vec<InputRef> {
    list.iter()
        .map(|r| match r.split_once('.') {
            Some((s, o)) => InputRef {
                stage: s.into(),
                output: Some(o.into()),
            },
            None => InputRef {
                stage: r.to_string(),
                output: None,
            },
        })
        .collect()
}

/// The pipeline as JSON, without what a reload from the resolved document cannot know.
fn comparable(p: &Pipeline) -> serde_json::Value {
    let mut v = serde_json::to_value(p).expect("pipelines serialize");
    v.as_object_mut().expect("object").remove("overrides");
    v
}

#[test]
fn study_loads_with_defaults_filled_and_inputs_resolved() {
    let p = load("tests/fixtures/valid/study.toml", &[]);
    assert_eq!(p.name, "study");
    assert_eq!(p.description.as_deref(), Some("A small study"));
    assert_eq!(p.seed, 1337);
    assert_eq!(
        p.slurm,
        Resources {
            partition: Some("gpu".into()),
            time: Some("01:00:00".into()),
            ..Default::default()
        }
    );
    assert_eq!(
        p.stages.keys().map(String::as_str).collect::<Vec<_>>(),
        ["compare", "fetch", "tokenize", "train", "train_small"]
    );
    assert_eq!(p.source, Path::new("tests/fixtures/valid/study.toml"));
    assert!(p.base_dir.is_absolute() && p.base_dir.ends_with("tests/fixtures/valid"));
    assert!(p.overrides.is_empty());

    let fetch = &p.stages["fetch"];
    assert_eq!(fetch.kind, "source");
    assert!(fetch.inputs.is_empty());
    assert_eq!(
        fetch.resources,
        Resources {
            local: Some(true),
            ..Default::default()
        }
    );
    assert_eq!(
        fetch.params,
        json!({ "revision": null, "url": "https://example.org/corpus.txt" })
    );

    let tokenize = &p.stages["tokenize"];
    assert_eq!(
        tokenize.params,
        json!({ "scheme": "bpe", "vocab_size": 8000 })
    );
    assert_eq!(tokenize.inputs["corpus"], refs(&["fetch.text"]));

    // Own keys, then [pipeline.defaults.train], then the kind's defaults.
    let train = &p.stages["train"];
    assert_eq!(
        train.params,
        json!({ "lr": 3e-4, "model": { "hidden_size": 128, "layers": 4 }, "steps": 200, "tags": [], "threads": 2 })
    );
    // Resources stay as written: [pipeline.slurm] is applied when the stage is submitted.
    assert_eq!(
        train.resources,
        Resources {
            gpus: Some(1),
            time: Some("02:00:00".into()),
            ..Default::default()
        }
    );
    assert_eq!(
        train.resources.or(&p.slurm).partition.as_deref(),
        Some("gpu")
    );

    let small = &p.stages["train_small"];
    assert_eq!(small.params["threads"], json!(8));
    assert_eq!(
        small.params["model"],
        json!({ "hidden_size": 64, "layers": 4 })
    );
    assert_eq!(small.inputs["init"], refs(&["train.model"]));
    assert_eq!(small.inputs["tokens"], refs(&["tokenize.tokens"]));

    let compare = &p.stages["compare"];
    assert_eq!(
        compare.inputs["models"],
        refs(&["train.model", "train_small.model"])
    );
    assert_eq!(compare.inputs["data"], refs(&["tokenize"]));
    assert_eq!(compare.params, json!({ "metric": "loss" }));
}

#[test]
fn extends_deep_merges_onto_the_base_file() {
    let p = load("tests/fixtures/valid/child.toml", &[]);
    assert_eq!(p.name, "study-long");
    assert_eq!(
        p.description.as_deref(),
        Some("A small study"),
        "kept from the base"
    );
    assert_eq!(p.seed, 1337);
    let train = &p.stages["train"];
    assert_eq!(train.params["steps"], json!(1000));
    assert_eq!(train.params["tags"], json!(["long"]));
    assert_eq!(
        train.params["model"],
        json!({ "hidden_size": 128, "layers": 6 })
    );
    assert_eq!(
        train.resources.gpus,
        Some(1),
        "the base's resources table is kept"
    );
    assert_eq!(p.stages["train_small"].params["model"]["layers"], json!(6));
    assert_eq!(
        p.stages["tokenize"].params,
        json!({ "scheme": "char", "vocab_size": 256 })
    );
    let summary = &p.stages["summary"];
    assert_eq!(summary.inputs["report"], refs(&["compare"]));
    assert_eq!(
        summary.inputs["extra"],
        refs(&["train.metrics", "train_small.metrics"])
    );
    assert!(!p.resolved_toml.contains("extends"));
}

#[test]
fn overrides_apply_after_extends_in_order() {
    let p = load(
        "tests/fixtures/valid/child.toml",
        &[
            "train.steps=5",
            "tokenize.scheme=bpe",
            "pipeline.seed=3",
            "stages.train.model.hidden_size=256",
            "train_small.model={ layers = 1 }",
            "train.steps=7",
            "summary.run=\"echo 'a b'\"",
        ],
    );
    assert_eq!(p.seed, 3);
    assert_eq!(
        p.stages["train"].params["steps"],
        json!(7),
        "the last override wins"
    );
    assert_eq!(
        p.stages["train"].params["model"],
        json!({ "hidden_size": 256, "layers": 6 })
    );
    assert_eq!(
        p.stages["train_small"].params["model"],
        json!({ "hidden_size": 64, "layers": 1 })
    );
    assert_eq!(p.stages["tokenize"].params["scheme"], json!("bpe"));
    assert_eq!(p.stages["summary"].params["run"], json!("echo 'a b'"));
    assert_eq!(p.overrides.len(), 7);
    assert!(p.resolved_toml.contains("steps = 7"), "{}", p.resolved_toml);
}

#[test]
fn resolved_documents_reload_to_the_same_pipeline() {
    let registry = spec_support::registry();
    for (file, overrides) in [
        ("tests/fixtures/valid/study.toml", vec![]),
        (
            "tests/fixtures/valid/child.toml",
            vec!["train.lr=0.01", "pipeline.description=\"x\""],
        ),
        ("tests/fixtures/valid/minimal.toml", vec![]),
    ] {
        let p = load(file, &overrides);
        let again = spec::load_resolved(&p.resolved_toml, &p.source, &p.base_dir, &registry)
            .unwrap_or_else(|e| panic!("resolved {file} reloads:\n{e}"));
        assert_eq!(comparable(&again), comparable(&p), "{file}");
        assert_eq!(again.resolved_toml, p.resolved_toml);
    }
}

#[test]
fn minimal_pipeline() {
    let p = load("tests/fixtures/valid/minimal.toml", &[]);
    assert_eq!(p.seed, 0);
    assert_eq!(p.description, None);
    assert_eq!(p.slurm, Resources::default());
    assert_eq!(
        p.stages["only"].params,
        json!({ "outputs": {}, "run": "echo hi" })
    );
}

#[test]
fn resolved_document_is_readable_toml() {
    let p = load("tests/fixtures/valid/child.toml", &["train.steps=5"]);
    insta::assert_snapshot!(p.resolved_toml);
}

/// The names of a pipeline's stages.
fn names(p: &Pipeline) -> Vec<&str> {
    p.stages.keys().map(String::as_str).collect()
}

#[test]
fn a_matrix_expands_into_one_stage_per_combination() {
    let p = load("tests/fixtures/valid/sweep.toml", &[]);
    assert_eq!(
        names(&p),
        [
            "compare",
            "fetch",
            "pick",
            "some",
            "tokenize",
            "train@lr=1e-3,hidden_size=128",
            "train@lr=1e-3,hidden_size=64",
            "train@lr=2e-3,hidden_size=128",
            "train@lr=2e-3,hidden_size=64",
            "train_small@lr=1e-3,hidden_size=128",
            "train_small@lr=1e-3,hidden_size=64",
            "train_small@lr=2e-3,hidden_size=128",
            "train_small@lr=2e-3,hidden_size=64",
        ]
    );
    // The matrix value replaces the param (over the stage's own `lr` and the defaults').
    let v = &p.stages["train@lr=2e-3,hidden_size=64"];
    assert_eq!(v.name, "train@lr=2e-3,hidden_size=64");
    assert_eq!(v.params["lr"], json!(2e-3));
    assert_eq!(v.params["model"]["hidden_size"], json!(64));
    assert_eq!(v.params["steps"], json!(200));
    assert_eq!(v.params["threads"], json!(2));
    // Followers read their own variant.
    assert_eq!(
        p.stages["train_small@lr=2e-3,hidden_size=64"].inputs["init"],
        refs(&["train@lr=2e-3,hidden_size=64.model"])
    );
    assert_eq!(
        p.stages["train_small@lr=2e-3,hidden_size=64"].params["steps"],
        json!(20)
    );
    // Gathers list every variant, in variant order (first key slowest, values as listed).
    assert_eq!(
        p.stages["compare"].inputs["models"],
        refs(&[
            "train@lr=1e-3,hidden_size=64.model",
            "train@lr=1e-3,hidden_size=128.model",
            "train@lr=2e-3,hidden_size=64.model",
            "train@lr=2e-3,hidden_size=128.model",
            "train_small@lr=1e-3,hidden_size=64.model",
            "train_small@lr=1e-3,hidden_size=128.model",
            "train_small@lr=2e-3,hidden_size=64.model",
            "train_small@lr=2e-3,hidden_size=128.model",
        ])
    );
    assert_eq!(
        p.stages["pick"].inputs["models"],
        refs(&["train@lr=2e-3,hidden_size=128.model"])
    );
    // A filter gathers the variants with those values (`0.002` is `2e-3`).
    assert_eq!(
        p.stages["some"].inputs["models"],
        refs(&[
            "train@lr=1e-3,hidden_size=64.model",
            "train@lr=2e-3,hidden_size=64.model",
            "train@lr=2e-3,hidden_size=128",
        ])
    );
    // The record keeps the matrix; loading it again expands to the same stages.
    assert!(p.resolved_toml.contains("matrix"), "{}", p.resolved_toml);
    let again = spec::load_resolved(
        &p.resolved_toml,
        &p.source,
        &p.base_dir,
        &spec_support::registry(),
    )
    .expect("reloads");
    assert_eq!(comparable(&again), comparable(&p));
}

#[test]
fn matrices_merge_through_extends_and_set() {
    let p = load("tests/fixtures/valid/sweep_child.toml", &[]);
    let trains: Vec<&str> = names(&p)
        .into_iter()
        .filter(|n| n.starts_with("train@"))
        .collect();
    assert_eq!(
        trains,
        [
            "train@lr=3e-4,hidden_size=128,steps=10",
            "train@lr=3e-4,hidden_size=128,steps=20",
            "train@lr=3e-4,hidden_size=64,steps=10",
            "train@lr=3e-4,hidden_size=64,steps=20",
        ]
    );
    let p = load(
        "tests/fixtures/valid/sweep.toml",
        &[
            "train.matrix.lr=[5e-1]",
            "train.matrix.\"model.hidden_size\"=[32]",
            "train.steps=7",
            "pick.inputs.models=\"train@lr=5e-1,hidden_size=32\"",
            "some.inputs.models=\"train[lr=0.5]\"",
        ],
    );
    assert_eq!(
        names(&p),
        [
            "compare",
            "fetch",
            "pick",
            "some",
            "tokenize",
            "train@lr=5e-1,hidden_size=32",
            "train_small@lr=5e-1,hidden_size=32",
        ]
    );
    assert_eq!(
        p.stages["train@lr=5e-1,hidden_size=32"].params["steps"],
        json!(7)
    );
    // Setting a swept param narrows its sweep to that value; the names stay the same.
    let p = load("tests/fixtures/valid/sweep.toml", &["train.lr=2e-3"]);
    let trains: Vec<&str> = names(&p)
        .into_iter()
        .filter(|n| n.starts_with("train@"))
        .collect();
    assert_eq!(
        trains,
        [
            "train@lr=2e-3,hidden_size=128",
            "train@lr=2e-3,hidden_size=64"
        ]
    );
    // The recorded document holds the narrowed sweep, so a rerun expands the same stages.
    let again = spec::load_resolved(
        &p.resolved_toml,
        &p.source,
        &p.base_dir,
        &spec_support::registry(),
    )
    .expect("reloads");
    assert_eq!(comparable(&again), comparable(&p));
}

#[test]
fn followers_zip_shared_sweeps_and_multiply_others() {
    let registry = spec_support::registry();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        r#"
[pipeline]
name = "zip"

[stages.fetch]
kind = "source"
url = "https://example.org/c.txt"

[stages.tokenize]
kind = "tokenize"
inputs = { corpus = "fetch.text" }

[stages.tokenize.matrix]
vocab_size = [100, 200]

[stages.train]
kind = "train"
inputs = { tokens = "tokenize.tokens" }

[stages.train.matrix]
steps = [1, 2, 3]

[stages.again]
kind = "train"
inputs = { tokens = "tokenize.tokens", init = "train.model" }
steps = 1

[stages.compare]
kind = "compare"
inputs = { models = ["again[*].model"], data = "tokenize" }
"#,
    )
    .expect("write");
    let p = spec::load(&file, &[], &registry).unwrap_or_else(|e| panic!("{e}"));
    // `train` follows `tokenize` and sweeps `steps`: 2 x 3.
    let trains: Vec<&str> = names(&p)
        .into_iter()
        .filter(|n| n.starts_with("train@"))
        .collect();
    assert_eq!(trains.len(), 6);
    assert!(
        trains.contains(&"train@vocab_size=100,steps=2"),
        "{trains:?}"
    );
    // `again` reads `tokenize` and `train` (which follows it): zipped, 6 not 12.
    let again = &p.stages["again@vocab_size=100,steps=2"];
    assert_eq!(
        again.inputs["tokens"],
        refs(&["tokenize@vocab_size=100.tokens"])
    );
    assert_eq!(
        again.inputs["init"],
        refs(&["train@vocab_size=100,steps=2.model"])
    );
    assert_eq!(
        names(&p).iter().filter(|n| n.starts_with("again@")).count(),
        6
    );
    // `compare` follows `tokenize` and gathers the `again` variants of its own vocabulary.
    let compare = &p.stages["compare@vocab_size=200"];
    assert_eq!(
        compare.inputs["models"],
        refs(&[
            "again@vocab_size=200,steps=1.model",
            "again@vocab_size=200,steps=2.model",
            "again@vocab_size=200,steps=3.model",
        ])
    );
}

#[test]
fn variant_names_stay_unambiguous_and_safe() {
    let registry = spec_support::registry();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        r#"
[pipeline]
name = "names"

[stages.only]
kind = "command"

[stages.only.matrix]
run = ["a", "echo hi > x.txt"]
"outputs.run" = ["x"]
"#,
    )
    .expect("write");
    let p = spec::load(&file, &[], &registry).unwrap_or_else(|e| panic!("{e}"));
    let names = names(&p);
    // Two swept params ending in `run`: both get their whole path as label. A value that
    // is not safe in names is written as a cleaned-up prefix and a hash.
    assert_eq!(names.len(), 2);
    assert_eq!(names[0], "only@outputs-run=x,run=a");
    let odd = names[1]
        .strip_prefix("only@outputs-run=x,run=echo_hi___x_txt-")
        .unwrap_or_else(|| panic!("{names:?}"));
    assert_eq!(odd.len(), 8);
    assert_eq!(p.stages[names[1]].params["run"], json!("echo hi > x.txt"));
}
