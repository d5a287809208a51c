//! Times single ops in isolation: the forward pass without a tape (as in scoring), on
//! one thread, on the phase-8 model's shapes for `M` rows (default 2,048, a training
//! micro-batch): the best of 20 runs, in ms and ns per element, with a memory copy of
//! the same size for scale. The data stays in cache between runs, so this shows each
//! kernel's compute cost; `bench_train --profile` shows the ops inside a real step.
//!
//! `cargo run --release -p itera-model --example bench_ops [-- M]`
use dfdx::prelude::{Cpu, NoneTape};
use itera_model::ops::{self, Var};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn var(dev: &Cpu, m: usize, n: usize, seed: usize) -> Var<f32, NoneTape> {
    let v: Vec<f32> = (0..m * n)
        .map(|i| (((i * 7919 + seed) % 1000) as f32 / 500.0) - 1.0)
        .collect();
    Var::from_vec(dev, v, (m, n))
}

fn time(name: &str, elems: usize, mut f: impl FnMut()) {
    let mut best = f64::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{name:14} {:7.3} ms  {:6.2} ns/elem",
        best * 1e3,
        best * 1e9 / elems as f64
    );
}

fn main() {
    // As in the `itera` binary: freed memory is kept for reuse (`mi_option_purge_delay`).
    // SAFETY: sets a process-wide allocator option before any work starts.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    let dev = Cpu::default();
    let m: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2048);
    let di = 256;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| {
        let xg = var(&dev, m, 2 * di, 1);
        let w = var(&dev, di, 4, 2);
        let b = var(&dev, 1, di, 3);
        let hc = var(&dev, m, di, 4);
        let u = var(&dev, m, di, 5);
        let dv = var(&dev, 1, di, 6);
        let h = var(&dev, m, 128, 7);
        let lw = var(&dev, 128, 128, 8);
        let lb = var(&dev, 1, 128, 9);
        let e = var(&dev, 2000, 128, 10);
        time("conv_silu", m * di, || {
            let _ = ops::conv_silu(xg.clone(), w.clone(), b.clone(), None, 128);
        });
        time("softplus_mean", m * di, || {
            let _ = ops::softplus_mean(hc.clone(), None);
        });
        let state = var(&dev, m, 8, 11);
        let c = var(&dev, di, 8, 12);
        time("ssm_output", m * di, || {
            let _ = ops::ssm_output(
                state.clone(),
                c.clone(),
                dv.clone(),
                u.clone(),
                xg.clone(),
                None,
            );
        });
        time("gelu", m * di, || {
            let _ = ops::gelu(hc.clone(), None);
        });
        time("add_dropout", m * 128, || {
            let _ = ops::add_dropout(h.clone(), h.clone(), None, None);
        });
        time("layer_norm", m * 128, || {
            let _ = ops::layer_norm(h.clone(), lb.clone(), lb.clone(), 1e-5);
        });
        time("linear128", m * 128, || {
            let _ = ops::linear(h.clone(), lw.clone(), lb.clone());
        });
        let t: Vec<u32> = (0..m).map(|i| (i * 31 % 2000) as u32).collect();
        time("head_ce", m * 2000, || {
            let _ = ops::head_cross_entropy(h.clone(), e.clone(), t.clone());
        });
        time("memcpy 4B", m * di, || {
            let v = hc.data().to_vec();
            std::hint::black_box(v);
        });
    });
}
