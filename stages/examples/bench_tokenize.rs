//! Benchmark of the `tokenize` stage on a large corpus made by repeating the shared
//! TinyStories train sample: throughput (MB/s of train text) and peak memory (VmHWM).
//!
//! ```text
//! CARGO_TARGET_DIR=... cargo run --release -p itera-stages --example bench_tokenize -- \
//!     [--scheme bpe|word|byte] [--mb 1000] [--threads 2] [--runs 3] [--dir /tmp]
//! ```
//!
//! The corpus is written once into a temporary folder under `--dir` (not timed). Each run
//! executes the real stage (vocabulary fit on its default 32 MiB sample, then streaming
//! encode of train and valid); the median time is reported.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use itera_engine::stage::{CancelToken, InputArtifact, Progress, StageContext, StageLog};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// User + system CPU seconds of this process so far (from /proc/self/stat, 100 Hz ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`; utime and stime are fields 14 and 15 overall.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let scheme = arg(&args, "--scheme", "bpe");
    let mb: u64 = arg(&args, "--mb", "1000").parse()?;
    let threads: usize = arg(&args, "--threads", "2").parse()?;
    let runs: usize = arg(&args, "--runs", "3").parse()?;
    let dir = arg(&args, "--dir", &std::env::temp_dir().to_string_lossy());

    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/tinystories");
    let sample = std::fs::read(data.join("train-sample-00.txt"))?;
    let cut = itera_stages::fetch::story_cut(&sample).expect("the sample has stories");
    let unit = &sample[..cut];
    let tmp = tempfile::tempdir_in(&dir)?;
    let corpus = tmp.path().join("corpus");
    std::fs::create_dir_all(&corpus)?;
    let train = corpus.join("TinyStories-train.txt");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&train)?);
        let mut written = 0u64;
        while written < mb << 20 {
            f.write_all(unit)?;
            written += unit.len() as u64;
        }
        f.flush()?;
    }
    std::fs::copy(
        data.join("valid-part-00.txt"),
        corpus.join("TinyStories-valid.txt"),
    )?;
    let train_bytes = std::fs::metadata(&train)?.len();
    println!(
        "corpus: {:.1} MB train (the shared sample repeated), scheme {scheme}, {threads} threads",
        train_bytes as f64 / 1e6
    );

    let stage = itera_stages::registry()
        .get("tokenize")
        .expect("registered")
        .clone();
    let table: toml::Table = toml::from_str(&format!("scheme = \"{scheme}\""))?;
    let params = stage
        .check_params(&table)
        .map_err(|issues| anyhow::anyhow!("params: {issues:?}"))?;
    let mut times = Vec::new();
    for run in 0..runs {
        let root = tmp.path().join(format!("run{run}"));
        let ctx = StageContext {
            stage: "bench".into(),
            inputs: BTreeMap::from([(
                "corpus".to_owned(),
                vec![InputArtifact {
                    stage: "corpus".into(),
                    output: None,
                    path: corpus.clone(),
                    digest: itera_engine::store::Digest::of_bytes(b"bench"),
                }],
            )]),
            out_dir: root.join("out"),
            work_dir: root.join("work"),
            base_dir: root.clone(),
            seed: 0,
            threads,
            progress: Progress::null(),
            log: StageLog::open(&tmp.path().join(format!("run{run}.log")))?,
            cancel: CancelToken::default(),
        };
        std::fs::create_dir_all(&ctx.out_dir)?;
        let start = Instant::now();
        let cpu_start = cpu_seconds();
        stage.run(&params, &ctx)?;
        let secs = start.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu_start;
        println!(
            "run {run}: {secs:.2} s wall, {:.1} MB/s; {cpu:.2} s CPU = {:.1} MB per CPU-second; peak RSS so far {:.0} MB",
            train_bytes as f64 / 1e6 / secs,
            train_bytes as f64 / 1e6 / cpu,
            vm_hwm_kib() as f64 / 1024.0
        );
        times.push(secs);
        print!(
            "{}",
            std::fs::read_to_string(tmp.path().join(format!("run{run}.log")))?
        );
        std::fs::remove_dir_all(&root)?;
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "median {median:.2} s = {:.1} MB/s of train text; peak RSS (VmHWM) {:.0} MB",
        train_bytes as f64 / 1e6 / median,
        vm_hwm_kib() as f64 / 1024.0
    );
    Ok(())
}
