//! The `evaluate` stage kind: measures one or more models (the first is the reference) on
//! the same validation tokens: loss, perplexity, bits per byte, deltas against the
//! reference, size, scoring and batch-1 generation speeds (medians of timed runs), and
//! greedy and sampled generations for a list of prompts. Writes `eval.json`
//! ([`crate::records::EvalReport`]).

pub mod measure;

use std::f64::consts::LN_2;
use std::path::Path;

use anyhow::Context as _;
use itera_engine::stage::{InputSlot, InputSlots, OutputDecl, ParamIssue, StageContext, StageKind};
use itera_model::decode::{Decoder, Precision, SamplingConfig, Weights};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::half::{check_model_dir, TOKENIZER_FILE, WEIGHTS_FILE};
use crate::records::{self, Deltas, EvalReport, ModelEval, SamplingRecord};
use crate::tokens::{Split, TokenizedData};

/// The seed study's five prompts.
pub const SEED_PROMPTS: [&str; 5] = [
    "once upon a time",
    "the cat",
    "there was a",
    "in the beginning",
    "the quick brown",
];

/// Params of `kind = "evaluate"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// Validation tokens scored for every model: the first ones of `valid.bin` (fewer if
    /// the split is shorter), the same tokens for every model.
    #[serde(default = "defaults::eval_tokens")]
    pub eval_tokens: u64,
    /// Scoring window: each token is predicted from at most this many previous tokens.
    /// Default: the smallest `max_seq_length` of the models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<usize>,
    /// Prompts to generate from. Default: the seed study's five.
    #[serde(default = "defaults::prompts")]
    pub prompts: Vec<String>,
    /// Tokens generated per prompt (fewer if `<eos>` comes first or the context fills up).
    #[serde(default = "defaults::max_new_tokens")]
    pub max_new_tokens: usize,
    /// Settings of the sampled generations (the greedy ones need none).
    #[serde(default)]
    pub sampling: SamplingParams,
    /// Timed repetitions behind every speed (the median is reported, every run recorded).
    #[serde(default = "defaults::speed_runs")]
    pub speed_runs: usize,
    /// Tokens generated per timed generation run (capped by the context length).
    #[serde(default = "defaults::speed_tokens")]
    pub speed_tokens: usize,
    /// Validation tokens scored per timed scoring run (capped by `eval_tokens`).
    #[serde(default = "defaults::speed_score_tokens")]
    pub speed_score_tokens: u64,
    /// Threads for scoring. Default: the stage's thread budget. Generation is batch-1 and
    /// single-threaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

/// How the `sampled` generations draw tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamplingParams {
    /// Softmax temperature (> 0).
    #[serde(default = "defaults::temperature")]
    pub temperature: f64,
    /// Sample among the k most likely tokens only.
    #[serde(default = "defaults::top_k", skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Nucleus sampling: the most likely tokens whose probabilities reach `top_p`, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Random seed. Default: the pipeline's seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: defaults::temperature(),
            top_k: defaults::top_k(),
            top_p: None,
            seed: None,
        }
    }
}

mod defaults {
    pub fn eval_tokens() -> u64 {
        32_768
    }
    pub fn prompts() -> Vec<String> {
        super::SEED_PROMPTS
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    }
    pub fn max_new_tokens() -> usize {
        32
    }
    pub fn speed_runs() -> usize {
        5
    }
    pub fn speed_tokens() -> usize {
        96
    }
    pub fn speed_score_tokens() -> u64 {
        4096
    }
    pub fn temperature() -> f64 {
        0.8
    }
    pub fn top_k() -> Option<usize> {
        Some(40)
    }
}

/// The `evaluate` kind.
pub struct Evaluate;

impl StageKind for Evaluate {
    type Params = EvaluateParams;
    const KIND: &'static str = "evaluate";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "Measures models on the same validation tokens: loss, perplexity, bits per byte, size, speeds, generations";

    fn validate(p: &Self::Params) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        let mut at_least_one = |path: &str, v: u64| {
            if v == 0 {
                issues.push(ParamIssue::new(path, "must be at least 1, found 0"));
            }
        };
        at_least_one("eval_tokens", p.eval_tokens);
        at_least_one("max_new_tokens", p.max_new_tokens as u64);
        at_least_one("speed_runs", p.speed_runs as u64);
        at_least_one("speed_tokens", p.speed_tokens as u64);
        at_least_one("speed_score_tokens", p.speed_score_tokens);
        if let Some(s) = p.seq_len {
            at_least_one("seq_len", s as u64);
        }
        if let Some(t) = p.threads {
            at_least_one("threads", t as u64);
        }
        if let Some(k) = p.sampling.top_k {
            at_least_one("sampling.top_k", k as u64);
        }
        if p.prompts.is_empty() {
            issues.push(
                ParamIssue::new("prompts", "must list at least one prompt")
                    .with_help("omit `prompts` to use the seed study's five"),
            );
        }
        if let Some(i) = p.prompts.iter().position(|s| s.trim().is_empty()) {
            issues.push(ParamIssue::new(
                &format!("prompts.{i}"),
                "is empty: give some text to continue",
            ));
        }
        if !(p.sampling.temperature > 0.0 && p.sampling.temperature.is_finite()) {
            issues.push(ParamIssue::new("sampling.temperature", format!("must be a positive number, found {}", p.sampling.temperature)).with_help("greedy generations are always reported; the sampled ones need a temperature above 0"));
        }
        if let Some(tp) = p.sampling.top_p {
            if !(tp > 0.0 && tp <= 1.0) {
                issues.push(ParamIssue::new(
                    "sampling.top_p",
                    format!("must be in (0, 1], found {tp}"),
                ));
            }
        }
        issues
    }

    fn inputs(_params: &Self::Params) -> InputSlots {
        InputSlots::Named(vec![
            InputSlot::many(
                "models",
                "model artifacts (`train` or `half-convert` stages); the first is the reference",
            ),
            InputSlot::required(
                "data",
                "the `tokenize` stage the reference was trained on (valid.bin, stats.json)",
            ),
        ])
    }

    fn outputs(_params: &Self::Params) -> Vec<OutputDecl> {
        vec![OutputDecl::new("eval", records::EVAL_FILE)]
    }

    /// eval.json carries measured speeds beside the (exact) losses and generations.
    fn measurements(_params: &Self::Params) -> Vec<String> {
        vec![records::EVAL_FILE.into()]
    }

    fn run(params: &Self::Params, ctx: &StageContext) -> anyhow::Result<()> {
        let data = TokenizedData::open(&ctx.input("data")?.path)?;
        let models = ctx.inputs_of("models");
        anyhow::ensure!(
            !models.is_empty(),
            "stage `{}` has no models to evaluate: set `inputs.models`",
            ctx.stage
        );
        let threads = params.threads.unwrap_or(ctx.threads).max(1);
        let sampling = SamplingConfig {
            temperature: params.sampling.temperature as f32,
            top_k: params.sampling.top_k,
            top_p: params.sampling.top_p.map(|p| p as f32),
            seed: params.sampling.seed.unwrap_or(ctx.seed),
        };

        let mut loaded = Vec::new();
        for m in models {
            let config = check_model_dir(&m.path)?;
            anyhow::ensure!(
                config.vocab_size == data.meta.vocab_size,
                "model `{}` has a vocabulary of {} tokens but the data's tokenizer has {}: evaluate a model on the tokenize stage it was trained on",
                m.stage,
                config.vocab_size,
                data.meta.vocab_size
            );
            let weights = Weights::load_dir(&m.path)
                .with_context(|| format!("cannot load model `{}`", m.stage))?;
            loaded.push((m, config, weights));
        }
        let max_context = loaded
            .iter()
            .map(|(_, c, _)| c.max_seq_length)
            .min()
            .unwrap_or(1);
        let seq_len = params.seq_len.unwrap_or(max_context);
        anyhow::ensure!(
            seq_len <= max_context,
            "seq_len = {seq_len} is longer than a model's context ({max_context} tokens, max_seq_length): lower it"
        );
        let tokens = data.read(Split::Valid, Some(params.eval_tokens as usize + 1))?;
        anyhow::ensure!(
            tokens.len() >= 2,
            "the validation split has {} tokens: nothing to score",
            tokens.len()
        );
        let windows = measure::windows(&tokens, seq_len);
        let speed_windows = measure::windows(
            &tokens[..tokens.len().min(params.speed_score_tokens as usize + 1)],
            seq_len,
        );
        let tokenizer_path = |dir: &Path| {
            let own = dir.join(TOKENIZER_FILE);
            if own.is_file() {
                own
            } else {
                data.tokenizer_path()
            }
        };

        let steps = loaded.len() as u64 * 4;
        ctx.progress.start("evaluate", Some(steps), "steps");
        let mut evals: Vec<ModelEval> = Vec::new();
        for (i, (artifact, config, weights)) in loaded.iter().enumerate() {
            let check_cancel = || -> anyhow::Result<()> {
                anyhow::ensure!(!ctx.cancel.is_cancelled(), "cancelled");
                Ok(())
            };
            let dtype = weights_dtype(&artifact.path.join(WEIGHTS_FILE))?;
            let name = &artifact.stage;
            ctx.progress.message(format!(
                "{name}: scoring {} validation tokens on {threads} threads",
                tokens.len() - 1
            ));
            let decoder = Decoder::new(weights, Precision::F32);
            let (nll, n) = measure::score(&decoder, &windows, threads)?;
            ctx.progress.set_position(i as u64 * 4 + 1);
            check_cancel()?;
            let scoring_tokens_per_s =
                measure::scoring_speed(&decoder, &speed_windows, threads, params.speed_runs)?;
            ctx.progress.set_position(i as u64 * 4 + 2);
            check_cancel()?;

            let tokenizer = tokenizers::Tokenizer::from_file(tokenizer_path(&artifact.path))
                .map_err(|e| anyhow::anyhow!("cannot load the tokenizer of `{name}`: {e}"))?;
            let generations = measure::generations(
                &decoder,
                &tokenizer,
                &params.prompts,
                params.max_new_tokens,
                &sampling,
                data.meta.eos_id,
            )?;
            ctx.progress.set_position(i as u64 * 4 + 3);
            check_cancel()?;

            let precisions: &[Precision] = if dtype == "F32" {
                &[Precision::F32]
            } else {
                &[Precision::F32, Precision::F16, Precision::F16Native]
            };
            let speed_prompt = measure::encode_prompt(&tokenizer, &params.prompts[0])?;
            let speed_tokens = params
                .speed_tokens
                .min(config.max_seq_length.saturating_sub(speed_prompt.len()))
                .max(1);
            let mut generation_speed = Vec::new();
            for &p in precisions {
                ctx.progress.message(format!(
                    "{name}: generation speed ({})",
                    measure::precision_name(p)
                ));
                let d = Decoder::new(weights, p);
                generation_speed.push(measure::generation_speed(
                    &d,
                    p,
                    &speed_prompt,
                    speed_tokens,
                    params.speed_runs,
                )?);
                check_cancel()?;
            }
            ctx.progress.set_position(i as u64 * 4 + 4);

            let val_loss = nll / n as f64;
            let eval_bytes = n as f64 * data.valid_bytes_per_token();
            let file_bytes = std::fs::metadata(artifact.path.join(WEIGHTS_FILE))?.len();
            let parameters: u64 = weights
                .tensors()
                .values()
                .map(|t| t.data.len() as u64)
                .sum();
            let line = format!(
                "{name} ({dtype}): val loss {val_loss:.4}, {:.4} bits/byte, {file_bytes} bytes",
                val_loss / LN_2 * n as f64 / eval_bytes
            );
            ctx.log.line(&line);
            ctx.progress.message(line);
            evals.push(ModelEval {
                name: name.clone(),
                dtype,
                parameters,
                file_bytes,
                val_loss,
                perplexity: val_loss.exp(),
                bits_per_token: val_loss / LN_2,
                bits_per_byte: if eval_bytes > 0.0 {
                    nll / LN_2 / eval_bytes
                } else {
                    0.0
                },
                delta: Deltas {
                    val_loss: 0.0,
                    val_loss_pct: 0.0,
                    perplexity: 0.0,
                    bits_per_byte: 0.0,
                    size_ratio: 1.0,
                },
                scoring_tokens_per_s,
                generation_speed,
                generations,
            });
        }
        fill_deltas(&mut evals);
        let n = (tokens.len() - 1) as u64;
        let report = EvalReport {
            scheme: data.meta.scheme.clone(),
            unknown_rate: data.valid.unknown_rate,
            eval_tokens: n,
            eval_bytes: n as f64 * data.valid_bytes_per_token(),
            seq_len,
            threads,
            speed_runs: params.speed_runs,
            speed_tokens: params.speed_tokens,
            max_new_tokens: params.max_new_tokens,
            sampling: SamplingRecord {
                temperature: params.sampling.temperature,
                top_k: params.sampling.top_k,
                top_p: params.sampling.top_p,
                seed: sampling.seed,
            },
            models: evals,
        };
        records::write_json(&ctx.out_dir.join(records::EVAL_FILE), &report)
    }
}

/// Fills every model's deltas against the first.
pub fn fill_deltas(evals: &mut [ModelEval]) {
    let Some(r) = evals.first().cloned() else {
        return;
    };
    for m in evals.iter_mut() {
        m.delta = Deltas {
            val_loss: m.val_loss - r.val_loss,
            val_loss_pct: if r.val_loss != 0.0 {
                (m.val_loss - r.val_loss) / r.val_loss * 100.0
            } else {
                0.0
            },
            perplexity: m.perplexity - r.perplexity,
            bits_per_byte: m.bits_per_byte - r.bits_per_byte,
            size_ratio: if r.file_bytes > 0 {
                m.file_bytes as f64 / r.file_bytes as f64
            } else {
                1.0
            },
        };
    }
}

/// The storage dtype of a weights file (`F32`, `F16`, `BF16`), from its embedding tensor.
fn weights_dtype(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("`{}` is not a safetensors file: {e}", path.display()))?;
    let info = meta.info("embed.weight").with_context(|| {
        format!(
            "`{}` has no `embed.weight`: not an Itera-Lite model",
            path.display()
        )
    })?;
    Ok(format!("{:?}", info.dtype))
}
