//! Finite-difference gradient checks in f64: the guard against silently wrong backward
//! passes (see `shared/design/DFDX-NOTES.md`). Used by the unit tests of every op and by
//! the whole-model check in `tests/gradients.rs`.

use super::{custom_op, grad_of, Var};
use dfdx::prelude::{Cpu, NoneTape, OwnedTape};
use rand::{Rng, SeedableRng};

/// A taped f64 graph tensor.
pub type TVar = Var<f64, OwnedTape<f64, Cpu>>;

/// One input of a checked function: its shape and values.
#[derive(Debug, Clone)]
pub struct Input {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f64>,
}

impl Input {
    /// Values drawn uniformly from `[lo, hi)` with a fixed seed.
    pub fn uniform(rows: usize, cols: usize, lo: f64, hi: f64, seed: u64) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Self {
            rows,
            cols,
            values: (0..rows * cols).map(|_| rng.gen_range(lo..hi)).collect(),
        }
    }
}

/// The largest mismatch found by [`check`].
#[derive(Debug, Clone)]
pub struct Mismatch {
    pub input: usize,
    pub index: usize,
    pub analytic: f64,
    pub numeric: f64,
}

fn project(y: TVar, r: Vec<f64>) -> Var<f64, OwnedTape<f64, Cpu>, ()> {
    custom_op(
        "project",
        vec![y],
        (),
        |v| (vec![v[0].iter().zip(&r).map(|(a, b)| a * b).sum()], r),
        |a, r| {
            for (g, w) in a.grads[0].acc().iter_mut().zip(&r) {
                *g += w * a.grad_out[0];
            }
        },
    )
}

/// `y = x`, whose backward takes the gradient it gets as `x`'s.
fn identity(x: TVar) -> TVar {
    let shape = x.shape();
    custom_op(
        "identity",
        vec![x],
        shape,
        |v| (v[0].to_vec(), ()),
        |a, ()| a.grads[0].put(a.grad_out.to_vec()),
    )
}

fn scalar(inputs: &[Input], f: &dyn Fn(Vec<TVar>) -> TVar, r: &[f64]) -> f64 {
    let dev = Cpu::default();
    let vars: Vec<TVar> = inputs
        .iter()
        .map(|i| Var::from_vec(&dev, i.values.clone(), (i.rows, i.cols)).retaped())
        .collect();
    let y = f(vars);
    y.data().iter().zip(r).map(|(a, b)| a * b).sum()
}

/// Compares the analytic gradient of `L = sum(r * f(inputs))` (random fixed `r`) with
/// central differences (step `1e-5`) on up to `per_input` elements of each input (spread
/// evenly). Fails when `|a - n| > atol + rtol * max(|a|, |n|)` with `rtol = 1e-5`,
/// `atol = 1e-8`, reporting the worst element. The analytic gradient is taken both with
/// the inputs as leaves (the op adds into their gradients) and through an identity op
/// (the op writes them fresh, as inside the model); panics if the two differ in any bit.
pub fn check(
    inputs: &[Input],
    f: &dyn Fn(Vec<TVar>) -> TVar,
    per_input: usize,
) -> Result<(), Mismatch> {
    let dev = Cpu::default();
    let plain: Vec<Var<f64, NoneTape>> = inputs
        .iter()
        .map(|i| Var::from_vec(&dev, i.values.clone(), (i.rows, i.cols)))
        .collect();
    let n_out = f(plain.iter().map(|t| t.retaped()).collect()).data().len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let r: Vec<f64> = (0..n_out).map(|_| rng.gen_range(-1.0..1.0)).collect();
    // The analytic gradient twice: with the inputs as leaves (the op adds into their
    // gradients in dfdx's map) and with each input passed through an identity op first
    // (the op finds their gradients fresh and writes them, as inside the model). The two
    // must agree to the bit, and with the central differences.
    let mut grads = project(f(plain.iter().map(|t| t.retaped()).collect()), r.clone()).backward();
    let through = plain.iter().map(|t| identity(t.retaped())).collect();
    let mut grads_fresh = project(f(through), r.clone()).backward();
    let h = 1e-5;
    let mut worst: Option<(f64, Mismatch)> = None;
    for (i, t) in plain.iter().enumerate() {
        let analytic = grad_of(&mut grads, t);
        let written = grad_of(&mut grads_fresh, t);
        assert!(
            analytic.iter().zip(&written).all(|(a, w)| a == w),
            "input {i}: the gradient written into fresh memory differs from the one added"
        );
        let len = inputs[i].values.len();
        let step = (len / per_input.max(1)).max(1);
        for idx in (0..len).step_by(step) {
            let mut plus = inputs.to_vec();
            plus[i].values[idx] += h;
            let mut minus = inputs.to_vec();
            minus[i].values[idx] -= h;
            let numeric = (scalar(&plus, f, &r) - scalar(&minus, f, &r)) / (2.0 * h);
            let a = analytic[idx];
            let err = (a - numeric).abs();
            let tol = 1e-8 + 1e-5 * a.abs().max(numeric.abs());
            if err > tol && worst.as_ref().is_none_or(|(e, _)| err - tol > *e) {
                worst = Some((
                    err - tol,
                    Mismatch {
                        input: i,
                        index: idx,
                        analytic: a,
                        numeric,
                    },
                ));
            }
        }
    }
    match worst {
        Some((_, m)) => Err(m),
        None => Ok(()),
    }
}
