//! Validation of the merged document: the top level, `[pipeline]` (with `defaults` and
//! `slurm`), and each stage's `kind`, `resources` and typed params (defaults merged under
//! them). Inputs and the graph they form are checked in [`super::links`]. Every problem is
//! collected; a stage with errors does not stop the others from being checked.

use std::collections::BTreeMap;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::diagnostic::{did_you_mean, list, Diagnostic};
use super::links::{self, SlotDraft};
use super::matrix;
use super::model::{Resources, StageSpec};
use super::tree::{Node, Sources, Value};
use super::typed::{check_table, deserialize_check, unknown_key_diagnostics, SchemaView, Subject};
use crate::stage::{Registry, Stage};

/// Keys of a stage table that are not params.
pub(crate) const RESERVED: [&str; 4] = ["kind", "inputs", "resources", matrix::MATRIX];

/// The `[pipeline]` table, without `defaults` (checked against the kinds' schemas).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PipelineHeader {
    /// The pipeline's name (used in run records and listings).
    pub name: String,
    /// One line on what the pipeline is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Seed handed to every stage; part of every cache key.
    #[serde(default)]
    pub seed: u64,
    /// Resource defaults for every stage run as a batch job.
    #[serde(default)]
    pub slurm: Resources,
}

/// What one stage table yielded; `None`/empty parts had errors (already reported).
pub(crate) struct StageDraft<'a> {
    pub name: String,
    /// The stage as written (`name` without a variant's values), named in messages.
    pub base: String,
    pub node: &'a Node,
    pub kind: Option<(String, Arc<dyn Stage>)>,
    pub params: Option<serde_json::Value>,
    pub resources: Option<Resources>,
    pub inputs: Vec<SlotDraft<'a>>,
    /// The `inputs` table, if written.
    pub inputs_node: Option<&'a Node>,
}

/// Everything a valid document yields.
pub(crate) struct Validated {
    pub header: PipelineHeader,
    pub stages: BTreeMap<String, StageSpec>,
}

/// Checks the merged document; `None` if anything is wrong (reasons in `diags`).
pub(crate) fn validate(
    root: &Node,
    root_source: usize,
    sources: &Sources,
    registry: &Registry,
    diags: &mut Vec<Diagnostic>,
) -> Option<Validated> {
    let empty = BTreeMap::new();
    let top = root.as_table().unwrap_or(&empty);
    for (key, node) in top {
        if key != "pipeline" && key != "stages" {
            diags.push(
                Diagnostic::new(
                    format!("unknown top-level key `{key}`"),
                    Some(sources.locate(&node.key)),
                )
                .with_help(
                    did_you_mean(key, &["pipeline", "stages", "extends"]).unwrap_or_else(|| {
                        "the top level holds `extends`, `[pipeline]` and `[stages.NAME]`".into()
                    }),
                ),
            );
        }
    }
    let (header, defaults) = match top.get("pipeline") {
        Some(node) => check_pipeline(node, registry, sources, diags),
        None => {
            diags.push(
                Diagnostic::new(
                    "missing `[pipeline]` table",
                    Some(sources.whole_file(root_source)),
                )
                .with_help("add `[pipeline]` with at least `name = \"...\"`"),
            );
            (None, BTreeMap::new())
        }
    };
    let stages = match top.get("stages") {
        None => {
            diags.push(
                Diagnostic::new(
                    "the pipeline has no stages",
                    Some(sources.whole_file(root_source)),
                )
                .with_help("add a stage: `[stages.NAME]` with `kind = \"...\"`"),
            );
            None
        }
        Some(node) => match node.as_table() {
            Some(t) => Some(t),
            None => {
                diags.push(not_a_table("`stages`", node, sources));
                None
            }
        },
    };
    for (name, node) in stages.into_iter().flatten() {
        if !valid_stage_name(name) {
            diags.push(
                Diagnostic::new(
                    format!("invalid stage name `{name}`"),
                    Some(sources.locate(&node.key)),
                )
                .with_help(
                    "use letters, digits, `_` and `-` (the name is used in references and file names)",
                ),
            );
        }
    }
    // Sweeps become ordinary stages here; everything below checks the expanded stages.
    let expanded = stages.map(|t| matrix::expand(t, sources, diags));
    let mut drafts = Vec::new();
    for (name, node) in expanded.iter().flatten() {
        drafts.push(check_stage(name, node, registry, &defaults, sources, diags));
    }
    links::check(&drafts, sources, diags);
    let header = header?;
    if !diags.is_empty() {
        return None;
    }
    let stages = drafts
        .into_iter()
        .filter_map(|d| {
            let (kind, _) = d.kind?;
            let spec = StageSpec {
                name: d.name.clone(),
                kind,
                inputs: d
                    .inputs
                    .into_iter()
                    .map(|slot| (slot.name, slot.refs.into_iter().map(|(r, _)| r).collect()))
                    .collect(),
                resources: d.resources?,
                params: d.params?,
            };
            Some((d.name, spec))
        })
        .collect();
    Some(Validated { header, stages })
}

fn not_a_table(what: &str, node: &Node, sources: &Sources) -> Diagnostic {
    Diagnostic::new(
        format!("{what} must be a table, found {}", node.type_name()),
        Some(sources.locate(&node.origin)),
    )
}

/// `[pipeline]`: its typed keys, and the `defaults` tables by kind.
fn check_pipeline<'a>(
    node: &'a Node,
    registry: &Registry,
    sources: &Sources,
    diags: &mut Vec<Diagnostic>,
) -> (Option<PipelineHeader>, BTreeMap<String, &'a Node>) {
    let Some(table) = node.as_table() else {
        diags.push(not_a_table("`pipeline`", node, sources));
        return (None, BTreeMap::new());
    };
    let mut rest = table.clone();
    rest.remove("defaults");
    if let Some(slurm) = table.get("slurm") {
        diags.extend(super::resources::check_values(
            slurm,
            "`[pipeline.slurm]`",
            sources,
        ));
    }
    // `stages.x = ...` written under `[pipeline]` lands inside it.
    if let Some(misplaced) = rest.remove("stages") {
        diags.push(
            Diagnostic::new(
                "`stages` is inside the `[pipeline]` table",
                Some(sources.locate(&misplaced.key)),
            )
            .with_help("keys after a `[table]` header belong to that table: write each stage as its own `[stages.NAME]` table"),
        );
    }
    let subject = |path: &[String], _: &Node| {
        if path.len() > 1 && path[0] == "slurm" {
            Subject {
                noun: "key",
                owner: "in `[pipeline.slurm]`".into(),
                header: "pipeline.slurm".into(),
                strip: 1,
            }
        } else {
            Subject {
                noun: "key",
                owner: "in `[pipeline]`".into(),
                header: "pipeline".into(),
                strip: 0,
            }
        }
    };
    let header = match check_table(
        node,
        &rest,
        &SchemaView::of::<PipelineHeader>(),
        &["defaults"],
        &deserialize_check::<PipelineHeader>,
        &subject,
        sources,
    ) {
        Ok(json) => serde_json::from_value(json).ok(),
        Err(found) => {
            diags.extend(found);
            None
        }
    };
    let mut defaults = BTreeMap::new();
    if let Some(d) = table.get("defaults") {
        match d.as_table() {
            None => diags.push(not_a_table("`pipeline.defaults`", d, sources)),
            Some(by_kind) => {
                for (kind, dnode) in by_kind {
                    matrix::check_defaults(kind, dnode, sources, diags);
                    check_defaults(kind, dnode, registry, sources, diags);
                    defaults.insert(kind.clone(), dnode);
                }
            }
        }
    }
    (header, defaults)
}

/// `[pipeline.defaults.KIND]`: the kind exists and its keys are params of the kind.
fn check_defaults(
    kind: &str,
    node: &Node,
    registry: &Registry,
    sources: &Sources,
    diags: &mut Vec<Diagnostic>,
) {
    let Some(stage) = registry.get(kind) else {
        let known: Vec<&str> = registry.kinds().collect();
        diags.push(
            Diagnostic::new(
                format!("`[pipeline.defaults.{kind}]` names unknown stage kind `{kind}`"),
                Some(sources.locate(&node.key)),
            )
            .with_help(
                did_you_mean(kind, &known)
                    .unwrap_or_else(|| format!("known kinds: {}", list(&known))),
            ),
        );
        return;
    };
    let Some(table) = node.as_table() else {
        diags.push(not_a_table(
            &format!("`pipeline.defaults.{kind}`"),
            node,
            sources,
        ));
        return;
    };
    // The same wording as when a stage inheriting the default is checked, so a problem
    // is shown once however many stages inherit it.
    let schema = SchemaView::of_stage(stage.as_ref());
    let subject = |_: &[String], _: &Node| defaults_subject(kind);
    diags.extend(unknown_key_diagnostics(
        node, table, &schema, &RESERVED, &subject, sources,
    ));
}

/// How problems in `[pipeline.defaults.KIND]` are named.
fn defaults_subject(kind: &str) -> Subject {
    Subject {
        noun: "parameter",
        owner: format!("in `[pipeline.defaults.{kind}]`"),
        header: format!("pipeline.defaults.{kind}"),
        strip: 0,
    }
}

/// One `[stages.NAME]` table.
fn check_stage<'a>(
    name: &str,
    node: &'a Node,
    registry: &Registry,
    defaults: &BTreeMap<String, &'a Node>,
    sources: &Sources,
    diags: &mut Vec<Diagnostic>,
) -> StageDraft<'a> {
    let variant = name;
    let name = matrix::base_name(variant);
    let mut draft = StageDraft {
        name: variant.to_owned(),
        base: name.to_owned(),
        node,
        kind: None,
        params: None,
        resources: None,
        inputs: Vec::new(),
        inputs_node: None,
    };
    let Some(table) = node.as_table() else {
        diags.push(not_a_table(&format!("stage `{name}`"), node, sources));
        return draft;
    };
    let known: Vec<&str> = registry.kinds().collect();
    match table.get("kind") {
        None => diags.push(
            Diagnostic::new(
                format!("stage `{name}` has no `kind`"),
                Some(sources.locate(&node.key)),
            )
            .with_help(format!(
                "add `kind = \"...\"` to `[stages.{name}]`; known kinds: {}",
                list(&known)
            )),
        ),
        Some(k) => match k.as_str() {
            None => diags.push(
                Diagnostic::new(
                    format!(
                        "`kind` of stage `{name}` must be a string, found {}",
                        k.type_name()
                    ),
                    Some(sources.locate(&k.origin)),
                )
                .with_help(format!("known kinds: {}", list(&known))),
            ),
            Some(kind) => match registry.get(kind) {
                Some(stage) => draft.kind = Some((kind.to_owned(), stage.clone())),
                None => diags.push(
                    Diagnostic::new(
                        format!("unknown stage kind `{kind}` for stage `{name}`"),
                        Some(sources.locate(&k.origin)),
                    )
                    .with_help(
                        did_you_mean(kind, &known)
                            .unwrap_or_else(|| format!("known kinds: {}", list(&known))),
                    ),
                ),
            },
        },
    }
    draft.resources = check_resources(name, table.get("resources"), sources, diags);
    if let Some(inputs) = table.get("inputs") {
        draft.inputs_node = Some(inputs);
        draft.inputs = links::parse_inputs(name, inputs, sources, diags);
    }
    if let Some((kind, stage)) = &draft.kind {
        let mut params = Node {
            value: Value::Table(BTreeMap::new()),
            origin: node.origin.clone(),
            key: node.key.clone(),
        };
        if let Some(d) = defaults.get(kind).filter(|d| d.as_table().is_some()) {
            let mut d = (*d).clone();
            // A sweep in the defaults is reported by `matrix::check_defaults`.
            if let Some(t) = d.as_table_mut() {
                t.remove(matrix::MATRIX);
            }
            params.merge(d);
        }
        let own: BTreeMap<String, Node> = table
            .iter()
            .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.merge(Node {
            value: Value::Table(own),
            origin: node.origin.clone(),
            key: node.key.clone(),
        });
        let merged = params.as_table().cloned().unwrap_or_default();
        let default_node = defaults.get(kind).copied();
        let subject = |path: &[String], target: &Node| {
            let from_default = !path.is_empty()
                && default_node
                    .and_then(|d| d.get_path(path))
                    .is_some_and(|d| d.origin == target.origin && d.key == target.key);
            if from_default {
                defaults_subject(kind)
            } else {
                Subject {
                    noun: "parameter",
                    owner: format!("for stage `{name}` (kind `{kind}`)"),
                    header: format!("stages.{name}"),
                    strip: 0,
                }
            }
        };
        let schema = SchemaView::of_stage(stage.as_ref());
        match check_table(
            node,
            &merged,
            &schema,
            &RESERVED,
            &|t| stage.check_params(t),
            &subject,
            sources,
        ) {
            Ok(json) => draft.params = Some(json),
            Err(found) => {
                diags.extend(found);
            }
        }
    }
    draft
}

/// `[stages.NAME.resources]`, typed.
fn check_resources(
    stage: &str,
    node: Option<&Node>,
    sources: &Sources,
    diags: &mut Vec<Diagnostic>,
) -> Option<Resources> {
    let Some(node) = node else {
        return Some(Resources::default());
    };
    let Some(table) = node.as_table() else {
        diags.push(not_a_table(
            &format!("`resources` of stage `{stage}`"),
            node,
            sources,
        ));
        return None;
    };
    let bad =
        super::resources::check_values(node, &format!("`[stages.{stage}.resources]`"), sources);
    if !bad.is_empty() {
        diags.extend(bad);
        return None;
    }
    let subject = |_: &[String], _: &Node| Subject {
        noun: "key",
        owner: format!("in `[stages.{stage}.resources]`"),
        header: format!("stages.{stage}.resources"),
        strip: 0,
    };
    match check_table(
        node,
        table,
        &SchemaView::of::<Resources>(),
        &[],
        &deserialize_check::<Resources>,
        &subject,
        sources,
    ) {
        Ok(json) => serde_json::from_value(json).ok(),
        Err(found) => {
            diags.extend(found);
            None
        }
    }
}

/// Stage names are used in references (`stage.output`) and file names.
pub(crate) fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names() {
        assert!(valid_stage_name("train"));
        assert!(valid_stage_name("eval_fp16-2"));
        assert!(!valid_stage_name("a.b"));
        assert!(!valid_stage_name("-x"));
        assert!(!valid_stage_name(""));
        assert!(!valid_stage_name("with space"));
    }
}
