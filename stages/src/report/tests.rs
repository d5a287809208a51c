//! Tests of the report: findings follow the numbers, files are written, text is escaped.

use super::study::{best, differing_settings, loops, settings_of, BEST_RULE};
use super::*;
use crate::evaluate::repetition;
use crate::records::{
    Deltas, GenerationRecord, ModelEval, SamplingRecord, SpeedRecord, TrainLogLine,
};
use itera_model::config::ModelConfig;

fn speed(precision: &str, runs: &[f64]) -> SpeedRecord {
    SpeedRecord {
        precision: serde_json::from_value(serde_json::json!(precision)).unwrap(),
        tokens_per_s: records::median(runs),
        runs: runs.to_vec(),
        threads: 1,
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
    let generations: Vec<GenerationRecord> = ["once upon a time", "the cat | dog"]
        .iter()
        .zip(greedy)
        .map(|(p, g)| GenerationRecord {
            prompt: (*p).into(),
            greedy: (*g).into(),
            sampled: format!("{g} sampled"),
        })
        .collect();
    ModelEval {
        name: name.into(),
        dtype: serde_json::from_value(serde_json::json!(dtype)).unwrap(),
        parameters: 1_234_567,
        file_bytes: bytes,
        val_loss: loss,
        perplexity: loss.exp(),
        bits_per_token: loss / std::f64::consts::LN_2,
        bits_per_byte: loss / std::f64::consts::LN_2 / 4.0,
        delta: Deltas::zero(),
        scoring_tokens_per_s: 20_000.0,
        generation_speed: speeds,
        generations: generations.clone(),
        degeneration: repetition::degeneration(&generations),
        texts: Vec::new(),
        seconds: 1.5,
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
        scheme: "word".into(),
        unknown_rate: 0.02,
        speed_tokens: 96,
        eval_tokens: 10_000,
        eval_bytes: 40_000.0,
        seq_len: 128,
        threads: 2,
        scorer: "batched".into(),
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
        params: None,
    };
    (summary, log)
}

fn sample_run(name: &str) -> TrainRun {
    let (summary, log) = sample_train();
    TrainRun {
        name: name.into(),
        summary,
        log,
    }
}

fn one_study() -> Study {
    study_of(sample_eval(), vec![sample_run("train")])
}

/// A study of one evaluation (stage `evaluate`) and the given training runs.
fn study_of(eval: EvalReport, trains: Vec<TrainRun>) -> Study {
    Study::new(
        vec![Evaluation {
            stage: "evaluate".into(),
            eval,
        }],
        trains,
    )
    .unwrap()
}

#[test]
fn findings_are_computed_from_the_numbers() {
    let study = one_study();
    let f = findings(&study);
    let all = f.join("\n");
    assert!(
        all.contains("F16 (`half`) halves the weights (4.00 MB → 2.00 MB, 0.500×)"),
        "{all}"
    );
    assert!(all.contains("moves validation loss by +0.010%"), "{all}");
    // native 310 vs f32 1000 tok/s: 3.2x slower.
    assert!(all.contains("f16 arithmetic is 3.2× slower than f32 (310.0 vs 1,000 tokens/s), so F16 is a storage format here"), "{all}");
    assert!(all.contains("widened to f32 inside each matrix-vector product (`f16-upcast`: f32 arithmetic, half the weight traffic) it generates at 980.0 tokens/s (0.98× f32)"), "{all}");
    assert!(!all.contains("at load it generates"), "{all}");
    assert!(all.contains("identical on 1 of 2 prompts"), "{all}");
    assert!(all.contains("from 6.3000 (step 50) to 3.8000"), "{all}");

    // A faster native path flips the verdict.
    // 0.7213 vs 0.7214 bits per byte.
    assert!(all.contains("The best of the 2 models is `train`"), "{all}");
    assert!(all.contains("No model loops"), "{all}");
    let mut fast = sample_eval();
    fast.models[1].generation_speed[1] = speed("f16-native", &[2000.0]);
    let fast = study_of(fast, vec![]);
    let all = findings(&fast).join("\n");
    assert!(
        all.contains("2.0× faster than f32") && !all.contains("storage format"),
        "{all}"
    );
}

#[test]
fn report_files_are_written_and_text_is_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let provenance = Provenance {
        tool: "itera test".into(),
        inputs: vec![InputProvenance {
            slot: "eval".into(),
            stage: "evaluate".into(),
            digest: itera_engine::store::Digest::of_bytes(b"abc123"),
        }],
        machine: Machine::current(),
        seed: 1,
    };
    write_report(dir.path(), "Phase 8", &one_study(), &provenance).unwrap();
    let md = fs::read_to_string(dir.path().join("report.md")).unwrap();
    for needle in [
        "## Comparison",
        "## Size",
        "## Quality",
        "Best model: **`train`**",
        "### Repetition",
        "## Speed",
        "`f16-upcast` keeps the weights in f16 and widens them to f32 inside each matrix-vector product",
        "`f16-native` also does the matrix-vector products in f16 arithmetic",
        "## Training",
        "## Generations",
        &format!("digest `{}`", itera_engine::store::Digest::of_bytes(b"abc123")),
        "the cat \\| dog",
        "| 1 | 900.0, 1,000, 1,100 |",
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
    // training, reference, best, compression, agreement, speed, looping, unknown words.
    assert_eq!(json["findings"].as_array().unwrap().len(), 8);
    assert_eq!(json["best"]["model"], "train");
    assert_eq!(json["comparison"].as_array().unwrap().len(), 2);
    assert!(
        !md.contains("## Variants"),
        "one training run has no variants"
    );
}

#[test]
fn an_evaluation_with_nan_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut eval = sample_eval();
    eval.models[1].val_loss = f64::NAN;
    let study = study_of(eval, vec![]);
    let provenance = Provenance {
        tool: "t".into(),
        inputs: vec![],
        machine: Machine::current(),
        seed: 0,
    };
    let err = write_report(dir.path(), "t", &study, &provenance).unwrap_err();
    assert!(
        format!("{err:#}").contains("comparison[1].val_loss"),
        "{err:#}"
    );
}

fn provenance() -> Provenance {
    Provenance {
        tool: "t".into(),
        inputs: vec![],
        machine: Machine::current(),
        seed: 0,
    }
}

#[test]
fn the_best_model_has_the_lowest_bits_per_byte_then_the_smaller_file() {
    let m = |name: &str, bpb: f64, bytes: u64| {
        let mut m = model(name, "F32", bytes, 2.0, vec![], &["a", "b"]);
        m.bits_per_byte = bpb;
        m
    };
    assert!(best(&[m("only", 1.0, 1)]).is_none(), "one model: no best");
    let models = [m("a", 1.2, 10), m("b", 1.1, 20), m("c", 1.3, 5)];
    assert_eq!(best(&models).unwrap().name, "b");
    // 1.10001 and 1.10004 are equal to 4 decimals: the smaller file wins.
    let models = [m("a", 1.10004, 20), m("b", 1.10001, 10), m("c", 1.2, 1)];
    assert_eq!(best(&models).unwrap().name, "b");
    let models = [m("a", 1.10001, 20), m("b", 1.10004, 10)];
    assert_eq!(best(&models).unwrap().name, "b");
    // Fully tied: the earlier one.
    let models = [m("a", 1.1, 10), m("b", 1.1, 10)];
    assert_eq!(best(&models).unwrap().name, "a");
}

#[test]
fn a_looping_model_is_not_named_best_while_another_does_not_loop() {
    let m = |name: &str, bpb: f64, bytes: u64, greedy: &[&str]| {
        let mut m = model(name, "F32", bytes, 2.0, vec![], greedy);
        m.bits_per_byte = bpb;
        m
    };
    let fluent = [
        "there was a little girl who liked to play",
        "the dog ran to the park",
    ];
    let looping = [
        "the cat sat on the mat the cat sat on the mat the cat sat on the mat",
        "and then and then and then and then and then and then",
    ];
    assert!(!loops(&m("f", 1.0, 1, &fluent)) && loops(&m("l", 1.0, 1, &looping)));
    // Equal bits per byte and a smaller file, but it loops: the larger file is named.
    let models = [m("train", 1.0, 20, &fluent), m("int8", 1.0, 5, &looping)];
    assert_eq!(best(&models).unwrap().name, "train");
    // Even a lower bits per byte does not make a looping model the best.
    let models = [m("int4", 1.2, 3, &fluent), m("int8", 0.9, 5, &looping)];
    assert_eq!(best(&models).unwrap().name, "int4");
    // When every model loops, the plain rule decides.
    let models = [m("a", 1.1, 20, &looping), m("b", 1.0, 30, &looping)];
    assert_eq!(best(&models).unwrap().name, "b");
    // The finding names the model it passed over, and why.
    let mut eval = sample_eval();
    let flagged = m("half", 0.0, 0, &looping);
    let reference_bpb = eval.models[0].bits_per_byte;
    let half = &mut eval.models[1];
    (half.generations, half.degeneration) = (flagged.generations, flagged.degeneration);
    half.bits_per_byte = reference_bpb;
    let study = study_of(eval, vec![]);
    let all = findings(&study).join("\n");
    assert!(all.contains("The best of the 2 models is `train`"), "{all}");
    assert!(
        all.contains("because their continuations loop: `half` (0.7213)"),
        "{all}"
    );
    // The rule's text states the threshold the flag uses.
    let pct = format!("{:.0}%", repetition::LOOPING_THRESHOLD * 100.0);
    assert!(BEST_RULE.contains(&pct), "{BEST_RULE}");
}

#[test]
fn settings_that_differ_come_from_the_recorded_params_and_summary() {
    let mut a = sample_run("train@a");
    let mut b = sample_run("train@b");
    a.summary.params = Some(serde_json::json!({
        "optimizer": {"learning_rate": 0.001, "beta1": 0.9},
        "steps": 100, "log_every": 10
    }));
    b.summary.params = Some(serde_json::json!({
        "optimizer": {"learning_rate": 0.003, "beta1": 0.9},
        "epochs": 2.0, "log_every": 10
    }));
    b.summary.config.hidden_size = 256;
    b.summary.steps = 250;
    let flat = settings_of(&a.summary);
    assert_eq!(flat["optimizer.learning_rate"], "0.001");
    assert_eq!(
        flat["model.hidden_size"],
        ModelConfig::tiny().hidden_size.to_string()
    );
    let s = differing_settings(&[a, b]);
    assert_eq!(
        s.keys,
        ["model.hidden_size", "optimizer.learning_rate", "steps"]
    );
    assert_eq!(s.rows[0].name, "train@a");
    assert_eq!(s.rows[1].values[0], "256");
    assert_eq!(s.rows[1].values[1], "0.003");
    assert_eq!(s.rows[1].values[2], "250");
    // Without recorded params only the summary's settings are compared.
    let s = differing_settings(&[sample_run("x"), sample_run("y")]);
    assert!(s.keys.is_empty(), "{s:?}");
}

#[test]
fn several_evaluations_and_training_runs_make_one_study() {
    let mut ea = sample_eval();
    ea.models.truncate(1);
    ea.models[0].name = "train@a".into();
    let mut eb = sample_eval();
    eb.models.truncate(1);
    eb.models[0].name = "train@b".into();
    eb.models[0].bits_per_byte = 0.4;
    eb.models[0].generations[0].greedy = "he was so happy he was so happy he was so happy".into();
    eb.models[0].degeneration = repetition::degeneration(&eb.models[0].generations);
    let mut ra = sample_run("train@a");
    ra.summary.params = Some(serde_json::json!({"optimizer": {"learning_rate": 0.001}}));
    let mut rb = sample_run("train@b");
    rb.summary.params = Some(serde_json::json!({"optimizer": {"learning_rate": 0.003}}));
    rb.log.iter_mut().for_each(|l| l.loss -= 1.0);
    let study = Study::new(
        vec![
            Evaluation {
                stage: "evaluate@a".into(),
                eval: ea,
            },
            Evaluation {
                stage: "evaluate@b".into(),
                eval: eb,
            },
        ],
        vec![ra, rb],
    )
    .unwrap();
    // `train@b` has the lower bits per byte but its greedy text loops: `train@a` is named.
    assert_eq!(study.best().unwrap().name, "train@a");
    let dir = tempfile::tempdir().unwrap();
    write_report(dir.path(), "Sweep", &study, &provenance()).unwrap();
    let md = fs::read_to_string(dir.path().join("report.md")).unwrap();
    for needle in [
        "## Variants",
        "| training run | `optimizer.learning_rate` |",
        "| train@b | 0.003 |",
        "Best model: **`train@a`**",
        "because their continuations loop: `train@b` (0.4000)",
        "The 2 training runs differ in `optimizer.learning_rate` (0.001, 0.003)",
        "Looping generations: `train@b` greedy",
        "`evaluate@b`: on the same",
    ] {
        assert!(md.contains(needle), "missing {needle:?} in\n{md}");
    }
    // Both variants' curves, each a solid train and a dashed validation line.
    let svg = fs::read_to_string(dir.path().join("loss.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 4, "{svg}");
    assert!(svg.contains("train@b validation"));
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["evaluations"].as_array().unwrap().len(), 2);
    assert_eq!(json["training"].as_array().unwrap().len(), 2);
    let rows = json["comparison"].as_array().unwrap();
    assert_eq!(rows[1]["evaluation"], "evaluate@b");
    assert_eq!(rows[1]["train_tokens_per_s"], 5120.0);
    // Two evaluations of models with the same name keep them apart.
    let twice = Study::new(
        vec![
            Evaluation {
                stage: "e1".into(),
                eval: sample_eval(),
            },
            Evaluation {
                stage: "e2".into(),
                eval: sample_eval(),
            },
        ],
        vec![],
    )
    .unwrap();
    let names: Vec<&str> = twice.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["e1/train", "e1/half", "e2/train", "e2/half"]);
}

#[test]
fn the_compression_table_recommends_by_its_stated_rule() {
    let mut e = sample_eval();
    // int8: 0.05% worse, a quarter of the size, the fastest; int4: 2% worse (over the bar).
    e.models.push(model(
        "int8",
        "int8",
        1_000_000,
        2.001,
        vec![speed("int8", &[1900.0, 2000.0, 2100.0])],
        &["there was a girl", "sat on the mat"],
    ));
    e.models.push(model(
        "int4",
        "int4",
        700_000,
        2.04,
        vec![speed("int4", &[2500.0])],
        &["there was a girl", "sat on the mat"],
    ));
    let study = study_of(e, vec![sample_run("train")]);
    let rows = super::compression::rows(&study);
    let names: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    assert_eq!(names, ["train", "half", "int8", "int4"]);
    let by = |n: &str| rows.iter().find(|r| r.model == n).unwrap();
    assert!((by("int8").compression - 4.0).abs() < 1e-9);
    assert!((by("int8").val_loss_change_pct - 0.05).abs() < 1e-9);
    assert!(!by("int4").within_quality_bar);
    assert_eq!(by("int8").recommended_for, ["smallest", "fastest"]);
    assert_eq!(by("train").recommended_for, ["most accurate"]);
    assert!(by("int4").recommended_for.is_empty());
    assert_eq!(by("int8").generation_tokens_per_s, 2000.0);

    let mut md = String::new();
    super::compression::section(&mut md, &study);
    assert!(md.contains("## Compression"), "{md}");
    assert!(md.contains("| int4 | int4 | 5.71× |"), "{md}");
    assert!(md.contains("✗"), "{md}");
    // Without other formats there is no table.
    let mut md = String::new();
    super::compression::section(&mut md, &one_study_of(&["F32"]));
    assert!(md.is_empty());

    // A format whose continuations loop is not recommended (the reference does not loop);
    // the next qualifying format is.
    let mut e = study.evaluations[0].eval.clone();
    let looping = model(
        "int8",
        "int8",
        1_000_000,
        2.001,
        vec![speed("int8", &[1900.0, 2000.0, 2100.0])],
        &["the cat sat on the mat the cat sat on the mat the cat sat on the mat"],
    );
    e.models[2] = looping;
    let study = study_of(e, vec![]);
    let rows = super::compression::rows(&study);
    let by = |n: &str| rows.iter().find(|r| r.model == n).unwrap();
    assert!(by("int8").within_quality_bar && by("int8").loops && !by("int8").qualifies);
    assert!(by("int8").recommended_for.is_empty());
    assert_eq!(by("half").recommended_for, ["smallest"]);
    assert_eq!(by("train").recommended_for, ["fastest", "most accurate"]);
    let mut md = String::new();
    super::compression::section(&mut md, &study);
    assert!(md.contains("— (continuations loop)"), "{md}");
}

fn one_study_of(formats: &[&str]) -> Study {
    let mut e = sample_eval();
    e.models = formats
        .iter()
        .enumerate()
        .map(|(i, f)| model(&format!("m{i}"), f, 1000, 2.0, vec![], &["a", "b"]))
        .collect();
    study_of(e, vec![sample_run("train")])
}
