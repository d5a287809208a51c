//! Parity between the two execution modes: the parallel dfdx forward (training, scoring)
//! and the recurrent decoder over plain slices (generation) compute the same model. Both
//! score the same 128-token sequence with the same random weights (large enough that
//! logits span tens of nats, so any disagreement in any sub-block shows in the loss).

use dfdx::prelude::NoneTape;
use itera_model::decode::{Decoder, Precision, Weights};
use itera_model::model::forward;
use itera_model::params::layout;
use itera_model::{score, ModelConfig, Params};

fn configs() -> Vec<ModelConfig> {
    vec![
        ModelConfig {
            vocab_size: 300,
            ..ModelConfig::tiny()
        },
        ModelConfig {
            vocab_size: 200,
            num_layers: 3,
            moe_layers: Some(vec![0, 1, 2]),
            num_experts: 5,
            top_k_experts: 3,
            ssm_conv_kernel: 1,
            ffn_size: Some(48),
            tie_embeddings: false,
            ..ModelConfig::tiny()
        },
    ]
}

fn params_from(weights: &Weights, cfg: &ModelConfig) -> Params<f32> {
    let values = layout(cfg)
        .iter()
        .map(|spec| {
            let t = weights
                .tensor(&spec.name)
                .expect("every layout tensor exists");
            assert_eq!(t.shape, spec.shape, "{}", spec.name);
            t.data.clone()
        })
        .collect();
    Params::from_values(cfg, values)
}

#[test]
fn parallel_forward_and_recurrent_decoder_agree_over_128_tokens() {
    for cfg in configs() {
        let weights = Weights::random(&cfg, 11).unwrap();
        let params = params_from(&weights, &cfg);
        let tokens: Vec<u32> = (0..129u64)
            .map(|i| ((i * 7919 + 13) % cfg.vocab_size as u64) as u32)
            .collect();

        let parallel = forward::<f32, NoneTape>(&params, &tokens[..128], &tokens[1..], 128, None);
        let decoder = Decoder::new(&weights, Precision::F32);
        let (sum_nll, count) = decoder.score(&tokens).unwrap();
        assert_eq!(count, 128);
        let recurrent = sum_nll / count as f64;
        // A meaningful comparison: random weights give a loss far from uniform ln(V).
        assert!(
            (recurrent - (cfg.vocab_size as f64).ln()).abs() > 0.5,
            "loss {recurrent} is too close to uniform to prove anything"
        );
        let rel = (parallel.ce - recurrent).abs() / recurrent;
        assert!(
            rel < 1e-5,
            "parallel CE {} vs recurrent {} (rel {rel:e}) for {cfg:?}",
            parallel.ce,
            recurrent
        );

        // The batched scorer (evaluation) agrees too.
        let (batched_nll, batched_count) = score(&params, &tokens, 128, 1).unwrap();
        assert_eq!(batched_count, 128);
        let batched = batched_nll / batched_count as f64;
        assert!(
            (batched - recurrent).abs() / recurrent < 1e-5,
            "batched score {batched} vs recurrent {recurrent}"
        );
    }
}
