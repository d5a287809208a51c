//! Typed checks of one table of the document (a stage's params, `[pipeline]`, resources)
//! that report every problem with its origin: unknown keys at any depth come from the
//! table's JSON schema (with "did you mean"), type errors from deserializing (one pass per
//! bad key, so several are found), range errors from the kind's `validate` hook.

use std::collections::BTreeMap;

use schemars::{JsonSchema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};

use super::diagnostic::{did_you_mean, list, Diagnostic};
use super::tree::{table_to_toml, Node, Sources};
use crate::stage::{ParamIssue, Stage};

/// A JSON schema with its definitions, for looking up which keys a table accepts.
pub(crate) struct SchemaView {
    root: Json,
    defs: Map<String, Json>,
}

impl SchemaView {
    /// The params schema of a stage kind.
    pub fn of_stage(stage: &dyn Stage) -> Self {
        let mut generator = generator();
        let root = stage.params_schema(&mut generator).to_value();
        Self {
            root,
            defs: generator.definitions().clone(),
        }
    }
    /// The schema of a Rust type.
    pub fn of<T: JsonSchema>() -> Self {
        let mut generator = generator();
        let root = generator.subschema_for::<T>().to_value();
        Self {
            root,
            defs: generator.definitions().clone(),
        }
    }

    /// Follows `$ref`s into the definitions.
    fn resolve<'a>(&'a self, mut schema: &'a Json) -> &'a Json {
        for _ in 0..32 {
            let Some(name) = schema
                .get("$ref")
                .and_then(Json::as_str)
                .and_then(|r| r.strip_prefix("#/$defs/"))
            else {
                break;
            };
            match self.defs.get(name) {
                Some(def) => schema = def,
                None => break,
            }
        }
        schema
    }

    /// The properties of an object schema and whether other keys are rejected; looks
    /// through `$ref` and into the first object alternative of `anyOf`/`oneOf` (options).
    fn object<'a>(&'a self, schema: &'a Json) -> Option<(&'a Map<String, Json>, bool)> {
        let schema = self.resolve(schema);
        if let Some(props) = schema.get("properties").and_then(Json::as_object) {
            let closed = schema.get("additionalProperties") == Some(&Json::Bool(false));
            return Some((props, closed));
        }
        ["anyOf", "oneOf"].iter().find_map(|k| {
            schema
                .get(*k)
                .and_then(Json::as_array)?
                .iter()
                .find_map(|alt| self.object(alt))
        })
    }

    /// The keys accepted at the top level, sorted.
    pub fn top_keys(&self) -> Vec<String> {
        self.object(&self.root)
            .map(|(props, _)| props.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every key of `table` (at any depth) the schema does not accept, with the keys it
    /// would accept there. `extra` are further keys accepted at the top level.
    pub fn unknown_keys(
        &self,
        table: &BTreeMap<String, Node>,
        extra: &[&str],
    ) -> Vec<(Vec<String>, Vec<String>)> {
        let mut out = Vec::new();
        self.walk(&self.root, table, &mut Vec::new(), extra, &mut out);
        out
    }

    fn walk(
        &self,
        schema: &Json,
        table: &BTreeMap<String, Node>,
        path: &mut Vec<String>,
        extra: &[&str],
        out: &mut Vec<(Vec<String>, Vec<String>)>,
    ) {
        let Some((props, closed)) = self.object(schema) else {
            return;
        };
        for (key, node) in table {
            match props.get(key) {
                Some(sub) => {
                    if let Some(t) = node.as_table() {
                        path.push(key.clone());
                        self.walk(sub, t, path, &[], out);
                        path.pop();
                    }
                }
                None if closed && !extra.contains(&key.as_str()) => {
                    let mut p = path.clone();
                    p.push(key.clone());
                    let mut candidates: Vec<String> = props.keys().cloned().collect();
                    candidates.extend(extra.iter().map(|s| (*s).to_owned()));
                    out.push((p, candidates));
                }
                None => {}
            }
        }
    }
}

/// A schema generator with the settings the pipeline schema uses.
pub(crate) fn generator() -> SchemaGenerator {
    schemars::generate::SchemaSettings::draft2020_12().into_generator()
}

/// How to name a checked table and its keys in messages.
pub(crate) struct Subject {
    /// "parameter" or "key".
    pub noun: &'static str,
    /// e.g. "for stage `train` (kind `train`)" or "in `[pipeline.slurm]`".
    pub owner: String,
    /// The table's header without brackets, e.g. "stages.train", for help texts.
    pub header: String,
}

/// Serde's own error messages, as opposed to a `validate` hook's.
fn is_serde_message(message: &str) -> bool {
    [
        "invalid type:",
        "invalid value:",
        "invalid length",
        "unknown field",
        "unknown variant",
        "missing field",
        "duplicate field",
    ]
    .iter()
    .any(|p| message.starts_with(p))
}

/// The name in the first backticks of `message` (serde puts field names there).
fn quoted_name(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// Checks `table` (whose keys are in `node`) with `check`, which parses and validates a
/// plain TOML table. `subject_of` names the table a problem is in, given the node the
/// problem is about (params merged from `[pipeline.defaults]` are named as such).
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_table(
    node: &Node,
    table: &BTreeMap<String, Node>,
    schema: &SchemaView,
    extra_keys: &[&str],
    check: &dyn Fn(&toml::Table) -> Result<Json, Vec<ParamIssue>>,
    subject_of: &dyn Fn(&[String], &Node) -> Subject,
    sources: &Sources,
) -> Result<Json, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut plain = table_to_toml(table);
    for (path, candidates) in schema.unknown_keys(table, extra_keys) {
        diags.push(unknown_key(node, table, &path, &candidates, subject_of, sources));
        remove_path(&mut plain, &path);
    }
    let mut changed_values = false;
    // Each round removes one bad key, so this ends; the bound is a second guarantee.
    for _ in 0..=count_keys(&plain) {
        match check(&plain) {
            Ok(json) if diags.is_empty() => return Ok(json),
            Ok(_) => return Err(diags),
            Err(issues) => {
                let serde = issues.len() == 1 && is_serde_message(&issues[0].message);
                if !serde {
                    if !changed_values {
                        for issue in &issues {
                            diags.push(issue_diagnostic(
                                node, table, issue, schema, subject_of, sources,
                            ));
                        }
                    }
                    return Err(diags);
                }
                let issue = &issues[0];
                diags.push(issue_diagnostic(
                    node, table, issue, schema, subject_of, sources,
                ));
                if issue.message.starts_with("missing field") || !remove_path(&mut plain, &issue.path)
                {
                    return Err(diags);
                }
                changed_values = true;
            }
        }
    }
    Err(diags)
}

/// Deserializes a plain table into `T` as `check_table` wants it.
pub(crate) fn deserialize_check<T: DeserializeOwned + serde::Serialize>(
    table: &toml::Table,
) -> Result<Json, Vec<ParamIssue>> {
    let typed: T = serde_path_to_error::deserialize(toml::Value::Table(table.clone())).map_err(
        |e| {
            let path = e
                .path()
                .iter()
                .filter_map(|seg| match seg {
                    serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                    serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                    serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                    serde_path_to_error::Segment::Unknown => None,
                })
                .collect();
            vec![ParamIssue {
                path,
                message: e.into_inner().to_string(),
                help: None,
            }]
        },
    )?;
    serde_json::to_value(&typed)
        .map_err(|e| vec![ParamIssue::new("", format!("cannot be represented as JSON: {e}"))])
}

fn unknown_key(
    node: &Node,
    table: &BTreeMap<String, Node>,
    path: &[String],
    candidates: &[String],
    subject_of: &dyn Fn(&[String], &Node) -> Subject,
    sources: &Sources,
) -> Diagnostic {
    let target = lookup(node, table, path);
    let subject = subject_of(path, target);
    let name = path.last().map(String::as_str).unwrap_or_default();
    let help = did_you_mean(name, candidates).unwrap_or_else(|| {
        let mut sorted = candidates.to_vec();
        sorted.sort();
        format!("expected one of {}", list(&sorted))
    });
    Diagnostic::new(
        format!(
            "unknown {} `{}` {}",
            subject.noun,
            path.join("."),
            subject.owner
        ),
        Some(sources.locate(&target.key)),
    )
    .with_help(help)
}

fn issue_diagnostic(
    node: &Node,
    table: &BTreeMap<String, Node>,
    issue: &ParamIssue,
    schema: &SchemaView,
    subject_of: &dyn Fn(&[String], &Node) -> Subject,
    sources: &Sources,
) -> Diagnostic {
    let message = issue.message.as_str();
    if message.starts_with("unknown field") {
        let mut path = issue.path.clone();
        if let Some(name) = quoted_name(message) {
            if path.last().map(String::as_str) != Some(name) {
                path.push(name.to_owned());
            }
        }
        let candidates = if path.len() == 1 {
            schema.top_keys()
        } else {
            Vec::new()
        };
        return unknown_key(node, table, &path, &candidates, subject_of, sources);
    }
    if message.starts_with("missing field") {
        let (parent, depth) = deepest(node, table, &issue.path);
        let subject = subject_of(&issue.path[..depth], parent);
        let field = quoted_name(message).unwrap_or("?");
        let mut full = issue.path.clone();
        full.push(field.to_owned());
        let header = if issue.path.is_empty() {
            subject.header.clone()
        } else {
            format!("{}.{}", subject.header, issue.path.join("."))
        };
        return Diagnostic::new(
            format!(
                "missing required {} `{}` {}",
                subject.noun,
                full.join("."),
                subject.owner
            ),
            Some(sources.locate(&parent.key)),
        )
        .with_help(format!("add `{field} = ...` to `[{header}]`"));
    }
    let (target, depth) = deepest(node, table, &issue.path);
    let subject = subject_of(&issue.path[..depth], target);
    let origin = if depth == 0 { &target.key } else { &target.origin };
    let what = if issue.path.is_empty() {
        format!("invalid {}s {}", subject.noun, subject.owner)
    } else {
        format!(
            "invalid {} `{}` {}",
            subject.noun,
            issue.path.join("."),
            subject.owner
        )
    };
    Diagnostic::new(what, Some(sources.locate(origin)))
        .with_label(message)
        .with_help_opt(issue.help.clone())
}

/// The node at `path` inside `table` (the whole `node` for an empty path).
fn lookup<'a>(node: &'a Node, table: &'a BTreeMap<String, Node>, path: &[String]) -> &'a Node {
    deepest(node, table, path).0
}

/// The deepest node along `path` in `table`, and how many segments exist.
fn deepest<'a>(
    node: &'a Node,
    table: &'a BTreeMap<String, Node>,
    path: &[String],
) -> (&'a Node, usize) {
    let Some((first, rest)) = path.split_first() else {
        return (node, 0);
    };
    match table.get(first) {
        Some(child) => {
            let (n, d) = child.deepest(rest);
            (n, d + 1)
        }
        None => (node, 0),
    }
}

/// Removes the value at `path`; an array on the way is removed whole. Returns whether
/// anything was removed.
fn remove_path(table: &mut toml::Table, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return table.remove(first).is_some();
    }
    match table.get_mut(first) {
        Some(toml::Value::Table(inner)) => remove_path(inner, rest),
        Some(_) => table.remove(first).is_some(),
        None => false,
    }
}

fn count_keys(table: &toml::Table) -> usize {
    table
        .values()
        .map(|v| match v {
            toml::Value::Table(t) => 1 + count_keys(t),
            _ => 1,
        })
        .sum()
}
