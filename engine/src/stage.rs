//! The stage API: the [`StageKind`] trait a stage kind implements, the type-erased
//! [`Stage`] the engine executes, the [`Registry`] of kinds, and the [`StageContext`]
//! handed to a running stage.
//!
//! A kind has typed parameters (`serde(deny_unknown_fields)` + `JsonSchema`); the engine
//! never sees them as anything but JSON after [`Stage::check_params`] has parsed and
//! validated them. The canonical JSON (defaults filled in, keys sorted) enters the cache key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A problem with one parameter of a stage, found before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamIssue {
    /// Key path inside the stage table, e.g. `["model", "hidden_size"]`; empty for the table itself.
    pub path: Vec<String>,
    /// What is wrong, e.g. "must be at least 1, found 0".
    pub message: String,
    /// How to fix it, if there is something better to say than the message.
    pub help: Option<String>,
}

impl ParamIssue {
    /// An issue at `path` (dotted, e.g. `"model.hidden_size"`; `""` for the whole table).
    pub fn new(path: &str, message: impl Into<String>) -> Self {
        let path = if path.is_empty() {
            Vec::new()
        } else {
            path.split('.').map(str::to_owned).collect()
        };
        Self {
            path,
            message: message.into(),
            help: None,
        }
    }

    /// Adds a hint on how to fix the problem.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// A named output of a stage: a file or folder inside its artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputDecl {
    /// Name used in references (`"stage.name"`).
    pub name: String,
    /// Path relative to the artifact root (`out/`).
    pub path: String,
}

impl OutputDecl {
    pub fn new(name: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
        }
    }
}

/// Which inputs (the keys of `inputs = { ... }`) a kind accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSlots {
    /// Exactly these names; `required` ones must be present.
    Named(Vec<InputSlot>),
    /// Any names (e.g. `shell`, which refers to inputs by name in its command).
    Any,
}

/// One accepted input of a kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSlot {
    pub name: String,
    pub required: bool,
    /// Several upstream references allowed (`inputs = { models = ["a", "b"] }`).
    pub many: bool,
    pub description: String,
}

impl InputSlot {
    pub fn required(name: &str, description: &str) -> Self {
        Self {
            name: name.to_owned(),
            required: true,
            many: false,
            description: description.to_owned(),
        }
    }
    pub fn optional(name: &str, description: &str) -> Self {
        Self {
            required: false,
            ..Self::required(name, description)
        }
    }
    pub fn many(name: &str, description: &str) -> Self {
        Self {
            many: true,
            ..Self::required(name, description)
        }
    }
}

/// Where a running stage's inputs are.
#[derive(Debug, Clone)]
pub struct InputArtifact {
    /// The upstream stage's name.
    pub stage: String,
    /// The referenced output's name, if the reference named one.
    pub output: Option<String>,
    /// The artifact root, or the named output's path inside it.
    pub path: PathBuf,
    /// Digest of the whole upstream artifact.
    pub digest: crate::store::Digest,
}

/// Context for computing a fingerprint of outside state before the cache lookup.
#[derive(Debug, Clone)]
pub struct FingerprintContext {
    pub stage: String,
    /// Folder of the pipeline file: relative paths in params are relative to it.
    pub base_dir: PathBuf,
}

/// Progress reporting for a running stage. Cheap to clone; the engine decides how (and
/// whether) it is displayed, so stages just report.
#[derive(Clone)]
pub struct Progress {
    sink: Arc<dyn ProgressSink>,
    stage: Arc<str>,
}

/// Receives progress events (the CLI renders them as bars or log lines).
pub trait ProgressSink: Send + Sync {
    fn event(&self, stage: &str, event: ProgressEvent);
}

/// One progress event of a stage.
#[derive(Debug, Clone, PartialEq)]
pub enum ProgressEvent {
    /// Starts (or restarts) a measured phase: `total` units of `unit` (e.g. "steps", "bytes").
    Start {
        phase: String,
        total: Option<u64>,
        unit: String,
    },
    /// Absolute position within the current phase.
    Position(u64),
    /// A short status line (e.g. "loss 2.31 lr 3e-4 12,400 tok/s").
    Message(String),
    /// A status line with the measurements it shows, by name (e.g. `loss`, `lr`): shown
    /// as `text`, recorded as numbers where a display keeps structure (JSON logs).
    Metrics {
        text: String,
        values: Vec<(String, f64)>,
    },
}

/// A sink that drops everything (tests, `exec-stage` without a terminal).
pub struct NullProgress;
impl ProgressSink for NullProgress {
    fn event(&self, _: &str, _: ProgressEvent) {}
}

impl Progress {
    pub fn new(stage: &str, sink: Arc<dyn ProgressSink>) -> Self {
        Self {
            sink,
            stage: stage.into(),
        }
    }
    pub fn null() -> Self {
        Self::new("", Arc::new(NullProgress))
    }
    pub fn start(&self, phase: &str, total: Option<u64>, unit: &str) {
        self.sink.event(
            &self.stage,
            ProgressEvent::Start {
                phase: phase.to_owned(),
                total,
                unit: unit.to_owned(),
            },
        );
    }
    pub fn set_position(&self, pos: u64) {
        self.sink.event(&self.stage, ProgressEvent::Position(pos));
    }
    pub fn message(&self, msg: impl Into<String>) {
        self.sink
            .event(&self.stage, ProgressEvent::Message(msg.into()));
    }
    /// A status line and the numbers it shows (see [`ProgressEvent::Metrics`]).
    pub fn metrics(&self, text: impl Into<String>, values: &[(&str, f64)]) {
        let values = values.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        self.sink.event(
            &self.stage,
            ProgressEvent::Metrics {
                text: text.into(),
                values,
            },
        );
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress")
            .field("stage", &self.stage)
            .finish()
    }
}

/// The stage's log file (`runs/<run>/logs/<stage>.log`). Cheap to clone; writes are
/// line-buffered by the caller and appended verbatim, within the caps of
/// [`crate::logcap`] (head and tail kept, the middle of a huge log left out).
#[derive(Clone)]
pub struct StageLog {
    inner: Arc<Mutex<LogInner>>,
    path: PathBuf,
}

struct LogInner {
    file: Option<std::fs::File>,
    cap: crate::logcap::Capped,
}

impl StageLog {
    /// Opens (appending) the log at `path`, creating its folder.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self::with(Some(file), path.to_owned()))
    }
    fn with(file: Option<std::fs::File>, path: PathBuf) -> Self {
        Self {
            inner: Arc::new(Mutex::new(LogInner {
                file,
                cap: Default::default(),
            })),
            path,
        }
    }
    /// A log that discards everything.
    pub fn sink() -> Self {
        Self::with(None, PathBuf::new())
    }
    /// Where the log is written.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Appends one line.
    pub fn line(&self, line: impl AsRef<str>) {
        self.write_bytes(format!("{}\n", line.as_ref()).as_bytes());
    }
    /// Appends raw bytes (e.g. a child's stdout).
    pub fn write_bytes(&self, bytes: &[u8]) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let LogInner { file, cap } = &mut *guard;
        if let Some(f) = file.as_mut() {
            // A full disk must not kill the stage through its log; the stage's own writes
            // will fail loudly.
            cap.write(f, bytes);
        }
    }
    /// Writes the kept tail of a log that outgrew its head (call when the stage ends).
    pub fn finish(&self) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let LogInner { file, cap } = &mut *guard;
        if let Some(f) = file.as_mut() {
            cap.flush(f);
        }
    }
    /// A pipe for a child process's stdout and stderr: what the child writes is copied
    /// into this log (within its caps) by a thread, which ends when every copy of the
    /// returned write end is closed. Join it after the child is gone.
    pub fn child_pipe(
        &self,
    ) -> std::io::Result<(std::os::fd::OwnedFd, std::thread::JoinHandle<()>)> {
        use std::os::fd::FromRawFd;
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills two descriptors we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned here alone.
        let (read, write) = unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        };
        let log = self.clone();
        let pump = std::thread::Builder::new()
            .name("stage-log".into())
            .spawn(move || {
                use std::io::Read;
                let mut read = read;
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    match read.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => log.write_bytes(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
            })?;
        Ok((write, pump))
    }
}

impl fmt::Debug for StageLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageLog")
            .field("path", &self.path)
            .finish()
    }
}

/// A flag a stage polls in long loops; set when the run is interrupted.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);
impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Everything a running stage gets from the engine.
#[derive(Debug)]
pub struct StageContext {
    /// The stage's name in the pipeline (for messages only: it is not part of the cache key).
    pub stage: String,
    /// Resolved inputs by input name; a `many` slot holds several, in declaration order.
    pub inputs: BTreeMap<String, Vec<InputArtifact>>,
    /// Empty folder to write the artifact into; published atomically when `run` returns Ok.
    pub out_dir: PathBuf,
    /// Persistent scratch folder for this cache key: survives a killed run (checkpoints),
    /// removed after the result is published.
    pub work_dir: PathBuf,
    /// Folder of the pipeline file, for resolving relative paths in params.
    pub base_dir: PathBuf,
    /// The pipeline's seed.
    pub seed: u64,
    /// How many threads the stage may use.
    pub threads: usize,
    pub progress: Progress,
    pub log: StageLog,
    pub cancel: CancelToken,
}

impl StageContext {
    /// The single artifact bound to input `name`, or an error naming the slot.
    pub fn input(&self, name: &str) -> anyhow::Result<&InputArtifact> {
        match self.inputs.get(name).map(Vec::as_slice) {
            Some([one]) => Ok(one),
            Some([]) | None => anyhow::bail!("stage `{}` has no input named `{name}`", self.stage),
            Some(_) => anyhow::bail!(
                "stage `{}` input `{name}` has several artifacts; expected one",
                self.stage
            ),
        }
    }
    /// All artifacts bound to input `name` (empty if absent).
    pub fn inputs_of(&self, name: &str) -> &[InputArtifact] {
        self.inputs.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// A stage kind with typed parameters. Implement this; register it with
/// [`Registry::register`].
pub trait StageKind: Send + Sync + 'static {
    /// Typed parameters: every key of `[stages.NAME]` except `kind`, `inputs` and `resources`.
    type Params: DeserializeOwned + Serialize + JsonSchema + Send + Sync + 'static;
    /// The `kind = "..."` name.
    const KIND: &'static str;
    /// Implementation version: bump it when the same params and inputs would produce a
    /// different artifact, so old cache entries stop matching.
    const VERSION: u32;
    /// One line for `itera schema` and docs.
    const DESCRIPTION: &'static str;

    /// Range and consistency checks beyond what the types say.
    fn validate(_params: &Self::Params) -> Vec<ParamIssue> {
        Vec::new()
    }
    /// Checks of params against the machine, made when a pipeline is loaded (before
    /// anything runs): e.g. that a `files` path exists under `base_dir`, the pipeline
    /// file's folder. Empty for most kinds.
    fn check_local(_params: &Self::Params, _base_dir: &Path) -> Vec<ParamIssue> {
        Vec::new()
    }
    /// The inputs the kind accepts.
    fn inputs(_params: &Self::Params) -> InputSlots {
        InputSlots::Any
    }
    /// The named outputs (files or folders in the artifact) the kind produces.
    fn outputs(_params: &Self::Params) -> Vec<OutputDecl> {
        Vec::new()
    }
    /// Files (or folders) of the artifact, relative to its root, whose content is a
    /// measurement of this machine at this moment (timings, speeds) rather than a function
    /// of params and inputs. `rerun --verify` compares everything else bit for bit and
    /// reports these as excluded. Empty for stages whose whole output is reproducible.
    fn measurements(_params: &Self::Params) -> Vec<String> {
        Vec::new()
    }
    /// What of this machine can change the artifact's bits without changing its meaning
    /// (e.g. `kernels = "x86_64/avx512"`: matrix products round differently on another
    /// instruction set). Recorded with the result, not part of the cache key (a result
    /// computed on a cluster stays reusable on a laptop); `rerun --verify` names the
    /// difference when a result does not reproduce. Empty for most kinds.
    fn environment(_params: &Self::Params) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
    /// A cheap fingerprint of outside state this stage reads (a resolved commit sha, a local
    /// folder's digest), entered into the cache key. `None` for pure stages.
    fn fingerprint(
        _params: &Self::Params,
        _ctx: &FingerprintContext,
    ) -> anyhow::Result<Option<String>> {
        Ok(None)
    }
    /// Does the work: read inputs, write the artifact into `ctx.out_dir`.
    fn run(params: &Self::Params, ctx: &StageContext) -> anyhow::Result<()>;
}

/// A stage kind with its params erased to JSON: what the engine holds.
pub trait Stage: Send + Sync {
    fn kind(&self) -> &'static str;
    fn version(&self) -> u32;
    fn description(&self) -> &'static str;
    /// The params' JSON schema (added to the pipeline file's schema).
    fn params_schema(&self, generator: &mut SchemaGenerator) -> Schema;
    /// Parses the stage's params table (no `kind`/`inputs`/`resources`), fills defaults and
    /// validates; returns the canonical JSON form or every issue found.
    fn check_params(&self, table: &toml::Table) -> Result<serde_json::Value, Vec<ParamIssue>>;
    /// Checks params read back from a record (`exec-stage`) as `check_params` checked
    /// them when the run was created: they deserialize and pass the kind's validation.
    fn recheck_params(&self, params: &serde_json::Value) -> anyhow::Result<()>;
    /// See [`StageKind::check_local`].
    fn check_local(&self, params: &serde_json::Value, base_dir: &Path) -> Vec<ParamIssue>;
    fn inputs(&self, params: &serde_json::Value) -> InputSlots;
    fn outputs(&self, params: &serde_json::Value) -> Vec<OutputDecl>;
    /// See [`StageKind::measurements`].
    fn measurements(&self, params: &serde_json::Value) -> Vec<String>;
    fn environment(&self, params: &serde_json::Value) -> BTreeMap<String, String>;
    fn fingerprint(
        &self,
        params: &serde_json::Value,
        ctx: &FingerprintContext,
    ) -> anyhow::Result<Option<String>>;
    fn run(&self, params: &serde_json::Value, ctx: &StageContext) -> anyhow::Result<()>;
}

struct Erased<K>(std::marker::PhantomData<K>);

impl<K: StageKind> Erased<K> {
    /// The typed params. Params normally come out of `check_params`, but a recorded run
    /// (`run.json`, read back by `exec-stage`) may have been edited by hand or written by
    /// another build, so a mismatch is an error, never a panic.
    fn typed(params: &serde_json::Value) -> anyhow::Result<K::Params> {
        serde_path_to_error::deserialize(params.clone()).map_err(|e| {
            let issue = issue_from_path_error(e);
            anyhow::anyhow!(
                "the params of this `{}` stage do not fit kind `{}` v{}{}: {}; re-run the \
                 pipeline file with this itera (`itera run FILE`) so they are validated again",
                K::KIND,
                K::KIND,
                K::VERSION,
                if issue.path.is_empty() {
                    String::new()
                } else {
                    format!(" (at `{}`)", issue.path.join("."))
                },
                issue.message
            )
        })
    }
    /// Typed params for a query that cannot fail: malformed params answer with the
    /// default (the stage itself then fails with the error from [`Self::typed`]).
    fn typed_or<T>(params: &serde_json::Value, default: T, f: impl FnOnce(&K::Params) -> T) -> T {
        match Self::typed(params) {
            Ok(p) => f(&p),
            Err(e) => {
                tracing::warn!(error = %e, "malformed stage params");
                default
            }
        }
    }
}

/// Converts a serde error from deserializing params into an issue at its key path.
fn issue_from_path_error<E: fmt::Display>(err: serde_path_to_error::Error<E>) -> ParamIssue {
    let path: Vec<String> = err
        .path()
        .iter()
        .filter_map(|seg| match seg {
            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
            serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
            serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect();
    ParamIssue {
        path,
        message: err.into_inner().to_string(),
        help: None,
    }
}

impl<K: StageKind> Stage for Erased<K> {
    fn kind(&self) -> &'static str {
        K::KIND
    }
    fn version(&self) -> u32 {
        K::VERSION
    }
    fn description(&self) -> &'static str {
        K::DESCRIPTION
    }
    fn params_schema(&self, generator: &mut SchemaGenerator) -> Schema {
        generator.subschema_for::<K::Params>()
    }
    fn check_params(&self, table: &toml::Table) -> Result<serde_json::Value, Vec<ParamIssue>> {
        let value = toml::Value::Table(table.clone());
        let typed: K::Params =
            serde_path_to_error::deserialize(value).map_err(|e| vec![issue_from_path_error(e)])?;
        let issues = K::validate(&typed);
        if !issues.is_empty() {
            return Err(issues);
        }
        let json = serde_json::to_value(&typed).map_err(|e| {
            vec![ParamIssue::new(
                "",
                format!("params cannot be represented as JSON: {e}"),
            )]
        })?;
        Ok(canonical_json(json))
    }
    fn recheck_params(&self, params: &serde_json::Value) -> anyhow::Result<()> {
        let typed = Self::typed(params)?;
        let issues = K::validate(&typed);
        if let Some(first) = issues.first() {
            anyhow::bail!(
                "the recorded params of this `{}` stage are invalid for kind `{}` v{}: {}{}; \
                 fix the pipeline file and run it again",
                K::KIND,
                K::KIND,
                K::VERSION,
                if first.path.is_empty() {
                    String::new()
                } else {
                    format!("`{}`: ", first.path.join("."))
                },
                first.message
            );
        }
        Ok(())
    }
    fn check_local(&self, params: &serde_json::Value, base_dir: &Path) -> Vec<ParamIssue> {
        Self::typed_or(params, Vec::new(), |p| K::check_local(p, base_dir))
    }
    fn inputs(&self, params: &serde_json::Value) -> InputSlots {
        Self::typed_or(params, InputSlots::Any, |p| K::inputs(p))
    }
    fn outputs(&self, params: &serde_json::Value) -> Vec<OutputDecl> {
        Self::typed_or(params, Vec::new(), |p| K::outputs(p))
    }
    fn measurements(&self, params: &serde_json::Value) -> Vec<String> {
        Self::typed_or(params, Vec::new(), |p| K::measurements(p))
    }
    fn environment(&self, params: &serde_json::Value) -> BTreeMap<String, String> {
        Self::typed_or(params, BTreeMap::new(), |p| K::environment(p))
    }
    fn fingerprint(
        &self,
        params: &serde_json::Value,
        ctx: &FingerprintContext,
    ) -> anyhow::Result<Option<String>> {
        K::fingerprint(&Self::typed(params)?, ctx)
    }
    fn run(&self, params: &serde_json::Value, ctx: &StageContext) -> anyhow::Result<()> {
        K::run(&Self::typed(params)?, ctx)
    }
}

/// Sorts object keys recursively so that equal params serialize to equal bytes.
pub fn canonical_json(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let sorted: BTreeMap<String, serde_json::Value> = map
                .into_iter()
                .map(|(k, v)| (k, canonical_json(v)))
                .collect();
            serde_json::Value::Object(sorted.into_iter().collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(canonical_json).collect())
        }
        other => other,
    }
}

/// The stage kinds the engine knows, by `kind` name.
#[derive(Default, Clone)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn Stage>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a kind. Registering the same kind name twice is a programming error.
    pub fn register<K: StageKind>(&mut self) -> &mut Self {
        let previous = self
            .kinds
            .insert(K::KIND, Arc::new(Erased::<K>(std::marker::PhantomData)));
        assert!(
            previous.is_none(),
            "stage kind `{}` registered twice",
            K::KIND
        );
        self
    }
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Stage>> {
        self.kinds.get(kind)
    }
    /// Kind names, sorted.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Stage>> + '_ {
        self.kinds.values()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.kinds.keys()).finish()
    }
}
