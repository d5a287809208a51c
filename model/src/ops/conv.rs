//! Causal depthwise 1-D convolution fused with SiLU (the SSM block's short convolution,
//! Gu & Dao 2023, Mamba §3.4): `c_t = bias + sum_{j<K} w[:, j] * x_{t-K+1+j}` with zero
//! padding before the sequence start, then `u_t = SiLU(c_t) = c_t * sigmoid(c_t)`.

use super::{add_into, assume_filled, custom_op, dims, sum_in_order, transpose, uninit, Var};
use crate::isa::{vectorized, vectorized_with};
use crate::real::{sigmoid, Real};
use dfdx::prelude::{Cpu, Tape};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `u = SiLU(causal_conv(x))` where `x` is the first `Di` columns of `xg + in_bias`
/// (`xg: (B*T, W)` in sequences of `seq` rows each; `in_bias: (1, W)`, the bias of the
/// input projection, added here so the projection never writes it), `w: (Di, K)`,
/// `bias: (1, Di)`. Returns `(B*T, Di)`.
pub fn conv_silu<E: Real, T: Tape<E, Cpu>>(
    xg: Var<E, T>,
    w: Var<E, T>,
    bias: Var<E, T>,
    in_bias: Option<Var<E, T>>,
    seq: usize,
) -> Var<E, T> {
    let (m, width) = dims(&xg);
    let (di, k) = dims(&w);
    assert!(
        di <= width,
        "conv_silu: {di} channels but input has {width} columns"
    );
    assert_eq!(dims(&bias), (1, di), "conv_silu: bias shape");
    assert!(
        seq > 0 && m % seq == 0,
        "conv_silu: {m} rows are not whole sequences of {seq}"
    );
    let mut inputs = vec![xg, w, bias];
    if let Some(ib) = in_bias {
        assert_eq!(dims(&ib), (1, width), "conv_silu: input bias shape");
        inputs.push(ib);
    }
    custom_op(
        "conv_silu",
        inputs,
        (m, di),
        |v| {
            let (x, w, b) = (v[0], v[1], v[2]);
            let zero = vec![E::zero(); di];
            let xb = v.get(3).map_or(&zero[..], |ib| &ib[..di]);
            let wt = transpose(w, di, k);
            // Per output row: the convolution into `u`, then in place u = c s with
            // s = sigmoid(c), saving SiLU'(c) = s (1 + c (1 - s)) in `ds`: one pass, no
            // intermediate `c` matrix.
            // Without a backward (`NoneTape`), SiLU' is not saved.
            let grad = T::OWNS_TAPE;
            let mut u = uninit(m * di);
            let mut ds = uninit(if grad { m * di } else { 0 });
            let kernel = |s: usize,
                          us: &mut [MaybeUninit<E>],
                          mut dss: Option<&mut [MaybeUninit<E>]>| {
                vectorized_with(
                    #[inline(always)]
                    |ma| {
                        // One output row at a time in cache: the convolution, then SiLU
                        // (and its derivative) written once.
                        let mut c = vec![E::zero(); di];
                        for t in 0..seq {
                            let c = &mut c[..di];
                            c.copy_from_slice(b);
                            for j in 0..k {
                                let Some(src_t) = (t + j + 1).checked_sub(k) else {
                                    continue;
                                };
                                let xr = &x[(s * seq + src_t) * width..][..di];
                                for (((o, &xv), &bv), &wv) in c
                                    .iter_mut()
                                    .zip(xr)
                                    .zip(&xb[..di])
                                    .zip(&wt[j * di..(j + 1) * di])
                                {
                                    *o += wv * (xv + bv);
                                }
                            }
                            let out = &mut us[t * di..][..di];
                            match dss.as_deref_mut() {
                                Some(dss) => {
                                    let d = &mut dss[t * di..][..di];
                                    for ((o, d), &c) in out.iter_mut().zip(d.iter_mut()).zip(&*c) {
                                        let s = sigmoid(c, ma);
                                        o.write(c * s);
                                        d.write(s * (E::one() + c * (E::one() - s)));
                                    }
                                }
                                None => {
                                    for (o, &c) in out.iter_mut().zip(&*c) {
                                        o.write(c * sigmoid(c, ma));
                                    }
                                }
                            }
                        }
                    },
                )
            };
            if grad {
                u.par_chunks_mut(seq * di)
                    .zip(ds.par_chunks_mut(seq * di))
                    .enumerate()
                    .for_each(|(s, (us, dss))| kernel(s, us, Some(dss)));
            } else {
                u.par_chunks_mut(seq * di)
                    .enumerate()
                    .for_each(|(s, us)| kernel(s, us, None));
            }
            // SAFETY: `m` is a whole number of sequences (asserted); each sequence's `seq`
            // rows are cut to `di` elements and zipped with the `di`-long row `c`, so every
            // element of `u` (and of `ds`, when it has any) is written.
            unsafe { (assume_filled(u), assume_filled(ds)) }
        },
        move |a, dsilu| {
            let (x, w) = (a.inputs[0], a.inputs[1]);
            let zero = vec![E::zero(); di];
            let xb = a.inputs.get(3).map_or(&zero[..], |ib| &ib[..di]);
            let wt = transpose(w, di, k);
            let gu = a.grad_out;
            // One pass per block of SEQS sequences, a row at a time in order:
            // gc_t = gu_t * SiLU'(c_t) (kept for the K rows that use it, never stored);
            // dx[t - K + 1 + j] += w[:, j] * gc_t;  and the block's partial sums of
            // dw[d, j] = sum_t (x + in_bias)[t - K + 1 + j, d] gc_t[d] (transposed, [j, d]),
            // db = sum_t gc_t and d in_bias = the sum of the dx terms, added in block
            // order below.
            const SEQS: usize = 4;
            let partials: Vec<Vec<E>> = a.grads[0]
                .acc()
                .par_chunks_mut(SEQS * seq * width)
                .enumerate()
                .map(|(blk, gxb)| {
                    vectorized(
                        #[inline(always)]
                        || {
                            let mut acc = vec![E::zero(); di * k + 2 * di];
                            let mut gc = vec![E::zero(); di];
                            for (i, gx) in gxb.chunks_mut(seq * width).enumerate() {
                                let s = blk * SEQS + i;
                                for t in 0..seq {
                                    let r = s * seq + t;
                                    let gc = &mut gc[..di];
                                    for ((g, &gu), &d) in gc
                                        .iter_mut()
                                        .zip(&gu[r * di..][..di])
                                        .zip(&dsilu[r * di..][..di])
                                    {
                                        *g = gu * d;
                                    }
                                    let (gw, gbs) = acc.split_at_mut(di * k);
                                    let (gb, gib) = gbs.split_at_mut(di);
                                    for (a, &c) in gb[..di].iter_mut().zip(&*gc) {
                                        *a += c;
                                    }
                                    for j in 0..k {
                                        let Some(src_t) = (t + j + 1).checked_sub(k) else {
                                            continue;
                                        };
                                        let gxr = &mut gx[src_t * width..][..di];
                                        for (((g, ib), &c), &wv) in gxr
                                            .iter_mut()
                                            .zip(gib[..di].iter_mut())
                                            .zip(&*gc)
                                            .zip(&wt[j * di..(j + 1) * di])
                                        {
                                            *g += wv * c;
                                            *ib += wv * c;
                                        }
                                        let xr = &x[(s * seq + src_t) * width..][..di];
                                        for (((a, &xv), &bv), &c) in gw[j * di..(j + 1) * di]
                                            .iter_mut()
                                            .zip(xr)
                                            .zip(&xb[..di])
                                            .zip(&*gc)
                                        {
                                            *a += (xv + bv) * c;
                                        }
                                    }
                                }
                            }
                            acc
                        },
                    )
                })
                .collect();
            let wb = sum_in_order(partials, di * k + 2 * di);
            let (gw, gb) = a.grads[1..].split_at_mut(1);
            let (gw, gb) = (gw[0].acc(), gb[0].acc());
            for d in 0..di {
                for j in 0..k {
                    gw[d * k + j] += wb[j * di + d];
                }
            }
            for (g, v) in gb.iter_mut().zip(&wb[di * k..di * k + di]) {
                *g += *v;
            }
            if let [_, _, _, gib] = a.grads {
                add_into(&mut gib.acc()[..di], &wb[di * k + di..]);
            }
        },
    )
}
