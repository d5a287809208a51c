//! The recurrent decoder: one token at a time with O(1) state per layer (the last K-1
//! conv inputs and the SSM state `h`), weights packed for the matvec kernels in f32 or
//! f16, only the top-k experts evaluated, and no allocation per step. Equations follow
//! docs/MODEL.md; `reference::forward` is the full-sequence ground truth it is tested
//! against.

use super::fastmath;
use super::kernels::{Arith, Isa, PackedMatrix};
use super::weights::Weights;
use crate::config::ModelConfig;
use crate::quant::Quantized;

/// Why a decoding call was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// A token id is not in the vocabulary.
    #[error("token {token} at position {position} is outside the vocabulary (0..{vocab_size}); was the text tokenized with this model's tokenizer?")]
    TokenOutOfRange {
        token: u32,
        position: usize,
        vocab_size: usize,
    },
    /// The sequence reached the model's context length.
    #[error("the sequence is longer than the model's context of {max_seq_length} tokens (max_seq_length); shorten the prompt or reset the state")]
    ContextFull { max_seq_length: usize },
    /// Generation or prefill was given no tokens.
    #[error("the prompt is empty: give at least one token (e.g. the tokenizer's beginning-of-text token)")]
    EmptyPrompt,
    /// A sampling setting is out of range.
    #[error("invalid sampling setting {field}: {message}")]
    InvalidSampling {
        field: &'static str,
        message: String,
    },
}

/// How the decoder stores weights and computes matvecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 weights, f32 arithmetic.
    F32,
    /// f16 weights (half the memory traffic), upcast to f32 inside the matvec. In both f16
    /// modes every parameter takes its f16 value, exactly as in a half-converted checkpoint.
    F16,
    /// f16 weights with f16 arithmetic in the matvecs (f16 inputs and accumulators); the
    /// rest of the step (norms, scan, activations) stays f32. Without AVX512-FP16 (e.g. on
    /// AMD Zen 4) the f16 rounding is emulated with F16C: this mode then shows the accuracy
    /// of f16 arithmetic, and is slower than [`Precision::F16`].
    F16Native,
}

struct Linear {
    w: PackedMatrix,
    b: Option<Vec<f32>>,
}

struct Expert {
    up: Linear,
    down: Linear,
}

enum FeedForward {
    Plain(Expert),
    Moe {
        router: Linear,
        experts: Vec<Expert>,
    },
}

struct Layer {
    ssm_norm: (Vec<f32>, Vec<f32>),
    in_proj: Linear,
    /// Conv weights transposed to `[K][Di]`.
    conv_w: Vec<f32>,
    conv_b: Vec<f32>,
    dt_proj: Linear,
    /// A = -exp(A_log).
    a: Vec<f32>,
    b: Linear,
    c: Linear,
    d: Vec<f32>,
    out_proj: Linear,
    ffn_norm: (Vec<f32>, Vec<f32>),
    ffn: FeedForward,
}

/// An embedding table: f32 rows, or quantized rows widened one at a time on lookup.
enum Table {
    Dense(Vec<f32>),
    Quantized(Quantized),
}

impl Table {
    /// `out = row r` (`d` values).
    fn row_into(&self, r: usize, d: usize, out: &mut [f32]) {
        match self {
            Table::Dense(v) => out.copy_from_slice(&v[r * d..(r + 1) * d]),
            Table::Quantized(q) => q.row_into(r, out),
        }
    }

    /// `out += row r`, using `scratch` (`d` values) for a quantized row.
    fn add_row(&self, r: usize, d: usize, out: &mut [f32], scratch: &mut [f32]) {
        let row: &[f32] = match self {
            Table::Dense(v) => &v[r * d..(r + 1) * d],
            Table::Quantized(q) => {
                q.row_into(r, scratch);
                scratch
            }
        };
        for (o, &x) in out.iter_mut().zip(row) {
            *o += x;
        }
    }
}

/// Weights prepared for fast batch-1 decoding.
pub struct Decoder {
    config: ModelConfig,
    precision: Precision,
    isa: Isa,
    embed: Table,
    pos_embed: Table,
    layers: Vec<Layer>,
    final_norm: (Vec<f32>, Vec<f32>),
    head: PackedMatrix,
}

/// The recurrent state of one sequence plus the step's scratch buffers; made by
/// [`Decoder::new_state`] and only valid with decoders of the same model config.
pub struct State {
    position: usize,
    /// Per layer: the last K-1 conv inputs `[K-1][Di]`, oldest first.
    conv: Vec<Vec<f32>>,
    /// Per layer: the SSM state `[N]`.
    h: Vec<Vec<f32>>,
    e: Vec<f32>,
    normed: Vec<f32>,
    xg: Vec<f32>,
    u: Vec<f32>,
    dt: Vec<f32>,
    y: Vec<f32>,
    bu: Vec<f32>,
    d_out: Vec<f32>,
    ffn_acc: Vec<f32>,
    hidden: Vec<f32>,
    router: Vec<f32>,
    chosen: Vec<usize>,
    logits: Vec<f32>,
}

impl State {
    /// Tokens consumed so far (the position of the next token).
    pub fn position(&self) -> usize {
        self.position
    }

    /// Back to the empty sequence (keeps the buffers).
    pub fn reset(&mut self) {
        self.position = 0;
        self.conv.iter_mut().for_each(|c| c.fill(0.0));
        self.h.iter_mut().for_each(|h| h.fill(0.0));
    }

    /// Logits after the last step (zeros before the first).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
}

impl Decoder {
    /// Packs `weights` for decoding at `precision`, with the best kernels this CPU has.
    pub fn new(weights: &Weights, precision: Precision) -> Self {
        Self::with_isa(weights, precision, Isa::detect())
    }

    /// As [`Decoder::new`] with a given instruction set (lowered to what the CPU supports);
    /// for tests and benchmarks of the portable paths.
    pub fn with_isa(weights: &Weights, precision: Precision, isa: Isa) -> Self {
        let c = weights.config().clone();
        let half = precision != Precision::F32;
        // In f16 modes every parameter takes its f16 value, as in a half-converted checkpoint.
        let vec = |name: &str| -> Vec<f32> {
            let v = weights.values(name).unwrap_or_else(|| {
                panic!("`{name}` is not a tensor of this config (weights are validated on construction)")
            });
            if half && weights.quantized(name).is_none() {
                v.iter().map(|&x| super::kernels::round_f16(x)).collect()
            } else {
                v.into_owned()
            }
        };
        // Quantized matrices are packed as they are stored; the others as f32 or f16.
        let mat = |name: &str| match weights.quantized(name) {
            Some(q) => PackedMatrix::pack_quantized(q),
            None => {
                let t = weights.required(name);
                PackedMatrix::pack(&t.data, t.shape[0], t.shape[1], half)
            }
        };
        let table = |name: &str| match weights.quantized(name) {
            Some(q) => Table::Quantized(q.clone()),
            None => Table::Dense(vec(name)),
        };
        let linear = |w: &str, b: Option<&str>| Linear {
            w: mat(w),
            b: b.map(&vec),
        };
        let (di, k) = (c.d_inner(), c.ssm_conv_kernel);
        let norm = |p: &str| (vec(&format!("{p}.weight")), vec(&format!("{p}.bias")));
        let layers = (0..c.num_layers)
            .map(|l| {
                let p = |n: &str| format!("layers.{l}.{n}");
                let lin = |n: &str, bias: bool| {
                    linear(
                        &p(&format!("{n}.weight")),
                        bias.then(|| p(&format!("{n}.bias"))).as_deref(),
                    )
                };
                let expert = |prefix: String| Expert {
                    up: lin(&format!("{prefix}.up"), true),
                    down: lin(&format!("{prefix}.down"), true),
                };
                let conv = vec(&p("ssm.conv.weight"));
                let mut conv_w = vec![0.0; k * di];
                for ch in 0..di {
                    for j in 0..k {
                        conv_w[j * di + ch] = conv[ch * k + j];
                    }
                }
                Layer {
                    ssm_norm: norm(&p("ssm_norm")),
                    in_proj: lin("ssm.in_proj", true),
                    conv_w,
                    conv_b: vec(&p("ssm.conv.bias")),
                    dt_proj: lin("ssm.dt_proj", true),
                    a: vec(&p("ssm.A_log")).iter().map(|&x| -x.exp()).collect(),
                    b: linear(&p("ssm.B"), None),
                    c: linear(&p("ssm.C"), None),
                    d: vec(&p("ssm.D")),
                    out_proj: lin("ssm.out_proj", true),
                    ffn_norm: norm(&p("ffn_norm")),
                    ffn: if c.is_moe_layer(l) {
                        FeedForward::Moe {
                            router: linear(&p("moe.router.weight"), None),
                            experts: (0..c.num_experts)
                                .map(|e| expert(format!("moe.experts.{e}")))
                                .collect(),
                        }
                    } else {
                        FeedForward::Plain(expert("ffn".to_owned()))
                    },
                }
            })
            .collect();
        let head_name = if c.tie_embeddings {
            "embed.weight"
        } else {
            "lm_head.weight"
        };
        Self {
            precision,
            isa: isa.or_supported(),
            embed: table("embed.weight"),
            pos_embed: table("pos_embed.weight"),
            layers,
            final_norm: norm("final_norm"),
            head: mat(head_name),
            config: c,
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The instruction set the kernels run with.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Bytes of packed matrices streamed per token (all experts counted once).
    pub fn weight_bytes(&self) -> usize {
        let lin = |l: &Linear| l.w.bytes();
        let mut total = self.head.bytes();
        for layer in &self.layers {
            total += lin(&layer.in_proj) + lin(&layer.dt_proj) + lin(&layer.b) + lin(&layer.c);
            total += lin(&layer.out_proj);
            total += match &layer.ffn {
                FeedForward::Plain(e) => lin(&e.up) + lin(&e.down),
                FeedForward::Moe { router, experts } => {
                    lin(router)
                        + experts
                            .iter()
                            .map(|e| lin(&e.up) + lin(&e.down))
                            .sum::<usize>()
                }
            };
        }
        total
    }

    /// A fresh state at position 0.
    pub fn new_state(&self) -> State {
        let c = &self.config;
        let (d, di, n) = (c.hidden_size, c.d_inner(), c.ssm_state_size);
        let hidden = c.ffn_size().max(c.expert_size);
        State {
            position: 0,
            conv: vec![vec![0.0; (c.ssm_conv_kernel - 1) * di]; c.num_layers],
            h: vec![vec![0.0; n]; c.num_layers],
            e: vec![0.0; d],
            normed: vec![0.0; d],
            xg: vec![0.0; 2 * di],
            u: vec![0.0; di],
            dt: vec![0.0; di],
            y: vec![0.0; di],
            bu: vec![0.0; n],
            d_out: vec![0.0; d],
            ffn_acc: vec![0.0; d],
            hidden: vec![0.0; hidden],
            router: vec![0.0; c.num_experts],
            chosen: Vec::with_capacity(c.top_k_experts),
            logits: vec![0.0; c.vocab_size],
        }
    }

    /// Feeds one token and returns the logits for the next one.
    pub fn step<'s>(&self, state: &'s mut State, token: u32) -> Result<&'s [f32], DecodeError> {
        self.advance(state, token, true)?;
        Ok(&state.logits)
    }

    /// Feeds `tokens` in order and returns the logits after the last one (the output head
    /// runs only for that token).
    pub fn prefill<'s>(
        &self,
        state: &'s mut State,
        tokens: &[u32],
    ) -> Result<&'s [f32], DecodeError> {
        let Some((&last, rest)) = tokens.split_last() else {
            return Err(DecodeError::EmptyPrompt);
        };
        for &t in rest {
            self.advance(state, t, false)?;
        }
        self.advance(state, last, true)?;
        Ok(&state.logits)
    }

    /// Sum of the next-token negative log-likelihoods (nats) of `tokens[1..]` given their
    /// prefixes, and how many were scored, decoding from an empty state.
    pub fn score(&self, tokens: &[u32]) -> Result<(f64, usize), DecodeError> {
        let mut state = self.new_state();
        let mut nll = 0.0;
        for (i, pair) in tokens.windows(2).enumerate() {
            let logits = self.step(&mut state, pair[0])?;
            let target = pair[1] as usize;
            if target >= logits.len() {
                return Err(DecodeError::TokenOutOfRange {
                    token: pair[1],
                    position: i + 1,
                    vocab_size: logits.len(),
                });
            }
            let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
            let z: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
            nll += max + z.ln() - logits[target] as f64;
        }
        Ok((nll, tokens.len().saturating_sub(1)))
    }

    fn advance(&self, state: &mut State, token: u32, head: bool) -> Result<(), DecodeError> {
        let c = &self.config;
        assert!(
            state.logits.len() == c.vocab_size
                && state.e.len() == c.hidden_size
                && state.u.len() == c.d_inner()
                && state.h.len() == c.num_layers
                && state.h[0].len() == c.ssm_state_size
                && state.conv[0].len() == (c.ssm_conv_kernel - 1) * c.d_inner(),
            "the State was made by a decoder of another model: use this decoder's new_state()"
        );
        if token as usize >= c.vocab_size {
            return Err(DecodeError::TokenOutOfRange {
                token,
                position: state.position,
                vocab_size: c.vocab_size,
            });
        }
        if state.position >= c.max_seq_length {
            return Err(DecodeError::ContextFull {
                max_seq_length: c.max_seq_length,
            });
        }
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx512` is only chosen after runtime feature detection.
            Isa::Avx512 => unsafe { self.advance_avx512(state, token as usize, head) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2` is only chosen after runtime feature detection.
            Isa::Avx2 => unsafe { self.advance_avx2(state, token as usize, head) },
            _ => self.advance_body(state, token as usize, head),
        }
        state.position += 1;
        Ok(())
    }

    /// The step compiled for AVX-512 so the elementwise loops vectorize 16-wide.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn advance_avx512(&self, state: &mut State, token: usize, head: bool) {
        self.advance_body(state, token, head)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn advance_avx2(&self, state: &mut State, token: usize, head: bool) {
        self.advance_body(state, token, head)
    }

    #[inline(always)]
    fn advance_body(&self, s: &mut State, token: usize, head: bool) {
        let c = &self.config;
        let (d, di, k) = (c.hidden_size, c.d_inner(), c.ssm_conv_kernel);
        let arith = match self.precision {
            Precision::F16Native => Arith::F16Native,
            _ => Arith::F32,
        };
        let isa = self.isa;
        let mv = |lin: &Linear, x: &[f32], y: &mut [f32]| {
            lin.w.matvec(isa, arith, x, lin.b.as_deref(), y)
        };
        let eps = c.layer_norm_eps as f32;
        // e_t = embed[tok] + pos_embed[t]
        let t = s.position;
        self.embed.row_into(token, d, &mut s.e);
        self.pos_embed.add_row(t, d, &mut s.e, &mut s.d_out);
        for (l, layer) in self.layers.iter().enumerate() {
            // --- SSM sub-block ---
            layer_norm(&s.e, &layer.ssm_norm, eps, &mut s.normed);
            mv(&layer.in_proj, &s.normed, &mut s.xg);
            let (x, g) = s.xg.split_at(di);
            // c_t = conv.bias + sum_j conv.weight[:, j] * x_{t-K+1+j};  u = SiLU(c)
            let window = &mut s.conv[l];
            s.u.copy_from_slice(&layer.conv_b);
            for j in 0..k - 1 {
                let w = &layer.conv_w[j * di..(j + 1) * di];
                let past = &window[j * di..(j + 1) * di];
                for ((u, &w), &p) in s.u.iter_mut().zip(w).zip(past) {
                    *u += w * p;
                }
            }
            let w_now = &layer.conv_w[(k - 1) * di..];
            for ((u, &w), &xv) in s.u.iter_mut().zip(w_now).zip(x) {
                *u = fastmath::silu(*u + w * xv);
            }
            if k > 1 {
                window.copy_within(di.., 0);
                window[(k - 2) * di..].copy_from_slice(x);
            }
            // dt = mean(softplus(dt_proj(u)))
            mv(&layer.dt_proj, &s.u, &mut s.dt);
            for z in s.dt.iter_mut() {
                *z = fastmath::softplus(*z);
            }
            let dt = fastmath::sum(&s.dt) / di as f32;
            // h = exp(dt A) h + dt (B u)
            mv(&layer.b, &s.u, &mut s.bu);
            let h = &mut s.h[l];
            for ((h, &a), &bu) in h.iter_mut().zip(&layer.a).zip(&s.bu) {
                *h = fastmath::exp(dt * a) * *h + dt * bu;
            }
            // y = C h + D u;  e += out_proj(y * SiLU(g))
            mv(&layer.c, h, &mut s.y);
            for (((y, &dv), &u), &g) in s.y.iter_mut().zip(&layer.d).zip(&s.u).zip(g) {
                *y = (*y + dv * u) * fastmath::silu(g);
            }
            mv(&layer.out_proj, &s.y, &mut s.d_out);
            for (e, &o) in s.e.iter_mut().zip(&s.d_out) {
                *e += o;
            }
            // --- feed-forward sub-block ---
            layer_norm(&s.e, &layer.ffn_norm, eps, &mut s.normed);
            match &layer.ffn {
                FeedForward::Plain(ffn) => {
                    let hidden = &mut s.hidden[..ffn.up.w.rows()];
                    mv(&ffn.up, &s.normed, hidden);
                    for v in hidden.iter_mut() {
                        *v = fastmath::gelu(*v);
                    }
                    mv(&ffn.down, hidden, &mut s.d_out);
                    for (e, &o) in s.e.iter_mut().zip(&s.d_out) {
                        *e += o;
                    }
                }
                FeedForward::Moe { router, experts } => {
                    mv(router, &s.normed, &mut s.router);
                    top_k(&s.router, c.top_k_experts, &mut s.chosen);
                    let max = s.router[s.chosen[0]];
                    let z: f32 = s.chosen.iter().map(|&i| (s.router[i] - max).exp()).sum();
                    s.ffn_acc.fill(0.0);
                    for &ex in &s.chosen {
                        let gate = (s.router[ex] - max).exp() / z;
                        let expert = &experts[ex];
                        let hidden = &mut s.hidden[..expert.up.w.rows()];
                        mv(&expert.up, &s.normed, hidden);
                        for v in hidden.iter_mut() {
                            *v = fastmath::gelu(*v);
                        }
                        mv(&expert.down, hidden, &mut s.d_out);
                        for (acc, &o) in s.ffn_acc.iter_mut().zip(&s.d_out) {
                            *acc += gate * o;
                        }
                    }
                    for (e, &f) in s.e.iter_mut().zip(&s.ffn_acc) {
                        *e += f;
                    }
                }
            }
        }
        if head {
            layer_norm(&s.e, &self.final_norm, eps, &mut s.normed);
            self.head.matvec(isa, arith, &s.normed, None, &mut s.logits);
        }
    }
}

/// Indices of the `k` largest router logits, largest first, ties to the lower index
/// (the order `reference::top_k_indices` uses).
fn top_k(values: &[f32], k: usize, out: &mut Vec<usize>) {
    out.clear();
    for _ in 0..k {
        let mut best: Option<usize> = None;
        for (i, &v) in values.iter().enumerate() {
            if out.contains(&i) {
                continue;
            }
            if best.is_none_or(|b| v > values[b]) {
                best = Some(i);
            }
        }
        out.push(best.expect("k <= number of experts (validated config)"));
    }
}

#[inline(always)]
fn layer_norm(x: &[f32], (w, b): &(Vec<f32>, Vec<f32>), eps: f32, out: &mut [f32]) {
    let n = x.len() as f32;
    let mean = fastmath::sum(x) / n;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v - mean) * (v - mean);
    }
    let var = fastmath::sum(out) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(w).zip(b) {
        *o = (v - mean) * inv * w + b;
    }
}
