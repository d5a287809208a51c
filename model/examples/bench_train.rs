//! Training-step and scoring throughput of the phase-8 model (hidden 128, 4 layers,
//! state 8, conv 4, expand 2, 4 experts of 64, top-2), by default at B=32, T=128, V=2000.
//!
//! `cargo run --release -p itera-model --example bench_train [-- steps] [--profile] [--vocab N]
//! [--batch B] [--seq T] [--dropout P]` (the phase-8 run's shape and dropout: `--vocab 4897
//! --batch 8 --seq 512 --dropout 0.25`)
//! Prints the median tokens/s over `steps` timed steps (after 2 warm-up steps) for 1 and
//! 2 threads, the process CPU seconds per step (robust to other load on the machine) and
//! the load average. `--profile` adds per-op forward/backward CPU times of training (1
//! and 2 threads: the ops that slow down when both cores work) and of scoring (1 thread).
//! mimalloc is the global allocator, as in the `itera` binary.

use itera_model::{ModelConfig, TrainConfig, Trainer};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// User + system CPU seconds of this process (Linux `/proc/self/stat`, 100 ticks/s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Prints the per-op times recorded since the last call, divided by `per` (ms).
fn print_profile(what: &str, per: f64) {
    println!("  per-op CPU time of {what}:");
    let mut total = 0.0;
    for (name, pass, secs, _) in itera_model::ops::profile::take() {
        total += secs;
        println!("  {name:<20} {pass:?}: {:.1} ms", 1e3 * secs / per);
    }
    println!("  ops total: {:.1} ms", 1e3 * total / per);
}

fn main() {
    // As in the `itera` binary: freed memory is kept for reuse (mimalloc option 15,
    // `mi_option_purge_delay`, -1 = never purge).
    // SAFETY: sets a process-wide allocator option before any work starts.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    let args: Vec<String> = std::env::args().collect();
    let profile = args.iter().any(|a| a == "--profile");
    let steps: usize = args
        .iter()
        .skip(1)
        .take_while(|a| !a.starts_with("--"))
        .find_map(|s| s.parse().ok())
        .unwrap_or(9);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "kernels: {} ({} cores available)",
        itera_model::isa::kernel_path(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let flag = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let vocab = flag("--vocab", 2000);
    let (batch, seq) = (flag("--batch", 32), flag("--seq", 128));
    // `--dropout P` (the phase-8 pipeline trains with 0.25): the masks' cost included.
    let dropout = args
        .iter()
        .position(|a| a == "--dropout")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let cfg = ModelConfig {
        vocab_size: vocab,
        max_seq_length: seq.max(128),
        dropout,
        ..ModelConfig::tiny()
    };
    println!("shape: B={batch} T={seq} V={vocab} dropout {dropout}");
    let train = TrainConfig {
        batch_size: batch,
        seq_len: seq,
        steps: 1_000_000,
        ..Default::default()
    };
    let tokens: Vec<u32> = (0..batch * (seq + 1))
        .map(|i| ((i * 7919 + 13) % vocab) as u32)
        .collect();
    for threads in [1, 2] {
        let mut t = Trainer::<f32>::new(&cfg, &train, 0, threads).expect("valid config");
        if threads == 1 {
            println!("parameters: {}", t.params().count());
        }
        let mut rates = Vec::new();
        let mut cpu = 0.0;
        for i in 0..steps + 2 {
            if i == 2 {
                cpu = cpu_seconds();
                itera_model::ops::profile::enable(profile);
            }
            let s = t.step(&tokens, batch, seq).expect("step");
            if i >= 2 {
                rates.push(s.tokens_per_s);
            }
        }
        let cpu_per_step = (cpu_seconds() - cpu) / steps as f64;
        itera_model::ops::profile::enable(false);
        if profile {
            let what = format!("training on {threads} thread(s), summed over threads, per step");
            print_profile(&what, steps as f64);
        }
        let score_tokens: Vec<u32> = (0..batch * seq * 4 + 1)
            .map(|i| ((i * 31 + 7) % vocab) as u32)
            .collect();
        let mut score_rates = Vec::new();
        let runs = 5;
        itera_model::ops::profile::enable(profile && threads == 1);
        for _ in 0..runs {
            let start = Instant::now();
            let (_, n) = t.score(&score_tokens, seq, batch).expect("score");
            score_rates.push(n as f64 / start.elapsed().as_secs_f64());
        }
        itera_model::ops::profile::enable(false);
        if profile && threads == 1 {
            let per_4096 = (score_tokens.len() - 1) as f64 / 4096.0 * runs as f64;
            print_profile("scoring, per 4,096 tokens", per_4096);
        }
        println!(
            "threads {threads}: training {:.0} tok/s (median of {steps} steps; {:.3} CPU s/step = {:.0} tok per CPU s), scoring {:.0} tok/s",
            median(rates),
            cpu_per_step,
            (batch * seq) as f64 / cpu_per_step,
            median(score_rates)
        );
    }
}
