//! Measures what a phase-8 training step costs on this machine, to size `steps` in
//! pipelines/phase8.toml: tokenizes the local TinyStories sample (word level, 8000) and
//! trains the phase-8 model (batch 32 x 128) for a few steps through the real stages.
//!
//!     cargo run --release -p itera-stages --example phase8_step_time -- [STEPS] [THREADS]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use itera_engine::stage::{CancelToken, InputArtifact, Progress, StageContext, StageLog};

fn run(
    kind: &str,
    params: &str,
    inputs: &[(&str, &Path)],
    out: &Path,
    threads: usize,
) -> anyhow::Result<f64> {
    let registry = itera_stages::registry();
    let stage = registry.get(kind).expect("built-in kind");
    let params = stage
        .check_params(&toml::from_str(params)?)
        .map_err(|i| anyhow::anyhow!("{i:?}"))?;
    std::fs::create_dir_all(out)?;
    let work = out.with_extension("work");
    std::fs::create_dir_all(&work)?;
    let ctx = StageContext {
        stage: kind.into(),
        inputs: inputs
            .iter()
            .map(|(slot, p)| {
                let art = InputArtifact {
                    stage: (*slot).into(),
                    output: None,
                    path: p.to_path_buf(),
                    digest: itera_engine::store::Digest::of_bytes(b"bench"),
                };
                ((*slot).to_owned(), vec![art])
            })
            .collect::<BTreeMap<_, _>>(),
        out_dir: out.to_owned(),
        work_dir: work,
        base_dir: PathBuf::from("."),
        seed: 1337,
        threads,
        progress: Progress::null(),
        log: StageLog::sink(),
        cancel: CancelToken::default(),
    };
    let t = std::time::Instant::now();
    stage.run(&params, &ctx)?;
    Ok(t.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let steps: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let threads: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let data = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/tinystories"
    ));
    let tmp = tempfile::tempdir()?;
    let tok = tmp.path().join("tokenize");
    let secs = run(
        "tokenize",
        "scheme = \"word\"\nvocab_size = 8000\ntrain_file = \"train-sample-00.txt\"\nvalid_file = \"valid-part-00.txt\"",
        &[("corpus", data)],
        &tok,
        threads,
    )?;
    println!("tokenize (2 MiB train sample + 1.1 MiB valid): {secs:.1} s");
    let train = tmp.path().join("train");
    let params = format!(
        "steps = {steps}\nlog_every = {steps}\neval_every = {steps}\neval_tokens = 16384\ncheckpoint_every = 0\n[schedule]\nwarmup_steps = 1\n"
    );
    let secs = run("train", &params, &[("data", &tok)], &train, threads)?;
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(train.join("summary.json"))?)?;
    println!(
        "train: {steps} steps of 32 x 128 on {threads} threads: {secs:.1} s wall, {:.1} s training, {:.0} tokens/s, {:.2} s/step; {} parameters",
        summary["train_seconds"].as_f64().unwrap_or(0.0),
        summary["tokens_per_s"].as_f64().unwrap_or(0.0),
        summary["train_seconds"].as_f64().unwrap_or(0.0) / steps as f64,
        summary["parameters"]
    );
    Ok(())
}
