//! `model.safetensors` + `config.json`: names and shapes exactly as in `docs/MODEL.md`,
//! the header metadata, round trips (F32 as written, F16/BF16 upcast), clear errors, and
//! (when Python's `safetensors` and `numpy` are installed) loading with Python.

mod support;

use itera_model::params::layout;
use itera_model::weights::{self, read_tensors, WEIGHTS_FILE};
use itera_model::{load_model, ModelConfig, Params};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;

fn cfg() -> ModelConfig {
    ModelConfig {
        vocab_size: 50,
        hidden_size: 8,
        num_layers: 2,
        ssm_state_size: 4,
        ssm_conv_kernel: 3,
        ssm_expand_factor: 2,
        num_experts: 3,
        expert_size: 5,
        top_k_experts: 2,
        max_seq_length: 16,
        ..ModelConfig::tiny()
    }
}

/// The table of docs/MODEL.md, written out for `cfg()` (V=50, D=8, Di=16, N=4, K=3,
/// X=3, F=5, Ff=10, S=16; layer 0 plain, layer 1 MoE).
fn expected() -> BTreeMap<String, Vec<usize>> {
    let mut e = BTreeMap::new();
    let mut add = |n: &str, s: &[usize]| {
        e.insert(n.to_string(), s.to_vec());
    };
    add("embed.weight", &[50, 8]);
    add("pos_embed.weight", &[16, 8]);
    for l in 0..2 {
        let p = |s: &str| format!("layers.{l}.{s}");
        add(&p("ssm_norm.weight"), &[8]);
        add(&p("ssm_norm.bias"), &[8]);
        add(&p("ssm.in_proj.weight"), &[32, 8]);
        add(&p("ssm.in_proj.bias"), &[32]);
        add(&p("ssm.conv.weight"), &[16, 3]);
        add(&p("ssm.conv.bias"), &[16]);
        add(&p("ssm.dt_proj.weight"), &[16, 16]);
        add(&p("ssm.dt_proj.bias"), &[16]);
        add(&p("ssm.A_log"), &[4]);
        add(&p("ssm.B"), &[4, 16]);
        add(&p("ssm.C"), &[16, 4]);
        add(&p("ssm.D"), &[16]);
        add(&p("ssm.out_proj.weight"), &[8, 16]);
        add(&p("ssm.out_proj.bias"), &[8]);
        add(&p("ffn_norm.weight"), &[8]);
        add(&p("ffn_norm.bias"), &[8]);
    }
    add("layers.0.ffn.up.weight", &[10, 8]);
    add("layers.0.ffn.up.bias", &[10]);
    add("layers.0.ffn.down.weight", &[8, 10]);
    add("layers.0.ffn.down.bias", &[8]);
    add("layers.1.moe.router.weight", &[3, 8]);
    for x in 0..3 {
        add(&format!("layers.1.moe.experts.{x}.up.weight"), &[5, 8]);
        add(&format!("layers.1.moe.experts.{x}.up.bias"), &[5]);
        add(&format!("layers.1.moe.experts.{x}.down.weight"), &[8, 5]);
        add(&format!("layers.1.moe.experts.{x}.down.bias"), &[8]);
    }
    add("final_norm.weight", &[8]);
    add("final_norm.bias", &[8]);
    e
}

#[test]
fn exported_names_shapes_metadata_and_round_trip() {
    let params = Params::<f32>::init(&cfg(), 4);
    let dir = tempfile::tempdir().unwrap();
    weights::export(&params, dir.path()).unwrap();
    let bytes = std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let found: BTreeMap<String, Vec<usize>> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec()))
        .collect();
    assert_eq!(found, expected());
    assert!(st.tensors().iter().all(|(_, v)| v.dtype() == Dtype::F32));
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta.get("format").map(String::as_str), Some("itera-lite"));
    assert_eq!(meta.get("version").map(String::as_str), Some("1"));

    let (cfg2, loaded) = load_model(dir.path()).unwrap();
    assert_eq!(cfg2, cfg());
    for (a, b) in params.values.iter().zip(&loaded.values) {
        assert_eq!(a.data(), b.data());
    }
    // Untied adds exactly `lm_head.weight`.
    let untied = ModelConfig {
        tie_embeddings: false,
        ..cfg()
    };
    let names: Vec<String> = layout(&untied).into_iter().map(|s| s.name).collect();
    assert_eq!(names.len(), expected().len() + 1);
    assert!(names.contains(&"lm_head.weight".to_string()));
}

#[test]
fn half_precision_files_are_upcast() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.safetensors");
    // 1.0, -2.5, 65504 (max f16), 2^-24 (smallest subnormal) in F16; 1.0, -3.0 in BF16.
    let f16: Vec<u8> = [0x3C00u16, 0xC100, 0x7BFF, 0x0001]
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .collect();
    let bf16: Vec<u8> = [0x3F80u16, 0xC040]
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .collect();
    let views = vec![
        (
            "a".to_string(),
            TensorView::new(Dtype::F16, vec![4], &f16).unwrap(),
        ),
        (
            "b".to_string(),
            TensorView::new(Dtype::BF16, vec![2], &bf16).unwrap(),
        ),
    ];
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let t = read_tensors::<f32>(&path).unwrap();
    assert_eq!(t["a"].1, vec![1.0, -2.5, 65504.0, 2f32.powi(-24)]);
    assert_eq!(t["b"].1, vec![1.0, -3.0]);
}

#[test]
fn mismatched_files_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    weights::export(&Params::<f32>::init(&cfg(), 1), dir.path()).unwrap();
    // The same weights with a config that wants a bigger state size.
    let other = ModelConfig {
        ssm_state_size: 5,
        ..cfg()
    };
    let err = weights::load_params::<f32>(&other, &dir.path().join(WEIGHTS_FILE))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("layers.0.ssm.A_log") && err.contains("[4]") && err.contains("[5]"),
        "{err}"
    );
    std::fs::write(dir.path().join("config.json"), r#"{"hidden_sise": 8}"#).unwrap();
    let err = load_model(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("config.json") && err.contains("hidden_sise"),
        "{err}"
    );
}

#[test]
fn python_safetensors_reads_the_file() {
    if !support::python_with("safetensors, numpy") {
        return;
    }
    let params = Params::<f32>::init(&cfg(), 2);
    let dir = tempfile::tempdir().unwrap();
    weights::export(&params, dir.path()).unwrap();
    let script = r#"
import sys, json
from safetensors.numpy import load_file
from safetensors import safe_open
t = load_file(sys.argv[1])
with safe_open(sys.argv[1], framework="numpy") as f:
    meta = f.metadata()
print(json.dumps({"shapes": {k: list(v.shape) for k, v in t.items()},
                  "dtypes": sorted({str(v.dtype) for v in t.values()}),
                  "a_log": t["layers.0.ssm.A_log"].tolist(), "meta": meta}))
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            dir.path().join(WEIGHTS_FILE).to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shapes: BTreeMap<String, Vec<usize>> = serde_json::from_value(v["shapes"].clone()).unwrap();
    assert_eq!(shapes, expected());
    assert_eq!(v["dtypes"], serde_json::json!(["float32"]));
    assert_eq!(v["meta"]["format"], "itera-lite");
    let a_log: Vec<f32> = serde_json::from_value(v["a_log"].clone()).unwrap();
    assert_eq!(a_log.as_slice(), params.get("layers.0.ssm.A_log").data());
}
