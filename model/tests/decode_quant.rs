//! Quantized weights in the recurrent decoder: int8, int4 and mixed files read back with
//! their matrices still quantized, and the decoder's native int8/int4 kernels (AVX-512,
//! AVX2, portable) giving the logits of the same model with the dequantized f32 weights.

mod support;

use std::collections::{BTreeMap, HashMap};

use itera_model::decode::{Decoder, Isa, Precision, Weights};
use itera_model::quantize::{quantize_weights, Scheme};
use itera_model::ModelConfig;

/// Row counts with 64-row groups and 16-row tails, columns that groups of 32 divide.
fn config() -> ModelConfig {
    ModelConfig {
        vocab_size: 300,
        hidden_size: 96,
        num_layers: 2,
        ssm_state_size: 8,
        ssm_expand_factor: 2,
        num_experts: 3,
        expert_size: 64,
        top_k_experts: 2,
        moe_layers: Some(vec![1]),
        ffn_size: Some(160),
        max_seq_length: 64,
        tie_embeddings: false,
        ..ModelConfig::tiny()
    }
}

fn quantized(scheme: Scheme) -> (Weights, Weights) {
    let c = config();
    let dense = Weights::random(&c, 5).unwrap();
    let file = quantize_weights(&dense, scheme, &[], 32).unwrap();
    let q = Weights::from_safetensors_bytes(c.clone(), &file.bytes, None).unwrap();
    let back: HashMap<String, (Vec<usize>, Vec<f32>)> = dense
        .tensors()
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                (t.shape.clone(), q.values(n).unwrap().into_owned()),
            )
        })
        .collect();
    (q, Weights::from_tensors(c, back).unwrap())
}

fn logits(decoder: &Decoder, toks: &[u32]) -> Vec<Vec<f32>> {
    let mut state = decoder.new_state();
    toks.iter()
        .map(|&t| decoder.step(&mut state, t).unwrap().to_vec())
        .collect()
}

#[test]
fn quantized_matrices_stay_quantized_and_decode_like_their_dequantized_values() {
    let toks: Vec<u32> = (0..20).map(|i| (i * 37 + 5) % 300).collect();
    for scheme in [Scheme::Int8, Scheme::Int4, Scheme::Mixed] {
        let (q, deq) = quantized(scheme);
        let n_quant = q.quantized_tensors().len();
        match scheme {
            // embed, pos_embed, lm_head (+ every eligible matrix for int8/int4)
            Scheme::Mixed => assert_eq!(n_quant, 3),
            _ => assert!(n_quant > 10, "{scheme:?}: {n_quant}"),
        }
        let want = logits(
            &Decoder::with_isa(&deq, Precision::F32, Isa::Portable),
            &toks,
        );
        let mut isas = vec![Isa::Portable];
        if Isa::Avx2.or_supported() == Isa::Avx2 {
            isas.push(Isa::Avx2);
        }
        if Isa::Avx512.or_supported() == Isa::Avx512 {
            isas.push(Isa::Avx512);
        }
        for isa in isas {
            let decoder = Decoder::with_isa(&q, Precision::F32, isa);
            let got = logits(&decoder, &toks);
            let mut worst = 0.0f32;
            for (a, b) in got.iter().flatten().zip(want.iter().flatten()) {
                worst = worst.max((a - b).abs() / (1.0 + b.abs()));
            }
            assert!(
                worst < 2e-4,
                "{scheme:?} on {isa:?}: max relative error {worst}"
            );
            let f32_bytes = Decoder::with_isa(&deq, Precision::F32, isa).weight_bytes();
            if scheme != Scheme::Mixed {
                assert!(
                    decoder.weight_bytes() * 3 < f32_bytes,
                    "{scheme:?}: {} bytes against {f32_bytes}",
                    decoder.weight_bytes()
                );
            }
        }
    }
}

#[test]
fn a_quantized_file_without_its_scales_is_refused() {
    let c = config();
    let dense = Weights::random(&c, 5).unwrap();
    let file = quantize_weights(&dense, Scheme::Int8, &[], 32).unwrap();
    // Rename the scales of one matrix so the file no longer has them.
    let text = String::from_utf8_lossy(&file.bytes).into_owned();
    assert!(text.contains("lm_head.weight.scale"));
    let broken = file
        .bytes
        .windows(20)
        .position(|w| w == b"lm_head.weight.scale")
        .unwrap();
    let mut bytes = file.bytes.clone();
    bytes[broken + 15..broken + 20].copy_from_slice(b"scalx");
    let err = Weights::from_safetensors_bytes(c, &bytes, None).unwrap_err();
    assert!(err.to_string().contains("lm_head.weight.scale"), "{err}");
}

/// The ten lines of numpy in docs/MODEL.md ("Quantized weights") dequantize a file exactly
/// as Itera does.
const NUMPY_DEQUANTIZE: &str = r#"
import json, sys, numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file
path = sys.argv[1]
with safe_open(path, "numpy") as f:
    meta = json.loads(f.metadata()["quantization"])
t = load_file(path)
def dequantize(name):
    q, s = t[name], t[name + ".scale"]
    if meta["tensors"][name] == "int8":
        return q.astype(np.float32) * s[:, None]
    lo, hi = (q & 15).astype(np.int8) - 8, (q >> 4).astype(np.int8) - 8
    levels = np.stack([lo, hi], axis=-1).reshape(q.shape[0], -1).astype(np.float32)
    return levels * np.repeat(s, meta["group_size"], axis=1)
print(json.dumps({n: dequantize(n).ravel().tolist() for n in meta["tensors"]}))
"#;

#[test]
fn python_numpy_dequantizes_like_itera() {
    if !support::python_with("safetensors, numpy") {
        return;
    }
    let c = config();
    let dense = Weights::random(&c, 9).unwrap();
    // int4 for the feed-forward matrices, int8 for everything else eligible.
    let rules = [itera_model::quantize::Rule {
        pattern: "layers.*.ffn.*.weight".into(),
        format: itera_model::quantize::TensorFormat::Int4,
    }];
    let file = quantize_weights(&dense, Scheme::Int8, &rules, 32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, &file.bytes).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-c", NUMPY_DEQUANTIZE, path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: BTreeMap<String, Vec<f64>> = serde_json::from_slice(&out.stdout).unwrap();
    let q = Weights::from_safetensors_bytes(c, &file.bytes, None).unwrap();
    assert_eq!(got.len(), q.quantized_tensors().len());
    assert!(got.contains_key("layers.0.ffn.up.weight"));
    for (name, values) in &got {
        let want = q.quantized(name).unwrap().dequantize();
        let got: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn a_rule_that_matches_no_tensor_is_an_error() {
    let dense = Weights::random(&config(), 5).unwrap();
    let rules = [itera_model::quantize::Rule {
        pattern: "layers.*.mo.*".into(),
        format: itera_model::quantize::TensorFormat::Int4,
    }];
    let err = quantize_weights(&dense, Scheme::Int8, &rules, 32)
        .err()
        .expect("a misspelt pattern is refused");
    assert!(err.contains("`layers.*.mo.*` matches no tensor"), "{err}");
}
