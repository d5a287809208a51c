//! Choosing the next token from logits (greedy, temperature, top-k, top-p, seeded with
//! ChaCha) and the generation loop over a [`Decoder`].

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::decoder::{DecodeError, Decoder};
use super::fastmath;

/// How tokens are drawn from the model's distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 means greedy (always the most likely token).
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Sample only among the `top_k` most likely tokens (none: all of them).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities sum to at least
    /// `top_p` (nucleus sampling; none: all of them). In (0, 1].
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Seed of the ChaCha8 generator: the same seed, model and prompt give the same text.
    #[serde(default)]
    pub seed: u64,
}

fn default_temperature() -> f32 {
    1.0
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    fn check(&self) -> Result<(), DecodeError> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(DecodeError::InvalidSampling {
                field: "temperature",
                message: format!("must be 0 (greedy) or positive, found {}", self.temperature),
            });
        }
        if self.top_k == Some(0) {
            return Err(DecodeError::InvalidSampling {
                field: "top_k",
                message: "must be at least 1 (leave it unset to consider every token)".into(),
            });
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(DecodeError::InvalidSampling {
                    field: "top_p",
                    message: format!("must be in (0, 1], found {p}"),
                });
            }
        }
        Ok(())
    }
}

/// Draws tokens from logits; owns its random generator and scratch space.
pub struct Sampler {
    config: SamplingConfig,
    rng: ChaCha8Rng,
    /// (probability weight, token) of the candidates.
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(config: &SamplingConfig) -> Result<Self, DecodeError> {
        config.check()?;
        Ok(Self {
            config: config.clone(),
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            candidates: Vec::new(),
        })
    }

    /// The next token for `logits` (which must not be empty).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let cfg = &self.config;
        if cfg.temperature == 0.0 || cfg.top_k == Some(1) {
            return argmax(logits);
        }
        let inv_t = 1.0 / cfg.temperature;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let c = &mut self.candidates;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (fastmath::exp((l - max) * inv_t), i as u32)),
        );
        // Largest weight first, ties to the lower token: a total order, so the result does
        // not depend on the selection algorithm.
        let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if let Some(k) = cfg.top_k {
            if k < c.len() {
                c.select_nth_unstable_by(k - 1, order);
                c.truncate(k);
            }
        }
        if let Some(p) = cfg.top_p.filter(|&p| p < 1.0) {
            let total: f64 = c.iter().map(|x| x.0 as f64).sum();
            let target = p as f64 * total;
            // Sort only as many of the largest as the nucleus needs.
            let mut m = 64.min(c.len());
            loop {
                if m < c.len() {
                    c.select_nth_unstable_by(m - 1, order);
                }
                c[..m].sort_unstable_by(order);
                let mut cum = 0.0;
                let mut keep = None;
                for (i, x) in c[..m].iter().enumerate() {
                    cum += x.0 as f64;
                    if cum >= target {
                        keep = Some(i + 1);
                        break;
                    }
                }
                match keep {
                    Some(n) => {
                        c.truncate(n);
                        break;
                    }
                    None if m == c.len() => break, // rounding: keep everything
                    None => m = (m * 4).min(c.len()),
                }
            }
        }
        let total: f64 = c.iter().map(|x| x.0 as f64).sum();
        let mut u = self.rng.gen::<f64>() * total;
        for &(w, tok) in c.iter() {
            u -= w as f64;
            if u < 0.0 {
                return tok;
            }
        }
        // u landed on the total by rounding: the last candidate with weight.
        c.iter().rev().find(|x| x.0 > 0.0).unwrap_or(&c[0]).1
    }
}

/// The index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Generates up to `max_new_tokens` after `prompt_ids` and returns them (without the
/// prompt). `on_token` sees each new token as it is chosen and returns whether to go on.
/// Generation also ends before `stop_token` (which is not returned) and when the context
/// is full: after `max_seq_length` tokens have been fed, one last token can be predicted.
pub fn generate(
    decoder: &Decoder,
    prompt_ids: &[u32],
    max_new_tokens: usize,
    config: &SamplingConfig,
    mut on_token: impl FnMut(u32) -> bool,
    stop_token: Option<u32>,
) -> Result<Vec<u32>, DecodeError> {
    let mut sampler = Sampler::new(config)?;
    let mut state = decoder.new_state();
    let mut out = Vec::with_capacity(max_new_tokens);
    decoder.prefill(&mut state, prompt_ids)?;
    if max_new_tokens == 0 {
        return Ok(out);
    }
    let context = decoder.config().max_seq_length;
    loop {
        let token = sampler.sample(state.logits());
        if Some(token) == stop_token {
            break;
        }
        out.push(token);
        if !on_token(token) || out.len() == max_new_tokens || state.position() == context {
            break;
        }
        decoder.step(&mut state, token)?;
    }
    Ok(out)
}
