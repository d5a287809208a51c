//! Fused LayerNorm over the last dimension (Ba, Kiros & Hinton 2016):
//! `y = (x - mean) / sqrt(var + eps) * w + b`, with the biased variance.

use super::{add_into, assume_filled, custom_op, dims, sum_in_order, uninit, Var, ROW_BLOCK};
use crate::isa::vectorized;
use crate::real::{lane_dot, lane_sum, Real};
use dfdx::prelude::{Cpu, Tape};
use rayon::prelude::*;

/// LayerNorm of each row of `x: (M, D)` with `w, b: (1, D)`.
pub fn layer_norm<E: Real, T: Tape<E, Cpu>>(
    x: Var<E, T>,
    w: Var<E, T>,
    b: Var<E, T>,
    eps: f64,
) -> Var<E, T> {
    let (m, d) = dims(&x);
    assert_eq!(dims(&w), (1, d), "layer_norm: weight shape");
    assert_eq!(dims(&b), (1, d), "layer_norm: bias shape");
    let eps = E::of(eps);
    let inv_d = E::one() / E::of(d as f64);
    custom_op(
        "layer_norm",
        vec![x, w, b],
        (m, d),
        |v| {
            let (x, w, b) = (v[0], v[1], v[2]);
            // Saved per row: mean and 1/std. Sums in 8 fixed lanes (vectorised, and the
            // same bits on every instruction set and thread count).
            let mut stats = vec![E::zero(); m * 2];
            let mut y = uninit(m * d);
            y.par_chunks_mut(ROW_BLOCK * d)
                .zip(stats.par_chunks_mut(ROW_BLOCK * 2))
                .enumerate()
                .for_each(|(blk, (yb, sb))| {
                    vectorized(
                        #[inline(always)]
                        || {
                            // The centred row, in cache, then the output written once.
                            let mut c = vec![E::zero(); d];
                            for (i, (out, s)) in yb.chunks_mut(d).zip(sb.chunks_mut(2)).enumerate()
                            {
                                let r = blk * ROW_BLOCK + i;
                                let row = &x[r * d..(r + 1) * d];
                                let mean = lane_sum(row) * inv_d;
                                for (c, &v) in c.iter_mut().zip(row) {
                                    *c = v - mean;
                                }
                                let var = lane_dot(&c, &c) * inv_d;
                                let rstd = E::one() / (var + eps).sqrt();
                                let (out, w, b) = (&mut out[..d], &w[..d], &b[..d]);
                                for (((o, &c), &wj), &bj) in out.iter_mut().zip(&c).zip(w).zip(b) {
                                    o.write(c * rstd * wj + bj);
                                }
                                s[0] = mean;
                                s[1] = rstd;
                            }
                        },
                    )
                });
            // SAFETY: `y` has `m` rows of `d` (one per stats pair); each row is cut to `d`
            // and zipped with `d`-long slices, so every element is written.
            (unsafe { assume_filled(y) }, stats)
        },
        move |a, stats| {
            let (x, w) = (a.inputs[0], a.inputs[1]);
            let gy = a.grad_out;
            let (gx, rest) = a.grads.split_at_mut(1);
            // One pass per block of rows: the input gradient, and the block's partial sums
            // of the weight and bias gradients (added in block order below).
            let partials: Vec<Vec<E>> = gx[0]
                .acc()
                .par_chunks_mut(ROW_BLOCK * d)
                .enumerate()
                .map(|(blk, gxb)| {
                    vectorized(
                        #[inline(always)]
                        || {
                            // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
                            let mut xhat = vec![E::zero(); d];
                            let mut dxhat = vec![E::zero(); d];
                            let mut acc = vec![E::zero(); 2 * d];
                            for (i, gxr) in gxb.chunks_mut(d).enumerate() {
                                let r = blk * ROW_BLOCK + i;
                                let (mean, rstd) = (stats[2 * r], stats[2 * r + 1]);
                                let (xr, gyr) = (&x[r * d..(r + 1) * d], &gy[r * d..(r + 1) * d]);
                                // Every slice cut to `d`: no bounds checks, vectorised.
                                let (xr, gyr, w) = (&xr[..d], &gyr[..d], &w[..d]);
                                let (xhat, dxhat, gxr) =
                                    (&mut xhat[..d], &mut dxhat[..d], &mut gxr[..d]);
                                let (aw, ab) = acc.split_at_mut(d);
                                let (aw, ab) = (&mut aw[..d], &mut ab[..d]);
                                for j in 0..d {
                                    xhat[j] = (xr[j] - mean) * rstd;
                                    dxhat[j] = gyr[j] * w[j];
                                    aw[j] += gyr[j] * (xr[j] - mean) * rstd;
                                    ab[j] += gyr[j];
                                }
                                let s1 = lane_sum(dxhat) * inv_d;
                                let s2 = lane_dot(dxhat, xhat) * inv_d;
                                for j in 0..d {
                                    gxr[j] += rstd * (dxhat[j] - s1 - xhat[j] * s2);
                                }
                            }
                            acc
                        },
                    )
                })
                .collect();
            let wb = sum_in_order(partials, 2 * d);
            add_into(rest[0].acc(), &wb[..d]);
            add_into(rest[1].acc(), &wb[d..]);
        },
    )
}
