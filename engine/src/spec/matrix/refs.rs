//! References to swept stages in `inputs`: following (`"train"`), gathering (`"train[*]"`,
//! `"train[seq_len=64]"`) and naming one variant (`"train@seq_len=64"`), rewritten into
//! plain references to variants.

use std::collections::{BTreeMap, BTreeSet};

use super::super::diagnostic::{did_you_mean, list, Diagnostic};
use super::super::tree::{Node, Sources, Value};
use super::names::token;
use super::{Axis, Swept, VARIANT_SEPARATOR};

/// How one input item reads another stage.
pub(super) enum Reference {
    /// `STAGE` or `STAGE.OUTPUT` (follows STAGE if it is swept).
    Plain {
        stage: String,
        output: Option<String>,
    },
    /// `STAGE[*]` or `STAGE[*].OUTPUT`; `STAGE[LABEL=VALUE,...]` keeps the variants with
    /// those values.
    Gather {
        stage: String,
        output: Option<String>,
        /// `None` for `[*]`; otherwise the `LABEL=VALUE` pairs as written.
        filter: Option<String>,
    },
    /// Anything else (a full variant name, or something malformed that links reports).
    Other,
}

pub(super) fn classify(text: &str) -> Reference {
    // A filter may hold a `.` (`[lr=0.001]`): the output starts after the `]`.
    let dot = text.find('.');
    if let Some(open) = text.find('[').filter(|open| dot.is_none_or(|d| *open < d)) {
        if let Some(close) = text[open..].find(']').map(|i| open + i) {
            let rest = &text[close + 1..];
            let output = match rest.strip_prefix('.') {
                Some(o) => Some(o.to_owned()),
                None if rest.is_empty() => None,
                None => return Reference::Other,
            };
            let inner = &text[open + 1..close];
            return Reference::Gather {
                stage: text[..open].to_owned(),
                output,
                filter: (inner != "*").then(|| inner.to_owned()),
            };
        }
    }
    let (stage, output) = match text.split_once('.') {
        Some((s, o)) => (s, Some(o.to_owned())),
        None => (text, None),
    };
    if stage.contains(VARIANT_SEPARATOR) {
        return Reference::Other;
    }
    Reference::Plain {
        stage: stage.to_owned(),
        output,
    }
}

/// The variants of `s` a gather filter (`LABEL=VALUE,...`) keeps; a problem with the
/// filter is returned as a message and a help text.
fn filter_variants<'s>(
    s: &'s Swept,
    filter: &str,
    axes: &[Axis],
    labels: &BTreeMap<usize, String>,
) -> Result<Vec<&'s Vec<usize>>, (String, String)> {
    let shown: Vec<&str> = s.axes.iter().map(|a| labels[a].as_str()).collect();
    let mut wanted: Vec<(usize, usize)> = Vec::new();
    for pair in filter.split(',') {
        let Some((label, value)) = pair.split_once('=') else {
            return Err((
                format!("`{pair}` is not `LABEL=VALUE`"),
                format!(
                    "write e.g. `[{}=...]`, or `[*]` for every variant",
                    shown.first().copied().unwrap_or("seq_len")
                ),
            ));
        };
        let (label, value) = (label.trim(), value.trim());
        let Some(pos) = s.axes.iter().position(|a| labels[a] == label) else {
            return Err((
                format!("the variants have no value named `{label}`"),
                did_you_mean(label, &shown)
                    .unwrap_or_else(|| format!("they are named by {}", list(&shown))),
            ));
        };
        let axis = &axes[s.axes[pos]];
        // `0.001` means the same as `1e-3`: compare as names write values.
        let as_token = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|t| t.get("v").map(token))
            .unwrap_or_else(|| value.to_owned());
        let Some(index) = axis
            .values
            .iter()
            .position(|(_, t)| *t == as_token || t == value)
        else {
            let values: Vec<&str> = axis.values.iter().map(|(_, t)| t.as_str()).collect();
            return Err((
                format!("`{label}` has no value `{value}`"),
                format!("its values are {}", list(&values)),
            ));
        };
        wanted.push((pos, index));
    }
    Ok(s.variants
        .iter()
        .filter(|v| wanted.iter().all(|(pos, index)| v[*pos] == *index))
        .collect())
}

/// The variant being built: axis index -> value index.
#[derive(Default)]
pub(super) struct Context {
    pub(super) values: BTreeMap<usize, usize>,
}

/// Every string-or-not item of a stage's `inputs` (slot name, item).
pub(super) fn input_items(node: &Node) -> impl Iterator<Item = (&String, &Node)> {
    node.as_table()
        .and_then(|t| t.get("inputs"))
        .and_then(Node::as_table)
        .into_iter()
        .flatten()
        .flat_map(|(slot, value)| match &value.value {
            Value::Array(items) => items.iter().map(|i| (slot, i)).collect::<Vec<_>>(),
            _ => vec![(slot, value)],
        })
}

/// What reference rewriting needs to know about all stages.
pub(super) struct Known<'a> {
    pub(super) stages: &'a BTreeMap<String, Node>,
    pub(super) swept: &'a BTreeMap<&'a str, Swept>,
    /// Stages meant to be swept whose sweep has a problem (reported elsewhere).
    pub(super) broken: &'a BTreeSet<&'a str>,
    pub(super) axes: &'a [Axis],
    pub(super) labels: &'a BTreeMap<usize, String>,
}

/// Rewrites the references of one (variant of a) stage: follows become the matching
/// variant, gathers the list of matching variants.
pub(super) fn rewrite_inputs(
    name: &str,
    stage: &mut Node,
    ctx: &Context,
    known: &Known<'_>,
    name_of: &dyn Fn(&str, &Swept, &[usize]) -> String,
    sources: &Sources,
    diags: &mut Vec<Diagnostic>,
) {
    let Known {
        stages,
        swept,
        broken,
        ..
    } = *known;
    let Some(inputs) = stage
        .as_table_mut()
        .and_then(|t| t.get_mut("inputs"))
        .and_then(Node::as_table_mut)
    else {
        return;
    };
    let item = |text: String, like: &Node| Node {
        value: Value::Scalar(toml::Value::String(text)),
        origin: like.origin.clone(),
        key: like.key.clone(),
    };
    for (slot, value) in inputs.iter_mut() {
        let (items, was_list): (Vec<Node>, bool) = match &value.value {
            Value::Array(items) => (items.clone(), true),
            _ => (vec![value.clone()], false),
        };
        let mut new_items = Vec::new();
        let mut gathered = false;
        for it in items {
            let Some(text) = it.as_str() else {
                new_items.push(it);
                continue;
            };
            let with = |stage: &str, output: &Option<String>| match output {
                Some(o) => format!("{stage}.{o}"),
                None => stage.to_owned(),
            };
            match classify(text) {
                Reference::Plain { stage: up, output } if up != name => {
                    match swept.get(up.as_str()) {
                        Some(s) => {
                            let v: Option<Vec<usize>> =
                                s.axes.iter().map(|a| ctx.values.get(a).copied()).collect();
                            match v {
                                Some(v) => {
                                    new_items.push(item(with(&name_of(&up, s, &v), &output), &it))
                                }
                                // Only when the stage itself could not be expanded.
                                None => new_items.push(it),
                            }
                        }
                        None => new_items.push(it),
                    }
                }
                Reference::Gather {
                    stage: up,
                    output,
                    filter,
                } => {
                    gathered = true;
                    if up == name || !stages.contains_key(&up) {
                        // Self-references and unknown stages are reported by the link checks.
                        new_items.push(item(with(&up, &output), &it));
                        continue;
                    }
                    let Some(s) = swept.get(up.as_str()) else {
                        if broken.contains(up.as_str()) {
                            // Its sweep is broken or too large (reported there).
                            new_items.push(reported(&it));
                            continue;
                        }
                        let swept_names: Vec<&str> = swept.keys().copied().collect();
                        diags.push(
                            Diagnostic::new(
                                format!(
                                    "input `{slot}` of stage `{name}` gathers the variants of `{up}`, which is not swept"
                                ),
                                Some(sources.locate(&it.origin)),
                            )
                            .with_help(format!(
                                "refer to it as `\"{}\"`; `[*]` gathers the variants of a stage with a `matrix` (or one that follows such a stage){}",
                                with(&up, &output),
                                if swept_names.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {}", list(&swept_names))
                                }
                            )),
                        );
                        new_items.push(reported(&it));
                        continue;
                    };
                    let chosen: Vec<&Vec<usize>> = match &filter {
                        None => s.variants.iter().collect(),
                        Some(f) => match filter_variants(s, f, known.axes, known.labels) {
                            Ok(chosen) => chosen,
                            Err((message, help)) => {
                                diags.push(
                                    Diagnostic::new(
                                        format!(
                                            "input `{slot}` of stage `{name}` gathers `{up}[{f}]`: {message}"
                                        ),
                                        Some(sources.locate(&it.origin)),
                                    )
                                    .with_help(help),
                                );
                                new_items.push(reported(&it));
                                continue;
                            }
                        },
                    };
                    for v in chosen {
                        let agrees = s
                            .axes
                            .iter()
                            .zip(v)
                            .all(|(a, i)| ctx.values.get(a).is_none_or(|mine| mine == i));
                        if agrees {
                            new_items.push(item(with(&name_of(&up, s, v), &output), &it));
                        }
                    }
                }
                _ => new_items.push(it),
            }
        }
        if was_list || gathered {
            value.value = Value::Array(new_items);
        } else if let Some(one) = new_items.into_iter().next() {
            *value = Node {
                key: value.key.clone(),
                ..one
            };
        }
    }
}

/// Stands for an input item whose problem is reported already (the link checks skip it
/// and do not call its input missing).
fn reported(item: &Node) -> Node {
    Node {
        value: Value::Invalid,
        origin: item.origin.clone(),
        key: item.key.clone(),
    }
}
