//! The recurrent decoder against the naive f64 reference forward (f32 and f16 weights,
//! every kernel instruction set), its state handling and errors, and weight loading.

use std::collections::HashMap;

use itera_model::decode::{
    reference, DecodeError, Decoder, Isa, Precision, StoreDtype, Weights, WeightsError,
};
use itera_model::ModelConfig;

/// Seeded pseudo-random tokens in 0..vocab.
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// Largest |decoder - reference| over every position and logit, stepping one token at a time.
fn max_error(decoder: &Decoder, want: &[Vec<f64>], toks: &[u32]) -> f64 {
    let mut state = decoder.new_state();
    let mut worst = 0.0f64;
    for (t, &tok) in toks.iter().enumerate() {
        let logits = decoder.step(&mut state, tok).unwrap();
        for (a, b) in logits.iter().zip(&want[t]) {
            worst = worst.max((*a as f64 - b).abs());
        }
    }
    worst
}

fn moe_config() -> ModelConfig {
    ModelConfig {
        vocab_size: 300,
        hidden_size: 48,
        num_layers: 4,
        ssm_state_size: 6,
        ssm_conv_kernel: 1,
        ssm_expand_factor: 3,
        num_experts: 5,
        expert_size: 40,
        top_k_experts: 3,
        moe_layers: Some(vec![0, 1, 3]),
        ffn_size: Some(72),
        max_seq_length: 128,
        tie_embeddings: false,
        ..ModelConfig::tiny()
    }
}

#[test]
fn decoder_matches_reference_on_the_tiny_model() {
    let config = ModelConfig::tiny();
    let weights = Weights::random(&config, 7).unwrap();
    let toks = tokens(128, config.vocab_size, 1);
    let want = reference::forward(&weights, &toks).unwrap();
    let scale = want.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(scale > 1.0, "logits are not trivially small ({scale})");
    let err = max_error(&Decoder::new(&weights, Precision::F32), &want, &toks);
    eprintln!("tiny f32: max |diff| {err:e} (logit scale {scale:.2})");
    assert!(err < 1e-4, "f32 decoder vs reference: max |diff| = {err}");
}

#[test]
fn decoder_matches_reference_with_several_moe_layers_k1_untied_on_every_isa() {
    let config = moe_config();
    let weights = Weights::random(&config, 11).unwrap();
    let toks = tokens(128, config.vocab_size, 2);
    let want = reference::forward(&weights, &toks).unwrap();
    for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
        let decoder = Decoder::with_isa(&weights, Precision::F32, isa);
        let err = max_error(&decoder, &want, &toks);
        assert!(err < 1e-4, "{:?}: max |diff| = {err}", decoder.isa());
    }
}

#[test]
fn decode_f16_decoders_match_the_reference_on_half_converted_weights() {
    let config = ModelConfig {
        vocab_size: 500,
        ..ModelConfig::tiny()
    };
    let weights = Weights::random(&config, 3).unwrap();
    // The reference on the weights a half-convert would write, read back through safetensors.
    let bytes = weights.to_safetensors_bytes(StoreDtype::F16);
    let halved = Weights::from_safetensors_bytes(config.clone(), &bytes, None).unwrap();
    let toks = tokens(128, config.vocab_size, 3);
    let want = reference::forward(&halved, &toks).unwrap();
    for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
        let upcast = Decoder::with_isa(&weights, Precision::F16, isa);
        let err = max_error(&upcast, &want, &toks);
        eprintln!("{isa:?} f16 upcast {err:e}");
        assert!(err < 1e-4, "f16 upcast {isa:?}: max |diff| = {err}");
        // f16 accumulation loses ~3 decimal digits per matvec; it must stay close, not exact.
        let native = Decoder::with_isa(&weights, Precision::F16Native, isa);
        let err = max_error(&native, &want, &toks);
        eprintln!("{isa:?} f16 native {err:e}");
        assert!(
            err > 1e-4 && err < 0.5,
            "f16 native {isa:?}: max |diff| = {err}"
        );
    }
}

#[test]
fn decode_prefill_reset_score_and_errors() {
    let config = ModelConfig {
        max_seq_length: 16,
        ..moe_config()
    };
    let weights = Weights::random(&config, 5).unwrap();
    let decoder = Decoder::new(&weights, Precision::F32);
    let toks = tokens(16, config.vocab_size, 4);
    let want = reference::forward(&weights, &toks).unwrap();

    let mut state = decoder.new_state();
    let last = decoder.prefill(&mut state, &toks[..10]).unwrap().to_vec();
    assert_eq!(state.position(), 10);
    let mut stepped = decoder.new_state();
    for &t in &toks[..10] {
        decoder.step(&mut stepped, t).unwrap();
    }
    assert_eq!(stepped.logits(), &last[..]);
    state.reset();
    let again = decoder.prefill(&mut state, &toks[..10]).unwrap();
    assert_eq!(again, &last[..], "reset state decodes like a fresh one");

    // score = sum of -log softmax(reference)[next token]
    let (nll, count) = decoder.score(&toks).unwrap();
    assert_eq!(count, 15);
    let want_nll: f64 = (0..15)
        .map(|t| {
            let l = &want[t];
            let max = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = l.iter().map(|x| (x - max).exp()).sum();
            max + z.ln() - l[toks[t + 1] as usize]
        })
        .sum();
    assert!((nll - want_nll).abs() < 1e-3, "{nll} vs {want_nll}");

    // Context full after max_seq_length tokens; out-of-range tokens; empty prompt.
    let mut state = decoder.new_state();
    decoder.prefill(&mut state, &toks).unwrap();
    assert_eq!(
        decoder.step(&mut state, 0).unwrap_err(),
        DecodeError::ContextFull { max_seq_length: 16 }
    );
    let mut state = decoder.new_state();
    let err = decoder.prefill(&mut state, &[1, 2, 300]).unwrap_err();
    assert_eq!(
        err,
        DecodeError::TokenOutOfRange {
            token: 300,
            position: 2,
            vocab_size: 300
        }
    );
    assert!(err.to_string().contains("outside the vocabulary (0..300)"));
    assert_eq!(
        decoder.prefill(&mut state, &[]).unwrap_err(),
        DecodeError::EmptyPrompt
    );
    assert!(matches!(
        reference::forward(&weights, &tokens(17, 300, 1)),
        Err(DecodeError::ContextFull { .. })
    ));
}

#[test]
fn decode_safetensors_round_trips_in_every_dtype() {
    let config = moe_config();
    let weights = Weights::random(&config, 9).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
    for (dtype, tol) in [
        (StoreDtype::F32, 0.0),
        (StoreDtype::F16, 1e-3),
        (StoreDtype::BF16, 8e-3),
    ] {
        std::fs::write(
            dir.path().join("model.safetensors"),
            weights.to_safetensors_bytes(dtype),
        )
        .unwrap();
        let loaded = Weights::load_dir(dir.path()).unwrap();
        assert_eq!(loaded.config(), &config);
        for (name, t) in weights.tensors() {
            let got = &loaded.tensors()[name];
            assert_eq!(got.shape, t.shape);
            for (a, b) in got.data.iter().zip(&t.data) {
                assert!((a - b).abs() <= tol * b.abs().max(1.0), "{dtype:?} {name}");
            }
        }
    }
}

fn as_map(weights: &Weights) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    weights
        .tensors()
        .iter()
        .map(|(k, t)| (k.clone(), (t.shape.clone(), t.data.clone())))
        .collect()
}

#[test]
fn decode_weight_errors_name_the_tensor_and_the_fix() {
    let config = moe_config();
    let weights = Weights::random(&config, 1).unwrap();

    let mut map = as_map(&weights);
    map.remove("layers.3.moe.experts.4.down.bias");
    let err = Weights::from_tensors(config.clone(), map).unwrap_err();
    assert!(matches!(err, WeightsError::MissingTensor { .. }));
    assert!(
        err.to_string()
            .contains("tensor `layers.3.moe.experts.4.down.bias` (shape [48]) is missing"),
        "{err}"
    );

    let mut map = as_map(&weights);
    map.insert("ssm.B".into(), (vec![1], vec![0.0]));
    map.get_mut("layers.1.ssm.B").unwrap().0 = vec![72, 6];
    let err = Weights::from_tensors(config.clone(), map)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`layers.1.ssm.B` has shape [72, 6] but the config implies [6, 144]"),
        "{err}"
    );

    // Weights of a model whose layer 2 is MoE, read with a config that says it is plain.
    let other = ModelConfig {
        moe_layers: Some(vec![0, 1, 2, 3]),
        ..config.clone()
    };
    let mut map = as_map(&Weights::random(&other, 1).unwrap());
    let err = Weights::from_tensors(config.clone(), map.clone()).unwrap_err();
    assert!(
        err.to_string()
            .contains("`layers.2.ffn.up.weight` (shape [72, 48]) is missing"),
        "{err}"
    );
    for name in expected_plain_layer2() {
        let src = weights.tensors()[name].clone();
        map.insert(name.to_owned(), (src.shape, src.data));
    }
    let err = Weights::from_tensors(config.clone(), map).unwrap_err();
    assert!(
        err.to_string().contains(
            "tensor `layers.2.moe.experts.0.down.bias` is not part of a model with this config"
        ),
        "{err}"
    );

    let mut map = as_map(&weights);
    map.get_mut("final_norm.bias").unwrap().1[3] = f32::NAN;
    let err = Weights::from_tensors(config.clone(), map)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`final_norm.bias` holds a non-finite value at flat index 3"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let err = Weights::load_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.starts_with("cannot read") && err.contains("config.json"),
        "{err}"
    );
    std::fs::write(dir.path().join("config.json"), r#"{"hidden_size": 0}"#).unwrap();
    let err = Weights::load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("hidden_size: must be at least 1"), "{err}");
    std::fs::write(dir.path().join("config.json"), r#"{"hidden": 3}"#).unwrap();
    let err = Weights::load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("unknown field `hidden`"), "{err}");
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    let err = Weights::load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("is not a readable safetensors file"), "{err}");
}

fn expected_plain_layer2() -> [&'static str; 4] {
    [
        "layers.2.ffn.up.weight",
        "layers.2.ffn.up.bias",
        "layers.2.ffn.down.weight",
        "layers.2.ffn.down.bias",
    ]
}
