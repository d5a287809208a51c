//! Results do not depend on the thread count: training with 1, 2, 3 and 8 threads gives
//! the same bits (weights, optimizer state, every step's losses and gradient norm), and
//! so does batched scoring. Shapes are large enough that the matrix products and the
//! elementwise kernels really split their work (widths up to 256), and a step's batch of 9
//! sequences is cut into two unequal micro-batches (5 and 4) computed by groups of threads.
//! A second run at hidden size 128 puts the large products on AMX tiles where the CPU has
//! them (`ops::amx`; products of at least 128 on a side).
//! Generation runs on one thread by design (the recurrent decoder), so it needs no check
//! here; `parity.rs` ties the decoder to these weights.

use itera_model::{
    BatchSampler, ModelConfig, OptimizerConfig, ScheduleConfig, StepStats, TrainConfig, Trainer,
};

fn model(hidden_size: usize) -> ModelConfig {
    ModelConfig {
        vocab_size: 300,
        hidden_size,
        num_layers: 2,
        ssm_state_size: 8,
        num_experts: 4,
        expert_size: 32,
        top_k_experts: 2,
        max_seq_length: 32,
        dropout: 0.1,
        ..ModelConfig::tiny()
    }
}

fn stream(n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i % 11) * 17 + (i / 11 % 7) * 29 + (i * i % 13)) as u32 % 300)
        .collect()
}

type Run = (Vec<Vec<f32>>, Vec<StepStats>, f64);

fn train(hidden: usize, threads: usize) -> Run {
    let cfg = TrainConfig {
        optimizer: OptimizerConfig {
            learning_rate: 3e-3,
            ema_decay: 0.9,
            ..Default::default()
        },
        schedule: ScheduleConfig {
            warmup_steps: 1,
            ..Default::default()
        },
        steps: 3,
        batch_size: 9,
        seq_len: 32,
    };
    let mut t = Trainer::<f32>::new(&model(hidden), &cfg, 11, threads).unwrap();
    let mut s = BatchSampler::new(stream(5000), 9, 32, 11).unwrap();
    let mut stats = Vec::new();
    t.fit(&mut s, |_, st| {
        stats.push(st.clone());
        true
    })
    .unwrap();
    // Timings are measurements, not results.
    for st in &mut stats {
        st.seconds = 0.0;
        st.tokens_per_s = 0.0;
    }
    let (sum, _) = t.score(&stream(1500), 32, 8).unwrap();
    let weights = t
        .params()
        .values
        .iter()
        .map(|v| v.data().to_vec())
        .collect();
    let mut moments: Vec<Vec<f32>> = t.optimizer().m.clone();
    moments.extend(t.optimizer().v.clone());
    let mut all: Vec<Vec<f32>> = weights;
    all.extend(moments);
    all.extend(t.model().values.iter().map(|v| v.data().to_vec()));
    (all, stats, sum)
}

fn same_bits_for_any_thread_count(hidden: usize) {
    let one = train(hidden, 1);
    for threads in [2, 3, 8] {
        let other = train(hidden, threads);
        assert_eq!(one.1, other.1, "step statistics with {threads} threads");
        assert_eq!(
            one.2.to_bits(),
            other.2.to_bits(),
            "score sum with {threads} threads"
        );
        assert!(
            one.0 == other.0,
            "weights or optimizer state differ with {threads} threads"
        );
    }
}

#[test]
fn one_two_three_and_eight_threads_give_the_same_bits() {
    same_bits_for_any_thread_count(64);
}

#[test]
fn the_same_bits_with_products_on_matrix_tiles() {
    let before = itera_model::ops::amx::products_computed();
    same_bits_for_any_thread_count(128);
    if itera_model::isa::amx() {
        assert!(
            itera_model::ops::amx::products_computed() > before,
            "no product of the width-128 model ran on the tiles"
        );
    } else {
        eprintln!(
            "kernels {}: no AMX tiles here, so this checked the vector products at width 128",
            itera_model::isa::kernel_path()
        );
    }
}
