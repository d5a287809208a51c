//! The JSON files the study stages exchange: `train_log.jsonl` and `summary.json` (written by
//! `train`), `eval.json` (written by `evaluate`), read by `report`. The formats are
//! documented in docs/PHASE8.md; every number in them is finite (a NaN is an error at write
//! time, never a `null` in the file).

use std::path::Path;

use anyhow::Context as _;
use itera_model::config::ModelConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// File names inside the artifacts.
pub const TRAIN_LOG_FILE: &str = "train_log.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";
pub const EVAL_FILE: &str = "eval.json";

/// One line of `train_log.jsonl`: the state after `step` optimizer steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainLogLine {
    /// Optimizer steps done (1-based: the first line after one step says 1).
    pub step: u64,
    /// Training tokens consumed so far (`step * batch_size * seq_len`).
    pub tokens: u64,
    /// Mean training loss (cross-entropy + load-balance term) over the steps since the last line.
    pub loss: f64,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Validation cross-entropy (nats per token), on `eval_every` steps and the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Training throughput since the last line (tokens per second of wall time).
    pub tokens_per_s: f64,
    /// Wall seconds of training so far (across resumes; evaluation excluded).
    pub elapsed_s: f64,
}

/// `summary.json`: the outcome of a `train` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSummary {
    /// The model trained (vocab_size filled from the tokenizer).
    pub config: ModelConfig,
    /// Scalar weights in the model.
    pub parameters: u64,
    pub steps: u64,
    pub batch_size: usize,
    pub seq_len: usize,
    /// Tokens in the training split and tokens consumed (`steps * batch_size * seq_len`).
    pub train_tokens_available: u64,
    pub tokens_seen: u64,
    /// `tokens_seen / train_tokens_available`.
    pub epochs: f64,
    /// Mean training loss over the last logged interval.
    pub final_train_loss: f64,
    /// Validation loss after the last step, and the best one seen.
    pub final_val_loss: f64,
    pub best_val_loss: f64,
    /// Tokens of the validation split each validation pass used.
    pub val_tokens: u64,
    /// Wall seconds of training (across resumes; validation passes excluded).
    pub train_seconds: f64,
    /// `tokens_seen / train_seconds`.
    pub tokens_per_s: f64,
    pub threads: usize,
    pub seed: u64,
    /// The step training resumed from after an interruption (absent for an uninterrupted run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from_step: Option<u64>,
    /// The stage's params with every default filled in (what a variant of a study sets);
    /// absent in artifacts written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
}

/// `eval.json`: every model evaluated on the same validation tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalReport {
    /// Tokenization scheme of the data (`word`, `bpe`, `byte`).
    pub scheme: String,
    /// Share of validation text tokens that are `<unk>` (word-level only; 0 for lossless
    /// schemes). Unknown tokens are easy to predict, so a high rate flatters the loss.
    pub unknown_rate: f64,
    /// Validation tokens scored for every model (predicted positions).
    pub eval_tokens: u64,
    /// UTF-8 bytes of text those tokens stand for (see docs/PHASE8.md for the formula).
    pub eval_bytes: f64,
    /// Sequence length the validation tokens were scored in.
    pub seq_len: usize,
    /// Threads every speed was measured with.
    pub threads: usize,
    /// How the losses were computed: `batched` (parallel forward pass) or `recurrent`.
    pub scorer: String,
    /// Timed repetitions behind each median speed.
    pub speed_runs: usize,
    /// Tokens generated per timed generation run.
    pub speed_tokens: usize,
    /// Tokens generated per prompt.
    pub max_new_tokens: usize,
    /// Sampling settings of the `sampled` generations.
    pub sampling: SamplingRecord,
    /// The models, the reference first.
    pub models: Vec<ModelEval>,
}

/// Sampling settings recorded in `eval.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingRecord {
    pub temperature: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    pub seed: u64,
}

/// How a model's weights are stored (`dtype` in eval.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightsFormat {
    F32,
    F16,
    BF16,
    /// Quantized by the `quantize` stage with this scheme.
    #[serde(rename = "int8")]
    Int8,
    #[serde(rename = "int4")]
    Int4,
    #[serde(rename = "mixed")]
    Mixed,
}

impl WeightsFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Int8 => "int8",
            Self::Int4 => "int4",
            Self::Mixed => "mixed",
        }
    }

    /// The speed label of a quantized format's decoder.
    pub fn quantized_precision(self) -> Option<SpeedPrecision> {
        match self {
            Self::Int8 => Some(SpeedPrecision::Int8),
            Self::Int4 => Some(SpeedPrecision::Int4),
            Self::Mixed => Some(SpeedPrecision::Mixed),
            Self::F32 | Self::F16 | Self::BF16 => None,
        }
    }
}

impl std::fmt::Display for WeightsFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the decoder computed a measured generation speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpeedPrecision {
    /// f32 arithmetic (a half model's weights widened to f32 at load).
    #[serde(rename = "f32")]
    F32,
    /// f16 weights widened to f32 inside each matrix-vector product.
    #[serde(rename = "f16-upcast")]
    F16Upcast,
    /// f16 weights with f16 arithmetic in the products.
    #[serde(rename = "f16-native")]
    F16Native,
    /// Quantized weights computed natively (f32 activations).
    #[serde(rename = "int8")]
    Int8,
    #[serde(rename = "int4")]
    Int4,
    #[serde(rename = "mixed")]
    Mixed,
}

impl SpeedPrecision {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16Upcast => "f16-upcast",
            Self::F16Native => "f16-native",
            Self::Int8 => "int8",
            Self::Int4 => "int4",
            Self::Mixed => "mixed",
        }
    }
}

impl std::fmt::Display for SpeedPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One model's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEval {
    /// The upstream stage that produced the model.
    pub name: String,
    /// How the weights are stored (`F32`, `F16`, `BF16`, or a quantization scheme).
    pub dtype: WeightsFormat,
    pub parameters: u64,
    /// Size of `model.safetensors`.
    pub file_bytes: u64,
    /// Mean cross-entropy in nats per token.
    pub val_loss: f64,
    /// `exp(val_loss)`.
    pub perplexity: f64,
    /// `val_loss / ln 2`.
    pub bits_per_token: f64,
    /// `val_loss * eval_tokens / (ln 2 * eval_bytes)`.
    pub bits_per_byte: f64,
    /// Against the reference (the first model; zero for itself).
    pub delta: Deltas,
    /// Median scoring throughput (batched parallel forward, tokens per second).
    pub scoring_tokens_per_s: f64,
    /// Batch-1 generation with the recurrent decoder, per precision.
    pub generation_speed: Vec<SpeedRecord>,
    /// One entry per prompt.
    pub generations: Vec<GenerationRecord>,
    /// Repetition measures of the generations (see `evaluate::repetition`).
    pub degeneration: Degeneration,
    /// The extra texts (the `texts` input) scored with this model's tokenizer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub texts: Vec<TextScore>,
    /// Wall seconds this model's evaluation took (scoring, speeds, generations).
    pub seconds: f64,
}

/// Repetition measures of a model's greedy and sampled generations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Degeneration {
    pub greedy: RepetitionRecord,
    pub sampled: RepetitionRecord,
}

/// Repetition measures of a set of continuations (formulas in `evaluate::repetition`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepetitionRecord {
    /// Continuations measured.
    pub continuations: u64,
    /// Whitespace-separated words in them.
    pub words: u64,
    /// Share of word 4-grams repeating an earlier one of the same continuation.
    pub repeated_4gram_share: f64,
    /// Distinct word bigrams over all bigrams of all the continuations.
    pub distinct_2: f64,
}

/// A text scored with a model (`itera score`, the evaluate stage's `texts`). Formulas in
/// docs/PHASE8.md and `scoring`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextScore {
    /// The file (or `total`).
    pub name: String,
    /// Stories (text between `<|endoftext|>` separators; a file without them is one).
    pub stories: u64,
    /// Tokens of the text with the model's tokenizer, one `<eos>` per story included.
    pub tokens: u64,
    /// Tokens predicted (all but the first).
    pub predicted: u64,
    /// UTF-8 bytes of the story text (trimmed; separators excluded).
    pub bytes: u64,
    /// Bytes the predicted tokens stand for: `predicted × bytes / tokens`.
    pub scored_bytes: f64,
    /// Summed negative log-likelihood in nats.
    pub nll: f64,
    /// `nll / predicted` (nats per token).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// `loss / ln 2`.
    pub bits_per_token: f64,
    /// `nll / (ln 2 × scored_bytes)`.
    pub bits_per_byte: f64,
    /// Share of text tokens (`<eos>` excluded) that are `<unk>`; word-level tokenizers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_rate: Option<f64>,
}

/// Differences against the reference model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deltas {
    pub val_loss: f64,
    /// Relative change of the validation loss, in percent.
    pub val_loss_pct: f64,
    pub perplexity: f64,
    pub bits_per_byte: f64,
    /// `file_bytes / reference file_bytes`.
    pub size_ratio: f64,
}

impl Deltas {
    /// The reference against itself.
    pub fn zero() -> Self {
        Self {
            val_loss: 0.0,
            val_loss_pct: 0.0,
            perplexity: 0.0,
            bits_per_byte: 0.0,
            size_ratio: 1.0,
        }
    }
}

/// A measured speed: the median of `runs` timed repetitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeedRecord {
    /// How the decoder computed (see [`SpeedPrecision`]).
    pub precision: SpeedPrecision,
    pub tokens_per_s: f64,
    /// Every repetition's tokens per second, in the order measured.
    pub runs: Vec<f64>,
    pub threads: usize,
}

/// Continuations of one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationRecord {
    pub prompt: String,
    /// Greedy (argmax) continuation, decoded text.
    pub greedy: String,
    /// Sampled continuation with the recorded sampling settings.
    pub sampled: String,
}

/// Serializes `value` as pretty JSON into `path`, refusing non-finite numbers (which
/// serde_json would silently write as `null`).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let json =
        to_finite_json(value).with_context(|| format!("cannot write `{}`", path.display()))?;
    let text = serde_json::to_string_pretty(&json)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write `{}`", path.display()))
}

/// `value` as JSON, or an error naming the first non-finite number.
pub fn to_finite_json<T: Serialize>(value: &T) -> anyhow::Result<serde_json::Value> {
    let json = serde_json::to_value(value)?;
    if let Some(path) = first_null(&json, String::new()) {
        anyhow::bail!("the value at `{path}` is not a finite number (NaN or infinity)");
    }
    Ok(json)
}

/// Path of the first `null` in `value` (our records skip absent options, so a `null` is
/// always a NaN or an infinity).
fn first_null(value: &serde_json::Value, path: String) -> Option<String> {
    match value {
        serde_json::Value::Null => Some(if path.is_empty() { ".".into() } else { path }),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| first_null(v, format!("{path}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            first_null(v, p)
        }),
        _ => None,
    }
}

/// Reads a JSON file into `T`, naming the file in errors.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("`{}` is not in the expected format", path.display()))
}

/// Reads `train_log.jsonl`.
pub fn read_train_log(path: &Path) -> anyhow::Result<Vec<TrainLogLine>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!("`{}` line {}: not a train log line", path.display(), i + 1)
            })
        })
        .collect()
}

/// Median of `values` (the mean of the middle two for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_numbers_are_refused_with_their_path() {
        let line = TrainLogLine {
            step: 1,
            tokens: 10,
            loss: f64::NAN,
            lr: 1e-3,
            val_loss: None,
            tokens_per_s: 1.0,
            elapsed_s: 1.0,
        };
        let err = to_finite_json(&line).unwrap_err();
        assert!(err.to_string().contains("`loss`"), "{err}");
        let ok = TrainLogLine { loss: 2.0, ..line };
        let json = to_finite_json(&ok).unwrap();
        assert!(json.get("val_loss").is_none());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
