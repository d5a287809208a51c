//! Fused elementwise ops: exact GELU, the per-token step size `mean(softplus(.))`, the
//! SSM output gate `(C h + D u) * SiLU(g)`, and the dropout-then-residual add.

use super::{assume_filled, custom_op, dims, par_rows, uninit, Dropout, Var, ROW_BLOCK};
use crate::isa::vectorized;
use crate::real::{gelu_and_grad, lane_sum, sigmoid, Real};
use dfdx::prelude::{Cpu, Tape};
use rayon::prelude::*;

/// Elements per parallel task of the purely elementwise kernels.
const CHUNK: usize = 16 * 1024;

/// Exact (erf) GELU, elementwise.
pub fn gelu<E: Real, T: Tape<E, Cpu>>(x: Var<E, T>) -> Var<E, T> {
    let shape = dims(&x);
    custom_op(
        "gelu",
        vec![x],
        shape,
        |v| {
            let x = v[0];
            let mut y = uninit(x.len());
            y.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(y, x)| {
                    vectorized(
                        #[inline(always)]
                        || {
                            for (y, &x) in y.iter_mut().zip(x) {
                                y.write(gelu_and_grad(x).0);
                            }
                        },
                    )
                });
            // SAFETY: `y` and `x` have the same length and are cut into the same chunks,
            // and every element of every chunk is written.
            (unsafe { assume_filled(y) }, ())
        },
        |a, ()| {
            let (x, gy) = (a.inputs[0], a.grad_out);
            a.grads[0]
                .par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK).zip(gy.par_chunks(CHUNK)))
                .for_each(|(g, (x, gy))| {
                    vectorized(
                        #[inline(always)]
                        || {
                            for ((g, &x), &gy) in g.iter_mut().zip(x).zip(gy) {
                                *g += gy * gelu_and_grad(x).1;
                            }
                        },
                    )
                });
        },
    )
}

/// `dt_r = mean_j softplus(z[r, j])`: one step size per row of `z: (M, Di)`, shape `(M, 1)`.
pub fn softplus_mean<E: Real, T: Tape<E, Cpu>>(z: Var<E, T>) -> Var<E, T> {
    let (m, di) = dims(&z);
    let inv = E::one() / E::of(di as f64);
    custom_op(
        "softplus_mean",
        vec![z],
        (m, 1),
        |v| {
            let z = v[0];
            let mut dt = vec![E::zero(); m];
            if !T::OWNS_TAPE {
                // No backward: the step sizes alone. A separate loop on purpose: one
                // loop with an optional store of sigmoid(z) stops vectorising (4x slower,
                // measured).
                dt.par_chunks_mut(ROW_BLOCK)
                    .enumerate()
                    .for_each(|(b, db)| {
                        vectorized(
                            #[inline(always)]
                            || {
                                let mut sp = vec![E::zero(); di];
                                for (i, d) in db.iter_mut().enumerate() {
                                    let zr = &z[(b * ROW_BLOCK + i) * di..][..di];
                                    for (p, &x) in sp.iter_mut().zip(zr) {
                                        let e = (-x.abs()).fast_exp();
                                        *p = x.max(E::zero()) + e.fast_ln_1p_unit();
                                    }
                                    *d = lane_sum(&sp) * inv;
                                }
                            },
                        )
                    });
                return (dt, Vec::new());
            }
            // Saved: softplus'(z) = sigmoid(z), from the same exp(-|z|).
            let mut sig = uninit(m * di);
            sig.par_chunks_mut(ROW_BLOCK * di)
                .zip(dt.par_chunks_mut(ROW_BLOCK))
                .enumerate()
                .for_each(|(b, (sb, db))| {
                    vectorized(
                        #[inline(always)]
                        || {
                            let mut sp = vec![E::zero(); di];
                            for (i, (srow, d)) in sb.chunks_mut(di).zip(db.iter_mut()).enumerate() {
                                let zr = &z[(b * ROW_BLOCK + i) * di..][..di];
                                let (srow, sp) = (&mut srow[..di], &mut sp[..di]);
                                for ((s, p), &x) in srow.iter_mut().zip(sp.iter_mut()).zip(zr) {
                                    let e = (-x.abs()).fast_exp();
                                    *p = x.max(E::zero()) + e.fast_ln_1p_unit();
                                    let r = E::one() / (E::one() + e);
                                    s.write(if x >= E::zero() { r } else { e * r });
                                }
                                *d = lane_sum(sp) * inv;
                            }
                        },
                    )
                });
            // SAFETY: `sig` has `m` rows of `di`, one per step size; each row is cut to
            // exactly `di` elements and every one is written.
            (dt, unsafe { assume_filled(sig) })
        },
        move |a, sig| {
            let gdt = a.grad_out;
            par_rows(
                &mut a.grads[0],
                di,
                #[inline(always)]
                |r, g| {
                    let s = gdt[r] * inv;
                    for (g, &sg) in g.iter_mut().zip(&sig[r * di..(r + 1) * di]) {
                        *g += s * sg;
                    }
                },
            );
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
        "ssm_gate",
        vec![hc, dvec, u, xg],
        (m, di),
        |v| {
            let (hc, dv, u, xg) = (v[0], v[1], v[2], v[3]);
            let mut z = uninit(m * di);
            par_rows(
                &mut z,
                di,
                #[inline(always)]
                |r, zr| {
                    let g = &xg[r * 2 * di + di..(r + 1) * 2 * di];
                    let (hcr, ur) = (&hc[r * di..(r + 1) * di], &u[r * di..(r + 1) * di]);
                    for ((((z, &g), &h), &u), &d) in
                        zr.iter_mut().zip(g).zip(hcr).zip(ur).zip(&dv[..di])
                    {
                        z.write((h + d * u) * g * sigmoid(g));
                    }
                },
            );
            // SAFETY: every row has `di` elements and every input slice zipped with it
            // has `di` too, so each element is written.
            (unsafe { assume_filled(z) }, ())
        },
        move |a, ()| {
            let (hc, dv, u, xg) = (a.inputs[0], a.inputs[1], a.inputs[2], a.inputs[3]);
            let gz = a.grad_out;
            let [g_hc, g_d, g_u, g_xg] = a.grads else {
                unreachable!("four inputs")
            };
            // One pass per block of rows: y = hc + D u, s = sigmoid(g)
            // d hc = gz SiLU(g);  d u = d hc * D;  d g = gz y s (1 + g (1 - s));
            // d D = sum_rows d hc * u (per-block partials, summed in block order).
            let blk = ROW_BLOCK * di;
            let partials: Vec<Vec<E>> = g_hc
                .par_chunks_mut(blk)
                .zip(g_u.par_chunks_mut(blk))
                .zip(g_xg.par_chunks_mut(2 * blk))
                .enumerate()
                .map(|(b, ((ghc, gu), gxg))| {
                    vectorized(
                        #[inline(always)]
                        || {
                            let mut gd = vec![E::zero(); di];
                            for (i, (ghc, gu)) in
                                ghc.chunks_mut(di).zip(gu.chunks_mut(di)).enumerate()
                            {
                                let r = b * ROW_BLOCK + i;
                                let gx = &mut gxg[i * 2 * di + di..(i + 1) * 2 * di];
                                let g = &xg[r * 2 * di + di..(r + 1) * 2 * di];
                                let (hcr, ur, gzr) =
                                    (&hc[r * di..][..di], &u[r * di..][..di], &gz[r * di..][..di]);
                                // Every slice cut to `di`, so the loop has no bounds checks
                                // and vectorises.
                                let (g, hcr, ur, gzr, dv) =
                                    (&g[..di], &hcr[..di], &ur[..di], &gzr[..di], &dv[..di]);
                                let (ghc, gu, gd, gx) =
                                    (&mut ghc[..di], &mut gu[..di], &mut gd[..di], &mut gx[..di]);
                                for j in 0..di {
                                    let (g, uu) = (g[j], ur[j]);
                                    let s = sigmoid(g);
                                    let y = hcr[j] + dv[j] * uu;
                                    let dy = gzr[j] * g * s;
                                    ghc[j] += dy;
                                    gu[j] += dy * dv[j];
                                    gd[j] += dy * uu;
                                    gx[j] += gzr[j] * y * s * (E::one() + g * (E::one() - s));
                                }
                            }
                            gd
                        },
                    )
                })
                .collect();
            for p in partials {
                for (o, v) in g_d.iter_mut().zip(p) {
                    *o += v;
                }
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
        "add_dropout",
        vec![x, delta],
        (m, d),
        |v| {
            let (x, dl) = (v[0], v[1]);
            let mut y = uninit(m * d);
            par_rows(
                &mut y,
                d,
                #[inline(always)]
                |r, yr| {
                    // Rows cut to `d`, so the loops have no bounds checks and vectorise.
                    let (xr, dr, yr) = (&x[r * d..][..d], &dl[r * d..][..d], &mut yr[..d]);
                    match dropout {
                        None => {
                            for ((y, &x), &dv) in yr.iter_mut().zip(xr).zip(dr) {
                                y.write(x + dv);
                            }
                        }
                        Some(p) => {
                            for (j, ((y, &x), &dv)) in yr.iter_mut().zip(xr).zip(dr).enumerate() {
                                y.write(x + p.scale::<E>(r * d + j) * dv);
                            }
                        }
                    }
                },
            );
            // SAFETY: every row is cut to `d` elements, zipped with inputs of `d`, and
            // each element is written on either branch.
            (unsafe { assume_filled(y) }, ())
        },
        move |a, ()| {
            let gy = a.grad_out;
            let (gx, gd) = a.grads.split_at_mut(1);
            par_rows(
                &mut gx[0],
                d,
                #[inline(always)]
                |r, o| {
                    for (o, &g) in o.iter_mut().zip(&gy[r * d..(r + 1) * d]) {
                        *o += g;
                    }
                },
            );
            par_rows(
                &mut gd[0],
                d,
                #[inline(always)]
                |r, o| {
                    let (gr, o) = (&gy[r * d..][..d], &mut o[..d]);
                    match dropout {
                        None => {
                            for (o, &g) in o.iter_mut().zip(gr) {
                                *o += g;
                            }
                        }
                        Some(p) => {
                            for (j, (o, &g)) in o.iter_mut().zip(gr).enumerate() {
                                *o += p.scale::<E>(r * d + j) * g;
                            }
                        }
                    }
                },
            );
        },
    )
}
