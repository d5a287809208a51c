//! Causal depthwise 1-D convolution fused with SiLU (the SSM block's short convolution,
//! Gu & Dao 2023, Mamba §3.4): `c_t = bias + sum_{j<K} w[:, j] * x_{t-K+1+j}` with zero
//! padding before the sequence start, then `u_t = SiLU(c_t) = c_t * sigmoid(c_t)`.

use super::{assume_filled, custom_op, dims, par_reduce, transpose, uninit, Var, ROW_BLOCK};
use crate::isa::vectorized;
use crate::real::{sigmoid, Real};
use dfdx::prelude::{Cpu, Tape};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `u = SiLU(causal_conv(x))` where `x` is the first `Di` columns of `xg: (B*T, W)`
/// (sequences of `seq` rows each), `w: (Di, K)`, `bias: (1, Di)`. Returns `(B*T, Di)`.
pub fn conv_silu<E: Real, T: Tape<E, Cpu>>(
    xg: Var<E, T>,
    w: Var<E, T>,
    bias: Var<E, T>,
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
    custom_op(
        "conv_silu",
        vec![xg, w, bias],
        (m, di),
        |v| {
            let (x, w, b) = (v[0], v[1], v[2]);
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
                vectorized(
                    #[inline(always)]
                    || {
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
                                for ((o, &xv), &wv) in
                                    c.iter_mut().zip(xr).zip(&wt[j * di..(j + 1) * di])
                                {
                                    *o += wv * xv;
                                }
                            }
                            let out = &mut us[t * di..][..di];
                            match dss.as_deref_mut() {
                                Some(dss) => {
                                    let d = &mut dss[t * di..][..di];
                                    for ((o, d), &c) in out.iter_mut().zip(d.iter_mut()).zip(&*c) {
                                        let s = sigmoid(c);
                                        o.write(c * s);
                                        d.write(s * (E::one() + c * (E::one() - s)));
                                    }
                                }
                                None => {
                                    for (o, &c) in out.iter_mut().zip(&*c) {
                                        o.write(c * sigmoid(c));
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
            let wt = transpose(w, di, k);
            // gc = gu * SiLU'(c), written in one pass.
            let gu = a.grad_out;
            let mut gc = dsilu;
            gc.par_chunks_mut(ROW_BLOCK * di)
                .zip(gu.par_chunks(ROW_BLOCK * di))
                .for_each(|(g, gu)| {
                    vectorized(
                        #[inline(always)]
                        || {
                            for (g, &gu) in g.iter_mut().zip(gu) {
                                *g = gu * *g;
                            }
                        },
                    )
                });
            // dx[t'] += sum_j w[:, j] * gc[t' + K - 1 - j]
            a.grads[0]
                .acc()
                .par_chunks_mut(seq * width)
                .enumerate()
                .for_each(|(s, gx)| {
                    vectorized(
                        #[inline(always)]
                        || {
                            for t in 0..seq {
                                for j in 0..k {
                                    let Some(src_t) = (t + j + 1).checked_sub(k) else {
                                        continue;
                                    };
                                    let gcr = &gc[(s * seq + t) * di..][..di];
                                    let gxr = &mut gx[src_t * width..][..di];
                                    for ((g, &c), &wv) in
                                        gxr.iter_mut().zip(gcr).zip(&wt[j * di..(j + 1) * di])
                                    {
                                        *g += wv * c;
                                    }
                                }
                            }
                        },
                    )
                });
            // dw[d, j] += sum_t x[t-K+1+j, d] gc[t, d] (accumulated transposed, [j, d]);
            // db[d] += sum_t gc[t, d]
            let nseq = m / seq;
            let wb = par_reduce(
                nseq,
                4,
                di * k + di,
                #[inline(always)]
                |seqs, acc| {
                    for s in seqs {
                        for t in 0..seq {
                            let gcr = &gc[(s * seq + t) * di..][..di];
                            for (a, &c) in acc[di * k..].iter_mut().zip(gcr) {
                                *a += c;
                            }
                            for j in 0..k {
                                let Some(src_t) = (t + j + 1).checked_sub(k) else {
                                    continue;
                                };
                                let xr = &x[(s * seq + src_t) * width..][..di];
                                for ((a, &xv), &c) in
                                    acc[j * di..(j + 1) * di].iter_mut().zip(xr).zip(gcr)
                                {
                                    *a += xv * c;
                                }
                            }
                        }
                    }
                },
            );
            let (gw, gb) = a.grads[1..].split_at_mut(1);
            let (gw, gb) = (gw[0].acc(), gb[0].acc());
            for d in 0..di {
                for j in 0..k {
                    gw[d * k + j] += wb[j * di + d];
                }
            }
            for (g, v) in gb.iter_mut().zip(&wb[di * k..]) {
                *g += *v;
            }
        },
    )
}
