//! Causal depthwise 1-D convolution fused with SiLU (the SSM block's short convolution,
//! Gu & Dao 2023, Mamba §3.4): `c_t = bias + sum_{j<K} w[:, j] * x_{t-K+1+j}` with zero
//! padding before the sequence start, then `u_t = SiLU(c_t) = c_t * sigmoid(c_t)`.

use super::{custom_op, dims, par_reduce, Var, ROW_BLOCK};
use crate::real::{sigmoid, Real};
use dfdx::prelude::{Cpu, Tape};
use rayon::prelude::*;

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
        vec![xg, w, bias],
        (m, di),
        |v| {
            let (x, w, b) = (v[0], v[1], v[2]);
            // Saved: the pre-activation c.
            let mut c = vec![E::zero(); m * di];
            c.par_chunks_mut(seq * di).enumerate().for_each(|(s, cs)| {
                for t in 0..seq {
                    let out = &mut cs[t * di..(t + 1) * di];
                    out.copy_from_slice(b);
                    for j in 0..k {
                        let Some(src_t) = (t + j + 1).checked_sub(k) else {
                            continue;
                        };
                        let xr = &x[(s * seq + src_t) * width..][..di];
                        for d in 0..di {
                            out[d] = out[d] + w[d * k + j] * xr[d];
                        }
                    }
                }
            });
            let mut u = vec![E::zero(); m * di];
            u.par_chunks_mut(ROW_BLOCK * di)
                .zip(c.par_chunks(ROW_BLOCK * di))
                .for_each(|(u, c)| {
                    for (u, &c) in u.iter_mut().zip(c) {
                        *u = c * sigmoid(c);
                    }
                });
            (u, c)
        },
        move |a, c| {
            let (x, w) = (a.inputs[0], a.inputs[1]);
            // gc = gu * SiLU'(c), SiLU'(c) = s (1 + c (1 - s))
            let mut gc = a.grad_out.to_vec();
            gc.par_chunks_mut(ROW_BLOCK * di)
                .zip(c.par_chunks(ROW_BLOCK * di))
                .for_each(|(g, c)| {
                    for (g, &c) in g.iter_mut().zip(c) {
                        let s = sigmoid(c);
                        *g = *g * s * (E::one() + c * (E::one() - s));
                    }
                });
            // dx[t'] += sum_j w[:, j] * gc[t' + K - 1 - j]
            a.grads[0]
                .par_chunks_mut(seq * width)
                .enumerate()
                .for_each(|(s, gx)| {
                    for t in 0..seq {
                        for j in 0..k {
                            let Some(src_t) = (t + j + 1).checked_sub(k) else {
                                continue;
                            };
                            let gcr = &gc[(s * seq + t) * di..][..di];
                            let gxr = &mut gx[src_t * width..][..di];
                            for d in 0..di {
                                gxr[d] = gxr[d] + w[d * k + j] * gcr[d];
                            }
                        }
                    }
                });
            // dw[d, j] += sum_t x[t-K+1+j, d] gc[t, d];  db[d] += sum_t gc[t, d]
            let nseq = m / seq;
            let wb = par_reduce(nseq, 4, di * k + di, |seqs, acc| {
                for s in seqs {
                    for t in 0..seq {
                        let gcr = &gc[(s * seq + t) * di..][..di];
                        for d in 0..di {
                            acc[di * k + d] = acc[di * k + d] + gcr[d];
                        }
                        for j in 0..k {
                            let Some(src_t) = (t + j + 1).checked_sub(k) else {
                                continue;
                            };
                            let xr = &x[(s * seq + src_t) * width..][..di];
                            for d in 0..di {
                                acc[d * k + j] = acc[d * k + j] + xr[d] * gcr[d];
                            }
                        }
                    }
                }
            });
            let (gw, gb) = a.grads[1..].split_at_mut(1);
            for (g, v) in gw[0].iter_mut().zip(&wb[..di * k]) {
                *g = *g + *v;
            }
            for (g, v) in gb[0].iter_mut().zip(&wb[di * k..]) {
                *g = *g + *v;
            }
        },
    )
}
