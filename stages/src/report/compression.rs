//! The compression comparison (the seed study's phase-7 table, measured on one footing):
//! every stored format of the study's models against the F32 reference (the first model
//! stored as F32): size ratio, validation loss and perplexity change, bits per byte and
//! batch-1 generation speed, and one recommendation per use case derived from those
//! numbers by the rule stated in the report ([`RULE`]).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::findings::{fmt_bytes, fmt_rate};
use super::study::{loops, Study};
use super::tables::cell;
use crate::records::{ModelEval, WeightsFormat};

/// How the recommendations are derived, as printed in the report.
pub const RULE: &str = "a format qualifies when its validation loss is at most 1% above the F32 reference and its continuations do not loop (the report's repeated-4-gram flag; not asked when the reference's own continuations loop); among those, *smallest* is the one with the smallest weights file, *fastest* the one with the highest batch-1 generation speed, and *most accurate* the one with the lowest bits per byte (ties to the smaller file)";

/// The quality bar of [`RULE`], in percent of the reference's validation loss.
pub const MAX_LOSS_INCREASE_PCT: f64 = 1.0;

/// One format against the F32 reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompressionRow {
    pub model: String,
    pub format: WeightsFormat,
    /// Reference file bytes / this file's bytes (2.0 = half the size).
    pub compression: f64,
    pub val_loss_change_pct: f64,
    pub perplexity_change_pct: f64,
    pub bits_per_byte: f64,
    /// The fastest of the model's measured generation precisions, tokens per second.
    pub generation_tokens_per_s: f64,
    pub within_quality_bar: bool,
    /// Whether the report flags this model's continuations as looping.
    #[serde(default)]
    pub loops: bool,
    /// Within the quality bar and, unless the reference loops, not looping: a candidate
    /// for the recommendations.
    #[serde(default)]
    pub qualifies: bool,
    /// The use cases this format is recommended for (`smallest`, `fastest`, `most accurate`).
    pub recommended_for: Vec<String>,
}

/// The comparison rows, or nothing when the study has no F32 reference or no other format.
pub fn rows(study: &Study) -> Vec<CompressionRow> {
    let Some(reference) = study.models.iter().find(|m| m.dtype == WeightsFormat::F32) else {
        return Vec::new();
    };
    if !study.models.iter().any(|m| m.dtype != WeightsFormat::F32) {
        return Vec::new();
    }
    // A looping format is not recommended unless the reference loops too (then the
    // flag says nothing about the format).
    let judge_loops = !loops(reference);
    let mut rows: Vec<CompressionRow> = study
        .models
        .iter()
        .filter(|m| m.dtype != WeightsFormat::F32 || std::ptr::eq(*m, reference))
        .map(|m| row(m, reference, judge_loops))
        .collect();
    let qualified: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].qualifies).collect();
    let pick = |better: &dyn Fn(&CompressionRow, &CompressionRow) -> bool| {
        qualified
            .iter()
            .copied()
            .reduce(|a, b| if better(&rows[b], &rows[a]) { b } else { a })
    };
    let smallest = pick(&|a, b| a.compression > b.compression);
    let fastest = pick(&|a, b| a.generation_tokens_per_s > b.generation_tokens_per_s);
    let accurate =
        pick(&|a, b| (a.bits_per_byte, -a.compression) < (b.bits_per_byte, -b.compression));
    for (choice, label) in [
        (smallest, "smallest"),
        (fastest, "fastest"),
        (accurate, "most accurate"),
    ] {
        if let Some(i) = choice {
            rows[i].recommended_for.push(label.to_owned());
        }
    }
    rows
}

/// `m`'s row against `reference`; `judge_loops`: whether looping keeps a format from
/// qualifying (not when the reference loops too).
fn row(m: &ModelEval, reference: &ModelEval, judge_loops: bool) -> CompressionRow {
    let pct = |a: f64, b: f64| if b != 0.0 { (a / b - 1.0) * 100.0 } else { 0.0 };
    let loss_pct = pct(m.val_loss, reference.val_loss);
    let within_quality_bar = loss_pct <= MAX_LOSS_INCREASE_PCT;
    let loops = loops(m);
    CompressionRow {
        model: m.name.clone(),
        format: m.dtype,
        compression: reference.file_bytes as f64 / m.file_bytes.max(1) as f64,
        val_loss_change_pct: loss_pct,
        perplexity_change_pct: pct(m.perplexity, reference.perplexity),
        bits_per_byte: m.bits_per_byte,
        generation_tokens_per_s: m
            .generation_speed
            .iter()
            .map(|s| s.tokens_per_s)
            .fold(0.0, f64::max),
        within_quality_bar,
        loops,
        qualifies: within_quality_bar && !(judge_loops && loops),
        recommended_for: Vec::new(),
    }
}

/// The `## Compression` section (nothing when [`rows`] is empty).
pub fn section(md: &mut String, study: &Study) {
    let rows = rows(study);
    if rows.is_empty() {
        return;
    }
    md.push_str("## Compression\n\n");
    md.push_str(
        "Every stored format against the F32 reference, measured in this run on the same \
         validation tokens (weight-only formats: the matrices are stored quantized, \
         activations stay f32).\n\n",
    );
    md.push_str("| model | format | smaller by | weights file | Δ val loss | Δ perplexity | bits/byte | generation | recommended for |\n|---|---|---:|---:|---:|---:|---:|---:|---|\n");
    for r in &rows {
        let bytes = study
            .models
            .iter()
            .find(|m| m.name == r.model)
            .map_or(0, |m| m.file_bytes);
        let _ = writeln!(
            md,
            "| {} | {} | {:.2}× | {} | {:+.2}%{} | {:+.2}% | {:.4} | {} tok/s | {} |",
            cell(&r.model),
            r.format,
            r.compression,
            fmt_bytes(bytes),
            r.val_loss_change_pct,
            if r.within_quality_bar { "" } else { " ✗" },
            r.perplexity_change_pct,
            r.bits_per_byte,
            fmt_rate(r.generation_tokens_per_s),
            if !r.recommended_for.is_empty() {
                r.recommended_for.join(", ")
            } else if r.within_quality_bar && !r.qualifies {
                "— (continuations loop)".to_owned()
            } else {
                "—".to_owned()
            }
        );
    }
    let _ = writeln!(md, "\nRule: {RULE}. ✗ marks a format above the 1% bar.\n");
}
