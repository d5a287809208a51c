//! Stage inputs: parsing `inputs = { name = "stage" | "stage.output" | [..] }`, and the
//! checks that need every stage: references to missing stages or outputs, input names the
//! kind does not accept, missing required inputs, several references on a single slot,
//! self-references, and dependency cycles (reported with their whole path).

use std::collections::BTreeMap;

use petgraph::graph::{DiGraph, NodeIndex};

use super::diagnostic::{did_you_mean, list, Diagnostic};
use super::matrix::{base_name, valid_variant_name, VARIANT_SEPARATOR};
use super::model::InputRef;
use super::tree::{Node, Sources, Value};
use super::validate::{valid_stage_name, StageDraft};
use crate::stage::InputSlots;

/// One entry of a stage's `inputs` table.
pub(crate) struct SlotDraft<'a> {
    pub name: String,
    /// The entry's value (its `key` is where the input name is written).
    pub node: &'a Node,
    pub refs: Vec<(InputRef, &'a Node)>,
}

/// Reads `inputs` of stage `stage`; malformed entries are reported and left out.
pub(crate) fn parse_inputs<'a>(
    stage: &str,
    inputs: &'a Node,
    sources: &Sources,
    diags: &mut Vec<Diagnostic>,
) -> Vec<SlotDraft<'a>> {
    let Some(table) = inputs.as_table() else {
        diags.push(
            Diagnostic::new(
                format!(
                    "`inputs` of stage `{stage}` must be a table, found {}",
                    inputs.type_name()
                ),
                Some(sources.locate(&inputs.origin)),
            )
            .with_help("write `inputs = { NAME = \"STAGE\" }`"),
        );
        return Vec::new();
    };
    let mut slots = Vec::new();
    for (name, node) in table {
        let items: Vec<&Node> = match &node.value {
            Value::Array(items) => items.iter().collect(),
            _ => vec![node],
        };
        let mut refs = Vec::new();
        for item in items {
            if matches!(item.value, Value::Invalid) {
                // Reported already (a bad value, or a gather that failed).
                continue;
            }
            match item.as_str() {
                Some(text) => match parse_ref(text) {
                    Some(r) => refs.push((r, item)),
                    None => diags.push(
                        Diagnostic::new(
                            format!("invalid reference `{text}` in input `{name}` of stage `{stage}`"),
                            Some(sources.locate(&item.origin)),
                        )
                        .with_help("write `\"STAGE\"` for a stage's whole artifact or `\"STAGE.OUTPUT\"` for one of its outputs"),
                    ),
                },
                None => diags.push(
                    Diagnostic::new(
                        format!(
                            "input `{name}` of stage `{stage}` must be a stage reference or a list of them, found {}",
                            item.type_name()
                        ),
                        Some(sources.locate(&item.origin)),
                    )
                    .with_help("write `\"STAGE\"`, `\"STAGE.OUTPUT\"` or a list of those"),
                ),
            }
        }
        slots.push(SlotDraft {
            name: name.clone(),
            node,
            refs,
        });
    }
    slots
}

/// `"stage"` or `"stage.output"`.
pub(crate) fn parse_ref(text: &str) -> Option<InputRef> {
    let (stage, output) = match text.split_once('.') {
        Some((s, o)) => (s, Some(o)),
        None => (text, None),
    };
    if !(valid_stage_name(stage) || valid_variant_name(stage)) || output.is_some_and(str::is_empty)
    {
        return None;
    }
    Some(InputRef {
        stage: stage.to_owned(),
        output: output.map(str::to_owned),
    })
}

/// Every check that relates stages to each other.
pub(crate) fn check(drafts: &[StageDraft<'_>], sources: &Sources, diags: &mut Vec<Diagnostic>) {
    let by_name: BTreeMap<&str, &StageDraft> =
        drafts.iter().map(|d| (d.name.as_str(), d)).collect();
    let names: Vec<&str> = by_name.keys().copied().collect();
    for d in drafts {
        for slot in &d.inputs {
            for (r, node) in &slot.refs {
                check_ref(d, &slot.name, r, node, &by_name, &names, sources, diags);
            }
        }
        check_slots(d, sources, diags);
    }
    check_cycles(drafts, sources, diags);
}

#[allow(clippy::too_many_arguments)]
fn check_ref(
    d: &StageDraft<'_>,
    slot: &str,
    r: &InputRef,
    node: &Node,
    by_name: &BTreeMap<&str, &StageDraft>,
    names: &[&str],
    sources: &Sources,
    diags: &mut Vec<Diagnostic>,
) {
    let at = Some(sources.locate(&node.origin));
    if base_name(&r.stage) == d.base {
        diags.push(
            Diagnostic::new(
                format!("stage `{}` uses its own output as input `{slot}`", d.base),
                at,
            )
            .with_help("a stage can only read the outputs of other stages"),
        );
        return;
    }
    let Some(up) = by_name.get(r.stage.as_str()) else {
        // A variant is suggested among the variants of its stage; otherwise stages are
        // listed as written (not every variant).
        let wanted = base_name(&r.stage);
        let variants: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| wanted != r.stage && base_name(n) == wanted)
            .collect();
        let bases: std::collections::BTreeSet<&str> = names
            .iter()
            .map(|n| base_name(n))
            .filter(|n| *n != d.base)
            .collect();
        let (others, what): (Vec<&str>, String) = if variants.is_empty() {
            (bases.into_iter().collect(), "the stages are".into())
        } else {
            (variants, format!("the variants of `{wanted}` are"))
        };
        diags.push(
            Diagnostic::new(
                format!(
                    "input `{slot}` of stage `{}` refers to unknown stage `{}`",
                    d.base, r.stage
                ),
                at,
            )
            .with_help(
                did_you_mean(&r.stage, &others)
                    .unwrap_or_else(|| format!("{what} {}", list(&others))),
            ),
        );
        return;
    };
    let (Some(output), Some((kind, stage)), Some(params)) = (&r.output, &up.kind, &up.params)
    else {
        return;
    };
    let outputs: Vec<String> = stage.outputs(params).into_iter().map(|o| o.name).collect();
    if !outputs.contains(output) {
        let help = if outputs.is_empty() {
            format!(
                "`{}` declares no named outputs; refer to its whole artifact as `\"{}\"`",
                up.base, up.base
            )
        } else {
            did_you_mean(output, &outputs)
                .unwrap_or_else(|| format!("its outputs are {}", list(&outputs)))
        };
        diags.push(
            Diagnostic::new(
                format!(
                    "stage `{}` (kind `{kind}`) has no output `{output}`",
                    up.base
                ),
                at,
            )
            .with_help(help),
        );
    }
}

/// Input names against the kind's slots.
fn check_slots(d: &StageDraft<'_>, sources: &Sources, diags: &mut Vec<Diagnostic>) {
    let (Some((kind, stage)), Some(params)) = (&d.kind, &d.params) else {
        return;
    };
    let InputSlots::Named(accepted) = stage.inputs(params) else {
        return;
    };
    let accepted_names: Vec<&str> = accepted.iter().map(|s| s.name.as_str()).collect();
    for slot in &d.inputs {
        let Some(decl) = accepted.iter().find(|s| s.name == slot.name) else {
            let help = if accepted.is_empty() {
                format!("kind `{kind}` takes no inputs")
            } else {
                did_you_mean(&slot.name, &accepted_names)
                    .unwrap_or_else(|| format!("it accepts {}", list(&accepted_names)))
            };
            diags.push(
                Diagnostic::new(
                    format!(
                        "stage `{}` (kind `{kind}`) has no input `{}`",
                        d.base, slot.name
                    ),
                    Some(sources.locate(&slot.node.key)),
                )
                .with_help(help),
            );
            continue;
        };
        let is_list = matches!(slot.node.value, Value::Array(_));
        if !decl.many && (slot.refs.len() > 1 || (is_list && slot.refs.is_empty())) {
            diags.push(
                Diagnostic::new(
                    format!(
                        "input `{}` of stage `{}` takes one reference, found {}",
                        slot.name,
                        d.base,
                        slot.refs.len()
                    ),
                    Some(sources.locate(&slot.node.origin)),
                )
                .with_help(
                    if slot.refs.iter().any(|(r, _)| r.stage.contains(VARIANT_SEPARATOR)) {
                        format!(
                            "`[*]` gathers every variant, as a list; to read one, name the stage to follow its sweep (`{} = \"STAGE\"`) or one variant by its full name",
                            slot.name
                        )
                    } else {
                        format!("write `{} = \"STAGE\"`", slot.name)
                    },
                ),
            );
        }
    }
    // A malformed `inputs` was reported already; its slots are unknown, not missing.
    if d.inputs_node.is_some_and(|n| n.as_table().is_none()) {
        return;
    }
    for decl in accepted.iter().filter(|s| s.required) {
        let given = d.inputs.iter().find(|s| s.name == decl.name);
        // An empty list for a required slot is as good as missing (bad items were reported).
        let empty = given.is_some_and(|s| {
            s.refs.is_empty()
                && matches!(&s.node.value, Value::Array(items)
                    if !items.iter().any(|i| matches!(i.value, Value::Invalid)))
        });
        if given.is_some() && !empty {
            continue;
        }
        let at = match (given, d.inputs_node) {
            (Some(s), _) => &s.node.origin,
            (None, Some(inputs)) => &inputs.key,
            (None, None) => &d.node.key,
        };
        let what = if decl.description.is_empty() {
            String::new()
        } else {
            format!(" ({})", decl.description)
        };
        diags.push(
            Diagnostic::new(
                format!(
                    "stage `{}` (kind `{kind}`) is missing required input `{}`{what}",
                    d.base, decl.name
                ),
                Some(sources.locate(at)),
            )
            .with_help(if decl.many {
                format!("add `{} = [\"STAGE\", ...]` to its `inputs`", decl.name)
            } else {
                format!("add `{} = \"STAGE\"` to its `inputs`", decl.name)
            }),
        );
    }
}

/// Reports each cycle (strongly connected component of two or more stages) once, with a
/// path through it starting at its alphabetically first stage.
fn check_cycles(drafts: &[StageDraft<'_>], sources: &Sources, diags: &mut Vec<Diagnostic>) {
    let mut graph: DiGraph<&str, ()> = DiGraph::new();
    // Over the stages as written: the variants of a sweep form the same cycles.
    let mut index: BTreeMap<&str, NodeIndex> = BTreeMap::new();
    for d in drafts {
        if !index.contains_key(d.base.as_str()) {
            index.insert(&d.base, graph.add_node(&d.base));
        }
    }
    // (upstream, downstream) -> the reference that makes the edge.
    let mut edge_refs: BTreeMap<(&str, &str), &Node> = BTreeMap::new();
    for d in drafts {
        for slot in &d.inputs {
            for (r, node) in &slot.refs {
                let up_name = base_name(&r.stage);
                if up_name == d.base {
                    continue;
                }
                if let Some(&up) = index.get(up_name) {
                    if edge_refs.insert((up_name, &d.base), node).is_none() {
                        graph.add_edge(up, index[d.base.as_str()], ());
                    }
                }
            }
        }
    }
    for path in crate::graph::cycles(&graph) {
        let n = path.len();
        let (last, first) = (path[n - 2], path[n - 1]);
        let node = edge_refs[&(last, first)];
        diags.push(
            Diagnostic::new(format!("dependency cycle: {}", path.join(" -> ")), Some(sources.locate(&node.origin)))
                .with_label(format!("`{first}` reads `{last}` here, closing the cycle"))
                .with_help("a stage cannot depend on its own output, directly or through other stages; remove one of these inputs"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(
            parse_ref("fetch"),
            Some(InputRef {
                stage: "fetch".into(),
                output: None
            })
        );
        assert_eq!(
            parse_ref("train.model.safetensors"),
            Some(InputRef {
                stage: "train".into(),
                output: Some("model.safetensors".into())
            })
        );
        assert_eq!(parse_ref("train."), None);
        assert_eq!(parse_ref(".x"), None);
        assert_eq!(parse_ref(""), None);
    }
}
