//! The portable kernels (`ITERA_KERNELS=portable`, what a CPU without AVX2 runs) train
//! the same model as the CPU's best kernels to rounding, and are themselves independent
//! of the thread count. Its own test binary: forcing the kernels is process-wide.

use itera_model::isa::{self, Isa};
use itera_model::{
    BatchSampler, ModelConfig, OptimizerConfig, ScheduleConfig, TrainConfig, Trainer,
};

fn run(threads: usize) -> (Vec<f64>, Vec<Vec<f32>>) {
    let model = ModelConfig {
        vocab_size: 200,
        hidden_size: 64,
        num_layers: 2,
        ssm_state_size: 8,
        num_experts: 4,
        expert_size: 32,
        top_k_experts: 2,
        max_seq_length: 32,
        ..ModelConfig::tiny()
    };
    let cfg = TrainConfig {
        optimizer: OptimizerConfig {
            learning_rate: 3e-3,
            ..Default::default()
        },
        schedule: ScheduleConfig {
            warmup_steps: 1,
            ..Default::default()
        },
        steps: 4,
        batch_size: 8,
        seq_len: 32,
    };
    let stream: Vec<u32> = (0..4000).map(|i| ((i * 7 + i / 5) % 200) as u32).collect();
    let mut t = Trainer::<f32>::new(&model, &cfg, 3, threads).unwrap();
    let mut s = BatchSampler::new(stream, 8, 32, 3).unwrap();
    let mut losses = Vec::new();
    t.fit(&mut s, |_, st| {
        losses.push(st.ce_loss);
        true
    })
    .unwrap();
    let w = t
        .params()
        .values
        .iter()
        .map(|v| v.data().to_vec())
        .collect();
    (losses, w)
}

#[test]
fn portable_kernels_match_the_native_ones_to_rounding_for_any_thread_count() {
    let native = run(2);
    isa::force(Isa::Portable);
    assert_eq!(isa::kernels(), Isa::Portable);
    assert!(isa::kernel_path().ends_with("/portable"));
    let portable = run(1);
    assert_eq!(
        portable,
        run(3),
        "portable path depends on the thread count"
    );
    for (a, b) in native.0.iter().zip(&portable.0) {
        assert!(
            (a - b).abs() <= 1e-4 * a.abs(),
            "native loss {a} vs portable {b}"
        );
    }
    assert!(portable.0[3] < portable.0[0], "the portable path trains");
}
