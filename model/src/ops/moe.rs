//! Mixture-of-experts routing (Shazeer et al. 2017; Fedus et al. 2022, Switch Transformer):
//! top-k gates, the load-balancing loss, the gate-weighted expert activation, and the
//! concatenations that run all experts as one wide matmul.
//!
//! Gates: the top-k experts of each token by router logit (ties to the lower index), gate
//! weights the softmax over those k logits (zero elsewhere). At this model size running
//! every expert densely and weighting by the (mostly zero) gates is faster than a gather;
//! the result is the same sum over the selected experts.

use super::{custom_op, dims, par_rows, Var, ROW_BLOCK};
use crate::isa::vectorized;
use crate::real::{gelu_and_grad, lane_dot, Real};
use dfdx::prelude::{Cpu, Tape};
use rayon::prelude::*;

/// Indices of the `k` largest values of `row`, ties to the lower index, in descending order.
pub fn top_k<E: Real>(row: &[E], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| {
        row[b]
            .partial_cmp(&row[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

/// How many of the `m` tokens' top-k slots went to each of the `x` experts.
pub fn expert_counts<E: Real>(logits: &[E], x: usize, k: usize) -> Vec<usize> {
    let mut counts = vec![0; x];
    for row in logits.chunks(x) {
        for e in top_k(row, k) {
            counts[e] += 1;
        }
    }
    counts
}

/// Gates `(M, X)` from router logits `(M, X)`: softmax over each row's top-`k` logits.
pub fn router_gates<E: Real, T: Tape<E, Cpu>>(logits: Var<E, T>, k: usize) -> Var<E, T> {
    let (m, x) = dims(&logits);
    assert!(k >= 1 && k <= x, "router_gates: top-{k} of {x} experts");
    custom_op(
        "router_gates",
        vec![logits],
        (m, x),
        |v| {
            let l = v[0];
            let mut g = vec![E::zero(); m * x];
            par_rows(
                &mut g,
                x,
                #[inline(always)]
                |r, gr| {
                    let row = &l[r * x..(r + 1) * x];
                    let sel = top_k(row, k);
                    let max = row[sel[0]];
                    let mut sum = E::zero();
                    for &e in &sel {
                        gr[e] = (row[e] - max).exp();
                        sum += gr[e];
                    }
                    for &e in &sel {
                        gr[e] /= sum;
                    }
                },
            );
            let saved = g.clone();
            (g, saved)
        },
        move |a, g| {
            let go = a.grad_out;
            // Softmax backward restricted to the selected set (g is zero elsewhere).
            par_rows(
                &mut a.grads[0],
                x,
                #[inline(always)]
                |r, out| {
                    let gr = &g[r * x..(r + 1) * x];
                    let gor = &go[r * x..(r + 1) * x];
                    let dot: E = gr.iter().zip(gor).map(|(&p, &d)| p * d).sum();
                    for e in 0..x {
                        out[e] += gr[e] * (gor[e] - dot);
                    }
                },
            );
        },
    )
}

/// Switch-Transformer balance loss `X * sum_e f_e P_e` as a `(1, 1)` tensor, where
/// `f_e` is the share of top-`k` assignments routed to expert `e` (not differentiated) and
/// `P_e` the mean router softmax probability of `e` over the `M` tokens.
pub fn balance_loss<E: Real, T: Tape<E, Cpu>>(logits: Var<E, T>, k: usize) -> Var<E, T> {
    let (m, x) = dims(&logits);
    custom_op(
        "balance_loss",
        vec![logits],
        (1, 1),
        |v| {
            let l = v[0];
            let counts = expert_counts(l, x, k);
            let f: Vec<E> = counts
                .iter()
                .map(|&c| E::of(c as f64 / (m * k) as f64))
                .collect();
            let mut p = vec![E::zero(); m * x];
            par_rows(
                &mut p,
                x,
                #[inline(always)]
                |r, pr| {
                    let row = &l[r * x..(r + 1) * x];
                    let max = row.iter().copied().fold(E::neg_infinity(), E::max);
                    let mut sum = E::zero();
                    for e in 0..x {
                        pr[e] = (row[e] - max).exp();
                        sum += pr[e];
                    }
                    for v in pr.iter_mut() {
                        *v /= sum;
                    }
                },
            );
            let mut loss = E::zero();
            for e in 0..x {
                let pe: E = (0..m).map(|r| p[r * x + e]).sum::<E>() / E::of(m as f64);
                loss += f[e] * pe;
            }
            (vec![loss * E::of(x as f64)], (p, f))
        },
        move |a, (p, f)| {
            let s = a.grad_out[0] * E::of(x as f64 / m as f64);
            par_rows(
                &mut a.grads[0],
                x,
                #[inline(always)]
                |r, out| {
                    let pr = &p[r * x..(r + 1) * x];
                    let dot: E = pr.iter().zip(&f).map(|(&p, &f)| p * f).sum();
                    for e in 0..x {
                        out[e] += s * pr[e] * (f[e] - dot);
                    }
                },
            );
        },
    )
}

/// `h[:, e*F + j] = gates[:, e] * GELU(u[:, e*F + j])` for `u: (M, X*F)`, `gates: (M, X)`.
pub fn expert_gelu<E: Real, T: Tape<E, Cpu>>(u: Var<E, T>, gates: Var<E, T>) -> Var<E, T> {
    let (m, xf) = dims(&u);
    let (m2, x) = dims(&gates);
    assert!(m == m2 && x > 0 && xf % x == 0, "expert_gelu: shapes");
    let f = xf / x;
    custom_op(
        "expert_gelu",
        vec![u, gates],
        (m, xf),
        |v| {
            let (u, g) = (v[0], v[1]);
            let mut h = vec![E::zero(); m * xf];
            par_rows(
                &mut h,
                xf,
                #[inline(always)]
                |r, hr| {
                    for e in 0..x {
                        let ge = g[r * x + e];
                        if ge == E::zero() {
                            continue;
                        }
                        for j in e * f..(e + 1) * f {
                            hr[j] = ge * gelu_and_grad(u[r * xf + j]).0;
                        }
                    }
                },
            );
            (h, ())
        },
        move |a, ()| {
            let (u, g) = (a.inputs[0], a.inputs[1]);
            let gh = a.grad_out;
            let (gu, gg) = a.grads.split_at_mut(1);
            // One pass per row: GELU and its derivative once per element.
            let mut dgate = vec![E::zero(); m * x];
            gu[0]
                .par_chunks_mut(ROW_BLOCK * xf)
                .zip(dgate.par_chunks_mut(ROW_BLOCK * x))
                .enumerate()
                .for_each(|(b, (gub, dgb))| {
                    vectorized(
                        #[inline(always)]
                        || {
                            // GELU values of one row (the gate gradient is their dot
                            // product with the output gradient, in fixed lanes).
                            let mut act = vec![E::zero(); xf];
                            for (i, (gur, dg)) in
                                gub.chunks_mut(xf).zip(dgb.chunks_mut(x)).enumerate()
                            {
                                let r = b * ROW_BLOCK + i;
                                let (ur, ghr) =
                                    (&u[r * xf..(r + 1) * xf], &gh[r * xf..(r + 1) * xf]);
                                for e in 0..x {
                                    let ge = g[r * x + e];
                                    let cols = e * f..(e + 1) * f;
                                    for (((a, gu), &uj), &gj) in act[cols.clone()]
                                        .iter_mut()
                                        .zip(&mut gur[cols.clone()])
                                        .zip(&ur[cols.clone()])
                                        .zip(&ghr[cols.clone()])
                                    {
                                        let (v, der) = gelu_and_grad(uj);
                                        *a = v;
                                        *gu += ge * gj * der;
                                    }
                                    dg[e] = lane_dot(&ghr[cols.clone()], &act[cols]);
                                }
                            }
                        },
                    )
                });
            for (o, v) in gg[0].iter_mut().zip(dgate) {
                *o += v;
            }
        },
    )
}

/// Stacks matrices with equal column counts on top of each other.
pub fn concat_rows<E: Real, T: Tape<E, Cpu>>(parts: Vec<Var<E, T>>) -> Var<E, T> {
    let cols = dims(&parts[0]).1;
    let rows: Vec<usize> = parts.iter().map(|p| dims(p).0).collect();
    assert!(
        parts.iter().all(|p| dims(p).1 == cols),
        "concat_rows: column counts differ"
    );
    let total: usize = rows.iter().sum();
    custom_op(
        "concat_rows",
        parts,
        (total, cols),
        |v| (v.concat(), ()),
        |a, ()| {
            let mut off = 0;
            for g in a.grads.iter_mut() {
                for (o, v) in g.iter_mut().zip(&a.grad_out[off..]) {
                    *o += *v;
                }
                off += g.len();
            }
        },
    )
}

/// Places matrices with equal row counts side by side.
pub fn concat_cols<E: Real, T: Tape<E, Cpu>>(parts: Vec<Var<E, T>>) -> Var<E, T> {
    let rows = dims(&parts[0]).0;
    let cols: Vec<usize> = parts.iter().map(|p| dims(p).1).collect();
    assert!(
        parts.iter().all(|p| dims(p).0 == rows),
        "concat_cols: row counts differ"
    );
    let total: usize = cols.iter().sum();
    let cols2 = cols.clone();
    custom_op(
        "concat_cols",
        parts,
        (rows, total),
        move |v| {
            let mut out = Vec::with_capacity(rows * total);
            for r in 0..rows {
                for (p, &c) in v.iter().zip(&cols) {
                    out.extend_from_slice(&p[r * c..(r + 1) * c]);
                }
            }
            (out, ())
        },
        move |a, ()| {
            for r in 0..rows {
                let mut off = r * total;
                for (g, &c) in a.grads.iter_mut().zip(&cols2) {
                    for j in 0..c {
                        g[r * c + j] += a.grad_out[off + j];
                    }
                    off += c;
                }
            }
        },
    )
}
