//! Variant names: labels of swept params, values as name-safe tokens, and reading a
//! variant name back (its base stage).

use std::collections::{BTreeMap, BTreeSet};

use super::{Axis, VARIANT_SEPARATOR};

/// The name of the stage a variant was expanded from (the name itself for other stages).
pub fn base_name(name: &str) -> &str {
    name.split_once(VARIANT_SEPARATOR).map_or(name, |(b, _)| b)
}

/// Whether `name` is a variant name (`BASE@...`) with a valid base and safe characters.
pub(crate) fn valid_variant_name(name: &str) -> bool {
    let Some((base, rest)) = name.split_once(VARIANT_SEPARATOR) else {
        return false;
    };
    super::super::validate::valid_stage_name(base)
        && !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | ',' | '+' | '@'))
}

/// The label of each axis in names: the last path segment; the whole path (`.` as `-`)
/// when that is ambiguous among the axes of one stage; also the sweeping stage's name when
/// that is still ambiguous.
pub(super) fn labels(
    axes: &[Axis],
    all: &BTreeMap<&str, BTreeSet<usize>>,
) -> BTreeMap<usize, String> {
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

/// A value as it appears in variant names.
pub(super) fn token(v: &toml::Value) -> String {
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
