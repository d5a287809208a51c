//! Fused elementwise ops: exact GELU, the per-token step size `mean(softplus(.))` and the
//! dropout-then-residual add. (The SSM output gate is fused with its read-out in
//! [`super::ssm_output`].)

use super::{
    assume_filled, custom_op, dims, par_rows, uninit, Dropout, Fill, Sink, Var, ROW_BLOCK,
};
use crate::isa::vectorized;
use crate::real::{gelu_and_grad, lane_sum, Real};
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
            a.grads[0].fill(GeluGrad { x, gy });
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
            a.grads[0].fill(SoftplusMeanGrad {
                gdt,
                sig: &sig,
                di,
                inv,
            });
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
            a.grads[0].fill(Residual {
                gy,
                d,
                dropout: None,
            });
            a.grads[1].fill(Residual { gy, d, dropout });
        },
    )
}

/// The backward of [`add_dropout`] for one input: `gy`, times the dropout multiplier when
/// `dropout` is given, put row by row.
struct Residual<'a, E> {
    gy: &'a [E],
    d: usize,
    dropout: Option<Dropout>,
}

// SAFETY: `par_rows` hands out every row of `out`; each row is cut to `d` and every
// element is put on either branch.
unsafe impl<E: Real> Fill<E> for Residual<'_, E> {
    fn fill<S: Sink<E>>(self, out: &mut [S]) {
        let Self { gy, d, dropout } = self;
        assert_eq!(out.len(), gy.len(), "add_dropout: gradient size");
        par_rows(
            out,
            d,
            #[inline(always)]
            |r, o| {
                let (gr, o) = (&gy[r * d..][..d], &mut o[..d]);
                match dropout {
                    None => {
                        for (o, &g) in o.iter_mut().zip(gr) {
                            o.put(g);
                        }
                    }
                    Some(p) => {
                        for (j, (o, &g)) in o.iter_mut().zip(gr).enumerate() {
                            o.put(p.scale::<E>(r * d + j) * g);
                        }
                    }
                }
            },
        );
    }
}

/// The backward of [`softplus_mean`]: `dz[r, j] = gdt[r] / Di * sigmoid(z[r, j])`.
struct SoftplusMeanGrad<'a, E> {
    gdt: &'a [E],
    sig: &'a [E],
    di: usize,
    inv: E,
}

// SAFETY: `par_rows` hands out every row of `out`; each of its `di` elements is put.
unsafe impl<E: Real> Fill<E> for SoftplusMeanGrad<'_, E> {
    fn fill<S: Sink<E>>(self, out: &mut [S]) {
        let Self { gdt, sig, di, inv } = self;
        assert_eq!(out.len(), sig.len(), "softplus_mean: gradient size");
        par_rows(
            out,
            di,
            #[inline(always)]
            |r, g| {
                let s = gdt[r] * inv;
                for (g, &sg) in g[..di].iter_mut().zip(&sig[r * di..][..di]) {
                    g.put(s * sg);
                }
            },
        );
    }
}

/// The backward of [`gelu`]: `dx = gy * GELU'(x)`.
struct GeluGrad<'a, E> {
    x: &'a [E],
    gy: &'a [E],
}

// SAFETY: `out`, `x` and `gy` have the same length (asserted) and are cut into the same
// chunks; every element of every chunk is put.
unsafe impl<E: Real> Fill<E> for GeluGrad<'_, E> {
    fn fill<S: Sink<E>>(self, out: &mut [S]) {
        let Self { x, gy } = self;
        assert!(
            out.len() == x.len() && gy.len() == x.len(),
            "gelu: gradient size"
        );
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(gy.par_chunks(CHUNK)))
            .for_each(|(g, (x, gy))| {
                vectorized(
                    #[inline(always)]
                    || {
                        for ((g, &x), &gy) in g.iter_mut().zip(x).zip(gy) {
                            g.put(gy * gelu_and_grad(x).1);
                        }
                    },
                )
            });
    }
}
