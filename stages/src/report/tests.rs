//! Tests of the report: findings follow the numbers, files are written, text is escaped.

use super::*;
use crate::records::{Deltas, GenerationRecord, ModelEval, SamplingRecord, SpeedRecord};
use itera_model::config::ModelConfig;

fn speed(precision: &str, runs: &[f64]) -> SpeedRecord {
    SpeedRecord {
        precision: precision.into(),
        tokens_per_s: records::median(runs),
        runs: runs.to_vec(),
        threads: 2,
    }
}

fn model(
    name: &str,
    dtype: &str,
    bytes: u64,
    loss: f64,
    speeds: Vec<SpeedRecord>,
    greedy: &[&str],
) -> ModelEval {
    ModelEval {
        name: name.into(),
        dtype: dtype.into(),
        parameters: 1_234_567,
        file_bytes: bytes,
        val_loss: loss,
        perplexity: loss.exp(),
        bits_per_token: loss / std::f64::consts::LN_2,
        bits_per_byte: loss / std::f64::consts::LN_2 / 4.0,
        delta: Deltas {
            val_loss: 0.0,
            val_loss_pct: 0.0,
            perplexity: 0.0,
            bits_per_byte: 0.0,
            size_ratio: 1.0,
        },
        scoring_tokens_per_s: 20_000.0,
        generation_speed: speeds,
        generations: ["once upon a time", "the cat | dog"]
            .iter()
            .zip(greedy)
            .map(|(p, g)| GenerationRecord {
                prompt: (*p).into(),
                greedy: (*g).into(),
                sampled: format!("{g} sampled"),
            })
            .collect(),
    }
}

pub(crate) fn sample_eval() -> EvalReport {
    let reference = model(
        "train",
        "F32",
        4_000_000,
        2.0,
        vec![speed("f32", &[900.0, 1000.0, 1100.0])],
        &["there was a girl", "sat on the mat"],
    );
    let mut half = model(
        "half",
        "F16",
        2_000_100,
        2.0002,
        vec![
            speed("f16-upcast", &[950.0, 980.0, 990.0]),
            speed("f16-native", &[300.0, 330.0, 310.0]),
        ],
        &["there was a girl", "sat on a mat"],
    );
    half.delta = Deltas {
        val_loss: 0.0002,
        val_loss_pct: 0.01,
        perplexity: half.perplexity - reference.perplexity,
        bits_per_byte: half.bits_per_byte - reference.bits_per_byte,
        size_ratio: 2_000_100.0 / 4_000_000.0,
    };
    EvalReport {
        eval_tokens: 10_000,
        eval_bytes: 40_000.0,
        seq_len: 128,
        threads: 2,
        speed_runs: 3,
        max_new_tokens: 32,
        sampling: SamplingRecord {
            temperature: 0.8,
            top_k: Some(40),
            top_p: None,
            seed: 7,
        },
        models: vec![reference, half],
    }
}

fn sample_train() -> (TrainSummary, Vec<TrainLogLine>) {
    let log: Vec<TrainLogLine> = (1..=10)
        .map(|i| TrainLogLine {
            step: i * 10,
            tokens: i * 10 * 4096,
            loss: 9.0 - i as f64 * 0.5,
            lr: 3e-4,
            val_loss: (i % 5 == 0).then_some(8.8 - i as f64 * 0.5),
            tokens_per_s: 5000.0,
            elapsed_s: i as f64 * 8.0,
        })
        .collect();
    let summary = TrainSummary {
        config: ModelConfig::tiny(),
        parameters: 1_234_567,
        steps: 100,
        batch_size: 32,
        seq_len: 128,
        train_tokens_available: 500_000,
        tokens_seen: 409_600,
        epochs: 0.8192,
        final_train_loss: 4.0,
        final_val_loss: 3.8,
        best_val_loss: 3.8,
        val_tokens: 10_000,
        train_seconds: 80.0,
        tokens_per_s: 5120.0,
        threads: 2,
        seed: 1,
        resumed_from_step: Some(50),
    };
    (summary, log)
}

#[test]
fn findings_are_computed_from_the_numbers() {
    let eval = sample_eval();
    let (summary, log) = sample_train();
    let f = findings(&eval, Some((&summary, &log)));
    let all = f.join("\n");
    assert!(
        all.contains("F16 (`half`) halves the weights (4.00 MB → 2.00 MB, 0.500×)"),
        "{all}"
    );
    assert!(all.contains("moves validation loss by +0.010%"), "{all}");
    // native 310 vs f32 1000 tok/s: 3.2x slower.
    assert!(all.contains("f16 arithmetic is 3.2× slower than f32 (310.0 vs 1,000 tokens/s), so F16 is a storage format here"), "{all}");
    assert!(all.contains("(0.98× f32)"), "{all}");
    assert!(all.contains("identical on 1 of 2 prompts"), "{all}");
    assert!(all.contains("from 6.3000 (step 50) to 3.8000"), "{all}");

    // A faster native path flips the verdict.
    let mut fast = eval.clone();
    fast.models[1].generation_speed[1] = speed("f16-native", &[2000.0]);
    let all = findings(&fast, None).join("\n");
    assert!(
        all.contains("2.0× faster than f32") && !all.contains("storage format"),
        "{all}"
    );
}

#[test]
fn report_files_are_written_and_text_is_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, log) = sample_train();
    let provenance = Provenance {
        tool: "itera test".into(),
        inputs: vec![InputProvenance {
            slot: "eval".into(),
            stage: "evaluate".into(),
            digest: "abc123".into(),
        }],
        machine: Machine::current(),
        seed: 1,
    };
    write_report(
        dir.path(),
        "Phase 8",
        &sample_eval(),
        Some((&summary, &log)),
        &provenance,
    )
    .unwrap();
    let md = fs::read_to_string(dir.path().join("report.md")).unwrap();
    for needle in [
        "## Size",
        "## Quality",
        "## Speed",
        "## Training",
        "## Generations",
        "digest `abc123`",
        "the cat \\| dog",
        "| 900.0, 1,000, 1,100 |",
        "resumed from the checkpoint at step 50",
    ] {
        assert!(md.contains(needle), "missing {needle:?} in\n{md}");
    }
    for svg_name in ["loss.svg", "speed.svg", "size.svg"] {
        let svg = fs::read_to_string(dir.path().join(svg_name)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("</svg>"),
            "{svg_name}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["findings"].as_array().unwrap().len(), 5);
}

#[test]
fn an_evaluation_with_nan_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut eval = sample_eval();
    eval.models[1].val_loss = f64::NAN;
    let provenance = Provenance {
        tool: "t".into(),
        inputs: vec![],
        machine: Machine::current(),
        seed: 0,
    };
    let err = write_report(dir.path(), "t", &eval, None, &provenance).unwrap_err();
    assert!(
        format!("{err:#}").contains("evaluation.models[1].val_loss"),
        "{err:#}"
    );
}
