//! The selective scan: the linear recurrence of the SSM with an input-dependent step
//! (S4D/Mamba discretisation, Gu et al. 2022; Gu & Dao 2023, eq. 4 with zero-order hold on
//! `A` and Euler on `B`):
//!
//! `A = -exp(A_log)`, `h_t = exp(dt_t A) * h_{t-1} + dt_t * (B u)_t`, `h_{-1} = 0`,
//!
//! with one scalar `dt_t` per token; the projection `B u` is a matmul done outside, the
//! read-out `C h` is fused into [`super::ssm_output`]. Sequences are independent and run
//! in parallel.

use super::{add_into, custom_op, dims, Var};
use crate::isa::vectorized_with;
use crate::real::Real;
use dfdx::prelude::{Cpu, Tape};
use rayon::prelude::*;

/// `h: (B*T, N)` from `dt: (B*T, 1)`, `a_log: (1, N)` and `bu: (B*T, N)`, sequences of `seq` rows.
pub fn selective_scan<E: Real, T: Tape<E, Cpu>>(
    dt: Var<E, T>,
    a_log: Var<E, T>,
    bu: Var<E, T>,
    seq: usize,
) -> Var<E, T> {
    let (m, n) = dims(&bu);
    assert_eq!(dims(&dt), (m, 1), "selective_scan: dt shape");
    assert_eq!(dims(&a_log), (1, n), "selective_scan: A_log shape");
    assert!(
        seq > 0 && m % seq == 0,
        "selective_scan: {m} rows are not whole sequences of {seq}"
    );
    custom_op(
        "selective_scan",
        vec![dt, a_log, bu],
        (m, n),
        |v| {
            let (dt, a_log, bu) = (v[0], v[1], v[2]);
            let a: Vec<E> = a_log.iter().map(|&x| -x.exp()).collect();
            let mut h = vec![E::zero(); m * n];
            h.par_chunks_mut(seq * n).enumerate().for_each(|(s, hs)| {
                vectorized_with(
                    #[inline(always)]
                    |ma| {
                        let mut prev = vec![E::zero(); n];
                        for t in 0..seq {
                            let r = s * seq + t;
                            let d = dt[r];
                            for i in 0..n {
                                prev[i] = (d * a[i]).fast_exp(ma) * prev[i] + d * bu[r * n + i];
                            }
                            hs[t * n..(t + 1) * n].copy_from_slice(&prev);
                        }
                    },
                )
            });
            let saved = h.clone();
            (h, saved)
        },
        move |args, h| {
            let (dt, a_log, bu) = (args.inputs[0], args.inputs[1], args.inputs[2]);
            let gh_out = args.grad_out;
            let a: Vec<E> = a_log.iter().map(|&x| -x.exp()).collect();
            let (g_dt, rest) = args.grads.split_at_mut(1);
            let (g_alog, g_bu) = rest.split_at_mut(1);
            let partials: Vec<Vec<E>> = g_dt[0]
                .acc()
                .par_chunks_mut(seq)
                .zip(g_bu[0].acc().par_chunks_mut(seq * n))
                .enumerate()
                .map(|(s, (gdt, gbu))| {
                    vectorized_with(
                        #[inline(always)]
                        |ma| {
                            let mut galog = vec![E::zero(); n];
                            let mut carry = vec![E::zero(); n];
                            for t in (0..seq).rev() {
                                let r = s * seq + t;
                                let d = dt[r];
                                let mut gd = E::zero();
                                for i in 0..n {
                                    let gh = gh_out[r * n + i] + carry[i];
                                    let da = (d * a[i]).fast_exp(ma);
                                    let hp = if t > 0 { h[(r - 1) * n + i] } else { E::zero() };
                                    gbu[t * n + i] += d * gh;
                                    gd += gh * (bu[r * n + i] + hp * a[i] * da);
                                    galog[i] += gh * hp * da * d * a[i];
                                    carry[i] = da * gh;
                                }
                                gdt[t] += gd;
                            }
                            galog
                        },
                    )
                })
                .collect();
            let g_alog = g_alog[0].acc();
            for p in partials {
                add_into(g_alog, &p);
            }
        },
    )
}
