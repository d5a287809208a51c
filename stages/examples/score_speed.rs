//! Scoring throughput of the two scorers of `itera_stages::scoring` (the batched forward
//! pass and the recurrent decoder) on a random model with the phase-8 sizes (vocabulary
//! 8000, hidden 128, 4 layers, 4 experts, context 128), to choose the default scorer.
//!
//!     cargo run --release -p itera-stages --example score_speed -- [TOKENS] [THREADS]

use std::time::Instant;

use itera_model::decode::Weights;
use itera_model::ModelConfig;
use itera_stages::scoring::{ModelScorer, ScorerKind};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let tokens: usize = args.next().map_or(Ok(16_384), |a| a.parse())?;
    let threads: usize = args.next().map_or(Ok(2), |a| a.parse())?;
    let config = ModelConfig {
        vocab_size: 8000,
        hidden_size: 128,
        num_layers: 4,
        ssm_state_size: 8,
        num_experts: 4,
        expert_size: 64,
        top_k_experts: 2,
        max_seq_length: 128,
        ..ModelConfig::tiny()
    };
    let weights = Weights::random(&config, 7)?;
    let stream: Vec<u32> = (0..tokens as u64 + 1)
        .map(|i| (i.wrapping_mul(2_654_435_761) % 8000) as u32)
        .collect();
    for kind in [ScorerKind::Batched, ScorerKind::Recurrent] {
        let scorer = ModelScorer::new(&weights, kind, threads)?;
        scorer.nll(&stream[..stream.len().min(1025)], 128)?; // warm-up
        let mut rates = Vec::new();
        let mut loss = 0.0;
        for _ in 0..3 {
            let t = Instant::now();
            let (nll, n) = scorer.nll(&stream, 128)?;
            rates.push(n as f64 / t.elapsed().as_secs_f64());
            loss = nll / n as f64;
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "{:<9} {threads} threads: {:>8.0} tokens/s (median of 3), loss {loss:.6}",
            kind.name(),
            rates[1]
        );
    }
    Ok(())
}
