//! The JSON Schema (draft 2020-12) of a pipeline file, generated from the registered stage
//! kinds' params types, so editors can complete and check pipeline files
//! (`#:schema ../schemas/pipeline.schema.json`).
//!
//! A `[stages.NAME]` entry is checked by its `kind` with one `if`/`then` per kind (never
//! `oneOf`, whose failures editors report as "not valid under any of the schemas"): `kind`
//! must be one of the kinds, and a table of kind K accepts K's params (inlined,
//! documented), `kind`, `inputs`, `matrix` and `resources`, and nothing else, so a
//! misspelled key is reported by name. A file with `extends` may hold override tables
//! without `kind` (the base file gives it): their keys must be keys of some kind. Params are
//! not marked required: they may come from `[pipeline.defaults.KIND]` or a file this one
//! `extends`, and `itera validate` reports missing ones with their place. Enums are plain
//! `enum`s, and the ranges are the ones `itera validate` enforces (declared on the params
//! types with `#[schemars(range(...))]`).

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::spec::{PipelineHeader, Resources};
use crate::stage::Registry;

/// The keys every stage table may have besides its kind's params.
const COMMON: [&str; 4] = ["kind", "inputs", "matrix", "resources"];

/// The schema of a whole pipeline file for the kinds in `registry`.
pub fn pipeline_schema(registry: &Registry) -> Value {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let resources = generator.subschema_for::<Resources>().to_value();
    let header = generator.subschema_for::<PipelineHeader>().to_value();
    let mut kinds = Vec::new();
    let mut branches = Vec::new();
    let mut kind_defs = Map::new();
    let mut defaults = Map::new();
    let mut every_key: BTreeSet<String> = COMMON.iter().map(|k| (*k).to_owned()).collect();
    for stage in registry.iter() {
        let params = stage.params_schema(&mut generator).to_value();
        let kind = stage.kind();
        kinds.push(json!({ "const": kind, "description": stage.description() }));
        let (props, inlined) = match object_properties(&params, generator.definitions()) {
            Some(p) => (p, true),
            None => (Map::new(), false),
        };
        every_key.extend(props.keys().cloned());
        defaults.insert(
            kind.to_owned(),
            json!({
                "description": format!("Default params for every stage of kind `{kind}`; a stage's own keys win."),
                "type": "object",
                "properties": props.clone(),
                "additionalProperties": !inlined,
            }),
        );
        let mut properties = props;
        properties.insert("kind".into(), json!({ "const": kind }));
        properties.insert("inputs".into(), json!({ "$ref": "#/$defs/Inputs" }));
        properties.insert("matrix".into(), json!({ "$ref": "#/$defs/Matrix" }));
        properties.insert("resources".into(), resources.clone());
        let mut entry = json!({
            "title": format!("a `{kind}` stage"),
            "description": stage.description(),
            "type": "object",
            "properties": properties,
        });
        if inlined {
            entry["additionalProperties"] = Value::Bool(false);
        } else {
            entry["allOf"] = json!([params]);
        }
        let name = format!("Stage-{kind}");
        kind_defs.insert(name.clone(), entry);
        branches.push(json!({
            "if": { "properties": { "kind": { "const": kind } }, "required": ["kind"] },
            "then": { "$ref": format!("#/$defs/{name}") },
        }));
    }
    let mut pipeline = object_properties(&header, generator.definitions()).unwrap_or_default();
    pipeline.insert(
        "defaults".into(),
        json!({
            "description": "Default params by stage kind (`[pipeline.defaults.KIND]`).",
            "type": "object",
            "properties": defaults,
            "additionalProperties": false,
        }),
    );
    let mut defs = generator.take_definitions(true);
    defs.extend(kind_defs);
    defs.insert("Inputs".into(), inputs_schema());
    defs.insert("Matrix".into(), matrix_schema());
    // An override table (no `kind`, in a file that `extends` another): any kind's keys.
    branches.push(json!({
        "if": { "not": { "required": ["kind"] } },
        "then": {
            "propertyNames": {
                "description": "An override table without `kind` (the file this one extends gives it) may set any stage kind's params.",
                "enum": every_key.into_iter().collect::<Vec<_>>(),
            },
        },
    }));
    let stage = json!({
        "description": "A stage: `kind` and its params, `inputs`, `matrix`, `resources`.",
        "type": "object",
        "properties": {
            "kind": { "description": "The stage's kind (what it does; see docs/PIPELINE.md).", "oneOf": kinds },
            "inputs": { "$ref": "#/$defs/Inputs" },
            "matrix": { "$ref": "#/$defs/Matrix" },
            "resources": resources,
        },
        "allOf": branches,
    });
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Itera pipeline",
        "description": "A pipeline file for `itera run` (see docs/PIPELINE.md).",
        "type": "object",
        "properties": {
            "extends": {
                "description": "Path of a pipeline file (relative to this one) to deep-merge this file onto; its stage tables may then omit `kind`.",
                "type": "string",
            },
            "pipeline": {
                "description": "The pipeline's name, seed and defaults.",
                "type": "object",
                "properties": pipeline,
                "additionalProperties": false,
            },
            "stages": {
                "description": "The stages, by name (`[stages.NAME]`).",
                "type": "object",
                "propertyNames": { "pattern": "^[A-Za-z0-9_][A-Za-z0-9_-]*$" },
                "additionalProperties": { "$ref": "#/$defs/Stage" },
            },
        },
        "additionalProperties": false,
        // Without `extends`, every stage table names its kind.
        "if": { "not": { "required": ["extends"] } },
        "then": {
            "properties": {
                "stages": { "additionalProperties": { "required": ["kind"] } },
            },
        },
        "$defs": defs,
    });
    schema["$defs"]["Stage"] = stage;
    flatten_enums(&mut schema);
    schema
}

/// Rewrites every `oneOf` whose alternatives are all documented constants (what schemars
/// makes of a Rust enum) as one `enum`, the alternatives' descriptions listed in the
/// description: a wrong value is then reported as "not one of [...]" with the choices.
fn flatten_enums(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let consts = map.get("oneOf").and_then(Value::as_array).and_then(|alts| {
                alts.iter()
                    .map(|a| Some((a.get("const")?.clone(), a.get("description").cloned())))
                    .collect::<Option<Vec<_>>>()
            });
            if let Some(consts) = consts {
                map.remove("oneOf");
                let mut text = map
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                for (value, description) in &consts {
                    if let Some(d) = description.as_ref().and_then(Value::as_str) {
                        text.push_str(&format!(
                            "\n- `{}`: {}",
                            value.as_str().unwrap_or_default(),
                            d.replace('\n', " ")
                        ));
                    }
                }
                if !text.is_empty() {
                    map.insert(
                        "description".into(),
                        Value::String(text.trim_start().to_owned()),
                    );
                }
                if consts.iter().all(|(v, _)| v.is_string()) {
                    map.insert("type".into(), json!("string"));
                }
                map.insert(
                    "enum".into(),
                    Value::Array(consts.into_iter().map(|(v, _)| v).collect()),
                );
            }
            map.values_mut().for_each(flatten_enums);
        }
        Value::Array(items) => items.iter_mut().for_each(flatten_enums),
        _ => {}
    }
}

/// `inputs = { NAME = "stage" | "stage.output" | [ ... ] }`.
fn inputs_schema() -> Value {
    let reference = json!({
        "type": "string",
        "pattern": "^[A-Za-z0-9_][A-Za-z0-9_-]*(\\[[^\\]]+\\]|@[A-Za-z0-9_@=,+-]+)?(\\..+)?$",
        "description": "`STAGE` (its whole artifact) or `STAGE.OUTPUT` (one named output); `STAGE[*]` gathers every variant of a swept stage (`STAGE[LABEL=VALUE]` those with that value), `STAGE@...` names one variant.",
    });
    json!({
        "description": "Input name -> upstream stage reference(s); these are the graph's edges.",
        "type": "object",
        "additionalProperties": {
            "type": ["string", "array"],
            "items": reference.clone(),
            "pattern": reference["pattern"].clone(),
            "description": reference["description"].clone(),
        },
    })
}

/// `[stages.NAME.matrix]`: parameter (dotted path) -> list of values; nested tables are
/// paths too. Values are checked against the kind's params by `itera validate`.
fn matrix_schema() -> Value {
    json!({
        "description": format!(
            "A parameter sweep: one stage per combination of the listed values (at most {} variants). Keys are params or dotted paths into them (`\"optimizer.learning_rate\"`).",
            crate::spec::MAX_VARIANTS
        ),
        "type": "object",
        "minProperties": 1,
        "additionalProperties": {
            "type": ["array", "object"],
            "minItems": 1,
            "maxItems": crate::spec::MAX_VARIANTS,
        },
    })
}

/// The properties of an object schema, looking through a `$ref` into `defs`.
fn object_properties(schema: &Value, defs: &Map<String, Value>) -> Option<Map<String, Value>> {
    let resolved = match schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        Some(name) => defs.get(name)?,
        None => schema,
    };
    resolved.get("properties")?.as_object().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_constants_become_one_enum() {
        let mut s = json!({ "description": "How.", "oneOf": [
            { "const": "a", "description": "first", "type": "string" },
            { "const": "b", "description": "second", "type": "string" },
        ]});
        flatten_enums(&mut s);
        assert_eq!(s["enum"], json!(["a", "b"]));
        assert!(s.get("oneOf").is_none());
        assert_eq!(s["description"], "How.\n- `a`: first\n- `b`: second");
        // Other `oneOf`s are left alone.
        let mut s = json!({ "oneOf": [{ "type": "string" }, { "type": "integer" }] });
        flatten_enums(&mut s);
        assert!(s.get("oneOf").is_some());
    }
}
