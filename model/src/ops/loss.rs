//! The ends of the graph: token + position embedding (with dropout), the tied LM head
//! fused with softmax cross-entropy, and the weighted sum of scalar losses.

use super::matmul::gemm_new;
use super::{assume_filled, custom_op, dims, par_rows, uninit, Dropout, Var};
use crate::isa::{vectorized, vectorized_with};
use crate::real::{lane_max, lane_sum, Real};
use dfdx::prelude::{Cpu, Tape};
use rayon::prelude::*;

/// `x[b*T + t] = dropout(embed[tok] + pos[t])` for `tokens` of `tokens.len() / seq`
/// sequences of length `seq`; `embed: (V, D)`, `pos: (S, D)` with `seq <= S`.
/// Token ids must be `< V` (checked by the caller).
pub fn embed<E: Real, T: Tape<E, Cpu>>(
    emb: Var<E, T>,
    pos: Var<E, T>,
    tokens: Vec<u32>,
    seq: usize,
    dropout: Option<Dropout>,
) -> Var<E, T> {
    let (v, d) = dims(&emb);
    let (s, d2) = dims(&pos);
    assert_eq!(d, d2, "embed: widths differ");
    assert!(
        seq > 0 && seq <= s && tokens.len().is_multiple_of(seq),
        "embed: sequence length {seq}"
    );
    assert!(
        tokens.iter().all(|&t| (t as usize) < v),
        "embed: token id out of range"
    );
    let m = tokens.len();
    let tokens = std::sync::Arc::new(tokens);
    let tok2 = tokens.clone();
    custom_op(
        "embed",
        vec![emb, pos],
        (m, d),
        |w| {
            let (e, p) = (w[0], w[1]);
            let mut x = uninit(m * d);
            par_rows(
                &mut x,
                d,
                #[inline(always)]
                |r, xr| {
                    let (tok, t) = (tokens[r] as usize, r % seq);
                    for j in 0..d {
                        let s = dropout.map_or(E::one(), |p| p.scale(r * d + j));
                        xr[j].write(s * (e[tok * d + j] + p[t * d + j]));
                    }
                },
            );
            // SAFETY: every row of `d` elements is written index by index.
            (unsafe { assume_filled(x) }, ())
        },
        move |a, ()| {
            let (ge, gp) = a.grads.split_at_mut(1);
            // The gradient reaching the sum `emb + pos`: through the dropout mask, each
            // mask value computed once for both uses.
            let scaled;
            let gx: &[E] = match dropout {
                None => a.grad_out,
                Some(p) => {
                    let g = a.grad_out;
                    let mut s = uninit(m * d);
                    par_rows(
                        &mut s,
                        d,
                        #[inline(always)]
                        |r, sr| {
                            for (j, o) in sr[..d].iter_mut().enumerate() {
                                o.write(p.scale::<E>(r * d + j) * g[r * d + j]);
                            }
                        },
                    );
                    // SAFETY: every row of `d` elements is written index by index.
                    scaled = unsafe { assume_filled(s) };
                    &scaled
                }
            };
            // Position rows in parallel (each sums over its sequences in order).
            gp[0].acc()[..seq * d]
                .par_chunks_mut(d)
                .enumerate()
                .for_each(|(t, g)| {
                    vectorized(
                        #[inline(always)]
                        || {
                            let g = &mut g[..d];
                            for r in (t..m).step_by(seq) {
                                for (g, &v) in g.iter_mut().zip(&gx[r * d..][..d]) {
                                    *g += v;
                                }
                            }
                        },
                    )
                });
            // Token rows: each token present in the batch gets one row of sums (rows in
            // token order, added in batch order), then added to the embedding's gradient;
            // the columns are split between threads. Tokens absent from the batch get
            // nothing (adding zeros would change no value).
            let mut slot = vec![u32::MAX; v];
            let mut present: Vec<usize> = Vec::new();
            for &t in tok2.iter() {
                let t = t as usize;
                if slot[t] == u32::MAX {
                    slot[t] = present.len() as u32;
                    present.push(t);
                }
            }
            let ge = ge[0].acc();
            let cols = d.div_ceil(rayon::current_num_threads().max(1)).max(1);
            let mut parts: Vec<(usize, Vec<E>)> = (0..d)
                .step_by(cols)
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|c0| {
                    let c1 = (c0 + cols).min(d);
                    let w = c1 - c0;
                    let mut acc = vec![E::zero(); present.len() * w];
                    vectorized(
                        #[inline(always)]
                        || {
                            for r in 0..m {
                                let k = slot[tok2[r] as usize] as usize;
                                let src = &gx[r * d + c0..][..w];
                                for (o, &g) in acc[k * w..][..w].iter_mut().zip(src) {
                                    *o += g;
                                }
                            }
                        },
                    );
                    (c0, acc)
                })
                .collect();
            for (c0, acc) in parts.drain(..) {
                let w = acc.len() / present.len().max(1);
                for (k, &tok) in present.iter().enumerate() {
                    for j in 0..w {
                        ge[tok * d + c0 + j] += acc[k * w + j];
                    }
                }
            }
        },
    )
}

/// Mean cross-entropy of `logits = h W^T` (`h: (M, D)`, `w: (V, D)`, the tied embedding
/// or the LM head) against `targets` (length `M`), as a `(1, 1)` tensor. The softmax
/// and its gradient `(softmax - onehot) / M` are computed in the forward pass; the
/// `(M, V)` logits never enter the graph.
pub fn head_cross_entropy<E: Real, T: Tape<E, Cpu>>(
    h: Var<E, T>,
    w: Var<E, T>,
    targets: Vec<u32>,
) -> Var<E, T> {
    let (m, d) = dims(&h);
    let (v, d2) = dims(&w);
    assert_eq!(d, d2, "head: widths differ");
    assert_eq!(targets.len(), m, "head: one target per row");
    assert!(
        targets.iter().all(|&t| (t as usize) < v),
        "head: target id out of range"
    );
    let grad = T::OWNS_TAPE;
    custom_op(
        "head_cross_entropy",
        vec![h, w],
        (1, 1),
        |x| {
            let mut logits = gemm_new(m, v, d, x[0], false, x[1], true);
            let mut nll = vec![0.0f64; m];
            let inv_m = E::of(1.0 / m as f64);
            logits
                .par_chunks_mut(v)
                .zip(nll.par_iter_mut())
                .enumerate()
                .for_each(|(r, (row, nll))| {
                    vectorized_with(
                        #[inline(always)]
                        |ma| {
                            let max = lane_max(row);
                            let tgt = targets[r] as usize;
                            let target_logit = row[tgt].f64();
                            for z in row.iter_mut() {
                                *z = (*z - max).fast_exp(ma);
                            }
                            let sum = lane_sum(row).f64();
                            *nll = sum.ln() + max.f64() - target_logit;
                            if grad {
                                // Row becomes (softmax - onehot) / M: the gradient w.r.t. the logits.
                                let scale = E::of(1.0 / sum) * inv_m;
                                for z in row.iter_mut() {
                                    *z *= scale;
                                }
                                row[tgt] -= inv_m;
                            }
                        },
                    )
                });
            let mean = nll.iter().sum::<f64>() / m as f64;
            (vec![E::of(mean)], logits)
        },
        move |a, dlogits| {
            let (h, w) = (a.inputs[0], a.inputs[1]);
            // The incoming gradient (a micro-batch's share, or 1) scales inside the products.
            let go = a.grad_out[0];
            let dl = dlogits;
            let (gh, gw) = a.grads.split_at_mut(1);
            gh[0].gemm(m, d, v, &dl, false, w, false, go);
            gw[0].gemm_tn(v, d, m, &dl, h, go);
        },
    )
}

/// `sum_i weights[i] * losses[i]` of `(1, 1)` losses, as the scalar the backward starts from.
pub fn weighted_sum<E: Real, T: Tape<E, Cpu>>(
    losses: Vec<Var<E, T>>,
    weights: Vec<f64>,
) -> Var<E, T, ()> {
    assert_eq!(
        losses.len(),
        weights.len(),
        "weighted_sum: one weight per loss"
    );
    let w2 = weights.clone();
    custom_op(
        "weighted_sum",
        losses,
        (),
        move |v| {
            (
                vec![v.iter().zip(&weights).map(|(l, &w)| E::of(w) * l[0]).sum()],
                (),
            )
        },
        move |a, ()| {
            for (g, &w) in a.grads.iter_mut().zip(&w2) {
                g.acc()[0] += E::of(w) * a.grad_out[0];
            }
        },
    )
}
