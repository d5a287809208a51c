//! Cache keys: a [`KeyParts`] struct (kind, kind version, canonical params, input digests,
//! seed, outside-state fingerprint) serialized to canonical JSON and hashed. The stage's
//! name is deliberately not a part, so renaming a stage, or the same work in another
//! pipeline, reuses the cache.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::digest::Digest;

/// Bump when the key's structure changes, so old entries stop matching.
pub const KEY_FORMAT: u32 = 1;

/// One upstream artifact an input is bound to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InputDigest {
    /// The named output of the upstream artifact, if the reference named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Digest of the whole upstream artifact.
    pub digest: Digest,
}

/// Everything that determines a stage's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyParts {
    pub format: u32,
    pub kind: String,
    pub kind_version: u32,
    /// Canonical params (defaults filled, keys sorted).
    pub params: serde_json::Value,
    /// Input name -> bound artifacts, in declaration order.
    pub inputs: BTreeMap<String, Vec<InputDigest>>,
    pub seed: u64,
    /// Outside state the stage reads (a resolved commit, a local folder's digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl KeyParts {
    /// The cache key of these parts.
    pub fn key(&self) -> CacheKey {
        // serde_json writes struct fields in declaration order and BTreeMaps sorted; params
        // are canonical already, so equal parts give equal bytes.
        let bytes = serde_json::to_vec(self).expect("key parts serialize to JSON");
        CacheKey(Digest::of_bytes(&bytes))
    }

    /// Human-readable differences from `earlier` (what `itera explain` prints).
    pub fn changes_since(&self, earlier: &KeyParts) -> Vec<String> {
        let mut out = Vec::new();
        if self.format != earlier.format {
            out.push(format!(
                "cache key format {} -> {}",
                earlier.format, self.format
            ));
        }
        if self.kind != earlier.kind {
            out.push(format!("kind `{}` -> `{}`", earlier.kind, self.kind));
        }
        if self.kind_version != earlier.kind_version {
            out.push(format!(
                "implementation version of `{}`: {} -> {}",
                self.kind, earlier.kind_version, self.kind_version
            ));
        }
        diff_json("params", &earlier.params, &self.params, &mut out);
        let names: std::collections::BTreeSet<&String> =
            earlier.inputs.keys().chain(self.inputs.keys()).collect();
        for name in names {
            let (a, b) = (earlier.inputs.get(name), self.inputs.get(name));
            if a == b {
                continue;
            }
            let show = |v: Option<&Vec<InputDigest>>| match v {
                None => "(absent)".to_owned(),
                Some(list) => list
                    .iter()
                    .map(|d| d.digest.short().to_owned())
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            out.push(format!("input `{name}`: {} -> {}", show(a), show(b)));
        }
        if self.seed != earlier.seed {
            out.push(format!("seed: {} -> {}", earlier.seed, self.seed));
        }
        if self.fingerprint != earlier.fingerprint {
            let show = |f: &Option<String>| f.clone().unwrap_or_else(|| "(none)".into());
            out.push(format!(
                "fingerprint of outside state: {} -> {}",
                show(&earlier.fingerprint),
                show(&self.fingerprint)
            ));
        }
        out
    }
}

/// Lists the leaf differences between two JSON values as `path: old -> new` lines.
fn diff_json(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let sub = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => diff_json(&sub, va, vb, out),
                    (None, Some(vb)) => out.push(format!("{sub}: (absent) -> {vb}")),
                    (Some(va), None) => out.push(format!("{sub}: {va} -> (absent)")),
                    (None, None) => {}
                }
            }
        }
        _ if a != b => out.push(format!("{path}: {a} -> {b}")),
        _ => {}
    }
}

/// A cache key: the digest of a stage's [`KeyParts`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CacheKey(pub Digest);

impl CacheKey {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
    pub fn short(&self) -> &str {
        self.0.short()
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn parts() -> KeyParts {
        KeyParts {
            format: KEY_FORMAT,
            kind: "shell".into(),
            kind_version: 1,
            params: json!({"command": "echo hi", "outputs": ["a.txt"]}),
            inputs: BTreeMap::from([(
                "data".to_owned(),
                vec![InputDigest {
                    output: None,
                    digest: Digest::of_bytes(b"x"),
                }],
            )]),
            seed: 7,
            fingerprint: None,
        }
    }

    #[test]
    fn key_is_stable_across_serialization_round_trips() {
        let p = parts();
        let back: KeyParts = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(p.key(), back.key());
    }

    #[test]
    fn changes_name_the_part_that_moved() {
        let a = parts();
        let mut b = parts();
        b.params = json!({"command": "echo bye", "outputs": ["a.txt"]});
        b.seed = 8;
        assert_eq!(
            b.changes_since(&a),
            [r#"params.command: "echo hi" -> "echo bye""#, "seed: 7 -> 8"]
        );
        assert!(a.changes_since(&a).is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn key_changes_exactly_when_a_part_changes(which in 0usize..6, seed in any::<u64>()) {
            let a = parts();
            let mut b = parts();
            match which {
                0 => b.kind = "files".into(),
                1 => b.kind_version += 1,
                2 => b.params = json!({"command": "echo hi!", "outputs": ["a.txt"]}),
                3 => b.inputs.get_mut("data").unwrap()[0].digest = Digest::of_bytes(b"y"),
                4 => b.seed = if seed == a.seed { seed + 1 } else { seed },
                _ => b.fingerprint = Some("abc".into()),
            }
            prop_assert_ne!(a.key(), b.key());
            prop_assert_eq!(a.key(), parts().key());
        }
    }
}
