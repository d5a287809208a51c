//! The generated pipeline schema: its shape, that every `$ref` resolves, and that every
//! key of the valid fixtures is described by it (so editors accept them).

mod spec_support;

use itera_engine::schema::pipeline_schema;
use serde_json::Value;

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                if k == "$ref" {
                    out.extend(x.as_str().map(str::to_owned));
                }
                refs(x, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// The schema of a kind's stage entry (the `then` of its `if kind = ...` branch).
fn kind_entry<'a>(schema: &'a Value, kind: &str) -> &'a Value {
    let branch = schema["$defs"]["Stage"]["allOf"]
        .as_array()
        .expect("one if/then per kind")
        .iter()
        .find(|b| b["if"]["properties"]["kind"]["const"] == kind)
        .unwrap_or_else(|| panic!("no branch for kind {kind}"));
    let name = branch["then"]["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .expect("a local ref");
    &schema["$defs"][name]
}

#[test]
fn describes_every_kind_and_the_pipeline_table() {
    let registry = spec_support::registry();
    let schema = pipeline_schema(&registry);
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["additionalProperties"], false);
    // `kind` is a plain enum of the kinds (a wrong kind is "not one of [...]").
    let kinds: Vec<&str> = schema["$defs"]["Stage"]["properties"]["kind"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(kinds, registry.kinds().collect::<Vec<_>>());
    assert!(schema["$defs"]["Stage"].get("oneOf").is_none());
    // Without `extends`, every stage table names its kind; with it, overrides may not.
    assert_eq!(
        schema["if"],
        serde_json::json!({ "not": { "required": ["extends"] } })
    );
    assert_eq!(
        schema["then"]["properties"]["stages"]["additionalProperties"]["required"],
        serde_json::json!(["kind"])
    );

    let train = kind_entry(&schema, "train");
    assert_eq!(train["additionalProperties"], false);
    for key in [
        "steps",
        "lr",
        "threads",
        "model",
        "tags",
        "kind",
        "inputs",
        "resources",
    ] {
        assert!(train["properties"].get(key).is_some(), "train has `{key}`");
    }
    assert_eq!(
        train["properties"]["steps"]["description"],
        "Optimizer steps."
    );

    let pipeline = &schema["properties"]["pipeline"]["properties"];
    for key in ["name", "description", "seed", "slurm", "defaults"] {
        assert!(pipeline.get(key).is_some(), "[pipeline] has `{key}`");
    }
    assert!(pipeline["defaults"]["properties"]["train"]["properties"]["threads"].is_object());

    let mut all = Vec::new();
    refs(&schema, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/$defs/")
            .unwrap_or_else(|| panic!("local ref {r}"));
        assert!(schema["$defs"].get(name).is_some(), "{r} resolves");
    }
}

#[test]
fn valid_fixtures_use_only_described_keys() {
    let schema = pipeline_schema(&spec_support::registry());
    for file in [
        "study.toml",
        "child.toml",
        "minimal.toml",
        "sweep.toml",
        "sweep_child.toml",
    ] {
        let path = format!("{}/tests/fixtures/valid/{file}", env!("CARGO_MANIFEST_DIR"));
        let doc: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for key in doc.keys() {
            assert!(
                schema["properties"].get(key).is_some(),
                "{file}: top-level `{key}`"
            );
        }
        let Some(stages) = doc.get("stages").and_then(|s| s.as_table()) else {
            continue;
        };
        for (name, stage) in stages {
            let Some(kind) = stage.get("kind").and_then(|k| k.as_str()) else {
                continue; // a partial override of a stage from the extended file
            };
            let entry = kind_entry(&schema, kind);
            for key in stage.as_table().unwrap().keys() {
                assert!(
                    entry["properties"].get(key).is_some(),
                    "{file}: {name}.{key}"
                );
            }
        }
    }
}

#[test]
fn schema_snapshot() {
    let schema = pipeline_schema(&spec_support::registry());
    insta::assert_snapshot!(serde_json::to_string_pretty(&schema).unwrap());
}
