//! Fused LayerNorm over the last dimension (Ba, Kiros & Hinton 2016):
//! `y = (x - mean) / sqrt(var + eps) * w + b`, with the biased variance.

use super::{custom_op, dims, par_reduce, par_rows, Var, ROW_BLOCK};
use crate::real::Real;
use dfdx::prelude::{Cpu, Tape};

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
            // Saved per row: mean and 1/std.
            let mut stats = vec![E::zero(); m * 2];
            par_rows(
                &mut stats,
                2,
                #[inline(always)]
                |r, s| {
                    let row = &x[r * d..(r + 1) * d];
                    let mean = row.iter().copied().sum::<E>() * inv_d;
                    let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<E>() * inv_d;
                    s[0] = mean;
                    s[1] = E::one() / (var + eps).sqrt();
                },
            );
            let mut y = vec![E::zero(); m * d];
            par_rows(
                &mut y,
                d,
                #[inline(always)]
                |r, out| {
                    let (mean, rstd) = (stats[2 * r], stats[2 * r + 1]);
                    for (j, o) in out.iter_mut().enumerate() {
                        *o = (x[r * d + j] - mean) * rstd * w[j] + b[j];
                    }
                },
            );
            (y, stats)
        },
        move |a, stats| {
            let (x, w) = (a.inputs[0], a.inputs[1]);
            let gy = a.grad_out;
            let (gx, rest) = a.grads.split_at_mut(1);
            par_rows(
                &mut gx[0],
                d,
                #[inline(always)]
                |r, gxr| {
                    let (mean, rstd) = (stats[2 * r], stats[2 * r + 1]);
                    let (xr, gyr) = (&x[r * d..(r + 1) * d], &gy[r * d..(r + 1) * d]);
                    // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
                    let mut s1 = E::zero();
                    let mut s2 = E::zero();
                    for j in 0..d {
                        let xhat = (xr[j] - mean) * rstd;
                        let dxhat = gyr[j] * w[j];
                        s1 += dxhat;
                        s2 += dxhat * xhat;
                    }
                    let (s1, s2) = (s1 * inv_d, s2 * inv_d);
                    for j in 0..d {
                        let xhat = (xr[j] - mean) * rstd;
                        gxr[j] += rstd * (gyr[j] * w[j] - s1 - xhat * s2);
                    }
                },
            );
            let wb = par_reduce(
                m,
                ROW_BLOCK,
                2 * d,
                #[inline(always)]
                |rows, acc| {
                    for r in rows {
                        let (mean, rstd) = (stats[2 * r], stats[2 * r + 1]);
                        for j in 0..d {
                            let g = gy[r * d + j];
                            acc[j] += g * (x[r * d + j] - mean) * rstd;
                            acc[d + j] += g;
                        }
                    }
                },
            );
            for j in 0..d {
                rest[0][j] += wb[j];
                rest[1][j] += wb[d + j];
            }
        },
    )
}
