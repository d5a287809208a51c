//! Fused elementwise ops: exact GELU, the per-token step size `mean(softplus(.))` and the
//! dropout-then-residual add. (The SSM output gate is fused with its read-out in
//! [`super::ssm_output`].)

use super::{
    assume_filled, custom_op, dims, par_rows, par_rows_with, uninit, Dropout, Fill, Sink, Var,
    ROW_BLOCK,
};
use crate::isa::vectorized_with;
use crate::real::{gelu_and_grad, lane_sum, Real};
use dfdx::prelude::{Cpu, Tape};
use rayon::prelude::*;

/// Exact (erf) GELU of `x + bias` (`bias: (1, N)` added to every row of `x: (M, N)`;
/// the bias of the linear layer before, added here so that layer never writes it).
pub fn gelu<E: Real, T: Tape<E, Cpu>>(x: Var<E, T>, bias: Option<Var<E, T>>) -> Var<E, T> {
    let shape = dims(&x);
    let n = shape.1;
    let mut inputs = vec![x];
    if let Some(b) = bias {
        assert_eq!(dims(&b), (1, n), "gelu: bias shape");
        inputs.push(b);
    }
    custom_op(
        "gelu",
        inputs,
        shape,
        |v| {
            let (x, b) = (v[0], v.get(1).copied());
            if T::OWNS_TAPE {
                // Training: the derivative too, from the same evaluation, for the backward.
                return gelu_rows(x, n, b);
            }
            let mut y = uninit(x.len());
            par_rows_with(
                &mut y,
                n,
                #[inline(always)]
                |ma, r, yr| {
                    let (xr, yr) = (&x[r * n..][..n], &mut yr[..n]);
                    match b {
                        Some(b) => {
                            for ((y, &x), &b) in yr.iter_mut().zip(xr).zip(&b[..n]) {
                                y.write(gelu_and_grad(x + b, ma).0);
                            }
                        }
                        None => {
                            for (y, &x) in yr.iter_mut().zip(xr) {
                                y.write(gelu_and_grad(x, ma).0);
                            }
                        }
                    }
                },
            );
            // SAFETY: every row is cut to `n` elements and each is written on either branch.
            (unsafe { assume_filled(y) }, Vec::new())
        },
        move |a, der| {
            let kernel = GeluGrad {
                der: &der,
                gy: a.grad_out,
                n,
            };
            match a.grads {
                [gx, gb] => gx.fill_and_sum(kernel, n, gb),
                [gx] => gx.fill(kernel),
                _ => unreachable!("one or two inputs"),
            }
        },
    )
}

/// `(GELU(x + b), GELU'(x + b))` of every element of `x` (rows of `n`; `b: (n)` added to
/// each row when given), from one evaluation each: the values for the forward pass and
/// the derivatives for the backward.
pub(crate) fn gelu_rows<E: Real>(x: &[E], n: usize, b: Option<&[E]>) -> (Vec<E>, Vec<E>) {
    let (mut y, mut der) = (uninit(x.len()), uninit(x.len()));
    y.par_chunks_mut(ROW_BLOCK * n)
        .zip(der.par_chunks_mut(ROW_BLOCK * n))
        .enumerate()
        .for_each(|(blk, (yb, db))| {
            vectorized_with(
                #[inline(always)]
                |ma| {
                    let xb = &x[blk * ROW_BLOCK * n..][..yb.len()];
                    for ((yr, dr), xr) in yb.chunks_mut(n).zip(db.chunks_mut(n)).zip(xb.chunks(n)) {
                        let (yr, dr, xr) = (&mut yr[..n], &mut dr[..n], &xr[..n]);
                        // Two loops, not one with a per-element choice: each vectorises.
                        let out = yr.iter_mut().zip(dr.iter_mut());
                        match b {
                            Some(b) => {
                                for ((y, d), (&x, &b)) in out.zip(xr.iter().zip(&b[..n])) {
                                    let (v, dd) = gelu_and_grad(x + b, ma);
                                    y.write(v);
                                    d.write(dd);
                                }
                            }
                            None => {
                                for ((y, d), &x) in out.zip(xr) {
                                    let (v, dd) = gelu_and_grad(x, ma);
                                    y.write(v);
                                    d.write(dd);
                                }
                            }
                        }
                    }
                },
            )
        });
    // SAFETY: both have `x.len()` elements in blocks zipped with `x`'s, rows cut to `n`,
    // and every index of every row is written.
    unsafe { (assume_filled(y), assume_filled(der)) }
}

/// `dt_r = mean_j softplus(z[r, j] + bias[j])`: one step size per row of `z: (M, Di)`,
/// shape `(M, 1)`; `bias: (1, Di)` is the bias of the linear layer before, added here so
/// that layer never writes it.
pub fn softplus_mean<E: Real, T: Tape<E, Cpu>>(z: Var<E, T>, bias: Option<Var<E, T>>) -> Var<E, T> {
    let (m, di) = dims(&z);
    let inv = E::one() / E::of(di as f64);
    let mut inputs = vec![z];
    if let Some(b) = bias {
        assert_eq!(dims(&b), (1, di), "softplus_mean: bias shape");
        inputs.push(b);
    }
    custom_op(
        "softplus_mean",
        inputs,
        (m, 1),
        |v| {
            let z = v[0];
            let zero = vec![E::zero(); di];
            let b = v.get(1).copied().unwrap_or(&zero);
            let mut dt = vec![E::zero(); m];
            if !T::OWNS_TAPE {
                // No backward: the step sizes alone. A separate loop on purpose: one
                // loop with an optional store of sigmoid(z) stops vectorising (4x slower,
                // measured).
                dt.par_chunks_mut(ROW_BLOCK)
                    .enumerate()
                    .for_each(|(blk, db)| {
                        vectorized_with(
                            #[inline(always)]
                            |ma| {
                                let mut sp = vec![E::zero(); di];
                                for (i, d) in db.iter_mut().enumerate() {
                                    let zr = &z[(blk * ROW_BLOCK + i) * di..][..di];
                                    for ((p, &x), &bj) in sp.iter_mut().zip(zr).zip(&b[..di]) {
                                        let x = x + bj;
                                        let e = (-x.abs()).fast_exp(ma);
                                        *p = x.max(E::zero()) + e.fast_ln_1p_unit(ma);
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
                .for_each(|(blk, (sb, db))| {
                    vectorized_with(
                        #[inline(always)]
                        |ma| {
                            let mut sp = vec![E::zero(); di];
                            for (i, (srow, d)) in sb.chunks_mut(di).zip(db.iter_mut()).enumerate() {
                                let zr = &z[(blk * ROW_BLOCK + i) * di..][..di];
                                let (srow, sp) = (&mut srow[..di], &mut sp[..di]);
                                for (((s, p), &x), &bj) in
                                    srow.iter_mut().zip(sp.iter_mut()).zip(zr).zip(&b[..di])
                                {
                                    let x = x + bj;
                                    let e = (-x.abs()).fast_exp(ma);
                                    *p = x.max(E::zero()) + e.fast_ln_1p_unit(ma);
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
            let kernel = SoftplusMeanGrad {
                gdt,
                sig: &sig,
                di,
                inv,
            };
            match a.grads {
                [gz, gb] => gz.fill_and_sum(kernel, di, gb),
                [gz] => gz.fill(kernel),
                _ => unreachable!("one or two inputs"),
            }
        },
    )
}

/// Residual add with dropout on the branch: `x + dropout(delta + bias)`, where `bias:
/// (1, D)` is the bias of the linear layer that made `delta`, added here so that layer
/// never writes it.
pub fn add_dropout<E: Real, T: Tape<E, Cpu>>(
    x: Var<E, T>,
    delta: Var<E, T>,
    bias: Option<Var<E, T>>,
    dropout: Option<Dropout>,
) -> Var<E, T> {
    let (m, d) = dims(&x);
    assert_eq!(dims(&delta), (m, d), "add_dropout: shapes");
    let mut inputs = vec![x, delta];
    if let Some(b) = bias {
        assert_eq!(dims(&b), (1, d), "add_dropout: bias shape");
        inputs.push(b);
    }
    custom_op(
        "add_dropout",
        inputs,
        (m, d),
        |v| {
            let (x, dl) = (v[0], v[1]);
            let zero = vec![E::zero(); d];
            let b = v.get(2).copied().unwrap_or(&zero);
            let mut y = uninit(m * d);
            par_rows(
                &mut y,
                d,
                #[inline(always)]
                |r, yr| {
                    // Rows cut to `d`, so the loops have no bounds checks and vectorise.
                    let (xr, dr, yr) = (&x[r * d..][..d], &dl[r * d..][..d], &mut yr[..d]);
                    let b = &b[..d];
                    match dropout {
                        None => {
                            for (((y, &x), &dv), &bj) in yr.iter_mut().zip(xr).zip(dr).zip(b) {
                                y.write(x + (dv + bj));
                            }
                        }
                        Some(p) => {
                            for (j, (((y, &x), &dv), &bj)) in
                                yr.iter_mut().zip(xr).zip(dr).zip(b).enumerate()
                            {
                                y.write(x + p.scale::<E>(r * d + j) * (dv + bj));
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
            let [gx, gd, gb @ ..] = a.grads else {
                unreachable!("two or three inputs")
            };
            gx.fill(Residual {
                gy,
                d,
                dropout: None,
            });
            let kernel = Residual { gy, d, dropout };
            match gb {
                [gb] => gd.fill_and_sum(kernel, d, gb),
                _ => gd.fill(kernel),
            }
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

/// The backward of [`gelu`]: `dx = gy * GELU'(x + b)`, row by row (`n` columns).
struct GeluGrad<'a, E> {
    /// GELU' at the forward pass's inputs.
    der: &'a [E],
    gy: &'a [E],
    n: usize,
}

// SAFETY: `par_rows` hands out every row of `out`; each is cut to `n` elements and every
// one is put.
unsafe impl<E: Real> Fill<E> for GeluGrad<'_, E> {
    fn fill<S: Sink<E>>(self, out: &mut [S]) {
        let Self { der, gy, n } = self;
        assert!(
            out.len() == der.len() && gy.len() == der.len(),
            "gelu: gradient size"
        );
        par_rows(
            out,
            n,
            #[inline(always)]
            |r, g| {
                let (g, dr, gr) = (&mut g[..n], &der[r * n..][..n], &gy[r * n..][..n]);
                for ((g, &dd), &gy) in g.iter_mut().zip(dr).zip(gr) {
                    g.put(gy * dd);
                }
            },
        );
    }
}
