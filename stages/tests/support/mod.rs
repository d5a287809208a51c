//! Shared helpers of the data-stage tests: the loopback hub server, the shared TinyStories
//! samples and hand-built stage contexts.
#![allow(dead_code)]

pub mod hub_server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use itera_engine::stage::{CancelToken, InputArtifact, Progress, StageContext, StageLog};

/// The shared TinyStories samples (`../shared/data/tinystories` beside the repository).
pub fn data_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/tinystories"
    ))
}

pub fn train_sample() -> Arc<Vec<u8>> {
    Arc::new(
        std::fs::read(data_dir().join("train-sample-00.txt"))
            .expect("the shared train sample exists"),
    )
}

pub fn valid_sample() -> Arc<Vec<u8>> {
    Arc::new(
        std::fs::read(data_dir().join("valid-part-00.txt"))
            .expect("the shared valid sample exists"),
    )
}

/// A stage context writing into `root/out`, scratch in `root/work`.
pub fn context(
    root: &Path,
    inputs: BTreeMap<String, Vec<InputArtifact>>,
    threads: usize,
) -> StageContext {
    let out_dir = root.join("out");
    let work_dir = root.join("work");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::create_dir_all(&work_dir).unwrap();
    StageContext {
        stage: "test".into(),
        inputs,
        out_dir,
        work_dir,
        base_dir: root.to_owned(),
        seed: 1,
        threads,
        progress: Progress::null(),
        log: StageLog::sink(),
        cancel: CancelToken::default(),
    }
}

/// Files (names) in a folder, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
