//! Choosing the next token from logits (greedy, temperature, top-k, top-p, seeded with
//! ChaCha) and the generation loop over a [`Decoder`].

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::decoder::{DecodeError, Decoder};
use super::fastmath;
use super::kernels::Isa;

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
    /// (weight, token) of the candidates when they are a subset of the vocabulary.
    candidates: Vec<(f32, u32)>,
    /// Unnormalized probabilities of the whole vocabulary.
    weights: Vec<f32>,
    isa: Isa,
}

/// Largest weight first, ties to the lower token: a total order, so results do not depend
/// on the selection algorithm.
fn order(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// The `m` largest `values` as (value, index), in no particular order: one pass that keeps
/// only values at or above the running m-th largest.
fn largest(values: &[f32], m: usize, out: &mut Vec<(f32, u32)>) {
    out.clear();
    let cap = 2 * m.max(32);
    let mut threshold = f32::NEG_INFINITY;
    for (c, chunk) in values.chunks(16).enumerate() {
        // Most chunks hold nothing at or above the threshold: one vectorized test skips them.
        if !chunk.iter().fold(false, |any, &v| any | (v >= threshold)) {
            continue;
        }
        for (j, &v) in chunk.iter().enumerate() {
            if v >= threshold {
                out.push((v, (c * 16 + j) as u32));
                if out.len() == cap {
                    out.select_nth_unstable_by(m - 1, order);
                    out.truncate(m);
                    threshold = out.iter().fold(f32::INFINITY, |t, x| t.min(x.0));
                }
            }
        }
    }
    if out.len() > m {
        out.select_nth_unstable_by(m - 1, order);
        out.truncate(m);
    }
}

/// Sum in f64 over 8 interleaved partial sums (vectorizes, unlike an ordered sum).
#[inline(always)]
fn sum_f64(xs: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += x as f64;
        }
    }
    lanes.iter().sum::<f64>() + chunks.remainder().iter().map(|&x| x as f64).sum::<f64>()
}

impl Sampler {
    pub fn new(config: &SamplingConfig) -> Result<Self, DecodeError> {
        config.check()?;
        Ok(Self {
            config: config.clone(),
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            candidates: Vec::new(),
            weights: Vec::new(),
            isa: Isa::detect(),
        })
    }

    /// The next token for `logits` (which must not be empty).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx512` is only chosen after runtime feature detection.
            Isa::Avx512 => unsafe { self.sample_avx512(logits) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2` is only chosen after runtime feature detection.
            Isa::Avx2 => unsafe { self.sample_avx2(logits) },
            _ => self.sample_body(logits),
        }
    }

    /// The sampler compiled for AVX-512 so the passes over the vocabulary vectorize.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn sample_avx512(&mut self, logits: &[f32]) -> u32 {
        self.sample_body(logits)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn sample_avx2(&mut self, logits: &[f32]) -> u32 {
        self.sample_body(logits)
    }

    #[inline(always)]
    fn sample_body(&mut self, logits: &[f32]) -> u32 {
        let cfg = &self.config;
        if cfg.temperature == 0.0 || cfg.top_k == Some(1) {
            return argmax(logits);
        }
        let inv_t = 1.0 / cfg.temperature;
        let top_p = cfg.top_p.filter(|&p| p < 1.0);
        let c = &mut self.candidates;
        // Either a candidate list (top-k, top-p) or the whole vocabulary's weights.
        let subset = if let Some(k) = cfg.top_k.filter(|&k| k < logits.len()) {
            largest(logits, k, c);
            let max = c.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.0));
            c.iter_mut()
                .for_each(|x| x.0 = fastmath::exp((x.0 - max) * inv_t));
            if let Some(p) = top_p {
                c.sort_unstable_by(order);
                nucleus(c, p as f64 * c.iter().map(|x| x.0 as f64).sum::<f64>());
            }
            true
        } else {
            let max = logits[argmax(logits) as usize];
            self.weights.resize(logits.len(), 0.0);
            for (w, &l) in self.weights.iter_mut().zip(logits) {
                *w = fastmath::exp((l - max) * inv_t);
            }
            if let Some(p) = top_p {
                let target = p as f64 * sum_f64(&self.weights);
                // Sort only as many of the largest as the nucleus needs.
                let mut m = 64.min(logits.len());
                loop {
                    largest(&self.weights, m, c);
                    let mass: f64 = c.iter().map(|x| x.0 as f64).sum();
                    if mass >= target || m == logits.len() {
                        c.sort_unstable_by(order);
                        nucleus(c, target);
                        break;
                    }
                    m = (m * 2).min(logits.len());
                }
                true
            } else {
                false
            }
        };
        if subset {
            let total: f64 = c.iter().map(|x| x.0 as f64).sum();
            let u = self.rng.gen::<f64>() * total;
            draw(c.iter().map(|x| (x.0, x.1)), u)
        } else {
            let w = &self.weights;
            let mut u = self.rng.gen::<f64>() * sum_f64(w);
            // Skip whole chunks by their (vectorized) sums, then walk the chunk that holds u.
            const CHUNK: usize = 64;
            let mut start = 0;
            while start + CHUNK < w.len() {
                let mass = sum_f64(&w[start..start + CHUNK]);
                if u < mass {
                    break;
                }
                u -= mass;
                start += CHUNK;
            }
            let end = (start + CHUNK).min(w.len());
            let chunk = w[start..end].iter().enumerate();
            draw(chunk.map(|(i, &x)| (x, (start + i) as u32)), u)
        }
    }
}

/// Keeps the shortest prefix of `sorted` (largest first) whose weights reach `target`.
fn nucleus(sorted: &mut Vec<(f32, u32)>, target: f64) {
    let mut cum = 0.0;
    for i in 0..sorted.len() {
        cum += sorted[i].0 as f64;
        if cum >= target {
            sorted.truncate(i + 1);
            return;
        }
    }
}

/// The candidate where the running sum of weights passes `u` (in [0, total)).
fn draw(candidates: impl Iterator<Item = (f32, u32)>, mut u: f64) -> u32 {
    let mut last = None;
    for (w, tok) in candidates {
        if w > 0.0 {
            last = Some(tok);
        }
        u -= w as f64;
        if u < 0.0 {
            return tok;
        }
    }
    // u landed on the total by rounding: the last candidate with weight.
    last.unwrap_or(0)
}

/// The index of the largest logit (the first one on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    // One pass that vectorizes: per lane the largest value and where it was first seen.
    let mut best = [f32::NEG_INFINITY; 16];
    let mut at = [0u32; 16];
    let mut chunks = logits.chunks_exact(16);
    for (c, chunk) in (&mut chunks).enumerate() {
        for l in 0..16 {
            let take = chunk[l] > best[l];
            best[l] = if take { chunk[l] } else { best[l] };
            at[l] = if take { (c * 16 + l) as u32 } else { at[l] };
        }
    }
    let base = logits.len() - chunks.remainder().len();
    let tail = chunks
        .remainder()
        .iter()
        .enumerate()
        .map(|(i, &v)| (v, (base + i) as u32));
    let mut winner = (f32::NEG_INFINITY, 0u32);
    for (v, i) in best.iter().copied().zip(at).chain(tail) {
        if v > winner.0 || (v == winner.0 && i < winner.1) {
            winner = (v, i);
        }
    }
    winner.1
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
