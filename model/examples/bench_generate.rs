//! Batch-1 generation speed of the recurrent decoder on the phase-8 tiny model with random
//! weights: tokens/s (median of 7 runs, one thread) for f32, f16-upcast and f16-native
//! weights at V=2000 and V=8000, greedy and with sampling, plus the seed's approach of
//! re-running the whole prefix for every new token.
//!
//! Run: `cargo run --release -p itera-model --example bench_generate`

use std::time::Instant;

use itera_model::decode::{generate, Decoder, Precision, SamplingConfig, Weights};
use itera_model::ModelConfig;

const RUNS: usize = 7;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median tokens/s of `run`, which generates and returns how many tokens it produced.
fn measure(mut run: impl FnMut() -> usize) -> f64 {
    run(); // warm caches and page in the weights
    median(
        (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                let n = run();
                n as f64 / start.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("batch-1 generation, tiny config (D=128, L=4, N=8, K=4, 4 experts top-2), 1 thread");
    println!("each run: 32 sequences of 1 prompt token + 127 generated; median of {RUNS} runs\n");
    for vocab in [2000, 8000] {
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
                let tps = measure(|| {
                    (0..32u32)
                        .map(|s| {
                            generate(&decoder, &[s], new, &sampling, |_| true, None)
                                .expect("valid prompt")
                                .len()
                        })
                        .sum()
                });
                println!(
                    "V={vocab:>5} {label:<11} {mode:<15} {tps:>9.0} tok/s   ({:?}, {:.2} MiB of matrices)",
                    decoder.isa(),
                    decoder.weight_bytes() as f64 / (1 << 20) as f64
                );
            }
        }
        // The seed's approach: re-run the whole prefix for every new token (greedy, f32).
        let decoder = Decoder::new(&weights, Precision::F32);
        let tps = measure(|| {
            let mut state = decoder.new_state();
            let mut seq = vec![0u32];
            while seq.len() < config.max_seq_length {
                state.reset();
                let logits = decoder.prefill(&mut state, &seq).expect("valid prompt");
                seq.push(itera_model::decode::argmax(logits));
            }
            seq.len() - 1
        });
        println!("V={vocab:>5} f32         re-run prefix   {tps:>9.0} tok/s   (decoder reset + prefill per token, 127 tokens)\n");
    }
    Ok(())
}
