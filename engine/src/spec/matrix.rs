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
//! usable in file names, job names and shell words: numbers as `1e-3`, `64`, `0p5` (`.` is
//! `p`), safe strings as they are, anything else as a sanitized prefix and a short hash.

use std::collections::{BTreeMap, BTreeSet};

use super::diagnostic::{did_you_mean, list, Diagnostic};
use super::tree::{Node, Origin, Sources, Value};
use super::validate::RESERVED;

/// The `matrix` key of a stage table.
pub(crate) const MATRIX: &str = "matrix";

/// The most variants one stage may have (its own matrix times the sweeps it follows).
pub const MAX_VARIANTS: usize = 256;

/// Separates a swept stage's name from its values (`train@seq_len=64`).
pub const VARIANT_SEPARATOR: char = '@';

/// The name of the stage a variant was expanded from (the name itself for other stages).
pub fn base_name(name: &str) -> &str {
    name.split_once(VARIANT_SEPARATOR).map_or(name, |(b, _)| b)
}

/// Whether `name` is a variant name (`BASE@...`) with a valid base and safe characters.
pub(crate) fn valid_variant_name(name: &str) -> bool {
    let Some((base, rest)) = name.split_once(VARIANT_SEPARATOR) else {
        return false;
    };
    super::validate::valid_stage_name(base)
        && !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | ',' | '+' | '@'))
}

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

/// How one input item reads another stage.
enum Reference {
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

fn classify(text: &str) -> Reference {
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
    // `--set STAGE.PARAM=VALUE` on a swept param narrows its sweep to that one value (the
    // names stay those of the whole sweep, so stored variants are reused).
    for (name, ids) in &own {
        for a in ids {
            let axis = &mut axes[*a];
            let Some(set) = stages[*name].get_path(&axis.path) else {
                continue;
            };
            if matches!(set.origin, Origin::Set { .. }) {
                axis.values = vec![(set.clone(), token(&set.to_toml()))];
            }
        }
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

/// The label of each axis in names: the last path segment; the whole path (`.` as `-`)
/// when that is ambiguous among the axes of one stage; also the sweeping stage's name when
/// that is still ambiguous.
fn labels(axes: &[Axis], all: &BTreeMap<&str, BTreeSet<usize>>) -> BTreeMap<usize, String> {
    let label = |a: &Axis, level: u8| -> String {
        let text = match level {
            0 => a.path.last().cloned().unwrap_or_default(),
            1 => a.path.join("-"),
            _ => format!("{}-{}", a.origin, a.path.join("-")),
        };
        sanitize(&text)
    };
    let mut level: Vec<u8> = vec![0; axes.len()];
    loop {
        let mut changed = false;
        for set in all.values() {
            let mut by_label: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for a in set {
                by_label
                    .entry(label(&axes[*a], level[*a]))
                    .or_default()
                    .push(*a);
            }
            for group in by_label.values().filter(|g| g.len() > 1) {
                for a in group {
                    if level[*a] < 2 {
                        level[*a] += 1;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    (0..axes.len())
        .map(|a| (a, label(&axes[a], level[a])))
        .collect()
}

/// The axes a `matrix` table lists (flattening nested tables into dotted paths).
fn parse_matrix(
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

/// A value as it appears in variant names.
fn token(v: &toml::Value) -> String {
    match v {
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Float(x) => float_token(*x),
        toml::Value::String(s) => {
            let clean = sanitize(s);
            if clean == *s && !s.is_empty() && s.len() <= 40 {
                clean
            } else {
                hashed(&clean, &v.to_string())
            }
        }
        other => hashed("", &other.to_string()),
    }
}

/// The shorter of the decimal and scientific forms, preferring one without `.`; `.` is
/// written `p` (`0p5` is never chosen over `5e-1`, but `1p5` is over `1.5e0`).
fn float_token(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string().to_lowercase();
    }
    let decimal = x.to_string();
    let scientific = format!("{x:e}");
    let best = [&decimal, &scientific]
        .into_iter()
        .min_by_key(|s| (s.contains('.'), s.len()))
        .cloned()
        .unwrap_or(decimal);
    best.replace('.', "p")
}

/// A readable prefix of `clean` and a short hash of `full`.
fn hashed(clean: &str, full: &str) -> String {
    let hash = blake3::hash(full.as_bytes()).to_hex();
    let prefix: String = clean.chars().take(24).collect();
    let prefix = prefix.trim_matches('_');
    if prefix.is_empty() {
        format!("h{}", &hash[..8])
    } else {
        format!("{prefix}-{}", &hash[..8])
    }
}

/// `text` with every character that is not safe in names replaced by `_`.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect()
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

/// The variant being built: axis index -> value index.
#[derive(Default)]
struct Context {
    values: BTreeMap<usize, usize>,
}

/// Every string-or-not item of a stage's `inputs` (slot name, item).
fn input_items(node: &Node) -> impl Iterator<Item = (&String, &Node)> {
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
struct Known<'a> {
    stages: &'a BTreeMap<String, Node>,
    swept: &'a BTreeMap<&'a str, Swept>,
    /// Stages meant to be swept whose sweep has a problem (reported elsewhere).
    broken: &'a BTreeSet<&'a str>,
    axes: &'a [Axis],
    labels: &'a BTreeMap<usize, String>,
}

/// Rewrites the references of one (variant of a) stage: follows become the matching
/// variant, gathers the list of matching variants.
fn rewrite_inputs(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_short_and_safe() {
        assert_eq!(float_token(1e-3), "1e-3");
        assert_eq!(float_token(2e-3), "2e-3");
        assert_eq!(float_token(0.5), "5e-1");
        assert_eq!(float_token(1.5), "1p5");
        assert_eq!(float_token(64.0), "64");
        assert_eq!(float_token(-2.5e-4), "-2p5e-4");
        assert_eq!(token(&toml::Value::Integer(128)), "128");
        assert_eq!(token(&toml::Value::String("bpe".into())), "bpe");
        let odd = token(&toml::Value::String("a b/c".into()));
        assert!(odd.starts_with("a_b_c-") && odd.len() == "a_b_c-".len() + 8);
        assert!(valid_variant_name("train@lr=1e-3,seq_len=64"));
        assert!(!valid_variant_name("train@lr=0.5"));
        assert!(!valid_variant_name("train"));
        assert_eq!(base_name("train@lr=1e-3"), "train");
        assert_eq!(base_name("train"), "train");
    }
}
