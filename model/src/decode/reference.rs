//! A naive full-sequence forward pass in f64, written line by line from the equations of
//! docs/MODEL.md. It is deliberately simple and slow: the ground truth that the recurrent
//! decoder and the dfdx training forward are both checked against.

use super::decoder::DecodeError;
use super::weights::Weights;

/// Logits `[T][V]` for every position of `tokens`, computed in f64.
pub fn forward(weights: &Weights, tokens: &[u32]) -> Result<Vec<Vec<f64>>, DecodeError> {
    let c = weights.config();
    let (v, d, n, k) = (
        c.vocab_size,
        c.hidden_size,
        c.ssm_state_size,
        c.ssm_conv_kernel,
    );
    let di = c.d_inner();
    let eps = c.layer_norm_eps;
    if tokens.len() > c.max_seq_length {
        return Err(DecodeError::ContextFull {
            max_seq_length: c.max_seq_length,
        });
    }
    for (position, &token) in tokens.iter().enumerate() {
        if token as usize >= v {
            return Err(DecodeError::TokenOutOfRange {
                token,
                position,
                vocab_size: v,
            });
        }
    }
    let t_len = tokens.len();
    let w = |name: &str| weights.get(name);

    // e_t = embed[tok_t] + pos_embed[t]
    let embed = w("embed.weight");
    let pos = w("pos_embed.weight");
    let mut e: Vec<Vec<f64>> = tokens
        .iter()
        .enumerate()
        .map(|(t, &tok)| {
            (0..d)
                .map(|i| embed[tok as usize * d + i] as f64 + pos[t * d + i] as f64)
                .collect()
        })
        .collect();

    for l in 0..c.num_layers {
        let p = |name: &str| format!("layers.{l}.{name}");
        // --- SSM sub-block ---
        let mut x = vec![vec![0.0; di]; t_len];
        let mut g = vec![vec![0.0; di]; t_len];
        for t in 0..t_len {
            let a = layer_norm(&e[t], w(&p("ssm_norm.weight")), w(&p("ssm_norm.bias")), eps);
            let xg = linear(
                w(&p("ssm.in_proj.weight")),
                Some(w(&p("ssm.in_proj.bias"))),
                &a,
            );
            x[t].copy_from_slice(&xg[..di]);
            g[t].copy_from_slice(&xg[di..]);
        }
        let conv_w = w(&p("ssm.conv.weight"));
        let conv_b = w(&p("ssm.conv.bias"));
        let a_log = w(&p("ssm.A_log"));
        let b_mat = w(&p("ssm.B"));
        let c_mat = w(&p("ssm.C"));
        let d_vec = w(&p("ssm.D"));
        let big_a: Vec<f64> = a_log.iter().map(|&al| -(al as f64).exp()).collect();
        let mut h = vec![0.0f64; n];
        for t in 0..t_len {
            // c_t = conv.bias + sum_{j<K} conv.weight[:, j] * x_{t-K+1+j}   (zero pad)
            let mut u = vec![0.0f64; di];
            for ch in 0..di {
                let mut acc = conv_b[ch] as f64;
                for j in 0..k {
                    let src = t as isize - k as isize + 1 + j as isize;
                    if src >= 0 {
                        acc += conv_w[ch * k + j] as f64 * x[src as usize][ch];
                    }
                }
                u[ch] = silu(acc);
            }
            // dt_t = mean_over_Di(softplus(dt_proj(u_t)))
            let dt_raw = linear(
                w(&p("ssm.dt_proj.weight")),
                Some(w(&p("ssm.dt_proj.bias"))),
                &u,
            );
            let dt = dt_raw.iter().map(|&z| softplus(z)).sum::<f64>() / di as f64;
            // h_t = exp(dt * A) * h_{t-1} + dt * (B u_t)
            let bu = linear(b_mat, None, &u);
            for s in 0..n {
                h[s] = (dt * big_a[s]).exp() * h[s] + dt * bu[s];
            }
            // y_t = C h_t + D * u_t;  e_t += out_proj(y_t * SiLU(g_t))
            let ch_ = linear(c_mat, None, &h);
            let gated: Vec<f64> = (0..di)
                .map(|i| (ch_[i] + d_vec[i] as f64 * u[i]) * silu(g[t][i]))
                .collect();
            let out = linear(
                w(&p("ssm.out_proj.weight")),
                Some(w(&p("ssm.out_proj.bias"))),
                &gated,
            );
            for i in 0..d {
                e[t][i] += out[i];
            }
        }
        // --- feed-forward sub-block ---
        for e_t in e.iter_mut() {
            let b = layer_norm(e_t, w(&p("ffn_norm.weight")), w(&p("ffn_norm.bias")), eps);
            let f = if c.is_moe_layer(l) {
                let logits = linear(w(&p("moe.router.weight")), None, &b);
                let chosen = top_k_indices(&logits, c.top_k_experts);
                let max = chosen
                    .iter()
                    .map(|&i| logits[i])
                    .fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = chosen.iter().map(|&i| (logits[i] - max).exp()).sum();
                let mut f = vec![0.0; d];
                for &ex in &chosen {
                    let gate = (logits[ex] - max).exp() / z;
                    let y = ffn(weights, &p(&format!("moe.experts.{ex}")), &b);
                    for i in 0..d {
                        f[i] += gate * y[i];
                    }
                }
                f
            } else {
                ffn(weights, &p("ffn"), &b)
            };
            for i in 0..d {
                e_t[i] += f[i];
            }
        }
    }
    let head = weights.head();
    Ok(e.iter()
        .map(|e_t| {
            let z = layer_norm(e_t, w("final_norm.weight"), w("final_norm.bias"), eps);
            linear(head, None, &z)
        })
        .collect())
}

/// Indices of the `k` largest values, largest first; ties go to the lower index.
pub fn top_k_indices(values: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// down(GELU(up(b))) with exact erf GELU.
fn ffn(weights: &Weights, prefix: &str, b: &[f64]) -> Vec<f64> {
    let up = linear(
        weights.get(&format!("{prefix}.up.weight")),
        Some(weights.get(&format!("{prefix}.up.bias"))),
        b,
    );
    let hidden: Vec<f64> = up
        .iter()
        .map(|&z| 0.5 * z * (1.0 + libm::erf(z / std::f64::consts::SQRT_2)))
        .collect();
    linear(
        weights.get(&format!("{prefix}.down.weight")),
        Some(weights.get(&format!("{prefix}.down.bias"))),
        &hidden,
    )
}

/// `W x + b` for `W` stored `[out, in]` row-major (out = len(W) / len(x)).
fn linear(w: &[f32], b: Option<&[f32]>, x: &[f64]) -> Vec<f64> {
    let cols = x.len();
    (0..w.len() / cols)
        .map(|o| {
            let row = &w[o * cols..(o + 1) * cols];
            let dot: f64 = row.iter().zip(x).map(|(&wi, &xi)| wi as f64 * xi).sum();
            dot + b.map_or(0.0, |b| b[o] as f64)
        })
        .collect()
}

fn layer_norm(x: &[f64], w: &[f32], b: &[f32], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    x.iter()
        .zip(w.iter().zip(b))
        .map(|(v, (&wi, &bi))| (v - mean) * inv * wi as f64 + bi as f64)
        .collect()
}

fn silu(z: f64) -> f64 {
    z / (1.0 + (-z).exp())
}

fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}
