//! Custom dfdx operations with hand-written backward passes, and the kernels they share.
//!
//! dfdx 0.13 records a backward closure per operation on a tape. Every op of this model is
//! one such closure registered through [`custom_op`]: the forward runs on host slices
//! (multi-threaded with rayon where the work is large), the backward reads the output's
//! gradient and adds into the inputs' gradients, or writes them whole where no other op
//! has yet ([`grad`]: gradients of op outputs live beside the graph, not in dfdx's map).
//! This sidesteps the dfdx bugs listed
//! in `shared/design/DFDX-NOTES.md` (slice backward assigns, wrong `accurate_gelu`
//! derivative, aliasing views) and fuses elementwise work. Each op is checked against
//! finite differences in f64 ([`gradcheck`]; `tests/op_gradients.rs`,
//! `tests/model_gradients.rs`).
//!
//! All graph tensors are 2-D `(rows, cols)` with runtime sizes ([`Var`]); a 1-D parameter
//! of length `n` is `(1, n)`; a loss is 0-D.

pub mod amx;
pub mod conv;
pub mod dense;
pub mod elementwise;
pub mod experts;
pub mod grad;
pub mod gradcheck;
pub mod loss;
pub mod matmul;
pub mod moe;
pub mod norm;
pub mod profile;
pub mod scan;
pub mod ssm_output;

use crate::isa::{vectorized, vectorized_with};
use crate::real::{MulAdd, Real};
use dfdx::prelude::{Cpu, Gradients, NoneTape, OwnedTape, PutTape, Shape, SplitTape, Tape, Tensor};
use dfdx::tensor::{TensorFromVec, WithEmptyTape};
use dfdx::tensor_ops::Backward;
use rayon::prelude::*;
use std::mem::MaybeUninit;

pub use conv::conv_silu;
pub use dense::{linear, linear_nobias};
pub use elementwise::{add_dropout, gelu, softplus_mean};
pub use experts::{moe_experts, Expert};
pub use grad::{Fill, Grad, Sink};
pub use loss::{embed, head_cross_entropy, weighted_sum};
pub use matmul::gemm;
pub use moe::{balance_loss, router_gates};
pub use norm::layer_norm;
pub use scan::selective_scan;
pub use ssm_output::ssm_output;

/// A tensor of the graph: a dfdx tensor (identity for the gradient map, tape, shape; it
/// owns the data) plus a read-only view of its data.
///
/// dfdx 0.13 keeps storage access crate-private (`Tensorlike` is not exported), so the
/// view is captured when the tensor is built: `tensor_from_vec` moves the `Vec` into an
/// `Arc` without copying (dfdx `tensor/cpu/allocate.rs`), graph tensors are never
/// mutated afterwards, and the view lives no longer than `self` holds the `Arc`.
pub struct Var<E: Real, T, S: Shape = (usize, usize)> {
    tensor: Tensor<S, E, Cpu, T>,
    ptr: *const E,
    len: usize,
    /// For an op's output: where its gradient collects during the backward pass
    /// ([`grad`]); `None` for a leaf, whose gradient is in dfdx's map.
    slot: Option<grad::Slot<E>>,
}

// SAFETY: the view points into the buffer owned by `tensor`; sending or sharing the Var
// is as safe as sending or sharing the tensor (the buffer is never mutated).
unsafe impl<E: Real, T, S: Shape> Send for Var<E, T, S> where Tensor<S, E, Cpu, T>: Send {}
// SAFETY: as above.
unsafe impl<E: Real, T, S: Shape> Sync for Var<E, T, S> where Tensor<S, E, Cpu, T>: Sync {}

impl<E: Real, S: Shape> Clone for Var<E, NoneTape, S> {
    fn clone(&self) -> Self {
        Self {
            tensor: self.tensor.clone(),
            ptr: self.ptr,
            len: self.len,
            slot: self.slot.clone(),
        }
    }
}

impl<E: Real, T, S: Shape> std::fmt::Debug for Var<E, T, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Var{:?}", self.shape().concrete())
    }
}

impl<E: Real, S: Shape> Var<E, NoneTape, S> {
    /// A tensor of `shape` owning `values` (row-major).
    pub fn from_vec(dev: &Cpu, values: Vec<E>, shape: S) -> Self {
        assert_eq!(
            values.len(),
            shape.num_elements(),
            "tensor data does not fit its shape"
        );
        let (ptr, len) = (values.as_ptr(), values.len());
        Self {
            tensor: dev.tensor_from_vec(values, shape),
            ptr,
            len,
            slot: None,
        }
    }

    /// The same tensor (same identity) with an empty tape of type `New`, to be used in a
    /// taped graph as a leaf; gradients of all its uses accumulate under one key of
    /// dfdx's map.
    pub fn retaped<New: Tape<E, Cpu>>(&self) -> Var<E, New, S> {
        Var {
            tensor: self.tensor.retaped(),
            ptr: self.ptr,
            len: self.len,
            slot: None,
        }
    }
}

impl<E: Real, T, S: Shape> Var<E, T, S> {
    /// The values, row-major.
    pub fn data(&self) -> &[E] {
        // SAFETY: see the type's docs: the buffer is owned by `self.tensor`'s Arc,
        // never mutated and never moved while the Arc lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The shape.
    pub fn shape(&self) -> S {
        *dfdx::prelude::HasShape::shape(&self.tensor)
    }

    /// The dfdx tensor.
    pub fn tensor(&self) -> &Tensor<S, E, Cpu, T> {
        &self.tensor
    }

    /// Splits off the tape (dfdx `split_tape`).
    pub fn split_tape(self) -> (Var<E, NoneTape, S>, T)
    where
        E: Clone,
    {
        let (tensor, tape) = self.tensor.split_tape();
        (
            Var {
                tensor,
                ptr: self.ptr,
                len: self.len,
                slot: self.slot,
            },
            tape,
        )
    }

    /// The same tensor with an empty tape, for a second use in the graph.
    pub fn with_empty_tape(&self) -> Self
    where
        T: Default,
    {
        Var {
            tensor: self.tensor.with_empty_tape(),
            ptr: self.ptr,
            len: self.len,
            slot: self.slot.clone(),
        }
    }
}

impl<E: Real> Var<E, OwnedTape<E, Cpu>, ()> {
    /// Runs the backward pass from this scalar and returns the gradients.
    pub fn backward(self) -> Gradients<E, Cpu> {
        self.tensor.backward()
    }
}

/// The (rows, cols) of a graph tensor.
pub fn dims<E: Real, T>(t: &Var<E, T>) -> (usize, usize) {
    t.shape()
}

fn take_grad<S: Shape, E: Real>(
    grads: &mut Gradients<E, Cpu>,
    t: &Tensor<S, E, Cpu, NoneTape>,
) -> Vec<E> {
    // Invariant: allocating a gradient on the CPU cannot fail except by aborting.
    std::mem::take(&mut **grads.get_or_alloc_mut(t).expect("gradient allocation"))
}

fn put_grad<S: Shape, E: Real>(
    grads: &mut Gradients<E, Cpu>,
    t: &Tensor<S, E, Cpu, NoneTape>,
    g: Vec<E>,
) {
    **grads.get_or_alloc_mut(t).expect("gradient allocation") = g;
}

/// The gradient an input of an op gets in the backward pass: from its slot (an op's
/// output: fresh when no later op wrote it) or from dfdx's map (a leaf).
fn input_grad<E: Real>(grads: &mut Gradients<E, Cpu>, t: &Var<E, NoneTape>) -> Grad<E> {
    match &t.slot {
        // Invariant: slots are only locked here and in `return_grad`, never across a
        // panic that is caught.
        Some(slot) => match slot.lock().expect("gradient slot").take() {
            Some(g) => Grad::existing(g),
            None => Grad::fresh(t.len),
        },
        None => Grad::existing(take_grad(grads, &t.tensor)),
    }
}

/// Puts an input's gradient back where [`input_grad`] found it.
fn return_grad<E: Real>(grads: &mut Gradients<E, Cpu>, t: &Var<E, NoneTape>, g: Grad<E>) {
    match &t.slot {
        Some(slot) => {
            if let Some(g) = g.into_written() {
                *slot.lock().expect("gradient slot") = Some(g);
            }
        }
        None => put_grad(grads, &t.tensor, g.into_written().unwrap_or_default()),
    }
}

/// What a backward closure receives: the inputs' data, the output's gradient and the
/// inputs' gradients to write or add to (same order as the inputs; see [`Grad`]).
pub struct BackwardArgs<'a, E> {
    pub inputs: &'a [&'a [E]],
    pub grad_out: &'a [E],
    pub grads: &'a mut [Grad<E>],
}

/// Registers one custom operation on the tape of its inputs.
///
/// `name` labels the op in [`profile`] reports.
/// `forward` gets the inputs' data and returns the output's data (row-major,
/// `out_shape`) plus whatever the backward needs (`saved`). `backward` must ADD the
/// chain-rule contribution to each input's gradient, or write it where the gradient is
/// still fresh ([`Grad`]). Inputs must be distinct tensors (pass a tensor at most once
/// per op). With a `NoneTape` no backward is recorded.
pub fn custom_op<E: Real, T: Tape<E, Cpu>, S: Shape, Saved: 'static>(
    name: &'static str,
    inputs: Vec<Var<E, T>>,
    out_shape: S,
    forward: impl FnOnce(&[&[E]]) -> (Vec<E>, Saved),
    backward: impl FnOnce(BackwardArgs<'_, E>, Saved) + 'static,
) -> Var<E, T, S> {
    let dev: Cpu = inputs[0].tensor.device().clone();
    let mut tape = T::default();
    let plain: Vec<Var<E, NoneTape>> = inputs
        .into_iter()
        .map(|t| {
            let (t, tp) = t.split_tape();
            tape = std::mem::take(&mut tape).merge(tp);
            t
        })
        .collect();
    let timer = profile::start();
    let (out, saved) = {
        let views: Vec<&[E]> = plain.iter().map(|t| t.data()).collect();
        forward(&views)
    };
    profile::stop(timer, name, profile::Pass::Forward);
    let mut out = Var::from_vec(&dev, out, out_shape);
    if T::OWNS_TAPE {
        for (i, a) in plain.iter().enumerate() {
            assert!(
                plain[i + 1..].iter().all(|b| b.ptr != a.ptr),
                "custom op inputs must be distinct tensors"
            );
        }
        let slot: grad::Slot<E> = Default::default();
        out.slot = Some(slot.clone());
        let key = out.tensor.clone();
        tape.add_backward_op(move |grads| {
            let timer = profile::start();
            // Invariant: as in `input_grad`.
            let written = slot.lock().expect("gradient slot").take();
            // Nothing wrote the slot: the loss (dfdx puts its 1 in the map), or an
            // output no op used (zeros).
            let grad_out = written.unwrap_or_else(|| take_grad(grads, &key));
            let mut gin: Vec<Grad<E>> = plain.iter().map(|t| input_grad(grads, t)).collect();
            {
                let views: Vec<&[E]> = plain.iter().map(|t| t.data()).collect();
                backward(
                    BackwardArgs {
                        inputs: &views,
                        grad_out: &grad_out,
                        grads: &mut gin,
                    },
                    saved,
                );
            }
            for (t, g) in plain.iter().zip(gin) {
                return_grad(grads, t, g);
            }
            profile::stop(timer, name, profile::Pass::Backward);
            Ok(())
        });
    }
    let Var {
        tensor,
        ptr,
        len,
        slot,
    } = out;
    Var {
        tensor: tensor.put_tape(tape),
        ptr,
        len,
        slot,
    }
}

/// Reads (and removes) the gradient of a tensor; zeros if it got none.
pub fn grad_of<E: Real, S: Shape>(
    grads: &mut Gradients<E, Cpu>,
    t: &Var<E, NoneTape, S>,
) -> Vec<E> {
    take_grad(grads, &t.tensor)
}

/// `n` elements of memory that is not zeroed: a kernel's output, for ops whose kernels
/// write every element (zeroing memory that is about to be overwritten is a full extra
/// pass over it). Turn it into the output with [`assume_filled`].
pub fn uninit<E>(n: usize) -> Vec<MaybeUninit<E>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: `MaybeUninit` elements need no initialisation, and the capacity is `n`.
    unsafe { v.set_len(n) };
    v
}

/// The elements of a buffer from [`uninit`], once written.
///
/// # Safety
/// Every element of `v` must have been written.
pub unsafe fn assume_filled<E>(v: Vec<MaybeUninit<E>>) -> Vec<E> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: `MaybeUninit<E>` has the layout of `E`; the pointer, length and capacity
    // come from a Vec of the same allocation, and every element is initialised (caller).
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<E>(), v.len(), v.capacity()) }
}

/// Rows per parallel task of the elementwise kernels (fixed, so results never depend on
/// the thread count).
pub const ROW_BLOCK: usize = 64;

/// Fills `out` (rows of `width`) in parallel blocks of rows: `f(row_index, row)`.
pub fn par_rows<E: Send>(out: &mut [E], width: usize, f: impl Fn(usize, &mut [E]) + Sync) {
    par_rows_with(
        out,
        width,
        #[inline(always)]
        |_, r, row| f(r, row),
    )
}

/// [`par_rows`] for kernels that evaluate polynomials: `f(m, row_index, row)` with the
/// multiply-add of the compiled instruction set ([`crate::isa::vectorized_with`]).
pub fn par_rows_with<E: Send>(
    out: &mut [E],
    width: usize,
    f: impl Fn(MulAdd, usize, &mut [E]) + Sync,
) {
    if width == 0 {
        return;
    }
    out.par_chunks_mut(width * ROW_BLOCK)
        .enumerate()
        .for_each(|(blk, chunk)| {
            vectorized_with(
                #[inline(always)]
                |m| {
                    for (i, row) in chunk.chunks_mut(width).enumerate() {
                        f(m, blk * ROW_BLOCK + i, row);
                    }
                },
            )
        });
}

/// Sums per-block partial results in a fixed order (blocks of `block` rows): `f(row_range, partial)` adds the
/// contribution of those rows into a zeroed `partial` of length `len`; the partials are
/// added in block order (deterministic for any thread count).
pub fn par_reduce<E: Real>(
    rows: usize,
    block: usize,
    len: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [E]) + Sync,
) -> Vec<E> {
    let blocks = rows.div_ceil(block);
    let partials: Vec<Vec<E>> = (0..blocks)
        .into_par_iter()
        .map(|b| {
            let mut p = vec![E::zero(); len];
            vectorized(
                #[inline(always)]
                || f(b * block..((b + 1) * block).min(rows), &mut p),
            );
            p
        })
        .collect();
    sum_in_order(partials, len)
}

/// Per-block partial sums (each of `len`) added in block order onto zeros: how every
/// blocked reduction of the ops ends, so its result never depends on the thread count.
pub fn sum_in_order<E: Real>(partials: Vec<Vec<E>>, len: usize) -> Vec<E> {
    let mut total = vec![E::zero(); len];
    for p in partials {
        add_into(&mut total, &p);
    }
    total
}

/// Column sums of a row-major matrix of `n` columns: the gradient of a bias added to
/// every row. Blocks of [`ROW_BLOCK`] rows, added in block order.
pub fn col_sums<E: Real>(g: &[E], n: usize) -> Vec<E> {
    par_reduce(
        g.len() / n.max(1),
        ROW_BLOCK,
        n,
        #[inline(always)]
        |rows, acc| {
            for r in rows {
                add_into(acc, &g[r * n..(r + 1) * n]);
            }
        },
    )
}

/// `(rows, cols)` row-major -> `(cols, rows)` row-major.
pub(crate) fn transpose<E: Real>(w: &[E], rows: usize, cols: usize) -> Vec<E> {
    let mut t = vec![E::zero(); rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

/// Adds `src` into `dst` elementwise.
pub fn add_into<E: Real>(dst: &mut [E], src: &[E]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += *s;
    }
}

/// SplitMix64: a counter-based hash for dropout masks, so masks depend only on
/// (seed, step, site, element) and never on thread scheduling.
#[inline]
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A dropout mask source: element `i` is kept with probability `1 - p`, scaled by `1/(1-p)`.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    pub p: f64,
    pub key: u64,
}

impl Dropout {
    /// Multiplier of element `i`: `0` (dropped) or `1/(1-p)`. Element `i` is dropped
    /// when `u < p` for `u = k / 2^53`, `k` the top 53 bits of its hash; compared here
    /// in integers as `k < ceil(p 2^53)`, the same test exactly (`k / 2^53` and `p 2^53`
    /// are exact in f64, and `k` is an integer), without a conversion per element.
    #[inline]
    pub fn scale<E: Real>(&self, i: usize) -> E {
        let k = splitmix64(self.key ^ splitmix64(i as u64)) >> 11;
        if k < self.threshold() {
            E::zero()
        } else {
            E::of(1.0 / (1.0 - self.p))
        }
    }

    /// `ceil(p 2^53)`: hashes (top 53 bits) below it are dropped.
    #[inline]
    fn threshold(&self) -> u64 {
        (self.p * (1u64 << 53) as f64).ceil() as u64
    }
}

#[cfg(test)]
mod dropout_tests {
    use super::{splitmix64, Dropout};

    #[test]
    fn the_integer_threshold_drops_exactly_what_the_float_test_drops() {
        for p in [0.0, 1e-9, 0.1, 0.25, 0.5, 0.75, 0.999_999, 1.0] {
            let d = Dropout { p, key: 42 };
            // Hashes right at the threshold, and many ordinary ones.
            let t = d.threshold();
            let edge = [t.saturating_sub(1), t, t + 1].map(|k| k.min((1 << 53) - 1));
            let hashed = (0..20_000u64).map(|i| splitmix64(d.key ^ splitmix64(i)) >> 11);
            for k in edge.into_iter().chain(hashed) {
                let float_drops = (k as f64 / (1u64 << 53) as f64) < p;
                assert_eq!(k < t, float_drops, "p {p}, k {k}");
            }
            // And through `scale`, element by element.
            for i in 0..1000 {
                let k = splitmix64(d.key ^ splitmix64(i as u64)) >> 11;
                let dropped = (k as f64 / (1u64 << 53) as f64) < p;
                assert_eq!(d.scale::<f64>(i) == 0.0, dropped, "p {p}, element {i}");
            }
        }
    }
}
