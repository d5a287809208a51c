//! Typed checks of one table of the document (a stage's params, `[pipeline]`, resources)
//! that report every problem with its origin: unknown keys at any depth come from the
//! table's JSON schema (with "did you mean"), type errors from deserializing (one pass per
//! bad key, so several are found), range errors from the kind's `validate` hook.

use std::collections::BTreeMap;

use schemars::{JsonSchema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};

use super::diagnostic::{did_you_mean, list, suggest, Diagnostic};
use super::tree::{table_to_toml, Node, Sources, Value};
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

    /// Every key path the schema describes (nested objects up to four levels deep).
    pub fn all_paths(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect_paths(&self.root, &mut Vec::new(), &mut out);
        out
    }

    fn collect_paths(&self, schema: &Json, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        let Some((props, _)) = self.object(schema) else {
            return;
        };
        for (key, sub) in props {
            prefix.push(key.clone());
            out.push(prefix.clone());
            if prefix.len() < 4 {
                self.collect_paths(sub, prefix, out);
            }
            prefix.pop();
        }
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
    /// Leading key segments that `header` already names (1 for `[pipeline.slurm]` inside
    /// `[pipeline]`), left out when a key path is shown.
    pub strip: usize,
}

impl Subject {
    /// A key path as shown in messages, relative to the named table.
    fn show(&self, path: &[String]) -> String {
        path[self.strip.min(path.len())..].join(".")
    }
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
    // Values taken out of the typed check because they are not what was written:
    // unrepresentable ones (reported when read) and, below, each value of the wrong type.
    // Unknown keys are taken out too, but they change no typed value.
    let mut removed: Vec<Vec<String>> = Vec::new();
    for path in invalid_paths(table) {
        remove_path(&mut plain, &path);
        removed.push(path);
    }
    for (path, candidates) in schema.unknown_keys(table, extra_keys) {
        diags.push(unknown_key(
            node,
            table,
            &path,
            &candidates,
            schema,
            subject_of,
            sources,
        ));
        remove_path(&mut plain, &path);
    }
    // Each round removes one bad key, so this ends; the bound is a second guarantee.
    for _ in 0..=count_keys(&plain) {
        match check(&plain) {
            Ok(json) if diags.is_empty() => return Ok(json),
            Ok(_) => return Err(diags),
            Err(issues) => {
                let serde = issues.len() == 1 && is_serde_message(&issues[0].message);
                if !serde {
                    // A `validate` hook's findings are only meaningful for the table as
                    // written, not one with values taken out.
                    if removed.is_empty() {
                        for issue in &issues {
                            diags.push(issue_diagnostic(
                                node, table, issue, schema, subject_of, sources,
                            ));
                        }
                    }
                    return Err(diags);
                }
                let issue = &issues[0];
                if issue.message.starts_with("missing field") {
                    let mut full = issue.path.clone();
                    full.extend(quoted_name(&issue.message).map(str::to_owned));
                    if !removed.contains(&full) {
                        diags.push(issue_diagnostic(
                            node, table, issue, schema, subject_of, sources,
                        ));
                    }
                    return Err(diags);
                }
                diags.push(issue_diagnostic(
                    node, table, issue, schema, subject_of, sources,
                ));
                if !remove_path(&mut plain, &issue.path) {
                    return Err(diags);
                }
                removed.push(issue.path.clone());
            }
        }
    }
    Err(diags)
}

/// Paths of values that could not be represented (reported when the file was read).
fn invalid_paths(table: &BTreeMap<String, Node>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (key, node) in table {
        match &node.value {
            Value::Invalid => out.push(vec![key.clone()]),
            Value::Table(t) => out.extend(invalid_paths(t).into_iter().map(|mut p| {
                p.insert(0, key.clone());
                p
            })),
            Value::Array(items) if items.iter().any(Node::has_invalid) => {
                out.push(vec![key.clone()])
            }
            _ => {}
        }
    }
    out
}

/// Deserializes a plain table into `T` as `check_table` wants it.
pub(crate) fn deserialize_check<T: DeserializeOwned + serde::Serialize>(
    table: &toml::Table,
) -> Result<Json, Vec<ParamIssue>> {
    let typed: T =
        serde_path_to_error::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
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
        })?;
    serde_json::to_value(&typed).map_err(|e| {
        vec![ParamIssue::new(
            "",
            format!("cannot be represented as JSON: {e}"),
        )]
    })
}

/// A diagnostic for every key of `table` (inside `node`) that `schema` does not accept.
pub(crate) fn unknown_key_diagnostics(
    node: &Node,
    table: &BTreeMap<String, Node>,
    schema: &SchemaView,
    extra_keys: &[&str],
    subject_of: &dyn Fn(&[String], &Node) -> Subject,
    sources: &Sources,
) -> Vec<Diagnostic> {
    schema
        .unknown_keys(table, extra_keys)
        .into_iter()
        .map(|(path, candidates)| {
            unknown_key(node, table, &path, &candidates, schema, subject_of, sources)
        })
        .collect()
}

fn unknown_key(
    node: &Node,
    table: &BTreeMap<String, Node>,
    path: &[String],
    candidates: &[String],
    schema: &SchemaView,
    subject_of: &dyn Fn(&[String], &Node) -> Subject,
    sources: &Sources,
) -> Diagnostic {
    let target = lookup(node, table, path);
    let subject = subject_of(path, target);
    let name = path.last().map(String::as_str).unwrap_or_default();
    let help = did_you_mean(name, candidates)
        .or_else(|| {
            // A key written at the wrong depth (`hidden_size` for `model.hidden_size`).
            let elsewhere: Vec<String> = schema
                .all_paths()
                .into_iter()
                .filter(|p| {
                    p.len() > 1
                        && p.last()
                            .is_some_and(|last| suggest(name, [last]).is_some() || last == name)
                })
                .map(|p| p.join("."))
                .collect();
            elsewhere.first().map(|p| format!("did you mean `{p}`?"))
        })
        .unwrap_or_else(|| {
            let mut sorted = candidates.to_vec();
            sorted.sort();
            format!("expected one of {}", list(&sorted))
        });
    Diagnostic::new(
        format!(
            "unknown {} `{}` {}",
            subject.noun,
            subject.show(path),
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
    // toml's errors append "in `key`" on further lines; the location says that already.
    let message = if is_serde_message(&issue.message) {
        issue.message.lines().next().unwrap_or_default()
    } else {
        issue.message.as_str()
    };
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
        return unknown_key(node, table, &path, &candidates, schema, subject_of, sources);
    }
    if message.starts_with("missing field") {
        let (parent, depth) = deepest(node, table, &issue.path);
        let subject = subject_of(&issue.path[..depth], parent);
        let field = quoted_name(message).unwrap_or("?");
        let mut full = issue.path.clone();
        full.push(field.to_owned());
        let inner = subject.show(&issue.path);
        let header = if inner.is_empty() {
            subject.header.clone()
        } else {
            format!("{}.{inner}", subject.header)
        };
        return Diagnostic::new(
            format!(
                "missing required {} `{}` {}",
                subject.noun,
                subject.show(&full),
                subject.owner
            ),
            Some(sources.locate(&parent.key)),
        )
        .with_help(format!("add `{field} = ...` to `[{header}]`"));
    }
    let (target, depth) = deepest(node, table, &issue.path);
    let subject = subject_of(&issue.path[..depth], target);
    let origin = if depth == 0 {
        &target.key
    } else {
        &target.origin
    };
    let what = if issue.path.is_empty() {
        format!("invalid {}s {}", subject.noun, subject.owner)
    } else {
        format!(
            "invalid {} `{}` {}",
            subject.noun,
            subject.show(&issue.path),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tree::Origin;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        count: u32,
        #[serde(default)]
        inner: Option<Inner>,
        #[serde(default)]
        free: BTreeMap<String, u32>,
    }

    #[derive(Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        width: u32,
    }

    fn table(src: &str) -> Node {
        let doc = toml::de::DeTable::parse(src).expect("test document parses");
        let at = |span| Origin::File { source: 0, span };
        let mut errors = Vec::new();
        let t = Node::table_from_de(doc.get_ref(), &at, &mut errors);
        Node {
            value: Value::Table(t),
            origin: at(0..0),
            key: at(0..0),
        }
    }

    #[test]
    fn unknown_keys_are_found_at_every_depth_through_options() {
        let schema = SchemaView::of::<Outer>();
        let node =
            table("count = 1\ncuont = 2\ninner = { width = 1, widht = 2 }\nfree = { any = 1 }\n");
        let found = schema.unknown_keys(node.as_table().unwrap(), &["kind"]);
        let paths: Vec<String> = found.iter().map(|(p, _)| p.join(".")).collect();
        assert_eq!(paths, ["cuont", "inner.widht"]);
        assert!(
            found[0].1.contains(&"kind".to_owned()),
            "extra keys are candidates"
        );
        assert_eq!(found[1].1, ["width"]);
        assert_eq!(
            schema
                .all_paths()
                .iter()
                .map(|p| p.join("."))
                .collect::<Vec<_>>(),
            ["count", "free", "inner", "inner.width"]
        );
    }

    #[test]
    fn every_wrong_type_is_reported_and_its_missing_field_is_not() {
        let mut sources = Sources::default();
        let src = "count = \"x\"\ninner = { width = -1 }\n";
        sources.add_file("t.toml".into(), src.into());
        let node = table(src);
        let subject = |_: &[String], _: &Node| Subject {
            noun: "key",
            owner: "in `[t]`".into(),
            header: "t".into(),
            strip: 0,
        };
        let diags = check_table(
            &node,
            node.as_table().unwrap(),
            &SchemaView::of::<Outer>(),
            &[],
            &deserialize_check::<Outer>,
            &subject,
            &sources,
        )
        .expect_err("two bad values");
        let messages: Vec<&str> = diags.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "invalid key `count` in `[t]`",
                "invalid key `inner.width` in `[t]`"
            ]
        );
        assert_eq!(
            diags[0].label.as_deref(),
            Some("invalid type: string \"x\", expected u32")
        );
    }
}
