//! Run records: `runs/<run-id>/run.json` (the resolved pipeline, per-stage key, digest,
//! status and timing, tool version, git commit, machine facts), `runs/<run-id>/logs/`,
//! and the `runs/latest` symlink.
//!
//! Several processes update one run (the local executor's workers, or one SLURM job per
//! stage), so each stage's status lives in its own file, `runs/<run-id>/stages/<stage>.json`,
//! written atomically by whoever executes the stage. [`RunDir::load`] merges those files
//! over `run.json`; the coordinator writes the merged record back when the run ends.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fs::{self, Durability, FsError, IoContext};
use crate::spec::{Pipeline, StageName};
use crate::store::{CacheKey, Digest, KeyParts};

/// Bump when `run.json` changes shape.
pub const RUN_FORMAT: u32 = 1;

/// A run's id: `YYYYmmdd-HHMMSS-<pipeline>-<4 hex>`, sortable by start time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub String);

impl RunId {
    /// A fresh id for a run of `pipeline` starting now.
    pub fn new(pipeline: &str) -> Self {
        let name: String = pipeline
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        Self(format!(
            "{}-{name}-{:04x}",
            crate::host::compact_timestamp(std::time::SystemTime::now()),
            fastrand::u16(..)
        ))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a stage stands in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    /// Not started yet (or queued on a batch system).
    Pending,
    Running,
    /// Its result was already in the store.
    Cached,
    /// It was executed and its result published.
    Ran,
    Failed,
    /// Not run because an upstream stage failed.
    Skipped,
    /// Stopped by Ctrl-C, or its itera process died (an abandoned run).
    Interrupted,
}

impl StageStatus {
    /// Cached or ran: the stage has a result.
    pub fn succeeded(self) -> bool {
        matches!(self, Self::Cached | Self::Ran)
    }
    /// No further change will happen.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }
}

impl fmt::Display for StageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).expect("status serializes");
        f.write_str(s.as_str().unwrap_or("?"))
    }
}

/// `rerun --verify`: how a recomputed digest compares with the recorded one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyCheck {
    pub recorded: Digest,
    pub matches: bool,
    /// Why a mismatch may be expected: the recorded result was computed on another
    /// environment (`StageKind::environment`), e.g. other kernels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One stage of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub kind: String,
    pub status: StageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<CacheKey>,
    /// What the key was computed from (`itera explain` diffs these across runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<KeyParts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Why it ran, was skipped or failed, in a few words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Log path relative to the run folder, when the stage executed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Where it executed (a batch job runs on another host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyCheck>,
}

impl StageRecord {
    /// A stage that has not started.
    pub fn pending(kind: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            status: StageStatus::Pending,
            key: None,
            parts: None,
            digest: None,
            reason: None,
            error: None,
            started: None,
            finished: None,
            duration_ms: None,
            log: None,
            host: None,
            threads: None,
            verify: None,
        }
    }
}

/// How the run as a whole ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Interrupted,
    /// Queued on a batch system; stage files tell the progress.
    Submitted,
    /// Its itera process died without finishing it (found by `crate::live`).
    Abandoned,
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).expect("status serializes");
        f.write_str(s.as_str().unwrap_or("?"))
    }
}

/// `runs/<run-id>/run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub format: u32,
    pub id: RunId,
    pub status: RunStatus,
    /// The resolved pipeline (its `resolved_toml` is what `itera rerun` loads again).
    pub pipeline: Pipeline,
    /// The stages this run was asked to execute (after `--until`/`--only`).
    pub selected: Vec<StageName>,
    /// `local`, `slurm`, ...
    pub executor: String,
    pub jobs: usize,
    /// The command line that started the run.
    pub command: Vec<String>,
    /// The run this one re-executes (`itera rerun`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<RunId>,
    /// Set for `rerun --verify`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify: bool,
    pub tool_version: String,
    /// Commit of the git repository holding the pipeline file, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    pub host: String,
    /// The process that created the run (informational; liveness is by `run.lock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub cores: usize,
    pub started: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    pub stages: BTreeMap<StageName, StageRecord>,
}

/// Run-record failures.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Io(#[from] FsError),
    /// `run.json` or a stage file does not parse.
    #[error("`{}` is not a valid run record: {message}", path.display())]
    Malformed { path: PathBuf, message: String },
    /// `itera show X` with no such run.
    #[error("no run `{query}` in `{}`{hint}", runs_dir.display())]
    UnknownRun {
        query: String,
        runs_dir: PathBuf,
        hint: String,
    },
}

/// One run's folder. A `RunDir` from [`RunDir::create`] or [`RunDir::attach`] holds the
/// run's lock (`crate::live`) until its last clone is dropped.
#[derive(Debug, Clone)]
pub struct RunDir {
    dir: PathBuf,
    id: RunId,
    _lock: Option<std::sync::Arc<crate::live::RunLock>>,
}

/// A stage's name as a file name: stage and variant names (`train@lr=1e-3,seq_len=64`)
/// are kept as they are; anything else is replaced by `_`.
fn file_name_for(stage: &str) -> String {
    stage
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '=' | ',' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl RunDir {
    /// Creates `runs_dir/<new id>/` for a run of `pipeline`, holding its lock. The folder
    /// is made in `tmp/` with its lock taken, then renamed into place, so a run folder
    /// without a held lock is never one being created.
    pub fn create(runs_dir: &Path, pipeline: &str) -> Result<Self, FsError> {
        let tmp = runs_dir.join("tmp");
        fs::create_dir_all(&tmp)?;
        loop {
            let id = RunId::new(pipeline);
            let dir = runs_dir.join(id.as_str());
            let staging = tmp.join(format!("run.{id}"));
            match std::fs::create_dir(&staging) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(FsError::new("create run folder", staging, e)),
            }
            // `gc` removes a staging folder whose lock nobody holds yet: then start over.
            let gone = |e: &FsError| e.source.kind() == std::io::ErrorKind::NotFound;
            let lock = match crate::live::hold(&staging) {
                Err(e) if gone(&e) => continue,
                other => other?,
            };
            if dir.exists() {
                let _ = std::fs::remove_dir_all(&staging);
                continue;
            }
            match std::fs::rename(&staging, &dir).at("create run folder", &dir) {
                Err(e) if gone(&e) => continue,
                other => other?,
            }
            return Ok(Self {
                dir,
                id,
                _lock: Some(std::sync::Arc::new(lock)),
            });
        }
    }
    /// This run folder, holding the run's lock (a batch job working on the run).
    pub fn attach(&self) -> Result<Self, FsError> {
        Ok(Self {
            dir: self.dir.clone(),
            id: self.id.clone(),
            _lock: Some(std::sync::Arc::new(crate::live::hold(&self.dir)?)),
        })
    }
    /// An existing run folder.
    pub fn open(dir: &Path) -> Result<Self, RecordError> {
        let dir = std::fs::canonicalize(dir).at("open run folder", dir)?;
        let id = RunId(
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        if !dir.join("run.json").is_file() {
            return Err(RecordError::Malformed {
                path: dir.join("run.json"),
                message: "the file is missing".into(),
            });
        }
        Ok(Self {
            dir,
            id,
            _lock: None,
        })
    }
    pub fn id(&self) -> &RunId {
        &self.id
    }
    pub fn path(&self) -> &Path {
        &self.dir
    }
    /// `logs/<stage>.log`, relative to the run folder.
    pub fn log_rel(&self, stage: &str) -> String {
        format!("logs/{}.log", file_name_for(stage))
    }
    pub fn log_path(&self, stage: &str) -> PathBuf {
        self.dir.join(self.log_rel(stage))
    }
    fn stage_file(&self, stage: &str) -> PathBuf {
        self.dir
            .join("stages")
            .join(format!("{}.json", file_name_for(stage)))
    }

    /// Writes `run.json` (atomically, durably).
    pub fn write_record(&self, record: &RunRecord) -> Result<(), FsError> {
        let json = serde_json::to_vec_pretty(record).expect("run record serializes");
        fs::write_atomic(&self.dir.join("run.json"), &json, Durability::Fsync)
    }

    /// Writes one stage's status file (atomically).
    pub fn write_stage(&self, stage: &str, record: &StageRecord) -> Result<(), FsError> {
        let path = self.stage_file(stage);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let json = serde_json::to_vec_pretty(record).expect("stage record serializes");
        fs::write_atomic(&path, &json, Durability::RenameOnly)
    }

    /// One stage's status file, if the stage has written one.
    pub fn read_stage(&self, stage: &str) -> Result<Option<StageRecord>, RecordError> {
        let file = self.stage_file(stage);
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FsError::new("read", file, e).into()),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| RecordError::Malformed {
                path: file,
                message: e.to_string(),
            })
    }

    /// `run.json` with every stage file merged over it.
    pub fn load(&self) -> Result<RunRecord, RecordError> {
        let path = self.dir.join("run.json");
        let text = fs::read_to_string(&path)?;
        let mut record: RunRecord =
            serde_json::from_str(&text).map_err(|e| RecordError::Malformed {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let names: Vec<StageName> = record.stages.keys().cloned().collect();
        for name in names {
            let file = self.stage_file(&name);
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(FsError::new("read", file, e).into()),
            };
            let stage: StageRecord =
                serde_json::from_str(&text).map_err(|e| RecordError::Malformed {
                    path: file.clone(),
                    message: e.to_string(),
                })?;
            record.stages.insert(name, stage);
        }
        Ok(record)
    }

    /// Points `runs_dir/latest` at this run.
    pub fn mark_latest(&self, runs_dir: &Path) -> Result<(), FsError> {
        fs::replace_symlink(Path::new(self.id.as_str()), &runs_dir.join("latest"))
    }
}

/// Every run folder under `runs_dir`, oldest first.
pub fn list_runs(runs_dir: &Path) -> Vec<RunDir> {
    let mut runs: Vec<RunDir> = std::fs::read_dir(runs_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("run.json").is_file())
        .filter(|e| !e.path().is_symlink())
        .map(|e| RunDir {
            dir: e.path(),
            id: RunId(e.file_name().to_string_lossy().into_owned()),
            _lock: None,
        })
        .collect();
    // Ids sort by start second; within a second, the recorded start time decides.
    runs.sort_by_cached_key(|r| {
        let second = r.id.0.get(..15).unwrap_or(&r.id.0).to_owned();
        (second, started_of(&r.dir), r.id.0.clone())
    });
    runs
}

/// Whether `name` has the shape of a run id (`YYYYmmdd-HHMMSS-<pipeline>-<4 hex>`).
pub fn looks_like_run_id(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() > 21
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'-'
        && name.len() >= 4
        && name[name.len() - 5..].starts_with('-')
        && name[name.len() - 4..]
            .bytes()
            .all(|c| c.is_ascii_hexdigit())
}

/// The `status` of a run folder's `run.json`, without the rest (None if unreadable).
pub fn peek_status(dir: &Path) -> Option<RunStatus> {
    #[derive(Deserialize)]
    struct Status {
        status: RunStatus,
    }
    std::fs::read_to_string(dir.join("run.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Status>(&t).ok())
        .map(|s| s.status)
}

/// The `started` field of a run folder's `run.json` (empty if unreadable).
fn started_of(dir: &Path) -> String {
    #[derive(Deserialize)]
    struct Started {
        started: String,
    }
    std::fs::read_to_string(dir.join("run.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Started>(&t).ok())
        .map(|s| s.started)
        .unwrap_or_default()
}

/// Finds a run by `latest`, full id, unique id prefix or suffix, or path to its folder.
pub fn find_run(runs_dir: &Path, query: &str) -> Result<RunDir, RecordError> {
    let as_path = Path::new(query);
    if as_path.join("run.json").is_file() {
        return RunDir::open(as_path);
    }
    if query == "latest" {
        let link = runs_dir.join("latest");
        if link.join("run.json").is_file() {
            return RunDir::open(&link);
        }
    }
    let runs = list_runs(runs_dir);
    let matches: Vec<&RunDir> = runs
        .iter()
        .filter(|r| r.id.0 == query || r.id.0.starts_with(query) || r.id.0.ends_with(query))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(RecordError::UnknownRun {
            query: query.to_owned(),
            runs_dir: runs_dir.to_owned(),
            hint: match runs.last() {
                Some(r) => format!(" (the newest is `{}`; `itera runs` lists all)", r.id),
                None => " (there are no runs yet)".to_owned(),
            },
        }),
        many => Err(RecordError::UnknownRun {
            query: query.to_owned(),
            runs_dir: runs_dir.to_owned(),
            hint: format!(
                ": `{query}` matches {} runs ({}); give more of the id",
                many.len(),
                many.iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> Pipeline {
        Pipeline {
            name: "demo".into(),
            description: None,
            seed: 1,
            slurm: Default::default(),
            stages: BTreeMap::new(),
            source: "demo.toml".into(),
            base_dir: ".".into(),
            overrides: vec![],
            resolved_toml: String::new(),
        }
    }

    fn record(id: &RunId) -> RunRecord {
        RunRecord {
            format: RUN_FORMAT,
            id: id.clone(),
            status: RunStatus::Running,
            pipeline: pipeline(),
            selected: vec!["a".into()],
            executor: "local".into(),
            jobs: 1,
            command: vec![],
            rerun_of: None,
            verify: false,
            tool_version: "0".into(),
            git_commit: None,
            host: "h".into(),
            pid: None,
            cores: 2,
            started: "t".into(),
            finished: None,
            stages: BTreeMap::from([("a".to_owned(), StageRecord::pending("shell"))]),
        }
    }

    #[test]
    fn stage_files_are_merged_over_run_json() {
        let runs = tempfile::tempdir().unwrap();
        let run = RunDir::create(runs.path(), "demo pipeline").unwrap();
        assert!(run.id().as_str().contains("-demo_pipeline-"));
        run.write_record(&record(run.id())).unwrap();
        let mut a = StageRecord::pending("shell");
        a.status = StageStatus::Ran;
        run.write_stage("a", &a).unwrap();
        let loaded = run.load().unwrap();
        assert_eq!(loaded.stages["a"].status, StageStatus::Ran);
        run.mark_latest(runs.path()).unwrap();
        assert_eq!(
            find_run(runs.path(), "latest").unwrap().id(),
            run.id(),
            "latest resolves"
        );
    }

    #[test]
    fn find_run_by_prefix_and_reports_unknown_ones() {
        let runs = tempfile::tempdir().unwrap();
        let a = RunDir::create(runs.path(), "demo").unwrap();
        a.write_record(&record(a.id())).unwrap();
        let found = find_run(runs.path(), &a.id().as_str()[..20]).unwrap();
        assert_eq!(found.id(), a.id());
        let err = find_run(runs.path(), "nope").unwrap_err().to_string();
        assert!(err.contains("no run `nope`"), "{err}");
        assert!(err.contains(a.id().as_str()), "{err}");
    }
}
