//! Parameter sweeps: `[stages.NAME.matrix]` tables, expanded into one ordinary stage per
//! combination of values (a cartesian product), before the stages are validated.
//!
//! ```toml
//! [stages.train.matrix]
//! "optimizer.learning_rate" = [1e-3, 2e-3]    # a dotted path into the stage's params
//! seq_len = [64, 128]
//! ```
//!
//! gives `train@learning_rate=1e-3,seq_len=64`, `train@learning_rate=1e-3,seq_len=128`, ...
//! Each variant is the stage with those params replaced (so it has its own cache key), and
//! is checked exactly like a stage written by hand; problems are named after the stage as
//! written, so each is reported once, not once per variant.
//!
//! References (in `inputs`):
//! - `"train"` / `"train.model"` to a swept stage: the reading stage *follows* the sweep; it
//!   is expanded once per variant (its axes are the union of what it follows and its own
//!   matrix, and a stage reading two stages of the same sweep is zipped by variant);
//! - `"train[*]"` / `"train[*].model"`: *gathers* every variant (as a list, in variant
//!   order); a follower gathers only the variants that agree with its own;
//!   `"train[seq_len=64]"` gathers the variants with that value;
//! - `"train@seq_len=64"`: that one variant.
//!
//! `--set STAGE.PARAM=VALUE` on a swept param narrows its sweep to that value. In a
//! file, a value written for a swept param is replaced by the matrix values.
//!
//! Names: `BASE@LABEL=VALUE,...`, with one `LABEL=VALUE` per axis in a fixed order (by the
//! stage that sweeps it, then its path). A label is the last segment of the path unless
//! that is ambiguous among the axes of one stage. Values are written so the name stays
//! usable in file names, job names and shell words: numbers as `1e-3`, `64`, `1p5` (`.` is
//! `p`), safe strings as they are, anything else as a sanitized prefix and a short hash.

mod names;
mod parse;
mod refs;

use std::collections::{BTreeMap, BTreeSet};

use super::diagnostic::Diagnostic;
use super::tree::{Node, Origin, Sources, Value};
pub use names::base_name;
use names::labels;
pub(crate) use names::valid_variant_name;
use parse::parse_matrix;
pub(crate) use parse::{check_defaults, narrow};
use refs::{classify, input_items, rewrite_inputs, Context, Known, Reference};

/// The `matrix` key of a stage table.
pub(crate) const MATRIX: &str = "matrix";

/// The most variants one stage may have (its own matrix times the sweeps it follows).
pub const MAX_VARIANTS: usize = 256;

/// Separates a swept stage's name from its values (`train@seq_len=64`).
pub const VARIANT_SEPARATOR: char = '@';

/// One swept parameter: who sweeps it, where, and its values.
#[derive(Clone)]
struct Axis {
    /// The stage whose matrix lists it.
    origin: String,
    /// Its path in that stage's params.
    path: Vec<String>,
    /// The matrix key (for its origin).
    key: Node,
    /// The values, with their tokens for names.
    values: Vec<(Node, String)>,
}

type AxisId = (String, Vec<String>);

impl Axis {
    fn id(&self) -> AxisId {
        (self.origin.clone(), self.path.clone())
    }
}

/// What expansion found out about one stage.
#[derive(Default, Clone)]
struct Swept {
    /// Indices into the axis list, in name order.
    axes: Vec<usize>,
    /// One entry per variant: the value index per axis in `axes`.
    variants: Vec<Vec<usize>>,
}

/// Replaces every swept stage in `stages` by its variants and rewrites references to swept
/// stages; problems with matrices and gathers go to `diags`. Stages without sweeps are
/// returned as they are (minus a broken `matrix`).
pub(crate) fn expand(
    stages: &BTreeMap<String, Node>,
    sources: &Sources,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, Node> {
    let names: Vec<&str> = stages.keys().map(String::as_str).collect();
    // Own axes.
    let mut axes: Vec<Axis> = Vec::new();
    let mut own: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut own_origin: BTreeMap<&str, &Node> = BTreeMap::new();
    // Per stage, the params its matrix would set but cannot (reported).
    let mut unset: BTreeMap<&str, Vec<(Vec<String>, Origin)>> = BTreeMap::new();
    for (name, node) in stages {
        let Some(m) = node.as_table().and_then(|t| t.get(MATRIX)) else {
            continue;
        };
        own_origin.insert(name, m);
        let mut broken_paths = Vec::new();
        let found = parse_matrix(name, m, sources, diags, &mut broken_paths);
        unset.insert(name, broken_paths);
        let start = axes.len();
        axes.extend(found);
        own.insert(name, (start..axes.len()).collect());
    }
    // Plain references per stage (the stages it would follow).
    let plain: BTreeMap<&str, BTreeSet<&str>> = stages
        .iter()
        .map(|(name, node)| {
            let ups = input_items(node)
                .filter_map(|(_, item)| match classify(item.as_str()?) {
                    Reference::Plain { stage, .. } => {
                        stages.get_key_value(&stage).map(|(k, _)| k.as_str())
                    }
                    _ => None,
                })
                .filter(|up| up != name)
                .collect();
            (name.as_str(), ups)
        })
        .collect();
    // Axes of every stage: its own and those of the stages it follows.
    let mut all: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    for &name in &names {
        let mut visiting = BTreeSet::new();
        collect_axes(name, &own, &plain, &mut all, &mut visiting);
    }
    let labels = labels(&axes, &all);
    // Variants, within the limit.
    let mut orders: BTreeMap<&str, (Vec<usize>, Option<usize>)> = BTreeMap::new();
    for name in &names {
        let ids = &all[name];
        if ids.is_empty() {
            continue;
        }
        let mut order: Vec<usize> = ids.iter().copied().collect();
        order.sort_by_key(|a| axes[*a].id());
        let count = order
            .iter()
            .try_fold(1usize, |n, a| n.checked_mul(axes[*a].values.len()));
        orders.insert(name, (order, count));
    }
    let too_many: BTreeSet<&str> = orders
        .iter()
        .filter(|(_, (_, count))| count.is_none_or(|n| n > MAX_VARIANTS))
        .map(|(name, _)| *name)
        .collect();
    // A stage following one over the limit is left out (the problem is reported there).
    let over: BTreeSet<&str> = names
        .iter()
        .copied()
        .filter(|n| reaches(n, &too_many, &plain, &mut BTreeSet::new()))
        .collect();
    let mut swept: BTreeMap<&str, Swept> = BTreeMap::new();
    for (name, (order, count)) in orders {
        if over.contains(name) {
            let follows_bad = plain[name]
                .iter()
                .any(|u| reaches(u, &too_many, &plain, &mut BTreeSet::new()));
            if too_many.contains(name) && !follows_bad {
                let at = own_origin.get(name).map_or(&stages[name].key, |m| &m.key);
                let shown = count.map_or_else(|| "too many".to_owned(), |n| n.to_string());
                let sizes: Vec<String> = order
                    .iter()
                    .map(|a| {
                        format!(
                            "{} (`{}` of `{}`)",
                            axes[*a].values.len(),
                            axes[*a].path.join("."),
                            axes[*a].origin
                        )
                    })
                    .collect();
                diags.push(
                    Diagnostic::new(
                        format!(
                            "stage `{name}` would have {shown} variants, more than the limit of {MAX_VARIANTS}"
                        ),
                        Some(sources.locate(at)),
                    )
                    .with_label(sizes.join(" x "))
                    .with_help("sweep fewer values, or split the study into several pipelines"),
                );
            }
            continue;
        }
        let mut variants: Vec<Vec<usize>> = vec![Vec::new()];
        for a in &order {
            variants = variants
                .into_iter()
                .flat_map(|v| {
                    (0..axes[*a].values.len()).map(move |i| {
                        let mut v = v.clone();
                        v.push(i);
                        v
                    })
                })
                .collect();
        }
        swept.insert(
            name,
            Swept {
                axes: order,
                variants,
            },
        );
    }
    // Stages meant to be swept (a `matrix`, or following one) whose sweep is broken.
    let with_matrix: BTreeSet<&str> = own_origin.keys().copied().collect();
    let broken: BTreeSet<&str> = names
        .iter()
        .copied()
        .filter(|n| {
            !swept.contains_key(n) && reaches(n, &with_matrix, &plain, &mut BTreeSet::new())
        })
        .collect();
    let name_of = |stage: &str, s: &Swept, v: &[usize]| -> String {
        let parts: Vec<String> = s
            .axes
            .iter()
            .zip(v)
            .map(|(a, i)| format!("{}={}", labels[a], axes[*a].values[*i].1))
            .collect();
        format!("{stage}{VARIANT_SEPARATOR}{}", parts.join(","))
    };
    let known = Known {
        stages,
        swept: &swept,
        broken: &broken,
        axes: &axes,
        labels: &labels,
    };
    // The expanded stages.
    let mut out: BTreeMap<String, Node> = BTreeMap::new();
    for (name, node) in stages {
        let mut broken_here = unset.get(name.as_str()).cloned().unwrap_or_default();
        if over.contains(name.as_str()) {
            // Reported already; keep the stage as written so its other problems show (the
            // params its matrix sets are not missing).
            let mut copy = without_matrix(node);
            for a in own.get(name.as_str()).into_iter().flatten() {
                broken_here.push((axes[*a].path.clone(), axes[*a].key.key.clone()));
            }
            mark_broken(&mut copy, &broken_here);
            out.insert(name.clone(), copy);
            continue;
        }
        let Some(s) = swept.get(name.as_str()) else {
            let ctx = Context::default();
            let mut copy = without_matrix(node);
            mark_broken(&mut copy, &broken_here);
            rewrite_inputs(name, &mut copy, &ctx, &known, &name_of, sources, diags);
            out.insert(name.clone(), copy);
            continue;
        };
        let mine: BTreeSet<usize> = own
            .get(name.as_str())
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for v in &s.variants {
            let mut copy = without_matrix(node);
            mark_broken(&mut copy, &broken_here);
            let ctx = Context {
                values: s.axes.iter().copied().zip(v.iter().copied()).collect(),
            };
            for (a, i) in s.axes.iter().zip(v) {
                if mine.contains(a) {
                    let (value, _) = &axes[*a].values[*i];
                    let key = &axes[*a].key.key;
                    set_param(
                        &mut copy,
                        &axes[*a].path,
                        key,
                        value.value.clone(),
                        &value.origin,
                    );
                }
            }
            rewrite_inputs(name, &mut copy, &ctx, &known, &name_of, sources, diags);
            let variant = name_of(name, s, v);
            if stages.contains_key(&variant) {
                diags.push(
                    Diagnostic::new(
                        format!(
                            "variant `{variant}` of stage `{name}` has the name of another stage"
                        ),
                        Some(sources.locate(&stages[&variant].key)),
                    )
                    .with_help("rename the other stage"),
                );
            }
            out.insert(variant, copy);
        }
    }
    // Names within one stage are distinct when each axis's value tokens are (checked in
    // `parse_matrix`) and its labels are (see `labels`).
    out
}

/// Whether `name` follows (directly or not) a stage in `bad`.
fn reaches<'a>(
    name: &'a str,
    bad: &BTreeSet<&str>,
    plain: &BTreeMap<&'a str, BTreeSet<&'a str>>,
    seen: &mut BTreeSet<&'a str>,
) -> bool {
    if bad.contains(name) {
        return true;
    }
    if !seen.insert(name) {
        return false;
    }
    plain
        .get(name)
        .into_iter()
        .flatten()
        .any(|&up| reaches(up, bad, plain, seen))
}

/// Fills `all[name]` with the axes of `name`: its own and those of what it follows.
fn collect_axes<'a>(
    name: &'a str,
    own: &BTreeMap<&'a str, Vec<usize>>,
    plain: &BTreeMap<&'a str, BTreeSet<&'a str>>,
    all: &mut BTreeMap<&'a str, BTreeSet<usize>>,
    visiting: &mut BTreeSet<&'a str>,
) -> BTreeSet<usize> {
    if let Some(done) = all.get(name) {
        return done.clone();
    }
    // A cycle (reported by the link checks) contributes nothing more.
    if !visiting.insert(name) {
        return BTreeSet::new();
    }
    let mut set: BTreeSet<usize> = own.get(name).into_iter().flatten().copied().collect();
    for &up in plain.get(name).into_iter().flatten() {
        set.extend(collect_axes(up, own, plain, all, visiting));
    }
    visiting.remove(name);
    all.insert(name, set.clone());
    set
}

/// A copy of a stage table without its `matrix`.
fn without_matrix(node: &Node) -> Node {
    let mut copy = node.clone();
    if let Some(t) = copy.as_table_mut() {
        t.remove(MATRIX);
    }
    copy
}

/// Puts `value` at `path` in the stage table (creating tables on the way); its key is
/// `key` (the matrix key), so problems with it point there.
fn set_param(stage: &mut Node, path: &[String], key: &Origin, value: Value, origin: &Origin) {
    let table_node = || Node {
        value: Value::Table(BTreeMap::new()),
        origin: key.clone(),
        key: key.clone(),
    };
    let mut node = stage;
    for (i, segment) in path.iter().enumerate() {
        let Some(table) = node.as_table_mut() else {
            return;
        };
        if i + 1 == path.len() {
            table.insert(
                segment.clone(),
                Node {
                    value,
                    origin: origin.clone(),
                    key: key.clone(),
                },
            );
            return;
        }
        let next = table.entry(segment.clone()).or_insert_with(table_node);
        // A non-table on the way is replaced, as `--set` would (its type was wrong anyway).
        if next.as_table().is_none() {
            *next = table_node();
        }
        node = next;
    }
}

/// Marks the params a broken sweep would have set as unknown values (`Value::Invalid`),
/// so they are not reported again as missing.
fn mark_broken(stage: &mut Node, broken: &[(Vec<String>, Origin)]) {
    for (path, key) in broken {
        set_param(stage, path, key, Value::Invalid, key);
    }
}
