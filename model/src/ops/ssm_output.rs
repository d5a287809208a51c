//! The SSM block's output: the state read-out `C h` fused with the skip term and the gate,
//! `y = (C h + D * u) * SiLU(g)`, where `h: (M, N)` is the scan's state, `C: (Di, N)`,
//! `D: (1, Di)`, `u: (M, Di)` the convolution's output and `g` the last `Di` columns of
//! the input projection `xg: (M, 2 Di)`.
//!
//! With `N` = 8 the read-out is eight scaled rows of `C^T` added per token: computed row by
//! row in cache, the `(M, Di)` matrix `C h` is never stored, and its gradient is turned
//! into those of `h` and `C` in the same pass that computes the gate's gradients.
//! Sums run in fixed orders (state index, then blocks of rows), so the result does not
//! depend on the thread count.

use super::{
    add_into, assume_filled, custom_op, dims, sum_in_order, transpose, uninit, Sink, Var, ROW_BLOCK,
};
use crate::isa::vectorized_with;
use crate::real::{lane_dot, sigmoid, Real};
use dfdx::prelude::{Cpu, Tape};
use rayon::prelude::*;

/// `hc = sum_s h[s] * ct[s, :]` (in order of `s`) for one row `h` of `n` states and
/// `ct: (n, di)`.
#[inline(always)]
fn read_out<E: Real>(h: &[E], ct: &[E], hc: &mut [E]) {
    let di = hc.len();
    hc.fill(E::zero());
    for (s, &hs) in h.iter().enumerate() {
        for (o, &c) in hc.iter_mut().zip(&ct[s * di..(s + 1) * di]) {
            *o += hs * c;
        }
    }
}

/// Sizes of one `ssm_output`: rows, states, inner width.
#[derive(Clone, Copy)]
struct Dims {
    m: usize,
    n: usize,
    di: usize,
}

/// What the backward pass reads.
struct Inputs<'a, E> {
    h: &'a [E],
    dv: &'a [E],
    u: &'a [E],
    xg: &'a [E],
    /// The gate's share of the input projection's bias (`di`).
    bz: &'a [E],
    gz: &'a [E],
    ct: &'a [E],
}

/// The gradients of `h`, `u` and `xg` put into the sinks, row by row, with s = sigmoid(g),
/// y = C h + D u: d(Ch) = gz SiLU(g);  d u = d(Ch) D;  d g = gz y s (1 + g (1 - s));
/// d h[s] = d(Ch) . C[:, s]. Returns per-block partial sums of d D = sum_rows d(Ch) u
/// (`di`), d C^T[s, :] = sum_rows h[s] d(Ch) (`n` rows of `di`) and the gate bias's
/// sum_rows d g (`di`), in block order.
/// With writing sinks every element is put once (the first `di` columns of `xg`'s,
/// which belong to the convolution, get zeros); with adding sinks those are left alone.
fn backward_rows<E: Real, S: Sink<E>>(
    Dims { m, n, di }: Dims,
    x: &Inputs<'_, E>,
    g_h: &mut [S],
    g_u: &mut [S],
    g_xg: &mut [S],
) -> Vec<Vec<E>> {
    assert_eq!(g_h.len(), m * n, "ssm_output: h gradient size");
    assert_eq!(g_u.len(), m * di, "ssm_output: u gradient size");
    assert_eq!(g_xg.len(), m * 2 * di, "ssm_output: xg gradient size");
    let (h, dv, u, xg, gz, ct, bz) = (x.h, x.dv, x.u, x.xg, x.gz, x.ct, x.bz);
    g_h.par_chunks_mut(ROW_BLOCK * n)
        .zip(g_u.par_chunks_mut(ROW_BLOCK * di))
        .zip(g_xg.par_chunks_mut(ROW_BLOCK * 2 * di))
        .enumerate()
        .map(|(b, ((ghb, gub), gxb))| {
            vectorized_with(
                #[inline(always)]
                |ma| {
                    let mut hc = vec![E::zero(); di];
                    let mut dhc = vec![E::zero(); di];
                    // d D (di), d C^T (n rows of di), d gate bias (di).
                    let mut acc = vec![E::zero(); 2 * di + n * di];
                    for (i, ((ghr, gur), gxr)) in ghb
                        .chunks_mut(n)
                        .zip(gub.chunks_mut(di))
                        .zip(gxb.chunks_mut(2 * di))
                        .enumerate()
                    {
                        let r = b * ROW_BLOCK + i;
                        let hr = &h[r * n..(r + 1) * n];
                        read_out(hr, ct, &mut hc);
                        let (gconv, gx) = gxr.split_at_mut(di);
                        if S::WRITES {
                            for o in gconv.iter_mut() {
                                o.put(E::zero());
                            }
                        }
                        let g = &xg[r * 2 * di + di..(r + 1) * 2 * di];
                        let (ur, gzr) = (&u[r * di..][..di], &gz[r * di..][..di]);
                        // Every slice cut to `di`: no bounds checks, vectorised.
                        let (g, hc, dv, dhc) = (&g[..di], &hc[..di], &dv[..di], &mut dhc[..di]);
                        let (gur, gx, bz) = (&mut gur[..di], &mut gx[..di], &bz[..di]);
                        let (gd, rest) = acc.split_at_mut(di);
                        let (gct, gbz) = rest.split_at_mut(n * di);
                        let (gd, gbz) = (&mut gd[..di], &mut gbz[..di]);
                        for j in 0..di {
                            let (gj, uu) = (g[j] + bz[j], ur[j]);
                            let s = sigmoid(gj, ma);
                            let y = hc[j] + dv[j] * uu;
                            let dy = gzr[j] * gj * s;
                            dhc[j] = dy;
                            gur[j].put(dy * dv[j]);
                            gd[j] += dy * uu;
                            let dg = gzr[j] * y * s * (E::one() + gj * (E::one() - s));
                            gx[j].put(dg);
                            gbz[j] += dg;
                        }
                        for (st, gh) in ghr.iter_mut().enumerate() {
                            let cs = &ct[st * di..(st + 1) * di];
                            gh.put(lane_dot(dhc, cs));
                            let hs = hr[st];
                            for (o, &d) in gct[st * di..(st + 1) * di].iter_mut().zip(&*dhc) {
                                *o += hs * d;
                            }
                        }
                    }
                    acc
                },
            )
        })
        .collect()
}

/// `y = (h C^T + D * u) * SiLU(g)` (module docs). Returns `(M, Di)`.
pub fn ssm_output<E: Real, T: Tape<E, Cpu>>(
    h: Var<E, T>,
    c: Var<E, T>,
    dvec: Var<E, T>,
    u: Var<E, T>,
    xg: Var<E, T>,
    in_bias: Option<Var<E, T>>,
) -> Var<E, T> {
    let (m, n) = dims(&h);
    let (di, n2) = dims(&c);
    assert_eq!(n, n2, "ssm_output: C has {n2} state columns, h has {n}");
    assert_eq!(dims(&dvec), (1, di), "ssm_output: D shape");
    assert_eq!(dims(&u), (m, di), "ssm_output: u shape");
    assert_eq!(dims(&xg), (m, 2 * di), "ssm_output: in_proj output shape");
    let mut inputs = vec![h, c, dvec, u, xg];
    if let Some(ib) = in_bias {
        assert_eq!(dims(&ib), (1, 2 * di), "ssm_output: input bias shape");
        inputs.push(ib);
    }
    let zero = vec![E::zero(); di];
    custom_op(
        "ssm_output",
        inputs,
        (m, di),
        move |v| {
            let (h, c, dv, u, xg) = (v[0], v[1], v[2], v[3], v[4]);
            let bz = v.get(5).map_or(&zero[..], |ib| &ib[di..]);
            let ct = transpose(c, di, n);
            let mut y = uninit(m * di);
            y.par_chunks_mut(ROW_BLOCK * di)
                .enumerate()
                .for_each(|(b, yb)| {
                    vectorized_with(
                        #[inline(always)]
                        |ma| {
                            let mut hc = vec![E::zero(); di];
                            for (i, yr) in yb.chunks_mut(di).enumerate() {
                                let r = b * ROW_BLOCK + i;
                                read_out(&h[r * n..(r + 1) * n], &ct, &mut hc);
                                let g = &xg[r * 2 * di + di..(r + 1) * 2 * di];
                                let ur = &u[r * di..(r + 1) * di];
                                let (yr, hc, dv, bz) =
                                    (&mut yr[..di], &hc[..di], &dv[..di], &bz[..di]);
                                for j in 0..di {
                                    let gj = g[j] + bz[j];
                                    yr[j].write((hc[j] + dv[j] * ur[j]) * gj * sigmoid(gj, ma));
                                }
                            }
                        },
                    )
                });
            // SAFETY: `y` has `m` rows of `di`; each row is cut to `di` and every index
            // `0..di` is written.
            (unsafe { assume_filled(y) }, ())
        },
        move |a, ()| {
            let (h, c, dv, u, xg) = (
                a.inputs[0],
                a.inputs[1],
                a.inputs[2],
                a.inputs[3],
                a.inputs[4],
            );
            let gz = a.grad_out;
            let ct = transpose(c, di, n);
            let zero = vec![E::zero(); di];
            let bz = a.inputs.get(5).map_or(&zero[..], |ib| &ib[di..]);
            let [g_h, g_c, g_d, g_u, g_xg, g_ib @ ..] = a.grads else {
                unreachable!("five or six inputs")
            };
            let dims = Dims { m, n, di };
            let ins = Inputs {
                h,
                dv,
                u,
                xg,
                bz,
                gz,
                ct: &ct,
            };
            // In the model this op is the last user of h, u and xg, so their gradients
            // are fresh and written whole; otherwise they are added to.
            let partials = if g_h.is_fresh() && g_u.is_fresh() && g_xg.is_fresh() {
                let (mut gh, mut gu, mut gx) = (uninit(m * n), uninit(m * di), uninit(m * 2 * di));
                let p = backward_rows(dims, &ins, &mut gh, &mut gu, &mut gx);
                // SAFETY: `backward_rows` puts every element of a writing sink (its docs).
                unsafe {
                    g_h.set_written(gh);
                    g_u.set_written(gu);
                    g_xg.set_written(gx);
                }
                p
            } else {
                backward_rows(dims, &ins, g_h.acc(), g_u.acc(), g_xg.acc())
            };
            let total = sum_in_order(partials, 2 * di + n * di);
            for (o, v) in g_d.acc().iter_mut().zip(&total[..di]) {
                *o += *v;
            }
            if let [g_ib] = g_ib {
                add_into(&mut g_ib.acc()[di..], &total[di + n * di..]);
            }
            // d C^T (n, di) added into d C (di, n).
            let gct = &total[di..di + n * di];
            let g_c = g_c.acc();
            for j in 0..di {
                for st in 0..n {
                    g_c[j * n + st] += gct[st * di + j];
                }
            }
        },
    )
}
