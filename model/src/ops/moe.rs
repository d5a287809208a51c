//! Mixture-of-experts routing (Shazeer et al. 2017; Fedus et al. 2022, Switch Transformer):
//! top-k gates and the load-balancing loss. The experts themselves run in
//! [`super::experts`], on the tokens routed to them.
//!
//! Gates: the top-k experts of each token by router logit (ties to the lower index), gate
//! weights the softmax over those k logits (zero elsewhere).

use super::{custom_op, dims, par_rows, Var};
use crate::real::Real;
use dfdx::prelude::{Cpu, Tape};

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
                a.grads[0].acc(),
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
                a.grads[0].acc(),
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
