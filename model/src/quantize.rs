//! Quantizing a model: which format each tensor gets (a scheme's defaults, overridden by
//! rules of name patterns), and the quantized `model.safetensors` itself (format in
//! [`crate::quant`]).
//!
//! The rule for what is quantized at all: a tensor is *eligible* when it is a matrix with
//! at least 16 rows and 32 columns that is not a convolution kernel: the projections
//! (`in_proj`, `dt_proj`, `out_proj`, `B`), the feed-forward and expert matrices, the
//! embeddings and the output head. Norms, biases, `A_log`, `D`, the convolution kernels,
//! `C` (`[Di, N]`, N columns) and the router (`[E, D]`, E rows) are small, and a lost bit
//! there costs more than it saves: they keep the scheme's plain format.
//!
//! Schemes:
//! - `int8`: every eligible tensor int8 (per output channel), the rest f32;
//! - `int4`: every eligible tensor int4 (groups of `group_size` columns; int8 when the
//!   group size does not divide its columns), the rest f32;
//! - `mixed` (the seed's phase-7 recipe): the embeddings and the output head int8,
//!   everything else f16.
//!
//! Rules (`pattern -> format`, `*` matching any run of characters) come first; the first
//! rule whose pattern matches a tensor's name decides its format.

use std::collections::BTreeMap;

use safetensors::Dtype;
use serde::{Deserialize, Serialize};

use crate::artifact::{self, OutTensor};
use crate::quant::{QuantFormat, QuantMetadata, Quantized, METADATA_KEY};

/// A stored format of one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TensorFormat {
    F32,
    F16,
    Int8,
    Int4,
}

/// A quantization scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Eligible matrices int8 (per output channel), the rest f32.
    Int8,
    /// Eligible matrices int4 (group-wise), the rest f32.
    Int4,
    /// Embeddings and output head int8, everything else f16 (the seed's phase-7 recipe).
    Mixed,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Int8 => "int8",
            Scheme::Int4 => "int4",
            Scheme::Mixed => "mixed",
        }
    }
}

/// `pattern -> format`: the first matching rule decides a tensor's format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A tensor name, `*` matching any run of characters (e.g. `layers.*.moe.*`).
    pub pattern: String,
    pub format: TensorFormat,
}

/// Whether `name` matches `pattern` (`*` matches any run of characters, dots included).
pub fn matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// Whether a tensor of this name and shape may be quantized (see the module documentation).
pub fn eligible(name: &str, shape: &[usize]) -> bool {
    matches!(shape, [rows, cols] if *rows >= 16 && *cols >= 32) && !name.ends_with("conv.weight")
}

/// The format a tensor gets under `scheme` and `rules`.
pub fn choose(
    name: &str,
    shape: &[usize],
    scheme: Scheme,
    rules: &[Rule],
    group: usize,
) -> Result<TensorFormat, String> {
    if let Some(rule) = rules.iter().find(|r| matches(&r.pattern, name)) {
        let quantized = matches!(rule.format, TensorFormat::Int8 | TensorFormat::Int4);
        if quantized && shape.len() != 2 {
            return Err(format!(
                "rule `{}` asks for {:?} of `{name}`, a {}-D tensor: only matrices can be \
                 quantized; give it f16 or f32",
                rule.pattern,
                rule.format,
                shape.len()
            ));
        }
        if rule.format == TensorFormat::Int4 && !shape[1].is_multiple_of(group) {
            return Err(format!(
                "rule `{}` asks for int4 of `{name}` ({} columns), which group_size = {group} \
                 does not divide: choose another group_size or int8",
                rule.pattern, shape[1]
            ));
        }
        return Ok(rule.format);
    }
    let ok = eligible(name, shape);
    Ok(match scheme {
        Scheme::Int8 if ok => TensorFormat::Int8,
        Scheme::Int4 if ok && shape[1].is_multiple_of(group) => TensorFormat::Int4,
        Scheme::Int4 if ok => TensorFormat::Int8,
        Scheme::Int8 | Scheme::Int4 => TensorFormat::F32,
        Scheme::Mixed if ok && (name.contains("embed") || name == "lm_head.weight") => {
            TensorFormat::Int8
        }
        Scheme::Mixed => TensorFormat::F16,
    })
}

/// What quantizing one tensor did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorReport {
    pub format: TensorFormat,
    pub parameters: u64,
    /// Bytes stored (levels, scales).
    pub bytes: u64,
    /// Largest absolute difference between a weight and its stored value.
    pub max_abs_error: f64,
    /// Root-mean-square of that difference.
    pub rms_error: f64,
}

/// A quantized weights file and what went into it.
pub struct QuantizedModel {
    pub bytes: Vec<u8>,
    pub tensors: BTreeMap<String, TensorReport>,
}

/// Quantizes f32 tensors (`name -> (shape, values)`, in the model's layout) into a
/// `model.safetensors` with `metadata` (the `itera-lite` tags) extended by the
/// quantization description.
pub fn quantize_model(
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    scheme: &str,
    choice: impl Fn(&str, &[usize]) -> Result<TensorFormat, String>,
    group: usize,
    mut metadata: BTreeMap<String, String>,
) -> Result<QuantizedModel, String> {
    let mut out: Vec<OutTensor> = Vec::new();
    let mut reports = BTreeMap::new();
    let mut quantized = BTreeMap::new();
    for (name, (shape, values)) in tensors {
        let format = choice(name, shape)?;
        let (stored, back): (Vec<OutTensor>, Vec<f32>) = match format {
            TensorFormat::F32 => (
                vec![OutTensor {
                    name: name.clone(),
                    dtype: Dtype::F32,
                    shape: shape.clone(),
                    data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                }],
                values.clone(),
            ),
            TensorFormat::F16 => {
                let half: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
                if let Some(i) = half.iter().position(|h| !h.is_finite()) {
                    return Err(format!(
                        "`{name}` holds {} at index {i}, beyond the f16 range: store it as f32",
                        values[i]
                    ));
                }
                (
                    vec![OutTensor {
                        name: name.clone(),
                        dtype: Dtype::F16,
                        shape: shape.clone(),
                        data: half.iter().flat_map(|h| h.to_le_bytes()).collect(),
                    }],
                    half.iter().map(|h| h.to_f32()).collect(),
                )
            }
            TensorFormat::Int8 | TensorFormat::Int4 => {
                let (rows, cols) = (shape[0], shape[1]);
                let q = if format == TensorFormat::Int8 {
                    Quantized::int8(values, rows, cols)
                } else {
                    Quantized::int4(name, values, rows, cols, group).map_err(|e| e.to_string())?
                };
                quantized.insert(
                    name.clone(),
                    if format == TensorFormat::Int8 {
                        QuantFormat::Int8
                    } else {
                        QuantFormat::Int4
                    },
                );
                let back = q.dequantize();
                (q.out_tensors(name).to_vec(), back)
            }
        };
        let (mut max, mut sq) = (0.0f64, 0.0f64);
        for (&a, &b) in values.iter().zip(&back) {
            let e = f64::from((a - b).abs());
            max = max.max(e);
            sq += e * e;
        }
        reports.insert(
            name.clone(),
            TensorReport {
                format,
                parameters: values.len() as u64,
                bytes: stored.iter().map(|t| t.data.len() as u64).sum(),
                max_abs_error: max,
                rms_error: (sq / values.len().max(1) as f64).sqrt(),
            },
        );
        out.extend(stored);
    }
    let description = QuantMetadata {
        scheme: scheme.to_owned(),
        group_size: group,
        tensors: quantized,
    };
    metadata.insert(
        METADATA_KEY.to_owned(),
        serde_json::to_string(&description).expect("the description serializes"),
    );
    artifact::sort_like_safetensors(&mut out);
    Ok(QuantizedModel {
        bytes: artifact::write_safetensors(&metadata, &out),
        tensors: reports,
    })
}

/// Quantizes a model held as [`Weights`](crate::decode::Weights) (every tensor dense) with
/// `scheme` and `rules`.
pub fn quantize_weights(
    weights: &crate::decode::Weights,
    scheme: Scheme,
    rules: &[Rule],
    group: usize,
) -> Result<QuantizedModel, String> {
    if let Some(name) = weights.quantized_tensors().keys().next() {
        return Err(format!(
            "the model is already quantized (`{name}` is stored as integers): quantize the \
             F32 model a `train` stage writes"
        ));
    }
    // A rule that matches nothing is almost always a misspelt pattern: say so rather than
    // quietly quantizing with the scheme's defaults.
    if let Some(rule) = rules
        .iter()
        .find(|r| !weights.tensors().keys().any(|n| matches(&r.pattern, n)))
    {
        return Err(format!(
            "rule `{}` matches no tensor of this model; tensor names are listed in \
             docs/MODEL.md (e.g. `layers.*.ssm.in_proj.weight`, `embed.weight`)",
            rule.pattern
        ));
    }
    let tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = weights
        .tensors()
        .iter()
        .map(|(n, t)| (n.clone(), (t.shape.clone(), t.data.clone())))
        .collect();
    quantize_model(
        &tensors,
        scheme.name(),
        |name, shape| choose(name, shape, scheme, rules, group),
        group,
        artifact::metadata(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("embed.weight", "embed.weight"));
        assert!(!matches("embed.weight", "pos_embed.weight"));
        assert!(matches("*embed.weight", "pos_embed.weight"));
        assert!(matches(
            "layers.*.moe.*",
            "layers.3.moe.experts.1.up.weight"
        ));
        assert!(!matches("layers.*.moe.*", "layers.3.ffn.up.weight"));
        assert!(matches("*", "anything"));
        assert!(matches("a*b*c", "abc"));
        assert!(!matches("a*b*c", "acb"));
    }

    #[test]
    fn schemes_choose_by_the_documented_rule() {
        let g = 32;
        let pick = |name: &str, shape: &[usize], scheme| choose(name, shape, scheme, &[], g);
        assert_eq!(
            pick("layers.0.ssm.in_proj.weight", &[256, 128], Scheme::Int8),
            Ok(TensorFormat::Int8)
        );
        assert_eq!(
            pick("layers.0.ssm.in_proj.bias", &[256], Scheme::Int8),
            Ok(TensorFormat::F32)
        );
        assert_eq!(
            pick("layers.0.ssm.conv.weight", &[128, 4], Scheme::Int4),
            Ok(TensorFormat::F32)
        );
        assert_eq!(
            pick("layers.0.moe.router.weight", &[4, 128], Scheme::Int4),
            Ok(TensorFormat::F32)
        );
        assert_eq!(
            pick("layers.0.ssm.C", &[128, 16], Scheme::Int4),
            Ok(TensorFormat::F32)
        );
        assert_eq!(
            pick("layers.0.ffn.down.weight", &[128, 48], Scheme::Int4),
            Ok(TensorFormat::Int8)
        );
        assert_eq!(
            pick("embed.weight", &[2000, 128], Scheme::Mixed),
            Ok(TensorFormat::Int8)
        );
        assert_eq!(
            pick("pos_embed.weight", &[512, 128], Scheme::Mixed),
            Ok(TensorFormat::Int8)
        );
        assert_eq!(
            pick("layers.0.ssm.in_proj.weight", &[256, 128], Scheme::Mixed),
            Ok(TensorFormat::F16)
        );
        let rules = [Rule {
            pattern: "layers.*.ffn.*.weight".into(),
            format: TensorFormat::Int4,
        }];
        assert_eq!(
            choose(
                "layers.1.ffn.up.weight",
                &[512, 128],
                Scheme::Mixed,
                &rules,
                g
            ),
            Ok(TensorFormat::Int4)
        );
        let bad = [Rule {
            pattern: "*norm*".into(),
            format: TensorFormat::Int8,
        }];
        let err = choose("final_norm.weight", &[128], Scheme::Mixed, &bad, g).unwrap_err();
        assert!(err.contains("only matrices"), "{err}");
    }
}
