//! Dense layers as single fused ops over `(rows, features)` matrices: `linear`
//! (`y = x W^T + b`, PyTorch `nn.Linear` layout `W: [out, in]`) and `linear_nobias`.

use super::matmul::gemm_new;
use super::{col_sums, custom_op, dims, gemm, Var};
use crate::real::Real;
use dfdx::prelude::{Cpu, Tape};

/// `x W^T + b` for row-major `x: (m, k)`, `w: (n, k)`, `b: (n)`: the bias rows copied
/// into fresh memory, then the product added onto them (nothing is zeroed first).
pub(crate) fn affine<E: Real>(m: usize, n: usize, k: usize, x: &[E], w: &[E], b: &[E]) -> Vec<E> {
    let mut y = Vec::with_capacity(m * n);
    for _ in 0..m {
        y.extend_from_slice(&b[..n]);
    }
    gemm(m, n, k, x, false, w, true, &mut y, true);
    y
}

/// `y = x W^T + b` with `x: (M, in)`, `w: (out, in)`, `b: (1, out)`.
pub fn linear<E: Real, T: Tape<E, Cpu>>(x: Var<E, T>, w: Var<E, T>, b: Var<E, T>) -> Var<E, T> {
    linear_impl(x, w, Some(b))
}

/// `y = x W^T` with `x: (M, in)`, `w: (out, in)`.
pub fn linear_nobias<E: Real, T: Tape<E, Cpu>>(x: Var<E, T>, w: Var<E, T>) -> Var<E, T> {
    linear_impl(x, w, None)
}

fn linear_impl<E: Real, T: Tape<E, Cpu>>(
    x: Var<E, T>,
    w: Var<E, T>,
    b: Option<Var<E, T>>,
) -> Var<E, T> {
    let (m, k) = dims(&x);
    let (n, k2) = dims(&w);
    assert_eq!(k, k2, "linear: input width {k} but weight is [{n}, {k2}]");
    let has_bias = b.is_some();
    let mut inputs = vec![x, w];
    if let Some(b) = b {
        assert_eq!(dims(&b), (1, n), "linear: bias shape");
        inputs.push(b);
    }
    custom_op(
        "linear",
        inputs,
        (m, n),
        |d| {
            // Neither path zeroes `y` first: the bias rows are copied into fresh memory,
            // or the product writes every element.
            if has_bias {
                (affine(m, n, k, d[0], d[1], d[2]), ())
            } else {
                (gemm_new(m, n, k, d[0], false, d[1], true), ())
            }
        },
        move |a, ()| {
            let gy = a.grad_out;
            let (x, w) = (a.inputs[0], a.inputs[1]);
            a.grads[0].gemm(m, k, n, gy, false, w, false, E::one());
            a.grads[1].gemm(n, k, m, gy, true, x, false, E::one());
            if has_bias {
                a.grads[2].put(col_sums(gy, n));
            }
        },
    )
}
