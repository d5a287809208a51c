//! `rerun`: re-executing a recorded run, and `--verify` checking reproducibility.

use crate::test::{snapshot_settings, Test, DIAMOND};

#[test]
fn rerun_verify_passes_for_a_deterministic_pipeline() {
    let t = Test::with_pipeline(DIAMOND);
    t.run(&["--set", "c.env.LEVEL=\"5\""]);
    t.executions();
    let out = t.itera(&["rerun", "latest", "--verify"], 0);
    assert_eq!(
        t.executions(),
        ["a", "b", "c", "d"],
        "every stage recomputed"
    );
    assert_eq!(
        out.stderr.matches("reproduced the recorded digest").count(),
        4,
        "{}",
        out.stderr
    );
    // The override came along from the record, so nothing differs and nothing is new.
    assert_eq!(t.store_entries().len(), 4);
    let show = t.itera(&["show", "latest"], 0).stdout;
    assert!(show.contains("rerun of: "), "{show}");
    assert_eq!(show.matches("  reproduced").count(), 4, "{show}");

    // A plain rerun reuses everything.
    t.itera(&["rerun", "latest"], 0);
    assert!(t.executions().is_empty());
}

#[test]
fn rerun_verify_fails_loudly_for_a_non_deterministic_stage() {
    let t = Test::with_pipeline(
        &DIAMOND.replace("echo beta >> {out}/b.txt", "date +%N >> {out}/b.txt"),
    );
    t.run(&[]);
    let out = t.itera(&["rerun", "latest", "--verify"], 1);
    snapshot_settings().bind(|| {
        let tail: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.contains("NOT REPRODUCIBLE") || l.starts_with("  b:"))
            .collect();
        insta::assert_snapshot!("verify_mismatch", tail.join("\n"));
    });
    assert!(out.stderr.contains("b: done in"), "{}", out.stderr);
    assert!(
        out.stderr.contains("DIFFERS from the recorded digest"),
        "{}",
        out.stderr
    );
    // Only b differs: d was checked against b's recorded result and reproduced.
    assert_eq!(
        out.stderr.matches("reproduced the recorded digest").count(),
        3,
        "{}",
        out.stderr
    );
    let runs = t.itera(&["runs"], 0).stdout;
    assert!(runs.lines().last().unwrap().contains("failed"), "{runs}");
}

/// A tiny training pipeline on the shared TinyStories samples.
const TRAIN_TINY: &str = r#"
[pipeline]
name = "kernels"

[stages.fetch]
kind = "files"
paths = ["DATA/train-sample-00.txt", "DATA/valid-part-00.txt"]

[stages.tokenize]
kind = "tokenize"
inputs = { corpus = "fetch" }
scheme = "byte"
max_train_bytes = 100_000
train_file = "train-sample-00.txt"
valid_file = "valid-part-00.txt"

[stages.train]
kind = "train"
inputs = { data = "tokenize" }
steps = 3
schedule = { warmup_steps = 1 }
batch_size = 4
seq_len = 32
log_every = 1
eval_every = 3
eval_tokens = 256
checkpoint_every = 3
model = { hidden_size = 64, num_layers = 1, ssm_state_size = 4, num_experts = 2, expert_size = 64, top_k_experts = 1, max_seq_length = 32 }
"#;

#[test]
fn rerun_verify_on_other_kernels_names_the_kernels_instead_of_a_bare_mismatch() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/tinystories");
    let t = Test::with_pipeline(&TRAIN_TINY.replace("DATA", data));
    t.run(&[]);
    let meta = t
        .store_entries()
        .into_iter()
        .map(|e| std::fs::read_to_string(e.join("meta.json")).unwrap())
        .find(|m| m.contains("\"kind\": \"train\""))
        .expect("a train entry");
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    let kernels = meta["environment"]["kernels"].as_str().unwrap().to_owned();
    assert!(
        kernels.ends_with("/avx512+amx")
            || kernels.ends_with("/avx512")
            || kernels.ends_with("/avx2")
            || kernels.ends_with("/portable"),
        "{kernels}"
    );
    // The same kernels reproduce the weights bit for bit.
    t.itera(&["rerun", "latest", "--verify"], 0);
    if kernels.ends_with("/portable") {
        return; // this CPU has no faster kernels to compare against
    }
    let out = t
        .command(&["rerun", "latest", "--verify"])
        .env("ITERA_KERNELS", "portable")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("NOT REPRODUCIBLE"), "{stderr}");
    assert!(
        stderr.contains(&format!("recorded with kernels={kernels}"))
            && stderr.contains("recomputed with kernels=")
            && stderr.contains("/portable"),
        "{stderr}"
    );
}
