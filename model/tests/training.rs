//! Training behaviour: a tiny model overfits a fixed batch, runs are bit-identical for
//! equal seed/data/threads, and kill-and-resume from a checkpoint ends bit-identical to an
//! uninterrupted run.

use itera_model::{
    BatchSampler, ModelConfig, OptimizerConfig, ScheduleConfig, TrainConfig, Trainer,
};

fn small_model() -> ModelConfig {
    ModelConfig {
        vocab_size: 64,
        hidden_size: 32,
        num_layers: 2,
        ssm_state_size: 4,
        ssm_conv_kernel: 4,
        ssm_expand_factor: 2,
        num_experts: 4,
        expert_size: 16,
        top_k_experts: 2,
        max_seq_length: 32,
        dropout: 0.1,
        ..ModelConfig::tiny()
    }
}

fn stream(n: usize) -> Vec<u32> {
    // A deterministic stream with structure (repeating phrases with noise).
    (0..n)
        .map(|i| ((i % 7) * 5 + (i / 7 % 3) * 11 + (i * i % 5)) as u32 % 64)
        .collect()
}

fn weights(t: &Trainer) -> Vec<Vec<f32>> {
    t.params()
        .values
        .iter()
        .map(|v| v.data().to_vec())
        .collect()
}

#[test]
fn tiny_model_overfits_a_fixed_batch() {
    let cfg = ModelConfig {
        dropout: 0.0,
        ..small_model()
    };
    let train = TrainConfig {
        optimizer: OptimizerConfig {
            learning_rate: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        },
        schedule: ScheduleConfig {
            warmup_steps: 5,
            ..Default::default()
        },
        steps: 150,
        batch_size: 4,
        seq_len: 16,
    };
    let mut t = Trainer::<f32>::new(&cfg, &train, 1, 2).unwrap();
    let batch: Vec<u32> = (0..4 * 17).map(|i| ((i * 37 + 11) % 64) as u32).collect();
    let first = t.step(&batch, 4, 16).unwrap();
    assert!(
        (first.ce_loss - (64f64).ln()).abs() < 0.3,
        "initial loss {} should be near ln(64)",
        first.ce_loss
    );
    let mut last = first.clone();
    for _ in 1..150 {
        last = t.step(&batch, 4, 16).unwrap();
    }
    assert!(
        last.ce_loss < 0.05,
        "loss after 150 steps on one batch: {}",
        last.ce_loss
    );
    assert_eq!(last.expert_usage.len(), 1);
    assert!((last.expert_usage[0].iter().sum::<f64>() - 1.0).abs() < 1e-9);
}

fn train_config(steps: u64, ema_decay: f64) -> TrainConfig {
    TrainConfig {
        optimizer: OptimizerConfig {
            learning_rate: 3e-3,
            ema_decay,
            ..Default::default()
        },
        schedule: ScheduleConfig {
            warmup_steps: 2,
            ..Default::default()
        },
        steps,
        batch_size: 3,
        seq_len: 12,
    }
}

fn run_with(steps: u64, threads: usize, seed: u64, ema_decay: f64) -> Trainer {
    let train = train_config(steps, ema_decay);
    let mut t = Trainer::<f32>::new(&small_model(), &train, seed, threads).unwrap();
    let mut s = BatchSampler::new(stream(2000), 3, 12, seed).unwrap();
    t.fit(&mut s, |_, _| true).unwrap();
    t
}

fn run(steps: u64, threads: usize, seed: u64) -> Trainer {
    run_with(steps, threads, seed, 0.0)
}

fn exported(t: &Trainer) -> Vec<Vec<f32>> {
    t.model().values.iter().map(|v| v.data().to_vec()).collect()
}

#[test]
fn equal_seed_data_and_threads_give_bit_identical_weights() {
    let a = run(6, 2, 5);
    let b = run(6, 2, 5);
    assert_eq!(weights(&a), weights(&b));
    assert_eq!(a.optimizer(), b.optimizer());
    let c = run(6, 2, 6);
    assert_ne!(
        weights(&a),
        weights(&c),
        "another seed must train differently"
    );
}

#[test]
fn resumed_run_is_bit_identical_to_an_uninterrupted_one() {
    for ema_decay in [0.0, 0.9] {
        let full = run_with(7, 2, 9, ema_decay);
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("ckpt");
        let train = train_config(7, ema_decay);
        {
            let mut t = Trainer::<f32>::new(&small_model(), &train, 9, 2).unwrap();
            let mut s = BatchSampler::new(stream(2000), 3, 12, 9).unwrap();
            // "Killed" after step 3: stop, checkpoint, drop everything.
            t.fit(&mut s, |t, _| t.steps_done() < 3).unwrap();
            assert_eq!(t.steps_done(), 3);
            t.save_checkpoint(&ckpt, Some(s.state())).unwrap();
        }
        let (mut t, sampler) = Trainer::<f32>::resume(&ckpt, 2).unwrap();
        assert_eq!(t.steps_done(), 3);
        let mut s = BatchSampler::restore(stream(2000), sampler.unwrap()).unwrap();
        t.fit(&mut s, |_, _| true).unwrap();
        assert_eq!(t.steps_done(), 7);
        assert_eq!(weights(&t), weights(&full), "ema_decay {ema_decay}");
        assert_eq!(exported(&t), exported(&full), "ema_decay {ema_decay}");
        assert_eq!(t.optimizer(), full.optimizer());
        // The checkpoint is also a loadable model folder.
        let (cfg, params) = itera_model::load_model(&ckpt).unwrap();
        assert_eq!(cfg, small_model());
        assert_eq!(params.count(), t.params().count());
    }
}

#[test]
fn the_exported_model_is_the_moving_average_of_the_weights() {
    let decay = 0.8;
    let mut t = Trainer::<f32>::new(&small_model(), &train_config(6, decay), 4, 2).unwrap();
    let mut s = BatchSampler::new(stream(2000), 3, 12, 4).unwrap();
    let mut avg = weights(&t);
    t.fit(&mut s, |t, st| {
        let d = decay.min((1.0 + st.step as f64) / (10.0 + st.step as f64));
        let (de, keep) = (d as f32, (1.0 - d) as f32);
        for (a, w) in avg.iter_mut().zip(weights(t)) {
            for (a, w) in a.iter_mut().zip(w) {
                *a = de * *a + keep * w;
            }
        }
        true
    })
    .unwrap();
    assert_eq!(exported(&t), avg);
    assert_ne!(
        exported(&t),
        weights(&t),
        "the average is not the last weights"
    );
    // Without averaging the exported model is the last step's weights.
    let plain = run(6, 2, 4);
    assert_eq!(exported(&plain), weights(&plain));
}

#[test]
fn decay_embeddings_shrinks_the_embeddings_by_the_decoupled_decay() {
    let one_step = |decay_embeddings: bool| {
        let mut train = train_config(1, 0.0);
        train.optimizer.weight_decay = 0.5;
        train.optimizer.decay_embeddings = decay_embeddings;
        let mut t = Trainer::<f32>::new(&small_model(), &train, 2, 1).unwrap();
        let before = weights(&t);
        let mut s = BatchSampler::new(stream(2000), 3, 12, 2).unwrap();
        let lr = train.lr_at(0);
        t.fit(&mut s, |_, _| true).unwrap();
        (before, weights(&t), lr)
    };
    let (w0, plain, lr) = one_step(false);
    let (_, decayed, _) = one_step(true);
    let embed = 0; // embed.weight is the first tensor of the layout
    for ((d, p), w) in decayed[embed].iter().zip(&plain[embed]).zip(&w0[embed]) {
        assert!((d - (p - (lr * 0.5) as f32 * w)).abs() < 1e-7);
    }
    assert_ne!(decayed[embed], plain[embed]);
    // Every other tensor is unchanged by the option.
    assert_eq!(decayed[2..], plain[2..]);
}

#[test]
fn evaluate_scores_every_token_once_and_bad_input_is_explained() {
    let t = run(2, 1, 3);
    let tokens = stream(100);
    let (sum, n) = t.score(&tokens, 12, 4).unwrap();
    assert_eq!(n, 99);
    let mean = t.evaluate(&tokens).unwrap();
    assert!((mean - sum / 99.0).abs() < 1e-4, "{mean} vs {}", sum / 99.0);
    assert!(mean > 0.0 && mean < 6.0);
    let err = t.score(&[1, 2, 700], 12, 4).unwrap_err().to_string();
    assert!(
        err.contains("700") && err.contains("vocabulary of 64"),
        "{err}"
    );
    let mut t = t;
    let err = t.step(&[1, 2, 3], 1, 12).unwrap_err().to_string();
    assert!(err.contains("needs 13 tokens"), "{err}");
}

#[test]
fn invalid_configs_are_refused_with_the_field() {
    let bad = ModelConfig {
        top_k_experts: 9,
        ..small_model()
    };
    let err = Trainer::<f32>::new(&bad, &TrainConfig::default(), 0, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("top_k_experts"), "{err}");
    let err = Trainer::<f32>::new(&small_model(), &TrainConfig::default(), 0, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("seq_len") && err.contains("max_seq_length (32)"),
        "{err}"
    );
}
