//! The `evaluate` stage kind: measures one or more models (the first is the reference) on
//! the same validation tokens: loss, perplexity, bits per byte, deltas against the
//! reference, size, scoring and batch-1 generation speeds (medians of timed runs), and
//! greedy and sampled generations for a list of prompts with measures of repetition, and
//! the same loss figures on extra texts (the `texts` input). Writes `eval.json`
//! ([`crate::records::EvalReport`]). Losses come from [`crate::scoring`], the function
//! `itera score` uses too.

pub mod measure;
pub mod params;
pub mod repetition;
pub mod texts;

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use itera_engine::stage::{InputSlot, InputSlots, OutputDecl, ParamIssue, StageContext, StageKind};
use itera_model::decode::{Decoder, Precision, SamplingConfig, Weights};

use crate::records::{self, Deltas, EvalReport, ModelEval, SamplingRecord, WeightsFormat};
use crate::scoring::{Figures, ModelScorer, TextTokenizer};
use crate::tokens::{Split, TokenizedData};
use itera_model::artifact::{check_dir as check_model_dir, TOKENIZER_FILE, WEIGHTS_FILE};
pub use params::{EvaluateParams, SamplingParams, SEED_PROMPTS};

/// The `evaluate` kind.
pub struct Evaluate;

impl StageKind for Evaluate {
    type Params = EvaluateParams;
    const KIND: &'static str = "evaluate";
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str =
        "Measures models on the same validation tokens: loss, perplexity, bits per byte, size, speeds, generations";

    fn validate(p: &Self::Params) -> Vec<ParamIssue> {
        params::issues(p)
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
            InputSlot {
                required: false,
                ..InputSlot::many(
                    "texts",
                    "extra text files to score (`files` stages, whole or one output each); every file of a folder is scored, with each model's own tokenizer",
                )
            },
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
        evaluate(params, ctx)
    }
}

/// A model input, loaded.
struct Loaded<'a> {
    artifact: &'a itera_engine::stage::InputArtifact,
    config: itera_model::ModelConfig,
    weights: Weights,
}

fn evaluate(params: &EvaluateParams, ctx: &StageContext) -> anyhow::Result<()> {
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
    let text_files = texts::files(ctx.inputs_of("texts"))?;

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
        loaded.push(Loaded {
            artifact: m,
            config,
            weights,
        });
    }
    let max_context = loaded
        .iter()
        .map(|l| l.config.max_seq_length)
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
    let speed_tokens_scored = &tokens[..tokens.len().min(params.speed_score_tokens as usize + 1)];
    let tokenizer_path = |dir: &Path| {
        let own = dir.join(TOKENIZER_FILE);
        if own.is_file() {
            own
        } else {
            data.tokenizer_path()
        }
    };

    let steps = loaded.len() as u64 * 5;
    ctx.progress.start("evaluate", Some(steps), "steps");
    let check_cancel = || -> anyhow::Result<()> {
        anyhow::ensure!(!ctx.cancel.is_cancelled(), "cancelled");
        Ok(())
    };
    let mut evals: Vec<ModelEval> = Vec::new();
    for (i, model) in loaded.iter().enumerate() {
        let started = Instant::now();
        let at = |step: u64| ctx.progress.set_position(i as u64 * 5 + step);
        let Loaded {
            artifact,
            config,
            weights,
        } = model;
        let dtype = weights_dtype(&artifact.path.join(WEIGHTS_FILE))?;
        let name = &artifact.stage;
        ctx.progress.message(format!(
            "{name}: scoring {} validation tokens on {threads} threads ({})",
            tokens.len() - 1,
            params.scorer.name()
        ));
        let scorer = ModelScorer::new(weights, params.scorer, threads)?;
        let (nll, n) = scorer.nll(&tokens, seq_len)?;
        at(1);
        check_cancel()?;
        let scoring_tokens_per_s =
            measure::scoring_speed(&scorer, speed_tokens_scored, seq_len, params.speed_runs)?;
        at(2);
        check_cancel()?;

        let tokenizer = TextTokenizer::load(&tokenizer_path(&artifact.path))
            .with_context(|| format!("the tokenizer of `{name}`"))?;
        let mut text_scores = Vec::new();
        for (text_name, path) in &text_files {
            ctx.progress
                .message(format!("{name}: scoring the text {text_name}"));
            let encoded = scorer.install(|| tokenizer.encode_file(path))?;
            let score = scorer.score_text(text_name, &encoded, seq_len, tokenizer.is_lossy())?;
            ctx.log.line(format!(
                "{name} on {text_name}: {} tokens, loss {:.4}, {:.4} bits/byte",
                score.tokens, score.loss, score.bits_per_byte
            ));
            text_scores.push(score);
            check_cancel()?;
        }
        at(3);

        let decoder = Decoder::new(weights, Precision::F32);
        let generations = measure::generations(
            &decoder,
            tokenizer.tokenizer(),
            &params.prompts,
            params.max_new_tokens,
            &sampling,
            data.meta.eos_id,
        )?;
        at(4);
        check_cancel()?;

        // f16 models are timed at every f16 precision; f32 and quantized models as they
        // are (quantized matrices always compute natively, whatever the precision).
        let quantized = !weights.quantized_tensors().is_empty();
        let precisions: &[Precision] = if quantized && weights.f16_matrices() {
            // A mixed file: its f16 matrices decode exactly at f16-upcast.
            &[Precision::F16]
        } else if dtype == WeightsFormat::F32 || quantized {
            &[Precision::F32]
        } else {
            &[Precision::F32, Precision::F16, Precision::F16Native]
        };
        let speed_prompt = measure::encode_prompt(tokenizer.tokenizer(), &params.prompts[0])?;
        let speed_tokens = params
            .speed_tokens
            .min(config.max_seq_length.saturating_sub(speed_prompt.len()))
            .max(1);
        let mut generation_speed = Vec::new();
        for &p in precisions {
            ctx.progress.message(format!(
                "{name}: generation speed ({})",
                measure::speed_precision(p)
            ));
            let d = Decoder::new(weights, p);
            let mut speed =
                measure::generation_speed(&d, p, &speed_prompt, speed_tokens, params.speed_runs)?;
            if let Some(q) = dtype.quantized_precision() {
                speed.precision = q;
            }
            generation_speed.push(speed);
            check_cancel()?;
        }
        at(5);

        let figures = Figures::new(nll, n, data.valid_bytes_per_token());
        let file_bytes = std::fs::metadata(artifact.path.join(WEIGHTS_FILE))?.len();
        let parameters = weights.parameters();
        let degeneration = repetition::degeneration(&generations);
        let line = format!(
            "{name} ({dtype}): val loss {:.4}, {:.4} bits/byte, {file_bytes} bytes, repeated 4-grams greedy {:.1}% sampled {:.1}%",
            figures.loss,
            figures.bits_per_byte,
            degeneration.greedy.repeated_4gram_share * 100.0,
            degeneration.sampled.repeated_4gram_share * 100.0
        );
        ctx.log.line(&line);
        ctx.progress.message(line);
        evals.push(ModelEval {
            name: name.clone(),
            dtype,
            parameters,
            file_bytes,
            val_loss: figures.loss,
            perplexity: figures.perplexity,
            bits_per_token: figures.bits_per_token,
            bits_per_byte: figures.bits_per_byte,
            delta: Deltas::zero(),
            scoring_tokens_per_s,
            generation_speed,
            generations,
            degeneration,
            texts: text_scores,
            seconds: started.elapsed().as_secs_f64(),
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
        scorer: params.scorer.name().into(),
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
fn weights_dtype(path: &Path) -> anyhow::Result<WeightsFormat> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("`{}` is not a safetensors file: {e}", path.display()))?;
    // A quantized model is named by its scheme.
    if let Some(text) = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(itera_model::quant::METADATA_KEY))
    {
        let q: itera_model::quant::QuantMetadata = serde_json::from_str(text)
            .with_context(|| format!("`{}`: its quantization metadata", path.display()))?;
        return match q.scheme.as_str() {
            "int8" => Ok(WeightsFormat::Int8),
            "int4" => Ok(WeightsFormat::Int4),
            "mixed" => Ok(WeightsFormat::Mixed),
            other => anyhow::bail!(
                "`{}`: unknown quantization scheme {other:?} (int8, int4 or mixed)",
                path.display()
            ),
        };
    }
    let info = meta.info("embed.weight").with_context(|| {
        format!(
            "`{}` has no `embed.weight`: not an Itera-Lite model",
            path.display()
        )
    })?;
    match info.dtype {
        safetensors::Dtype::F32 => Ok(WeightsFormat::F32),
        safetensors::Dtype::F16 => Ok(WeightsFormat::F16),
        safetensors::Dtype::BF16 => Ok(WeightsFormat::BF16),
        other => anyhow::bail!(
            "`{}`: embed.weight is {other:?}; evaluate reads F32, F16, BF16 and quantized models",
            path.display()
        ),
    }
}
