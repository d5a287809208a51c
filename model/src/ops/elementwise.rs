//! Fused elementwise ops: exact GELU, the per-token step size `mean(softplus(.))`, the
//! SSM output gate `(C h + D u) * SiLU(g)`, and the dropout-then-residual add.

use super::{custom_op, dims, par_reduce, par_rows, Dropout, Var, ROW_BLOCK};
use crate::real::{gelu_and_grad, sigmoid, softplus, Real};
use dfdx::prelude::{Cpu, Tape};
use rayon::prelude::*;

/// Exact (erf) GELU, elementwise.
pub fn gelu<E: Real, T: Tape<E, Cpu>>(x: Var<E, T>) -> Var<E, T> {
    let shape = dims(&x);
    custom_op(
        vec![x],
        shape,
        |v| {
            (
                v[0].par_iter()
                    .with_min_len(4096)
                    .map(|&x| gelu_and_grad(x).0)
                    .collect(),
                (),
            )
        },
        |a, ()| {
            let (x, gy) = (a.inputs[0], a.grad_out);
            a.grads[0]
                .par_iter_mut()
                .with_min_len(4096)
                .enumerate()
                .for_each(|(i, g)| {
                    *g = *g + gy[i] * gelu_and_grad(x[i]).1;
                });
        },
    )
}

/// `dt_r = mean_j softplus(z[r, j])`: one step size per row of `z: (M, Di)`, shape `(M, 1)`.
pub fn softplus_mean<E: Real, T: Tape<E, Cpu>>(z: Var<E, T>) -> Var<E, T> {
    let (m, di) = dims(&z);
    let inv = E::one() / E::of(di as f64);
    custom_op(
        vec![z],
        (m, 1),
        |v| {
            let z = v[0];
            let mut dt = vec![E::zero(); m];
            par_rows(&mut dt, 1, |r, o| {
                o[0] = z[r * di..(r + 1) * di]
                    .iter()
                    .map(|&x| softplus(x))
                    .sum::<E>()
                    * inv;
            });
            (dt, ())
        },
        move |a, ()| {
            let (z, gdt) = (a.inputs[0], a.grad_out);
            par_rows(&mut a.grads[0], di, |r, g| {
                let s = gdt[r] * inv;
                for (j, g) in g.iter_mut().enumerate() {
                    *g = *g + s * sigmoid(z[r * di + j]);
                }
            });
        },
    )
}

/// SSM output with its gate: `z = (hc + D * u) * SiLU(g)` where `hc = C h: (M, Di)`,
/// `dvec: (1, Di)`, `u: (M, Di)` and `g` is the last `Di` columns of `xg: (M, 2 Di)`.
pub fn ssm_gate<E: Real, T: Tape<E, Cpu>>(
    hc: Var<E, T>,
    dvec: Var<E, T>,
    u: Var<E, T>,
    xg: Var<E, T>,
) -> Var<E, T> {
    let (m, di) = dims(&hc);
    assert_eq!(dims(&dvec), (1, di), "ssm_gate: D shape");
    assert_eq!(dims(&u), (m, di), "ssm_gate: u shape");
    assert_eq!(dims(&xg), (m, 2 * di), "ssm_gate: in_proj output shape");
    custom_op(
        vec![hc, dvec, u, xg],
        (m, di),
        |v| {
            let (hc, dv, u, xg) = (v[0], v[1], v[2], v[3]);
            let mut z = vec![E::zero(); m * di];
            par_rows(&mut z, di, |r, zr| {
                for j in 0..di {
                    let g = xg[r * 2 * di + di + j];
                    let y = hc[r * di + j] + dv[j] * u[r * di + j];
                    zr[j] = y * g * sigmoid(g);
                }
            });
            (z, ())
        },
        move |a, ()| {
            let (hc, dv, u, xg) = (a.inputs[0], a.inputs[1], a.inputs[2], a.inputs[3]);
            let gz = a.grad_out;
            let (g_hc, rest) = a.grads.split_at_mut(1);
            let (g_d, rest) = rest.split_at_mut(1);
            let (g_u, g_xg) = rest.split_at_mut(1);
            // d hc = gz * SiLU(g);  d u = d hc * D
            par_rows(&mut g_hc[0], di, |r, out| {
                for j in 0..di {
                    let g = xg[r * 2 * di + di + j];
                    out[j] = out[j] + gz[r * di + j] * g * sigmoid(g);
                }
            });
            par_rows(&mut g_u[0], di, |r, out| {
                for j in 0..di {
                    let g = xg[r * 2 * di + di + j];
                    out[j] = out[j] + gz[r * di + j] * g * sigmoid(g) * dv[j];
                }
            });
            // d g = gz * y * SiLU'(g)
            par_rows(&mut g_xg[0], 2 * di, |r, out| {
                for j in 0..di {
                    let g = xg[r * 2 * di + di + j];
                    let s = sigmoid(g);
                    let y = hc[r * di + j] + dv[j] * u[r * di + j];
                    out[di + j] =
                        out[di + j] + gz[r * di + j] * y * s * (E::one() + g * (E::one() - s));
                }
            });
            // d D = sum_rows gz * SiLU(g) * u
            let gd = par_reduce(m, ROW_BLOCK, di, |rows, acc| {
                for r in rows {
                    for j in 0..di {
                        let g = xg[r * 2 * di + di + j];
                        acc[j] = acc[j] + gz[r * di + j] * g * sigmoid(g) * u[r * di + j];
                    }
                }
            });
            for (o, v) in g_d[0].iter_mut().zip(gd) {
                *o = *o + v;
            }
        },
    )
}

/// Residual add with dropout on the branch: `x + dropout(delta)`.
pub fn add_dropout<E: Real, T: Tape<E, Cpu>>(
    x: Var<E, T>,
    delta: Var<E, T>,
    dropout: Option<Dropout>,
) -> Var<E, T> {
    let (m, d) = dims(&x);
    assert_eq!(dims(&delta), (m, d), "add_dropout: shapes");
    custom_op(
        vec![x, delta],
        (m, d),
        |v| {
            let (x, dl) = (v[0], v[1]);
            let mut y = vec![E::zero(); m * d];
            par_rows(&mut y, d, |r, yr| {
                for j in 0..d {
                    let i = r * d + j;
                    let s = dropout.map_or(E::one(), |p| p.scale(i));
                    yr[j] = x[i] + s * dl[i];
                }
            });
            (y, ())
        },
        move |a, ()| {
            let gy = a.grad_out;
            let (gx, gd) = a.grads.split_at_mut(1);
            par_rows(&mut gx[0], d, |r, o| {
                for j in 0..d {
                    o[j] = o[j] + gy[r * d + j];
                }
            });
            par_rows(&mut gd[0], d, |r, o| {
                for j in 0..d {
                    let i = r * d + j;
                    let s = dropout.map_or(E::one(), |p| p.scale(i));
                    o[j] = o[j] + s * gy[i];
                }
            });
        },
    )
}
