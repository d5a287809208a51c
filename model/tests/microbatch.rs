//! A training step's micro-batches (`trainer::micro_batches`) compute the step's gradient:
//! the parts' gradients, each part's loss scaled by its share of the tokens, add up to
//! the gradient of the whole batch to rounding (without dropout and the balance loss,
//! which are drawn and measured per part by design).

use dfdx::prelude::{Cpu, OwnedTape};
use itera_model::model::{forward, forward_scaled};
use itera_model::ops::grad_of;
use itera_model::trainer::micro_batches;
use itera_model::{ModelConfig, Params};

#[test]
fn the_parts_gradients_add_up_to_the_whole_batch_gradient() {
    let cfg = ModelConfig {
        vocab_size: 97,
        hidden_size: 32,
        num_layers: 2,
        ssm_state_size: 4,
        num_experts: 4,
        expert_size: 16,
        top_k_experts: 2,
        max_seq_length: 64,
        dropout: 0.0,
        load_balance_loss_weight: 0.0,
        ..ModelConfig::tiny()
    };
    let params = Params::<f64>::init(&cfg, 3);
    let (batch, seq) = (5, 64);
    let tokens: Vec<u32> = (0..batch * (seq + 1))
        .map(|i| ((i * 31 + i / 7) % 97) as u32)
        .collect();
    let split = |range: std::ops::Range<usize>| {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for w in tokens[range.start * (seq + 1)..range.end * (seq + 1)].chunks(seq + 1) {
            x.extend_from_slice(&w[..seq]);
            y.extend_from_slice(&w[1..]);
        }
        (x, y)
    };
    let grads = |out: itera_model::model::ForwardOut<f64, OwnedTape<f64, Cpu>>| {
        let mut g = out.loss.backward();
        params
            .values
            .iter()
            .map(|v| grad_of(&mut g, v))
            .collect::<Vec<_>>()
    };
    let (x, y) = split(0..batch);
    let whole = grads(forward(&params, &x, &y, seq, None));
    let parts = micro_batches(batch, seq);
    assert_eq!(parts, vec![0..3, 3..5], "two unequal halves");
    let mut sum: Vec<Vec<f64>> = whole.iter().map(|g| vec![0.0; g.len()]).collect();
    for range in parts {
        let share = range.len() as f64 / batch as f64;
        let (x, y) = split(range);
        for (s, g) in sum
            .iter_mut()
            .zip(grads(forward_scaled(&params, &x, &y, seq, None, share)))
        {
            s.iter_mut().zip(g).for_each(|(s, g)| *s += g);
        }
    }
    for (i, (a, b)) in whole.iter().zip(&sum).enumerate() {
        for (a, b) in a.iter().zip(b) {
            assert!(
                (a - b).abs() <= 1e-12 + 1e-9 * a.abs(),
                "{}: {a} vs {b}",
                params.specs[i].name
            );
        }
    }
    // Small batches stay whole.
    assert_eq!(micro_batches(1, 512), vec![0..1]);
    assert_eq!(micro_batches(4, 32), vec![0..4]);
}
