//! Batch-1 generation speed of the recurrent decoder on the phase-8 tiny model with random
//! weights: tokens/s (median of 7 runs, one thread) for f32, f16-upcast and f16-native
//! weights at V=2000 and V=8000, greedy and with sampling, int8, int4 and mixed quantized
//! weights (greedy), plus the seed's approach of
//! re-running the whole prefix for every new token.
//!
//! Run: `cargo run --release -p itera-model --example bench_generate [VOCAB...]`

use std::time::Instant;

use itera_model::decode::{generate, Decoder, Isa, Precision, SamplingConfig, Weights};
use itera_model::quantize::{quantize_weights, Scheme};
use itera_model::ModelConfig;

const RUNS: usize = 7;
const SEQUENCES: u32 = 16;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// CPU time of the calling thread: on a shared machine it measures the work done, not the
/// time spent waiting for a core.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Median tokens/s of `run` (which returns how many tokens it produced) over wall-clock
/// time and over this thread's CPU time.
fn measure(mut run: impl FnMut() -> usize) -> (f64, f64) {
    run(); // warm caches and page in the weights
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let (start, start_cpu) = (Instant::now(), thread_cpu_seconds());
        let n = run() as f64;
        wall.push(n / start.elapsed().as_secs_f64());
        cpu.push(n / (thread_cpu_seconds() - start_cpu));
    }
    (median(wall), median(cpu))
}

/// [`measure`] of `SEQUENCES` generations of `new` tokens, each from a one-token prompt.
fn measure_sampling(decoder: &Decoder, new: usize, sampling: &SamplingConfig) -> (f64, f64) {
    measure(|| {
        (0..SEQUENCES)
            .map(|s| {
                generate(decoder, &[s], new, sampling, |_| true, None)
                    .expect("valid prompt")
                    .len()
            })
            .sum()
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("batch-1 generation, tiny config (D=128, L=4, N=8, K=4, 4 experts top-2), 1 thread");
    println!(
        "each run: {SEQUENCES} sequences of 1 prompt token + 127 generated; median of {RUNS} runs"
    );
    println!("tokens/s over wall-clock time and over the thread's CPU time\n");
    println!("{:<43} {:>8} {:>8}", "", "wall", "cpu");
    // Optional arguments: the vocabulary sizes to run (default 2000 8000).
    let mut vocabs: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    if vocabs.is_empty() {
        vocabs = vec![2000, 8000];
    }
    for vocab in vocabs {
        let config = ModelConfig {
            vocab_size: vocab,
            ..ModelConfig::tiny()
        };
        let weights = Weights::random(&config, 42)?;
        let new = config.max_seq_length - 1;
        for (label, precision) in [
            ("f32", Precision::F32),
            ("f16-upcast", Precision::F16),
            ("f16-native", Precision::F16Native),
        ] {
            let decoder = Decoder::new(&weights, precision);
            for (mode, sampling) in [
                ("greedy", SamplingConfig::greedy()),
                (
                    "T=0.8 top-k 40",
                    SamplingConfig {
                        temperature: 0.8,
                        top_k: Some(40),
                        top_p: None,
                        seed: 1,
                    },
                ),
                (
                    "T=1 top-p 0.9",
                    SamplingConfig {
                        temperature: 1.0,
                        top_k: None,
                        top_p: Some(0.9),
                        seed: 1,
                    },
                ),
            ] {
                let (wall, cpu) = measure_sampling(&decoder, new, &sampling);
                println!(
                    "V={vocab:>5} {label:<11} {mode:<15} {wall:>8.0} {cpu:>8.0}   {:?}, {:.2} MiB of matrices",
                    decoder.isa(),
                    decoder.weight_bytes() as f64 / (1 << 20) as f64
                );
            }
        }
        // Quantized weights (weight-only, computed natively by the decoder), greedy.
        for scheme in [Scheme::Int8, Scheme::Int4, Scheme::Mixed] {
            let file = quantize_weights(&weights, scheme, &[], 32)?;
            let q = Weights::from_safetensors_bytes(config.clone(), &file.bytes, None)?;
            let precision = if q.f16_matrices() {
                Precision::F16
            } else {
                Precision::F32
            };
            let decoder = Decoder::new(&q, precision);
            let (wall, cpu) = measure_sampling(&decoder, new, &SamplingConfig::greedy());
            println!(
                "V={vocab:>5} {:<11} {:<15} {wall:>8.0} {cpu:>8.0}   {:?}, {:.2} MiB of matrices",
                scheme.name(),
                "greedy",
                decoder.isa(),
                decoder.weight_bytes() as f64 / (1 << 20) as f64
            );
        }
        // The portable kernels (no AVX), for CPUs without them.
        let decoder = Decoder::with_isa(&weights, Precision::F32, Isa::Portable);
        let (wall, cpu) = measure_sampling(&decoder, new, &SamplingConfig::greedy());
        println!(
            "V={vocab:>5} {:<11} {:<15} {wall:>8.0} {cpu:>8.0}   {:?} kernels",
            "f32",
            "greedy",
            decoder.isa()
        );
        // The seed's approach: re-run the whole prefix for every new token (greedy, f32).
        let decoder = Decoder::new(&weights, Precision::F32);
        let (wall, cpu) = measure(|| {
            let mut state = decoder.new_state();
            let mut seq = vec![0u32];
            while seq.len() < config.max_seq_length {
                state.reset();
                let logits = decoder.prefill(&mut state, &seq).expect("valid prompt");
                seq.push(itera_model::decode::argmax(logits));
            }
            seq.len() - 1
        });
        println!("V={vocab:>5} f32         re-run prefix   {wall:>8.0} {cpu:>8.0}   decoder reset + prefill per token\n");
    }
    Ok(())
}
