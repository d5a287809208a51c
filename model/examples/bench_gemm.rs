//! The matrix products of a phase-8 benchmark step (B=32, T=128, V=2000; training runs
//! two micro-batches of 2,048 rows), timed on 1 thread with this CPU's product kernels and
//! with the vector kernels alone (`gemm` crate, AVX-512 where the CPU has it): median and best of several runs, in ms and GFLOP/s.
//! On a CPU with AMX tiles the first is [`itera_model::ops::amx`]; without, both rows
//! are the same kernels.
//!
//! `cargo run --release -p itera-model --example bench_gemm [-- index] [--cold]`
//! (`index` times one product, 60 runs; `--cold` streams 16 MB of elementwise work
//! between runs, as the ops between products in a step do).

use itera_model::isa;
use itera_model::ops::matmul::gemm_scaled;
use std::time::Instant;

/// One product: `c (m x n) [+]= scale op(a) op(b)`.
struct Shape {
    m: usize,
    n: usize,
    k: usize,
    a_t: bool,
    b_t: bool,
    accumulate: bool,
    scale: f32,
    what: &'static str,
}

const fn shape(m: usize, n: usize, k: usize, a_t: bool, b_t: bool, what: &'static str) -> Shape {
    Shape {
        m,
        n,
        k,
        a_t,
        b_t,
        accumulate: false,
        scale: 1.0,
        what,
    }
}

fn main() {
    let shapes = [
        shape(2048, 512, 128, false, true, "in_proj forward"),
        shape(2048, 256, 256, false, true, "dt_proj forward"),
        shape(2048, 128, 256, false, true, "out_proj forward"),
        shape(2048, 2000, 128, false, true, "head logits"),
        shape(2048, 128, 512, false, false, "in_proj dX"),
        Shape {
            accumulate: true,
            ..shape(512, 128, 2048, true, false, "in_proj dW (adds)")
        },
        Shape {
            accumulate: true,
            ..shape(256, 256, 2048, true, false, "dt_proj dW (adds)")
        },
        Shape {
            scale: 0.5,
            ..shape(2048, 128, 2000, false, false, "head dH (x 0.5)")
        },
        Shape {
            accumulate: true,
            scale: 0.5,
            ..shape(2000, 128, 2048, true, false, "head dE (adds, x 0.5)")
        },
        shape(4096, 512, 128, false, true, "scoring in_proj"),
        shape(4096, 2000, 128, false, true, "scoring head"),
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cold = args.iter().any(|a| a == "--cold");
    let only: Option<usize> = args.iter().find_map(|a| a.parse().ok());
    let runs = if only.is_some() { 60 } else { 9 };
    println!(
        "product kernels: {} (1 thread; median / best of {runs} runs{})",
        isa::kernel_path(),
        if cold {
            ", 16 MB of other work between runs"
        } else {
            ""
        }
    );
    let best_has_amx = isa::force_best();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a thread pool");
    let mut other = vec![1.0f32; 4 << 20];
    for (i, s) in shapes.iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let (m, n, k) = (s.m, s.n, s.k);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let mut c = vec![0.25f32; m * n];
        let mut line = format!("{i:>2} {:<22} {m:>4}x{n:<4}x{k:<4}", s.what);
        let kinds: &[bool] = if best_has_amx {
            &[true, false]
        } else {
            &[false]
        };
        for &amx in kinds {
            if amx {
                isa::force_best();
            } else {
                isa::force(isa::Isa::Avx512);
            }
            let mut times = Vec::new();
            for _ in 0..runs {
                if cold {
                    for v in other.iter_mut() {
                        *v = *v * 1.0001 + 0.5;
                    }
                    std::hint::black_box(&other);
                }
                let t = Instant::now();
                pool.install(|| {
                    gemm_scaled(m, n, k, &a, s.a_t, &b, s.b_t, &mut c, s.accumulate, s.scale)
                });
                times.push(t.elapsed().as_secs_f64());
                std::hint::black_box(&c);
            }
            times.sort_by(|x, y| x.total_cmp(y));
            let (med, best) = (times[times.len() / 2], times[0]);
            let gflops = 2.0 * (m * n * k) as f64 / med / 1e9;
            line += &format!(
                "  {}: {:5.2} / {:5.2} ms {gflops:4.0} GFLOP/s",
                isa::kernel_path().rsplit('/').next().unwrap_or("?"),
                med * 1e3,
                best * 1e3
            );
        }
        println!("{line}");
    }
}
