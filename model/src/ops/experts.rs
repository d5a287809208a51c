//! The experts' feed-forward on the tokens routed to them (sparse dispatch): for each
//! expert, the rows whose gate is non-zero are gathered, run through that expert's
//! `down(GELU(up x))`, and added back weighted by the gate:
//! `y[r] = sum_{e selected} gate[r, e] * (W_down,e GELU(W_up,e x[r] + b_up,e) + b_down,e)`.
//!
//! With top-`k` of `X` experts only `k / X` of the expert products are computed (half at
//! the phase-8 model's top-2 of 4). A gate is zero exactly for the experts a token was not
//! routed to (see [`super::router_gates`]); a selected gate that underflowed to zero adds
//! nothing and its gradient would be multiplied by zero in the router's backward, so
//! skipping it changes nothing. Each row's experts are added in index order and every
//! product splits only its output between threads, so the result does not depend on the
//! thread count. In training the forward pass keeps each expert's gathered input rows and
//! GELU's values and derivatives (one evaluation of the error function per element), so
//! the backward pass evaluates no GELU and gathers no input again.

use super::dense::affine;
use super::elementwise::gelu_rows;
use super::matmul::gemm_new;
use super::{
    add_into, assume_filled, custom_op, dims, par_reduce, par_rows, par_rows_with, uninit, Var,
    ROW_BLOCK,
};
use crate::isa::vectorized;
use crate::real::{gelu_and_grad, lane_dot, MulAdd, Real};
use dfdx::prelude::{Cpu, Tape};
use rayon::prelude::*;

/// One expert's parameters, as graph tensors: `up_w: (F, D)`, `up_b: (1, F)`,
/// `down_w: (D, F)`, `down_b: (1, D)` (PyTorch `nn.Linear` layouts).
pub struct Expert<E: Real, T> {
    pub up_w: Var<E, T>,
    pub up_b: Var<E, T>,
    pub down_w: Var<E, T>,
    pub down_b: Var<E, T>,
}

/// The rows routed to each expert (non-zero gate), ascending.
fn routed<E: Real>(gates: &[E], experts: usize) -> Vec<Vec<usize>> {
    let mut rows = vec![Vec::new(); experts];
    for (r, g) in gates.chunks(experts).enumerate() {
        for (e, &v) in g.iter().enumerate() {
            if v != E::zero() {
                rows[e].push(r);
            }
        }
    }
    rows
}

/// The listed rows of a row-major matrix of `width` columns, stacked.
fn gather<E: Real>(m: &[E], width: usize, rows: &[usize]) -> Vec<E> {
    let mut out = Vec::with_capacity(rows.len() * width);
    for &r in rows {
        out.extend_from_slice(&m[r * width..(r + 1) * width]);
    }
    out
}

/// `y = sum over routed experts` (module docs) for `x: (M, D)` and `gates: (M, X)` with
/// one [`Expert`] per gate column. Returns `(M, D)`.
pub fn moe_experts<E: Real, T: Tape<E, Cpu>>(
    x: Var<E, T>,
    gates: Var<E, T>,
    experts: Vec<Expert<E, T>>,
) -> Var<E, T> {
    let (m, d) = dims(&x);
    let (m2, ne) = dims(&gates);
    assert_eq!(m, m2, "moe_experts: one gate row per input row");
    assert_eq!(experts.len(), ne, "moe_experts: one expert per gate column");
    let f = dims(&experts[0].up_w).0;
    for ex in &experts {
        assert_eq!(dims(&ex.up_w), (f, d), "moe_experts: up weight shape");
        assert_eq!(dims(&ex.up_b), (1, f), "moe_experts: up bias shape");
        assert_eq!(dims(&ex.down_w), (d, f), "moe_experts: down weight shape");
        assert_eq!(dims(&ex.down_b), (1, d), "moe_experts: down bias shape");
    }
    // Inputs: x, gates, then per expert up_w, up_b, down_w, down_b.
    let mut inputs = vec![x, gates];
    for ex in experts {
        inputs.extend([ex.up_w, ex.up_b, ex.down_w, ex.down_b]);
    }
    let param = |e: usize, i: usize| 2 + 4 * e + i;
    let grad = T::OWNS_TAPE;
    custom_op(
        "moe_experts",
        inputs,
        (m, d),
        move |v| {
            let (x, g) = (v[0], v[1]);
            let rows = routed(g, ne);
            // Per expert: its output rows (before the bias) and, for the backward, its
            // gathered inputs and GELU's values and derivatives (computed together here,
            // so the backward evaluates no GELU and gathers no input again).
            let mut outs = Vec::with_capacity(ne);
            let mut saved = Vec::with_capacity(if grad { ne } else { 0 });
            for (e, re) in rows.iter().enumerate() {
                let n = re.len();
                let (up_w, up_b, down_w) = (v[param(e, 0)], v[param(e, 1)], v[param(e, 2)]);
                let xe = gather(x, d, re);
                let he = affine(n, f, d, &xe, up_w, up_b);
                let gate = |i: usize| g[re[i] * ne + e];
                if grad {
                    let (act, der) = gelu_rows(&he, f, None);
                    let ae = gated_rows(&act, f, gate, |_, v| v);
                    outs.push(gemm_new(n, d, f, &ae, false, down_w, true));
                    saved.push(Routed { xe, act, der });
                } else {
                    let ae = gated_rows(&he, f, gate, |m, h| gelu_and_grad(h, m).0);
                    outs.push(gemm_new(n, d, f, &ae, false, down_w, true));
                }
            }
            let slot = slots(&rows, m, ne);
            let mut y = uninit(m * d);
            par_rows(
                &mut y,
                d,
                #[inline(always)]
                |r, yr| {
                    // Each row's experts in index order: the first writes, the rest add.
                    let yr = &mut yr[..d];
                    let mut first = true;
                    for e in 0..ne {
                        let i = slot[r * ne + e];
                        if i == u32::MAX {
                            continue;
                        }
                        let ge = g[r * ne + e];
                        let (ye, b) = (&outs[e][i as usize * d..][..d], &v[param(e, 3)][..d]);
                        if first {
                            for ((o, &t), &bj) in yr.iter_mut().zip(ye).zip(b) {
                                o.write(t + ge * bj);
                            }
                            first = false;
                        } else {
                            for ((o, &t), &bj) in yr.iter_mut().zip(ye).zip(b) {
                                // SAFETY: written by this row's first expert above.
                                let acc = unsafe { o.assume_init_mut() };
                                *acc += t + ge * bj;
                            }
                        }
                    }
                    if first {
                        for o in yr.iter_mut() {
                            o.write(E::zero());
                        }
                    }
                },
            );
            // SAFETY: every row is cut to `d` and written whole: by its first routed
            // expert, or with zeros when no expert has a non-zero gate for it.
            (unsafe { assume_filled(y) }, (rows, saved))
        },
        move |a, (rows, saved)| {
            let g = a.inputs[1];
            let go = a.grad_out;
            let mut dgates = vec![E::zero(); m * ne];
            let mut dx_parts = Vec::with_capacity(ne);
            for (e, (re, Routed { xe, act, der })) in rows.iter().zip(&saved).enumerate() {
                let n = re.len();
                let (up_w, down_w, down_b) = (
                    a.inputs[param(e, 0)],
                    a.inputs[param(e, 2)],
                    a.inputs[param(e, 3)],
                );
                let gate = |i: usize| g[re[i] * ne + e];
                let dye = gather(go, d, re);
                // Gated activations, for the down weights' gradient.
                let ae = gated_rows(act, f, gate, |_, v| v);
                a.grads[param(e, 2)].gemm(d, f, n, &dye, true, &ae, false, E::one());
                drop(ae);
                // d(gated activation), turned in place into d(pre-activation). The gate's
                // gradient: that row's dot product with the activation, plus the bias term.
                let mut dh = gemm_new(n, f, d, &dye, false, down_w, false);
                let mut dg = vec![E::zero(); n];
                dh.par_chunks_mut(ROW_BLOCK * f)
                    .zip(dg.par_chunks_mut(ROW_BLOCK))
                    .enumerate()
                    .for_each(|(b, (dhb, dgb))| {
                        vectorized(
                            #[inline(always)]
                            || {
                                for (k, (dr, dgi)) in
                                    dhb.chunks_mut(f).zip(dgb.iter_mut()).enumerate()
                                {
                                    let i = b * ROW_BLOCK + k;
                                    let ge = gate(i);
                                    let (act, der, dr) =
                                        (&act[i * f..][..f], &der[i * f..][..f], &mut dr[..f]);
                                    *dgi = lane_dot(dr, act) + lane_dot(&dye[i * d..][..d], down_b);
                                    for j in 0..f {
                                        dr[j] = dr[j] * ge * der[j];
                                    }
                                }
                            },
                        )
                    });
                for (i, &r) in re.iter().enumerate() {
                    dgates[r * ne + e] = dg[i];
                }
                // Bias gradients: down: sum_i gate_i dy_i; up: sum_i dh_i.
                let sums = par_reduce(
                    n,
                    ROW_BLOCK,
                    d + f,
                    #[inline(always)]
                    |rs, acc| {
                        for i in rs {
                            let ge = gate(i);
                            let (ad, af) = acc.split_at_mut(d);
                            for (o, &v) in ad.iter_mut().zip(&dye[i * d..(i + 1) * d]) {
                                *o += ge * v;
                            }
                            for (o, &v) in af.iter_mut().zip(&dh[i * f..(i + 1) * f]) {
                                *o += v;
                            }
                        }
                    },
                );
                add_into(a.grads[param(e, 3)].acc(), &sums[..d]);
                add_into(a.grads[param(e, 1)].acc(), &sums[d..]);
                a.grads[param(e, 0)].gemm(f, d, n, &dh, true, xe, false, E::one());
                dx_parts.push(gemm_new(n, d, f, &dh, false, up_w, false));
            }
            a.grads[1].put(dgates);
            let slot = slots(&rows, m, ne);
            par_rows(
                a.grads[0].acc(),
                d,
                #[inline(always)]
                |r, gr| {
                    for (e, part) in dx_parts.iter().enumerate() {
                        let i = slot[r * ne + e];
                        if i != u32::MAX {
                            add_into(gr, &part[i as usize * d..][..d]);
                        }
                    }
                },
            );
        },
    )
}

/// What the backward keeps of one expert's routed rows: their inputs (`n x D`), and
/// GELU's values and derivatives at the pre-activations (`n x F` each).
struct Routed<E> {
    xe: Vec<E>,
    act: Vec<E>,
    der: Vec<E>,
}

/// `gate(i) * map(m, src[i, j])` for the `n x f` matrix `src` (`m`: the multiply-add of
/// the compiled kernels, for a `map` that evaluates polynomials).
fn gated_rows<E: Real>(
    src: &[E],
    f: usize,
    gate: impl Fn(usize) -> E + Sync,
    map: impl Fn(MulAdd, E) -> E + Sync,
) -> Vec<E> {
    let mut a = uninit(src.len());
    par_rows_with(
        &mut a,
        f,
        #[inline(always)]
        |m, i, ar| {
            let ge = gate(i);
            for (a, &v) in ar[..f].iter_mut().zip(&src[i * f..][..f]) {
                a.write(ge * map(m, v));
            }
        },
    );
    // SAFETY: each of the rows is cut to `f` elements and zipped with `f` inputs, so
    // every element is written.
    unsafe { assume_filled(a) }
}

/// Where each row sits in each expert's block of routed rows (`u32::MAX`: not routed),
/// as an `(M, X)` table.
fn slots(rows: &[Vec<usize>], m: usize, experts: usize) -> Vec<u32> {
    let mut slot = vec![u32::MAX; m * experts];
    for (e, re) in rows.iter().enumerate() {
        for (i, &r) in re.iter().enumerate() {
            slot[r * experts + e] = i as u32;
        }
    }
    slot
}
