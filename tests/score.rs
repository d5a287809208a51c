//! `itera score` on a model trained by a tiny pipeline: its numbers equal the evaluate
//! stage's on the same text (the validation split, an extra text), the recurrent decoder
//! agrees, JSON shape, `<unk>` rate, story separators, and errors with exit code 2.

use serde_json::Value;

use crate::test::Test;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/tinystories");

/// Two tiny variants, one evaluate (the whole validation text and an extra text), one
/// report taking lists.
fn pipeline() -> String {
    format!(
        r#"
[pipeline]
name = "score"
seed = 3

[stages.corpus]
kind = "files"
paths = ["{DATA}/train-sample-00.txt", "valid.txt"]

[stages.extra]
kind = "files"
paths = ["extra.txt"]

[stages.tokenize]
kind = "tokenize"
inputs = {{ corpus = "corpus" }}
scheme = "word"
vocab_size = 1500
max_train_bytes = 300_000
train_sample_bytes = 300_000
train_file = "train-sample-00.txt"
valid_file = "valid.txt"

[stages.train]
kind = "train"
inputs = {{ data = "tokenize" }}
steps = 20
batch_size = 8
seq_len = 32
log_every = 5
eval_every = 10
eval_tokens = 1024
checkpoint_every = 0
model = {{ hidden_size = 48, num_layers = 1, ssm_state_size = 4, num_experts = 2, expert_size = 32, top_k_experts = 1, max_seq_length = 32 }}
optimizer = {{ learning_rate = 3e-3 }}
schedule = {{ warmup_steps = 2 }}

[stages.train_b]
kind = "train"
inputs = {{ data = "tokenize" }}
steps = 20
batch_size = 8
seq_len = 32
log_every = 5
eval_every = 10
eval_tokens = 1024
checkpoint_every = 0
model = {{ hidden_size = 32, num_layers = 1, ssm_state_size = 4, num_experts = 2, expert_size = 32, top_k_experts = 1, max_seq_length = 32 }}
optimizer = {{ learning_rate = 1e-3 }}
schedule = {{ warmup_steps = 2 }}

[stages.evaluate]
kind = "evaluate"
inputs = {{ models = ["train", "train_b"], data = "tokenize", texts = "extra" }}
eval_tokens = 1_000_000
max_new_tokens = 8
speed_runs = 1
speed_tokens = 8
speed_score_tokens = 256
threads = 2

[stages.report]
kind = "report"
inputs = {{ eval = ["evaluate"], train = ["train", "train_b"] }}
"#
    )
}

/// The first `n` stories of the validation sample.
fn stories(n: usize) -> String {
    let valid = std::fs::read_to_string(format!("{DATA}/valid-part-00.txt")).unwrap();
    let parts: Vec<&str> = valid.split("<|endoftext|>").take(n).collect();
    parts.join("<|endoftext|>")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn read(t: &Test, stage: &str, file: &str) -> Value {
    let run = json(&std::fs::read_to_string(t.path("runs/latest/run.json")).unwrap());
    let key = run["stages"][stage]["key"].as_str().unwrap();
    json(&std::fs::read_to_string(t.path(&format!("runs/store/{key}/out/{file}"))).unwrap())
}

fn close(a: &Value, b: &Value, rel: f64) -> bool {
    let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
    (a - b).abs() <= rel * b.abs().max(1e-12)
}

#[test]
fn score_matches_the_evaluate_stage_on_the_same_text() {
    let t = Test::with_pipeline(&pipeline());
    t.write("valid.txt", &stories(30));
    t.write("extra.txt", &stories(45)[stories(30).len()..]);
    t.run(&[]);
    let eval = read(&t, "evaluate", "eval.json");
    let stats = read(&t, "tokenize", "stats.json");

    // Several train stages: the stage must be named.
    let err = t.itera(&["score", "latest", "valid.txt"], 2);
    assert!(
        err.stderr.contains("several train stages"),
        "{}",
        err.stderr
    );

    let out = t.itera(
        &[
            "score",
            "latest",
            "--stage",
            "train",
            "valid.txt",
            "extra.txt",
            "--json",
            "--threads",
            "2",
        ],
        0,
    );
    let s = json(&out.stdout);
    for key in [
        "model",
        "scheme",
        "seq_len",
        "threads",
        "scorer",
        "files",
        "total",
        "seconds",
        "tokens_per_s",
    ] {
        assert!(s.get(key).is_some(), "no `{key}` in {s}");
    }
    assert_eq!(
        (
            s["scheme"].as_str(),
            s["seq_len"].as_u64(),
            s["threads"].as_u64()
        ),
        (Some("word"), Some(32), Some(2))
    );
    let files = s["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    let (valid, extra) = (&files[0], &files[1]);
    for key in [
        "name",
        "stories",
        "tokens",
        "predicted",
        "bytes",
        "scored_bytes",
        "nll",
        "loss",
        "perplexity",
        "bits_per_token",
        "bits_per_byte",
        "unknown_rate",
    ] {
        assert!(valid.get(key).is_some(), "no `{key}` in {valid}");
    }
    // The validation text is the tokenize stage's valid split, scored whole by evaluate.
    assert_eq!(valid["tokens"], stats["valid"]["tokens"]);
    assert_eq!(valid["bytes"], stats["valid"]["text_bytes"]);
    assert_eq!(valid["stories"], 30);
    assert_eq!(valid["unknown_rate"], stats["valid"]["unknown_rate"]);
    assert_eq!(valid["predicted"], eval["eval_tokens"]);
    let m = &eval["models"][0];
    assert_eq!(m["name"], "train");
    for (ours, theirs) in [
        ("loss", "val_loss"),
        ("perplexity", "perplexity"),
        ("bits_per_token", "bits_per_token"),
        ("bits_per_byte", "bits_per_byte"),
    ] {
        assert!(
            close(&valid[ours], &m[theirs], 1e-9),
            "{ours}: {} vs evaluate {}",
            valid[ours],
            m[theirs]
        );
    }
    // The extra text as the evaluate stage scored it.
    let theirs = &m["texts"][0];
    assert_eq!(theirs["name"], "extra/extra.txt");
    for key in ["tokens", "stories", "bytes", "unknown_rate"] {
        assert_eq!(extra[key], theirs[key], "{key}");
    }
    for key in ["loss", "bits_per_byte"] {
        assert!(close(&extra[key], &theirs[key], 1e-9), "{key}");
    }
    assert_eq!(extra["stories"], 15);
    // The total sums the two.
    let total = &s["total"];
    assert_eq!(
        total["tokens"].as_u64().unwrap(),
        valid["tokens"].as_u64().unwrap() + extra["tokens"].as_u64().unwrap()
    );
    let nll = valid["nll"].as_f64().unwrap() + extra["nll"].as_f64().unwrap();
    let n = valid["predicted"].as_f64().unwrap() + extra["predicted"].as_f64().unwrap();
    assert!((total["loss"].as_f64().unwrap() - nll / n).abs() < 1e-12);

    // The recurrent decoder computes the same loss independently.
    let out = t.itera(
        &[
            "score",
            "latest",
            "--stage",
            "train",
            "valid.txt",
            "--json",
            "--scorer",
            "recurrent",
            "--threads",
            "1",
        ],
        0,
    );
    let r = json(&out.stdout);
    assert!(
        close(&r["total"]["loss"], &valid["loss"], 1e-4),
        "recurrent {} vs batched {}",
        r["total"]["loss"],
        valid["loss"]
    );

    // The table names every figure and the model folder works as well as the run.
    let key = json(&std::fs::read_to_string(t.path("runs/latest/run.json")).unwrap())["stages"]
        ["train_b"]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = format!("runs/store/{key}/out");
    let out = t.itera(&["score", &dir, "extra.txt"], 0);
    for needle in [
        "tokens",
        "bytes",
        "loss",
        "perplexity",
        "bits/token",
        "bits/byte",
        "unk",
        "extra.txt",
    ] {
        assert!(
            out.stdout.contains(needle),
            "{needle} missing in\n{}",
            out.stdout
        );
    }
    assert!(out.stderr.contains("tokens/s"), "{}", out.stderr);
}

#[test]
fn separators_split_stories_and_errors_say_what_to_fix() {
    let t = Test::with_pipeline(&pipeline());
    t.write("valid.txt", &stories(10));
    t.write("extra.txt", "Tom had a red ball.");
    t.itera(&["run", "pipeline.toml", "--until", "train"], 0);
    t.write("one.txt", "Tom had a red ball.");
    t.write("two.txt", "Sue saw a big dog.");
    t.write(
        "both.txt",
        "\u{feff} Tom had a red ball.\n<|endoftext|>\n\nSue saw a big dog.\n<|endoftext|>\n",
    );
    let out = t.itera(
        &[
            "score", "latest", "--stage", "train", "one.txt", "two.txt", "both.txt", "--json",
        ],
        0,
    );
    let s = json(&out.stdout);
    let f = s["files"].as_array().unwrap();
    assert_eq!(f[2]["stories"], 2);
    assert_eq!(
        f[2]["tokens"].as_u64(),
        Some(f[0]["tokens"].as_u64().unwrap() + f[1]["tokens"].as_u64().unwrap())
    );
    assert_eq!(f[2]["bytes"].as_u64(), Some(19 + 18));

    t.write("empty.txt", "\n<|endoftext|>\n  \n");
    for (args, needle) in [
        (
            vec!["score", "latest", "--stage", "train", "missing.txt"],
            "cannot read `missing.txt`",
        ),
        (
            vec!["score", "latest", "--stage", "train", "empty.txt"],
            "holds no text to score",
        ),
        (vec!["score", "runs", "one.txt"], "neither a model folder"),
        (
            vec!["score", "latest", "--stage", "tokenize", "one.txt"],
            "holds no model.safetensors",
        ),
        (
            vec![
                "score",
                "latest",
                "--stage",
                "train",
                "--seq-len",
                "999",
                "one.txt",
            ],
            "--seq-len must be between 1 and the model's context (32 tokens)",
        ),
    ] {
        let out = t.itera(&args, 2);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?} printed {}", out.stdout);
    }
}

/// A quantized model (the `quantize` stage) is scored by `itera score` on its dequantized
/// values, recurrent and batched scorers agree, and `itera generate` runs it natively.
#[test]
fn quantized_models_are_scored_and_generate() {
    let quantize = r#"
[stages.q8]
kind = "quantize"
inputs = { model = "train" }
scheme = "int8"

[stages.q4]
kind = "quantize"
inputs = { model = "train" }
scheme = "int4"
group_size = 16
"#;
    let t = Test::with_pipeline(&(pipeline() + quantize));
    t.write("valid.txt", &stories(30));
    t.write("extra.txt", &stories(45)[stories(30).len()..]);
    t.run(&[
        "--only", "corpus", "--only", "tokenize", "--only", "train", "--only", "q8", "--only", "q4",
    ]);
    let q8 = read(&t, "q8", "quantization.json");
    assert_eq!(q8["scheme"], "int8");
    assert!(q8["compression"].as_f64().unwrap() > 3.0, "{q8}");
    let q4 = read(&t, "q4", "quantization.json");
    assert!(
        q4["parameters_by_format"]["int4"].as_u64().unwrap() > 0,
        "{q4}"
    );
    let score = |stage: &str, scorer: &str| {
        let out = t.itera(
            &[
                "score",
                "latest",
                "--stage",
                stage,
                "valid.txt",
                "--json",
                "--scorer",
                scorer,
            ],
            0,
        );
        json(&out.stdout)["total"]["loss"].as_f64().unwrap()
    };
    let f32_loss = score("train", "batched");
    for stage in ["q8", "q4"] {
        let batched = score(stage, "batched");
        let recurrent = score(stage, "recurrent");
        assert!(
            (batched - recurrent).abs() < 1e-3 * batched,
            "{stage}: batched {batched} vs recurrent {recurrent}"
        );
        assert!(
            (batched - f32_loss).abs() < 0.05 * f32_loss,
            "{stage}: {batched} vs f32 {f32_loss}"
        );
        let out = t.itera(
            &[
                "generate",
                "latest",
                "--stage",
                stage,
                "-p",
                "once upon a time",
                "--max-tokens",
                "5",
            ],
            0,
        );
        assert!(out.stdout.starts_with("once upon a time"), "{}", out.stdout);
    }
}

/// `itera generate` streams exactly the text the evaluate stage decodes for the same
/// greedy continuation (the word decoder's closing-up of punctuation and apostrophes
/// included), and that text is readable: no space before `.` or `,`.
#[test]
fn generate_streams_the_text_the_evaluation_decodes() {
    let t = Test::new();
    let smoke = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/smoke.toml");
    t.itera(&["--progress", "quiet", "run", smoke], 0);
    let eval_dir = t.itera(&["path", "latest", "evaluate"], 0).stdout;
    let eval: Value =
        serde_json::from_slice(&std::fs::read(format!("{}/eval.json", eval_dir.trim())).unwrap())
            .unwrap();
    let prompt = "once upon a time";
    let greedy = eval["models"][0]["generations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["prompt"] == prompt)
        .unwrap()["greedy"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !greedy.contains(" .") && !greedy.contains(" ,"),
        "{greedy:?}"
    );
    let out = t.itera(
        &[
            "generate",
            "latest",
            "--prompt",
            prompt,
            "--max-tokens",
            "12",
            "--temperature",
            "0",
        ],
        0,
    );
    let glue = if greedy.starts_with(char::is_alphanumeric) {
        " "
    } else {
        ""
    };
    assert_eq!(out.stdout.trim_end(), format!("{prompt}{glue}{greedy}"));
}
