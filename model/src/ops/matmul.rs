//! Matrix products of the ops: AMX tiles for large f32 products on CPUs that have them
//! ([`super::amx`]), else the `gemm` crate (its AVX-512 or AVX2/FMA kernels, chosen by
//! the CPU), or, on the portable path ([`crate::isa`]), a plain blocked product.
//!
//! All keep every output element's sum in an order that depends only on the shapes:
//! AMX and `gemm` split the work between threads by output blocks, never along the
//! summed dimension, and the portable product sums each element in index order. So
//! results are the same bits for any thread count (tested in `tests/threads.rs`).

use super::amx;
use crate::isa::{self, Isa};
use crate::real::Real;
use rayon::prelude::*;

/// Row-major `c (m x n) [+]= op(a) . op(b)` where `op(a)` is `m x k` and `op(b)` is `k x n`;
/// `a_t` means `a` is stored `k x m` (transposed), likewise `b_t` for `b` stored `n x k`.
/// Runs on the current rayon pool's threads.
#[allow(clippy::too_many_arguments)]
pub fn gemm<E: Real>(
    m: usize,
    n: usize,
    k: usize,
    a: &[E],
    a_t: bool,
    b: &[E],
    b_t: bool,
    c: &mut [E],
    accumulate: bool,
) {
    gemm_scaled(m, n, k, a, a_t, b, b_t, c, accumulate, E::one());
}

/// A new `m x n` matrix `op(a) . op(b)` (as [`gemm`] without accumulating), written by
/// the product directly: the memory is never zeroed first.
#[allow(clippy::too_many_arguments)]
pub fn gemm_new<E: Real>(
    m: usize,
    n: usize,
    k: usize,
    a: &[E],
    a_t: bool,
    b: &[E],
    b_t: bool,
) -> Vec<E> {
    gemm_new_scaled(m, n, k, a, a_t, b, b_t, E::one())
}

/// [`gemm_new`] of `scale op(a) . op(b)`: the same bits as [`gemm_scaled`] into zeros.
#[allow(clippy::too_many_arguments)]
pub fn gemm_new_scaled<E: Real>(
    m: usize,
    n: usize,
    k: usize,
    a: &[E],
    a_t: bool,
    b: &[E],
    b_t: bool,
    scale: E,
) -> Vec<E> {
    if isa::kernels() == Isa::Portable || m == 0 || n == 0 || k == 0 {
        let mut c = vec![E::zero(); m * n];
        gemm_scaled(m, n, k, a, a_t, b, b_t, &mut c, false, scale);
        return c;
    }
    assert_eq!(a.len(), m * k, "gemm lhs size");
    assert_eq!(b.len(), k * n, "gemm rhs size");
    let mut c: Vec<E> = Vec::with_capacity(m * n);
    // SAFETY: `c` has capacity for the `m * n` elements the strides address; without
    // reading the destination the product only writes them (every one, since `k > 0`),
    // so all `m * n` are initialised before `set_len`.
    unsafe {
        crate_gemm(m, n, k, a, a_t, b, b_t, c.as_mut_ptr(), false, scale);
        c.set_len(m * n);
    }
    c
}

/// The `gemm` crate's product into row-major `dst` (`m x n`): `dst = [dst +] scale op(a)
/// . op(b)`, split between the current pool's threads when the product is large.
///
/// # Safety
/// `dst` must be valid for `m * n` writes (and reads when `read_dst`) and must not alias
/// `a` or `b`, whose sizes the caller has checked (`m * k`, `k * n`).
#[allow(clippy::too_many_arguments)]
unsafe fn crate_gemm<E: Real>(
    m: usize,
    n: usize,
    k: usize,
    a: &[E],
    a_t: bool,
    b: &[E],
    b_t: bool,
    dst: *mut E,
    read_dst: bool,
    scale: E,
) {
    if isa::amx() && amx::suits(m, n, k) {
        if let (Some(a), Some(b)) = (as_f32(a), as_f32(b)) {
            // Exact: `E` is f32.
            let scale = scale.f64() as f32;
            // SAFETY: AMX is in use only when available; the caller's guarantees hold for
            // the same memory seen as f32 (`E` is f32 here).
            unsafe { amx::gemm_f32(m, n, k, a, a_t, b, b_t, dst.cast(), read_dst, scale) };
            return;
        }
    }
    let (a_rs, a_cs) = if a_t {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (b_rs, b_cs) = if b_t {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    // SAFETY: as the caller guarantees; E is f32 or f64.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            read_dst,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            E::one(),
            scale,
            false,
            false,
            false,
            parallelism(m, n, k),
        )
    }
}

/// `x` as f32 when `E` is f32.
fn as_f32<E: Real>(x: &[E]) -> Option<&[f32]> {
    (std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>())
        // SAFETY: `E` is `f32`: same size, alignment and bits.
        .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) })
}

fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && m * n * k >= 64 * 64 * 64 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// [`gemm`] of `scale op(a) . op(b)`: the scale is applied inside the product (no pass
/// over `a` or `c`).
#[allow(clippy::too_many_arguments)]
pub fn gemm_scaled<E: Real>(
    m: usize,
    n: usize,
    k: usize,
    a: &[E],
    a_t: bool,
    b: &[E],
    b_t: bool,
    c: &mut [E],
    accumulate: bool,
    scale: E,
) {
    assert_eq!(a.len(), m * k, "gemm lhs size");
    assert_eq!(b.len(), k * n, "gemm rhs size");
    assert_eq!(c.len(), m * n, "gemm dst size");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(E::zero());
        }
        return;
    }
    if isa::kernels() == Isa::Portable {
        portable(m, n, k, a, a_t, b, b_t, c, accumulate, scale);
        return;
    }
    // SAFETY: the slices have exactly the sizes the strides address (asserted above), `c`
    // is exclusively borrowed and does not alias `a` or `b`.
    unsafe { crate_gemm(m, n, k, a, a_t, b, b_t, c.as_mut_ptr(), accumulate, scale) }
}

/// Rows of `c` per parallel task of the portable product.
const PORTABLE_ROWS: usize = 16;

/// The portable product: `b` made row-major `k x n`, then each row of `c` accumulated
/// as `c[i, :] += a[i, p] * b[p, :]` for `p` in order.
#[allow(clippy::too_many_arguments)]
fn portable<E: Real>(
    m: usize,
    n: usize,
    k: usize,
    a: &[E],
    a_t: bool,
    b: &[E],
    b_t: bool,
    c: &mut [E],
    accumulate: bool,
    scale: E,
) {
    let b_rows: std::borrow::Cow<'_, [E]> = if b_t {
        let mut t = vec![E::zero(); k * n];
        for (j, col) in b.chunks(k).enumerate() {
            for (p, &v) in col.iter().enumerate() {
                t[p * n + j] = v;
            }
        }
        t.into()
    } else {
        b.into()
    };
    let a_at = |i: usize, p: usize| if a_t { a[p * m + i] } else { a[i * k + p] };
    c.par_chunks_mut(PORTABLE_ROWS * n)
        .enumerate()
        .for_each(|(blk, rows)| {
            for (r, crow) in rows.chunks_mut(n).enumerate() {
                let i = blk * PORTABLE_ROWS + r;
                if !accumulate {
                    crow.fill(E::zero());
                }
                for p in 0..k {
                    let av = scale * a_at(i, p);
                    for (cv, &bv) in crow.iter_mut().zip(&b_rows[p * n..(p + 1) * n]) {
                        *cv += av * bv;
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f64], a_t: bool, b: &[f64], b_t: bool) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let av = if a_t { a[p * m + i] } else { a[i * k + p] };
                    let bv = if b_t { b[j * k + p] } else { b[p * n + j] };
                    c[i * n + j] += av * bv;
                }
            }
        }
        c
    }

    #[test]
    fn products_match_a_naive_product_in_every_layout_and_scale() {
        let (m, n, k) = (37, 29, 53);
        let a: Vec<f64> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f64 - 6.0) / 7.0)
            .collect();
        let b: Vec<f64> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f64 - 5.0) / 3.0)
            .collect();
        for a_t in [false, true] {
            for b_t in [false, true] {
                let want = naive(m, n, k, &a, a_t, &b, b_t);
                let fresh = gemm_new(m, n, k, &a, a_t, &b, b_t);
                for (x, w) in fresh.iter().zip(&want) {
                    assert!((x - w).abs() < 1e-9, "gemm_new {a_t} {b_t}");
                }
                for (acc, scale) in [(false, 1.0), (true, 1.0), (false, 0.375), (true, -2.5)] {
                    let mut c1 = vec![1.0; m * n];
                    portable(m, n, k, &a, a_t, &b, b_t, &mut c1, acc, scale);
                    let mut c2 = vec![1.0; m * n];
                    gemm_scaled(m, n, k, &a, a_t, &b, b_t, &mut c2, acc, scale);
                    for ((x, y), w) in c1.iter().zip(&c2).zip(&want) {
                        let w = scale * w;
                        let w = if acc { w + 1.0 } else { w };
                        assert!(
                            (x - w).abs() < 1e-9 && (y - w).abs() < 1e-9,
                            "{a_t} {b_t} {acc}"
                        );
                    }
                }
            }
        }
    }
}
