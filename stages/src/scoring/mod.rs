//! Scoring a model on tokens and on text: the one scoring function behind the `evaluate`
//! stage (its validation loss and its extra texts) and `itera score`.
//!
//! A token stream is cut into windows of `seq + 1` tokens starting every `seq` tokens: every
//! token after the first is predicted exactly once, from at most `seq` tokens of context,
//! each window starting from an empty state. The negative log-likelihoods are summed in
//! nats ([`ModelScorer::nll`]) and turned into the reported figures by [`Figures`]:
//!
//! - `loss = NLL / N` (N predicted tokens), `perplexity = exp(loss)`,
//!   `bits_per_token = loss / ln 2`;
//! - `scored_bytes = N × text_bytes / tokens`, the UTF-8 bytes of story text the predicted
//!   tokens stand for (`text_bytes`: trimmed story text, separators excluded; `tokens`:
//!   the stream's tokens, one `<eos>` per story included);
//! - `bits_per_byte = NLL / (ln 2 × scored_bytes)`.
//!
//! The evaluate stage applies the same formulas to the validation split with the counts of
//! the tokenize stage's `stats.json`, so scoring the validation text with `itera score`
//! gives the evaluate stage's numbers.

pub mod text;

use std::f64::consts::LN_2;
use std::path::Path;

use anyhow::Context as _;
use itera_model::decode::{Decoder, Precision, Weights};
use itera_model::params::layout;
use itera_model::Params;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::records::TextScore;
pub use text::{EncodedText, TextError, TextTokenizer};

/// Windows per batched forward pass.
pub const BATCH_WINDOWS: usize = 16;

/// How the negative log-likelihood is computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScorerKind {
    /// The parallel forward pass over batches of windows (matrix-matrix products on the
    /// thread pool): the fast one.
    #[default]
    Batched,
    /// The recurrent decoder, token by token (windows split across threads).
    Recurrent,
}

impl ScorerKind {
    /// The name used in files and flags.
    pub fn name(self) -> &'static str {
        match self {
            Self::Batched => "batched",
            Self::Recurrent => "recurrent",
        }
    }
}

/// A model ready to score token streams on a fixed number of threads.
pub struct ModelScorer {
    engine: Engine,
    pool: rayon::ThreadPool,
    threads: usize,
    vocab_size: usize,
    context: usize,
}

enum Engine {
    Batched(Box<Params<f32>>),
    Recurrent(Box<Decoder>),
}

impl ModelScorer {
    /// Prepares `weights` for scoring with `kind` on `threads` threads. F16 and BF16
    /// weights are exact in f32, so every model is scored with f32 arithmetic; the batched
    /// scorer takes quantized matrices dequantized, the recurrent one computes with them.
    pub fn new(weights: &Weights, kind: ScorerKind, threads: usize) -> anyhow::Result<Self> {
        let config = weights.config().clone();
        let engine = match kind {
            ScorerKind::Batched => {
                let mut values = Vec::new();
                for spec in layout(&config) {
                    // Quantized matrices are scored as what they compute: their
                    // dequantized values.
                    let tensor = weights
                        .values(&spec.name)
                        .with_context(|| format!("the weights have no tensor `{}`", spec.name))?;
                    anyhow::ensure!(
                        tensor.len() == spec.numel(),
                        "tensor `{}` has {} values, the config implies {}",
                        spec.name,
                        tensor.len(),
                        spec.numel()
                    );
                    values.push(tensor.into_owned());
                }
                Engine::Batched(Box::new(Params::from_values(&config, values)))
            }
            ScorerKind::Recurrent => {
                Engine::Recurrent(Box::new(Decoder::new(weights, Precision::F32)))
            }
        };
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("itera-score-{i}"))
            .build()
            .with_context(|| format!("cannot start {threads} scoring threads"))?;
        Ok(Self {
            engine,
            pool,
            threads,
            vocab_size: config.vocab_size,
            context: config.max_seq_length,
        })
    }

    /// Loads the model folder `dir` (model.safetensors, config.json).
    pub fn load(dir: &Path, kind: ScorerKind, threads: usize) -> anyhow::Result<Self> {
        let weights = Weights::load_dir(dir)
            .with_context(|| format!("cannot load the model in `{}`", dir.display()))?;
        Self::new(&weights, kind, threads)
    }

    /// The model's context length (the longest scoring window).
    pub fn context(&self) -> usize {
        self.context
    }

    /// Threads scoring runs on.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on this scorer's thread pool (e.g. encoding text in parallel).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// Summed next-token NLL (nats) of `tokens[1..]` in windows of `seq` (see the module
    /// doc), and the number of predicted tokens.
    pub fn nll(&self, tokens: &[u32], seq: usize) -> anyhow::Result<(f64, u64)> {
        anyhow::ensure!(
            seq >= 1 && seq <= self.context,
            "the scoring window must be between 1 and the model's context ({}) tokens, found {seq}",
            self.context
        );
        itera_model::score::check_tokens(tokens, self.vocab_size)?;
        match &self.engine {
            Engine::Batched(params) => {
                let (nll, n) = self
                    .pool
                    .install(|| itera_model::score(&**params, tokens, seq, BATCH_WINDOWS.max(1)))?;
                Ok((nll, n as u64))
            }
            Engine::Recurrent(decoder) => {
                let windows = crate::evaluate::measure::windows(tokens, seq);
                crate::evaluate::measure::score(decoder, &windows, self.threads)
            }
        }
    }

    /// Scores an encoded text: the figures of [`TextScore`], named `name`. `lossy` says
    /// whether the tokenizer has unknown tokens (its `<unk>` rate is then reported).
    pub fn score_text(
        &self,
        name: &str,
        text: &EncodedText,
        seq: usize,
        lossy: bool,
    ) -> anyhow::Result<TextScore> {
        let (nll, predicted) = self.nll(&text.tokens, seq)?;
        Ok(text_score(name, text, nll, predicted, lossy))
    }
}

/// The figures of one scored text.
pub fn text_score(
    name: &str,
    text: &EncodedText,
    nll: f64,
    predicted: u64,
    lossy: bool,
) -> TextScore {
    let f = Figures::new(nll, predicted, text.bytes_per_token());
    TextScore {
        name: name.to_owned(),
        stories: text.stories,
        tokens: text.tokens.len() as u64,
        predicted,
        bytes: text.text_bytes,
        scored_bytes: f.scored_bytes,
        nll,
        loss: f.loss,
        perplexity: f.perplexity,
        bits_per_token: f.bits_per_token,
        bits_per_byte: f.bits_per_byte,
        unknown_rate: lossy.then(|| text.unknown_rate()),
    }
}

/// The sum of several scored texts (`unknown_rate` weighted by text tokens).
pub fn total(name: &str, parts: &[TextScore]) -> TextScore {
    let nll: f64 = parts.iter().map(|p| p.nll).sum();
    let predicted: u64 = parts.iter().map(|p| p.predicted).sum();
    let scored_bytes: f64 = parts.iter().map(|p| p.scored_bytes).sum();
    let f = Figures::from_bytes(nll, predicted, scored_bytes);
    let text_tokens = |p: &TextScore| p.tokens.saturating_sub(p.stories) as f64;
    let unknown_rate = parts.iter().all(|p| p.unknown_rate.is_some()).then(|| {
        let all: f64 = parts.iter().map(text_tokens).sum();
        let unk: f64 = parts
            .iter()
            .map(|p| p.unknown_rate.unwrap_or(0.0) * text_tokens(p))
            .sum();
        if all > 0.0 {
            unk / all
        } else {
            0.0
        }
    });
    TextScore {
        name: name.to_owned(),
        stories: parts.iter().map(|p| p.stories).sum(),
        tokens: parts.iter().map(|p| p.tokens).sum(),
        predicted,
        bytes: parts.iter().map(|p| p.bytes).sum(),
        scored_bytes,
        nll,
        loss: f.loss,
        perplexity: f.perplexity,
        bits_per_token: f.bits_per_token,
        bits_per_byte: f.bits_per_byte,
        unknown_rate: unknown_rate.filter(|_| !parts.is_empty()),
    }
}

/// Loss, perplexity, bits per token and bits per byte from a summed NLL (module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub loss: f64,
    pub perplexity: f64,
    pub bits_per_token: f64,
    pub bits_per_byte: f64,
    /// Bytes of text the predicted tokens stand for.
    pub scored_bytes: f64,
}

impl Figures {
    /// From `nll` over `predicted` tokens of a stream with `bytes_per_token` bytes of text
    /// per token.
    pub fn new(nll: f64, predicted: u64, bytes_per_token: f64) -> Self {
        Self::from_bytes(nll, predicted, predicted as f64 * bytes_per_token)
    }

    /// From `nll` over `predicted` tokens standing for `scored_bytes` bytes of text.
    pub fn from_bytes(nll: f64, predicted: u64, scored_bytes: f64) -> Self {
        let loss = if predicted == 0 {
            0.0
        } else {
            nll / predicted as f64
        };
        Self {
            loss,
            perplexity: loss.exp(),
            bits_per_token: loss / LN_2,
            bits_per_byte: if scored_bytes > 0.0 {
                nll / (LN_2 * scored_bytes)
            } else {
                0.0
            },
            scored_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_follow_the_documented_formulas() {
        // 4 predicted tokens, NLL 4 ln 2 nats: 1 bit per token; 5 tokens stand for 10
        // bytes, so the 4 predicted stand for 8 bytes: 0.5 bits per byte.
        let f = Figures::new(4.0 * LN_2, 4, 2.0);
        assert!((f.loss - LN_2).abs() < 1e-12);
        assert!((f.perplexity - 2.0).abs() < 1e-12);
        assert!((f.bits_per_token - 1.0).abs() < 1e-12);
        assert!((f.bits_per_byte - 0.5).abs() < 1e-12);
        assert_eq!(f.scored_bytes, 8.0);
        let none = Figures::new(0.0, 0, 0.0);
        assert_eq!((none.loss, none.bits_per_byte), (0.0, 0.0));
    }

    #[test]
    fn totals_sum_nll_tokens_and_bytes() {
        let a = EncodedText {
            tokens: vec![5, 6, 3],
            stories: 1,
            text_bytes: 6,
            unknown: 1,
        };
        let b = EncodedText {
            tokens: vec![5, 3, 7, 3],
            stories: 2,
            text_bytes: 8,
            unknown: 0,
        };
        let sa = text_score("a", &a, 2.0 * LN_2, 2, true);
        let sb = text_score("b", &b, 6.0 * LN_2, 3, true);
        // a: 2 predicted of 3 tokens standing for 6 bytes -> 4 bytes; b: 3 of 4 for 8 -> 6.
        assert_eq!((sa.scored_bytes, sb.scored_bytes), (4.0, 6.0));
        assert_eq!(sa.unknown_rate, Some(0.5));
        let t = total("total", &[sa, sb]);
        assert_eq!((t.tokens, t.predicted, t.bytes, t.stories), (7, 5, 14, 3));
        assert!((t.bits_per_token - 8.0 / 5.0).abs() < 1e-12);
        assert!((t.bits_per_byte - 8.0 / 10.0).abs() < 1e-12);
        // 1 unknown among 2 + 2 text tokens.
        assert_eq!(t.unknown_rate, Some(0.25));
    }

    fn small_weights() -> Weights {
        let config = itera_model::ModelConfig {
            vocab_size: 40,
            hidden_size: 32,
            num_layers: 2,
            ssm_state_size: 4,
            num_experts: 2,
            expert_size: 16,
            top_k_experts: 1,
            max_seq_length: 16,
            ..itera_model::ModelConfig::tiny()
        };
        Weights::random(&config, 5).unwrap()
    }

    #[test]
    fn the_batched_and_recurrent_scorers_agree() {
        let weights = small_weights();
        let tokens: Vec<u32> = (0..100u32).map(|i| (i * 7 + i / 3) % 40).collect();
        let batched = ModelScorer::new(&weights, ScorerKind::Batched, 2).unwrap();
        let recurrent = ModelScorer::new(&weights, ScorerKind::Recurrent, 2).unwrap();
        for seq in [16, 5] {
            let (a, na) = batched.nll(&tokens, seq).unwrap();
            let (b, nb) = recurrent.nll(&tokens, seq).unwrap();
            assert_eq!((na, nb), (99, 99));
            assert!(
                (a - b).abs() / b < 1e-5,
                "seq {seq}: batched {a} vs recurrent {b}"
            );
        }
        let err = batched.nll(&tokens, 17).unwrap_err();
        assert!(err.to_string().contains("context (16)"), "{err}");
        let err = batched.nll(&[1, 40], 4).unwrap_err();
        assert!(
            err.to_string().contains("outside the model's vocabulary"),
            "{err}"
        );
    }
}
