//! The `quantize` stage kind: turns a model artifact (F32 or F16 weights) into one whose
//! matrices are int8 or int4 (weight-only, symmetric; `itera_model::quant` has the format,
//! `itera_model::quantize` the schemes and the rule for which tensors are quantized).
//! `config.json` and the tokenizer files are copied; `quantization.json` records every
//! tensor's format, bytes and rounding error, and the file sizes before and after. The
//! decoder, `evaluate`, `itera score` and `itera generate` read the result as it is.

use std::collections::BTreeMap;
use std::fs;

use anyhow::Context as _;
use itera_engine::stage::{InputSlot, InputSlots, OutputDecl, ParamIssue, StageContext, StageKind};
use itera_model::artifact::{self, CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use itera_model::decode::Weights;
use itera_model::quantize::{self, Rule, Scheme, TensorFormat, TensorReport};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What `quantize` writes about the quantization.
pub const QUANTIZATION_FILE: &str = "quantization.json";

/// Params of `kind = "quantize"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantizeParams {
    /// `"int8"` (per output channel), `"int4"` (group-wise) or `"mixed"` (embeddings and
    /// head int8, the rest f16: the seed's phase-7 recipe).
    pub scheme: Scheme,
    /// Input columns per int4 scale (even; must divide the columns of int4 matrices).
    #[serde(default = "default_group_size")]
    #[schemars(range(min = 2))]
    pub group_size: usize,
    /// Per-tensor formats, tried before the scheme's defaults; the first rule whose
    /// pattern (`*` = any characters) matches a tensor's name decides its format, e.g.
    /// `[{ pattern = "layers.*.moe.*", format = "int4" }]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

fn default_group_size() -> usize {
    32
}

/// `quantization.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizationRecord {
    pub scheme: Scheme,
    pub group_size: usize,
    pub rules: Vec<Rule>,
    pub parameters: u64,
    /// `model.safetensors` before and after, header included.
    pub file_bytes_before: u64,
    pub file_bytes_after: u64,
    /// `file_bytes_before / file_bytes_after`.
    pub compression: f64,
    /// Parameters per stored format.
    pub parameters_by_format: BTreeMap<String, u64>,
    pub tensors: BTreeMap<String, TensorReport>,
}

/// The `quantize` kind.
pub struct Quantize;

impl StageKind for Quantize {
    type Params = QuantizeParams;
    const KIND: &'static str = "quantize";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "Quantizes a model's matrices to int8 or int4 (weight-only), or the mixed int8/f16 recipe";

    fn validate(params: &Self::Params) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        let g = params.group_size;
        if g < 2 || !g.is_multiple_of(2) {
            issues.push(ParamIssue::new(
                "group_size",
                format!("must be an even number of at least 2, found {g}"),
            ));
        }
        for (i, rule) in params.rules.iter().enumerate() {
            if rule.pattern.is_empty() {
                issues.push(
                    ParamIssue::new(&format!("rules.{i}.pattern"), "is empty")
                        .with_help("give a tensor name, with `*` for any characters"),
                );
            }
        }
        issues
    }

    fn inputs(_params: &Self::Params) -> InputSlots {
        InputSlots::Named(vec![InputSlot::required(
            "model",
            "a model artifact (a `train` or `half-convert` stage): model.safetensors, config.json, tokenizer.json",
        )])
    }

    fn outputs(_params: &Self::Params) -> Vec<OutputDecl> {
        vec![
            OutputDecl::new("weights", WEIGHTS_FILE),
            OutputDecl::new("config", CONFIG_FILE),
            OutputDecl::new("tokenizer", TOKENIZER_FILE),
            OutputDecl::new("quantization", QUANTIZATION_FILE),
        ]
    }

    fn run(params: &Self::Params, ctx: &StageContext) -> anyhow::Result<()> {
        let input = ctx.input("model")?;
        ctx.progress.start("quantize", None, "tensors");
        let record = quantize_dir(&input.path, &ctx.out_dir, params)?;
        let line = format!(
            "{}: {} -> {} bytes ({:.2}x smaller); {}",
            params.scheme.name(),
            record.file_bytes_before,
            record.file_bytes_after,
            record.compression,
            record
                .parameters_by_format
                .iter()
                .map(|(f, n)| format!("{n} weights {f}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        ctx.log.line(&line);
        ctx.progress.message(line);
        Ok(())
    }
}

/// Quantizes the model folder `input` into `out` (which must exist).
pub fn quantize_dir(
    input: &std::path::Path,
    out: &std::path::Path,
    params: &QuantizeParams,
) -> anyhow::Result<QuantizationRecord> {
    artifact::check_dir(input)?;
    let weights_path = input.join(WEIGHTS_FILE);
    let weights = Weights::load_dir(input)
        .with_context(|| format!("cannot read the model in `{}`", input.display()))?;
    let file =
        quantize::quantize_weights(&weights, params.scheme, &params.rules, params.group_size)
            .map_err(|e| {
                anyhow::anyhow!("cannot quantize the model in `{}`: {e}", input.display())
            })?;
    let out_weights = out.join(WEIGHTS_FILE);
    fs::write(&out_weights, &file.bytes)
        .with_context(|| format!("cannot write `{}`", out_weights.display()))?;
    artifact::copy_companions(input, out)?;
    let before = fs::metadata(&weights_path)?.len();
    let after = file.bytes.len() as u64;
    let mut by_format: BTreeMap<String, u64> = BTreeMap::new();
    for t in file.tensors.values() {
        *by_format
            .entry(format_name(t.format).to_owned())
            .or_default() += t.parameters;
    }
    let record = QuantizationRecord {
        scheme: params.scheme,
        group_size: params.group_size,
        rules: params.rules.clone(),
        parameters: file.tensors.values().map(|t| t.parameters).sum(),
        file_bytes_before: before,
        file_bytes_after: after,
        compression: before as f64 / after.max(1) as f64,
        parameters_by_format: by_format,
        tensors: file.tensors,
    };
    crate::records::write_json(&out.join(QUANTIZATION_FILE), &record)?;
    Ok(record)
}

fn format_name(f: TensorFormat) -> &'static str {
    match f {
        TensorFormat::F32 => "f32",
        TensorFormat::F16 => "f16",
        TensorFormat::Int8 => "int8",
        TensorFormat::Int4 => "int4",
    }
}
