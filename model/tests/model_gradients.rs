//! The whole tiny model's gradient (loss = CE + balance loss, with dropout) against
//! central finite differences in f64, for every parameter tensor.

use dfdx::prelude::{Cpu, NoneTape, OwnedTape};
use itera_model::model::{forward, DropoutKey};
use itera_model::ops::grad_of;
use itera_model::{ModelConfig, Params};

fn tiny(tie: bool) -> ModelConfig {
    ModelConfig {
        vocab_size: 11,
        hidden_size: 6,
        num_layers: 2,
        ssm_state_size: 3,
        ssm_conv_kernel: 3,
        ssm_expand_factor: 2,
        num_experts: 3,
        expert_size: 4,
        top_k_experts: 2,
        max_seq_length: 8,
        dropout: 0.1,
        load_balance_loss_weight: 0.5,
        tie_embeddings: tie,
        ..ModelConfig::tiny()
    }
}

fn loss_value(
    params: &Params<f64>,
    x: &[u32],
    y: &[u32],
    seq: usize,
    d: Option<DropoutKey>,
) -> f64 {
    forward::<f64, NoneTape>(params, x, y, seq, d).loss.data()[0]
}

fn check_model(cfg: &ModelConfig) {
    let params = Params::<f64>::init(cfg, 3);
    // Larger random values than the init so every term (scan, gates, ...) matters.
    let values: Vec<Vec<f64>> = params
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.data()
                .iter()
                .enumerate()
                .map(|(j, &x)| x + 0.3 * (((i * 31 + j * 17) % 13) as f64 / 13.0 - 0.5))
                .collect()
        })
        .collect();
    let params = Params::from_values(cfg, values);
    let seq = 5;
    let x: Vec<u32> = (0..10).map(|i| (i * 7 % 11) as u32).collect();
    let y: Vec<u32> = (0..10).map(|i| (i * 5 % 11) as u32).collect();
    let d = Some(DropoutKey {
        p: cfg.dropout,
        key: 42,
    });
    let out = forward::<f64, OwnedTape<f64, Cpu>>(&params, &x, &y, seq, d);
    assert!(out.aux > 0.0);
    let mut grads = out.loss.backward();
    let h = 1e-5;
    let mut checked = 0;
    for (i, spec) in params.specs.iter().enumerate() {
        let analytic = grad_of(&mut grads, &params.values[i]);
        let n = spec.numel();
        for idx in (0..n).step_by((n / 5).max(1)) {
            let perturbed = |delta: f64| {
                let mut p = params.clone();
                let mut v = p.values[i].data().to_vec();
                v[idx] += delta;
                p.set(i, v);
                loss_value(&p, &x, &y, seq, d)
            };
            let numeric = (perturbed(h) - perturbed(-h)) / (2.0 * h);
            let a = analytic[idx];
            let tol = 1e-8 + 1e-5 * a.abs().max(numeric.abs());
            assert!(
                (a - numeric).abs() <= tol,
                "{}[{idx}]: analytic {a} vs numeric {numeric}",
                spec.name
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "checked {checked} elements");
}

#[test]
fn whole_model_gradient_matches_finite_differences_tied() {
    check_model(&tiny(true));
}

#[test]
fn whole_model_gradient_matches_finite_differences_untied() {
    check_model(&tiny(false));
}
