//! The gradients a backward closure writes: [`Grad`], one per input of an op.
//!
//! dfdx keeps gradients in a map and hands out zeroed memory for a tensor the first time
//! anything adds to it. Every op of this model then ADDED its contribution into those
//! zeros: a full pass of zeroing plus a full read of zeros for each intermediate
//! tensor's gradient (measured: the zeroing alone was 3% of a training step).
//!
//! Here the gradient of an op's OUTPUT lives beside the graph instead, in a slot shared
//! by every handle to that tensor (`Slot`). The backward pass runs ops in reverse
//! order, so the first op to reach a slot finds it empty: its input gradient is
//! [`Grad::is_fresh`], and the op may WRITE it whole ([`Grad::gemm`], [`Grad::put`],
//! [`Grad::fill`]) instead of adding into zeros. Later consumers find the
//! written gradient and add to it. Writing `v` gives the same bits as `0 + v` (up to
//! the sign of a zero), so results do not change. Leaf tensors (parameters, inputs
//! made with `Var::from_vec`) keep their gradients in dfdx's map, as before: they are
//! never fresh, because a parameter's gradient may already hold other contributions.

use super::matmul::{gemm_new_scaled, gemm_scaled};
use super::{add_into, transpose};
use crate::real::Real;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

/// Where the gradient of an op's output waits for the op that made it.
pub(crate) type Slot<E> = Arc<Mutex<Option<Vec<E>>>>;

/// One input's gradient inside a backward closure.
#[derive(Debug)]
pub struct Grad<E> {
    /// Nothing written yet: `len` elements, no memory.
    fresh: bool,
    len: usize,
    buf: Vec<E>,
}

/// Where a kernel puts one gradient value: added to a gradient that already holds
/// others (`E`), or written into fresh memory (`MaybeUninit<E>`). Kernels generic over
/// it serve both cases from one body.
pub trait Sink<E>: Send + Sync {
    /// Whether this sink writes (fresh memory: every element must be put once) rather
    /// than adds.
    const WRITES: bool;
    /// Adds `v` here, or writes it.
    fn put(&mut self, v: E);
}

impl<E: Real> Sink<E> for E {
    const WRITES: bool = false;
    #[inline(always)]
    fn put(&mut self, v: E) {
        *self += v;
    }
}

impl<E: Real> Sink<E> for MaybeUninit<E> {
    const WRITES: bool = true;
    #[inline(always)]
    fn put(&mut self, v: E) {
        self.write(v);
    }
}

/// A kernel that puts one value into every element of a gradient through [`Sink`]s, so
/// one body serves fresh gradients (written) and existing ones (added to): see
/// [`Grad::fill`].
///
/// # Safety
/// `fill` must put every element of `out` when `S::WRITES` (the memory is not
/// initialised otherwise).
pub unsafe trait Fill<E> {
    /// Puts this kernel's values into `out`.
    fn fill<S: Sink<E>>(self, out: &mut [S]);
}

impl<E: Real> Grad<E> {
    /// Runs `kernel` on this gradient: writing fresh memory when it is fresh, else
    /// adding to the values it holds.
    pub fn fill(&mut self, kernel: impl Fill<E>) {
        if self.fresh {
            let mut v = super::uninit(self.len);
            kernel.fill(&mut v);
            // SAFETY: a `Fill` puts every element of a writing sink (its contract).
            unsafe { self.set_written(v) };
        } else {
            kernel.fill(&mut self.buf);
        }
    }

    /// Runs `kernel` as [`Grad::fill`] and adds the column sums of the values it puts
    /// (rows of `n`) to `bias`: the gradient of a bias added to every row of this input
    /// (see [`super::col_sums`]).
    pub fn fill_and_sum(&mut self, kernel: impl Fill<E>, n: usize, bias: &mut Grad<E>) {
        let mut own = Grad::fresh(self.len);
        own.fill(kernel);
        // Invariant: `fill` on a fresh gradient writes it.
        let g = own.into_written().expect("filled gradient");
        bias.put(super::col_sums(&g, n));
        self.put(g);
    }

    /// A gradient of `len` elements that nothing has written yet.
    pub(crate) fn fresh(len: usize) -> Self {
        Self {
            fresh: true,
            len,
            buf: Vec::new(),
        }
    }

    /// A gradient that already holds values (possibly zeros) to add to.
    pub(crate) fn existing(buf: Vec<E>) -> Self {
        Self {
            fresh: false,
            len: buf.len(),
            buf,
        }
    }

    /// The values, unless nothing was ever written (then `None`: the gradient is zero).
    pub(crate) fn into_written(self) -> Option<Vec<E>> {
        (!self.fresh).then_some(self.buf)
    }

    /// Whether nothing has been written to this gradient yet.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// The gradient to add into (zeroed first if it was fresh).
    pub fn acc(&mut self) -> &mut [E] {
        if self.fresh {
            self.buf = vec![E::zero(); self.len];
            self.fresh = false;
        }
        &mut self.buf
    }

    /// Adds `v`, or takes it as the gradient when fresh (no copy).
    pub fn put(&mut self, v: Vec<E>) {
        assert_eq!(v.len(), self.len, "gradient size");
        if self.fresh {
            self.buf = v;
            self.fresh = false;
        } else {
            add_into(&mut self.buf, &v);
        }
    }

    /// Adds the product `scale op(a) . op(b)` (`m x n`, as [`gemm_scaled`]), or writes it
    /// when fresh (the product writes every element; nothing is zeroed).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &mut self,
        m: usize,
        n: usize,
        k: usize,
        a: &[E],
        a_t: bool,
        b: &[E],
        b_t: bool,
        scale: E,
    ) {
        assert_eq!(m * n, self.len, "gradient size");
        if self.fresh {
            self.buf = gemm_new_scaled(m, n, k, a, a_t, b, b_t, scale);
            self.fresh = false;
        } else {
            gemm_scaled(m, n, k, a, a_t, b, b_t, &mut self.buf, true, scale);
        }
    }

    /// Takes `v` as this fresh gradient, written whole by a [`Sink`] kernel into
    /// memory from [`super::uninit`].
    ///
    /// # Safety
    /// Every element of `v` must have been written.
    pub unsafe fn set_written(&mut self, v: Vec<MaybeUninit<E>>) {
        assert!(self.fresh, "only a fresh gradient can be written whole");
        assert_eq!(v.len(), self.len, "gradient size");
        // SAFETY: the caller guarantees every element was written.
        self.buf = unsafe { super::assume_filled(v) };
        self.fresh = false;
    }

    /// Adds (or writes, when fresh) `scale a^T b` (`n x k`) for row-major `a: (r, n)` and
    /// `b: (r, k)`: a weight's gradient summed over `r` rows. A gradient wider than it is
    /// long (`n > k`) and larger than [`TN_MIN_BYTES`] is made as `scale b^T a` (`k x n`)
    /// and transposed in: the `gemm` crate runs that orientation faster once the
    /// gradient no longer stays in cache (measured, the LM head's weight gradient at
    /// V = 4,897 inside a training step: 89 -> 70 ms per step of the head's backward;
    /// at V = 2,000, 1 MB, no gain).
    pub fn gemm_tn(&mut self, n: usize, k: usize, r: usize, a: &[E], b: &[E], scale: E) {
        if n <= k || n * k * std::mem::size_of::<E>() <= TN_MIN_BYTES {
            self.gemm(n, k, r, a, true, b, false, scale);
            return;
        }
        assert_eq!(n * k, self.len, "gradient size");
        let t = gemm_new_scaled(k, n, r, b, true, a, false, scale);
        if self.fresh {
            self.buf = transpose(&t, k, n);
            self.fresh = false;
        } else {
            add_transposed(&mut self.buf, &t, k, n);
        }
    }
}

/// The size above which [`Grad::gemm_tn`] makes a weight gradient transposed: 1 MiB.
pub const TN_MIN_BYTES: usize = 1 << 20;

/// `dst (cols x rows) += t^T` for row-major `t: (rows, cols)`, in tiles that stay in cache.
fn add_transposed<E: Real>(dst: &mut [E], t: &[E], rows: usize, cols: usize) {
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for c in c0..(c0 + TILE).min(cols) {
                for r in r0..(r0 + TILE).min(rows) {
                    dst[c * rows + r] += t[r * cols + c];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Puts 0.5 into every element.
    struct Halves;

    // SAFETY: every element of `out` is put.
    unsafe impl Fill<f64> for Halves {
        fn fill<S: Sink<f64>>(self, out: &mut [S]) {
            out.iter_mut().for_each(|x| x.put(0.5));
        }
    }

    #[test]
    fn a_fresh_gradient_is_written_then_added_to() {
        let mut g = Grad::<f64>::fresh(3);
        assert!(g.is_fresh());
        g.put(vec![1.0, 2.0, 3.0]);
        assert!(!g.is_fresh());
        g.put(vec![1.0, 1.0, 1.0]);
        g.fill(Halves);
        assert_eq!(g.into_written(), Some(vec![2.5, 3.5, 4.5]));
        let mut h = Grad::<f64>::fresh(2);
        h.fill(Halves);
        assert_eq!(h.into_written(), Some(vec![0.5, 0.5]));
        let mut z = Grad::<f64>::fresh(2);
        assert_eq!(z.acc(), &[0.0, 0.0]);
        assert_eq!(Grad::<f64>::fresh(2).into_written(), None);
    }

    #[test]
    fn a_fresh_product_equals_one_added_to_zeros() {
        let a: Vec<f64> = (0..12).map(|i| i as f64 * 0.37 - 1.0).collect();
        let b: Vec<f64> = (0..20).map(|i| 0.5 - i as f64 * 0.11).collect();
        let mut fresh = Grad::fresh(15);
        fresh.gemm(3, 5, 4, &a, false, &b, false, 0.7);
        let mut zeros = Grad::existing(vec![0.0; 15]);
        zeros.gemm(3, 5, 4, &a, false, &b, false, 0.7);
        assert_eq!(fresh.into_written(), zeros.into_written());
    }

    #[test]
    fn a_large_weight_gradient_made_transposed_is_the_same_product() {
        // a: (r, n), b: (r, k) with n > k and the gradient above the threshold, so the
        // product is made transposed; checked against the sums written out.
        let (r, n, k) = (3, 2100, 64);
        assert!(n * k * 8 > TN_MIN_BYTES);
        let a: Vec<f64> = (0..r * n).map(|i| (i % 11) as f64 * 0.25 - 1.0).collect();
        let b: Vec<f64> = (0..r * k).map(|i| (i % 5) as f64 * 0.5 - 1.0).collect();
        let want =
            |i: usize, j: usize| 0.5 * (0..r).map(|p| a[p * n + i] * b[p * k + j]).sum::<f64>();
        let mut fresh = Grad::fresh(n * k);
        fresh.gemm_tn(n, k, r, &a, &b, 0.5);
        let mut existing = Grad::existing(vec![1.0; n * k]);
        existing.gemm_tn(n, k, r, &a, &b, 0.5);
        let (fresh, existing) = (
            fresh.into_written().unwrap(),
            existing.into_written().unwrap(),
        );
        for i in 0..n {
            for j in 0..k {
                let w = want(i, j);
                assert!((fresh[i * k + j] - w).abs() < 1e-12, "({i}, {j})");
                assert!((existing[i * k + j] - 1.0 - w).abs() < 1e-12, "({i}, {j})");
            }
        }
    }
}
