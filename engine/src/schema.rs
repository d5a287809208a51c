//! The JSON Schema (draft 2020-12) of a pipeline file, generated from the registered stage
//! kinds' params types, so editors can complete and check pipeline files
//! (`#:schema ../schemas/pipeline.schema.json`).
//!
//! Each `[stages.NAME]` entry is `oneOf` the kinds, told apart by `kind`; a kind's entry
//! holds its params (inlined, documented), `kind`, `inputs`, `matrix` and `resources`, and
//! nothing else. Params are not marked required: they may come from `[pipeline.defaults.KIND]` or
//! a file this one `extends`, and `itera validate` reports missing ones with their place.

use serde_json::{json, Map, Value};

use crate::spec::{PipelineHeader, Resources};
use crate::stage::Registry;

/// The schema of a whole pipeline file for the kinds in `registry`.
pub fn pipeline_schema(registry: &Registry) -> Value {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let resources = generator.subschema_for::<Resources>().to_value();
    let header = generator.subschema_for::<PipelineHeader>().to_value();
    let mut kinds = Vec::new();
    let mut defaults = Map::new();
    for stage in registry.iter() {
        let params = stage.params_schema(&mut generator).to_value();
        let kind = stage.kind();
        let (props, inlined) = match object_properties(&params, generator.definitions()) {
            Some(p) => (p, true),
            None => (Map::new(), false),
        };
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
        properties.insert(
            "kind".into(),
            json!({ "const": kind, "description": stage.description() }),
        );
        properties.insert("inputs".into(), inputs_schema());
        properties.insert("matrix".into(), matrix_schema());
        properties.insert("resources".into(), resources.clone());
        let mut entry = json!({
            "title": kind,
            "description": stage.description(),
            "type": "object",
            "properties": properties,
            "required": ["kind"],
        });
        if inlined {
            entry["additionalProperties"] = Value::Bool(false);
        } else {
            entry["allOf"] = json!([params]);
        }
        kinds.push(entry);
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
    let defs = generator.take_definitions(true);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Itera pipeline",
        "description": "A pipeline file for `itera run` (see docs/PIPELINE.md).",
        "type": "object",
        "properties": {
            "extends": {
                "description": "Path of a pipeline file (relative to this one) to deep-merge this file onto.",
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
                "additionalProperties": { "oneOf": kinds },
            },
        },
        "additionalProperties": false,
        "$defs": defs,
    })
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
            "anyOf": [reference.clone(), { "type": "array", "items": reference }],
        },
    })
}

/// `[stages.NAME.matrix]`: parameter (dotted path) -> list of values; nested tables are
/// paths too. Values are checked against the kind's params by `itera validate`.
fn matrix_schema() -> Value {
    let list = json!({ "type": "array", "minItems": 1, "maxItems": crate::spec::MAX_VARIANTS });
    json!({
        "description": format!(
            "A parameter sweep: one stage per combination of the listed values (at most {} variants). Keys are params or dotted paths into them (`\"optimizer.learning_rate\"`).",
            crate::spec::MAX_VARIANTS
        ),
        "type": "object",
        "minProperties": 1,
        "additionalProperties": {
            "anyOf": [list, { "type": "object" }],
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
