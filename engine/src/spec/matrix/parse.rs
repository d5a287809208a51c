//! Reading `matrix` tables: each swept param's path and values, with every problem
//! (not a table, empty, not a list, a value twice, a reserved key) reported.

use std::collections::BTreeMap;

use super::super::diagnostic::Diagnostic;
use super::super::tree::{Node, Origin, Sources, Value};
use super::super::validate::RESERVED;
use super::names::token;
use super::{Axis, MATRIX};

/// The axes a `matrix` table lists (flattening nested tables into dotted paths).
pub(super) fn parse_matrix(
    stage: &str,
    node: &Node,
    sources: &Sources,
    diags: &mut Vec<Diagnostic>,
    broken: &mut Vec<(Vec<String>, Origin)>,
) -> Vec<Axis> {
    let Some(table) = node.as_table() else {
        diags.push(
            Diagnostic::new(
                format!(
                    "`matrix` of stage `{stage}` must be a table, found {}",
                    node.type_name()
                ),
                Some(sources.locate(&node.origin)),
            )
            .with_help(format!(
                "write `[stages.{stage}.matrix]` with one list of values per parameter, e.g. `seq_len = [64, 128]`"
            )),
        );
        return Vec::new();
    };
    if table.is_empty() {
        diags.push(
            Diagnostic::new(
                format!("`matrix` of stage `{stage}` lists no parameters"),
                Some(sources.locate(&node.key)),
            )
            .with_help(
                "add a parameter with its values, e.g. `seq_len = [64, 128]`, or remove the table",
            ),
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    flatten(stage, table, &[], sources, diags, &mut out, broken);
    let mut seen: BTreeMap<Vec<String>, Origin> = BTreeMap::new();
    out.retain(|a: &Axis| match seen.get(&a.path) {
        Some(first) => {
            diags.push(
                Diagnostic::new(
                    format!(
                        "parameter `{}` is swept twice in the matrix of stage `{stage}`",
                        a.path.join(".")
                    ),
                    Some(sources.locate(&a.key.key)),
                )
                .with_note(format!("first listed at {}", sources.locate(first).place))
                .with_help("list all its values in one place"),
            );
            false
        }
        None => {
            seen.insert(a.path.clone(), a.key.key.clone());
            true
        }
    });
    out
}

fn flatten(
    stage: &str,
    table: &BTreeMap<String, Node>,
    prefix: &[String],
    sources: &Sources,
    diags: &mut Vec<Diagnostic>,
    out: &mut Vec<Axis>,
    broken: &mut Vec<(Vec<String>, Origin)>,
) {
    for (key, node) in table {
        let segments: Vec<String> = key.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            diags.push(
                Diagnostic::new(
                    format!("`{key}` in the matrix of stage `{stage}` is not a parameter path"),
                    Some(sources.locate(&node.key)),
                )
                .with_help("write a parameter name, or a dotted path into nested params: `\"optimizer.learning_rate\"`"),
            );
            continue;
        }
        let mut path = prefix.to_vec();
        path.extend(segments);
        if let Some(reserved) = RESERVED.iter().find(|r| path[0] == **r) {
            diags.push(
                Diagnostic::new(
                    format!("`{reserved}` of stage `{stage}` cannot be swept"),
                    Some(sources.locate(&node.key)),
                )
                .with_help(if *reserved == "kind" {
                    "a matrix sweeps the params of one kind; write a stage per kind instead"
                } else {
                    "a matrix sweeps the params of the stage's kind (`kind`, `inputs`, `resources` and `matrix` are not params)"
                }),
            );
            continue;
        }
        match &node.value {
            Value::Table(inner) => {
                flatten(stage, inner, &path, sources, diags, out, broken);
            }
            Value::Array(items) if items.is_empty() => {
                broken.push((path.clone(), node.key.clone()));
                diags.push(
                    Diagnostic::new(
                        format!(
                            "`{}` in the matrix of stage `{stage}` has no values",
                            path.join(".")
                        ),
                        Some(sources.locate(&node.origin)),
                    )
                    .with_help("list at least one value, or remove the key"),
                );
            }
            Value::Array(items) => {
                let mut values: Vec<(Node, String)> = Vec::new();
                let mut ok = true;
                for item in items {
                    let t = token(&item.to_toml());
                    if let Some((first, _)) = values.iter().find(|(_, other)| *other == t) {
                        ok = false;
                        diags.push(
                            Diagnostic::new(
                                format!(
                                    "`{}` in the matrix of stage `{stage}` lists the value `{t}` twice",
                                    path.join(".")
                                ),
                                Some(sources.locate(&item.origin)),
                            )
                            .with_label("gives the same variant as an earlier value")
                            .with_note(format!(
                                "first listed at {}",
                                sources.locate(&first.origin).place
                            ))
                            .with_help("each value makes one variant; list it once"),
                        );
                    }
                    values.push((item.clone(), t));
                }
                if !ok {
                    broken.push((path.clone(), node.key.clone()));
                } else {
                    out.push(Axis {
                        origin: stage.to_owned(),
                        path,
                        key: node.clone(),
                        values,
                    });
                }
            }
            _ => {
                broken.push((path.clone(), node.key.clone()));
                diags.push(
                Diagnostic::new(
                    format!(
                        "`{}` in the matrix of stage `{stage}` must be a list of values, found {}",
                        path.join("."),
                        node.type_name()
                    ),
                    Some(sources.locate(&node.origin)),
                )
                .with_help(format!(
                    "write `{} = [VALUE, ...]`; to set one value for every variant, set the parameter outside the matrix",
                    path.last().map(String::as_str).unwrap_or_default()
                )),
            );
            }
        }
    }
}

/// Reports `[pipeline.defaults.KIND.matrix]`: sweeps belong to one stage.
pub(crate) fn check_defaults(
    kind: &str,
    node: &Node,
    sources: &Sources,
    diags: &mut Vec<Diagnostic>,
) {
    if let Some(m) = node.as_table().and_then(|t| t.get(MATRIX)) {
        diags.push(
            Diagnostic::new(
                format!("`matrix` cannot be set in `[pipeline.defaults.{kind}]`"),
                Some(sources.locate(&m.key)),
            )
            .with_help(format!(
                "a sweep belongs to one stage: move it to `[stages.NAME.matrix]` of a `{kind}` stage"
            )),
        );
    }
}

/// `--set STAGE.PARAM=VALUE` on a swept param narrows its sweep to that one value: the
/// matrix entry becomes `[VALUE]` in the document itself, so the recorded document (what
/// `rerun` loads) holds the narrowed sweep. The variants keep the names they have in the
/// whole sweep, so stored ones are reused.
pub(crate) fn narrow(root: &mut Node) {
    let Some(stages) = root
        .as_table_mut()
        .and_then(|t| t.get_mut("stages"))
        .and_then(Node::as_table_mut)
    else {
        return;
    };
    for stage in stages.values_mut() {
        let Some(table) = stage.as_table_mut() else {
            continue;
        };
        let Some(mut matrix) = table.remove(MATRIX) else {
            continue;
        };
        let params = Node {
            value: Value::Table(table.clone()),
            origin: matrix.origin.clone(),
            key: matrix.key.clone(),
        };
        narrow_entries(&mut matrix, &[], &params);
        table.insert(MATRIX.to_owned(), matrix);
    }
}

/// Replaces each list in `matrix` (at `prefix`) whose param was set by `--set` in `params`.
fn narrow_entries(matrix: &mut Node, prefix: &[String], params: &Node) {
    let Some(entries) = matrix.as_table_mut() else {
        return;
    };
    for (key, entry) in entries.iter_mut() {
        let mut path = prefix.to_vec();
        path.extend(key.split('.').map(str::to_owned));
        match &entry.value {
            Value::Table(_) => narrow_entries(entry, &path, params),
            Value::Array(_) => {
                let Some(set) = params.get_path(&path) else {
                    continue;
                };
                if matches!(set.origin, Origin::Set { .. }) {
                    entry.value = Value::Array(vec![set.clone()]);
                }
            }
            _ => {}
        }
    }
}
