//! The `hf-fetch` stage kind: files from a Hugging Face hub repository (by default the
//! public hub; any mirror through `endpoint` / `HF_ENDPOINT`), through the standard hub
//! cache that Python's `huggingface_hub` shares.
//!
//! - Fingerprint: the commit sha the revision resolves to, so a moved branch is noticed and
//!   a pinned commit is never downloaded twice. Offline, the cache's `refs/` are used.
//! - Whole files go into the hub cache (`blobs/`, `snapshots/`, `refs/`) and are hard-linked
//!   (or copied) into the artifact. Prefixes (`max_bytes`) are fetched with range requests
//!   into the stage's work folder, never into the hub cache, and cut after the last complete
//!   story (`<|endoftext|>` line).
//! - The artifact holds one file per `files` key plus `provenance.json`, which records only
//!   what the key determines (repository, revision and commit, each file's path, size,
//!   sha256, etag): fetching the same key again gives the same digest. How a fetch went
//!   (endpoint, online or offline, from the network, the hub cache or a resumed part, the
//!   time) goes to the stage log.
//! - Files are created readable per the umask (not `tempfile`'s 0600), so a store or hub
//!   cache can be shared between the users of a cluster.

mod cache;
mod hub;
mod transfer;

use std::collections::BTreeMap;
use std::path::PathBuf;

use itera_engine::stage::{
    FingerprintContext, InputSlots, OutputDecl, ParamIssue, StageContext, StageKind,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use cache::{default_cache_dir, import_into_cache, is_commit_sha, ResolvedCommit};
pub use hub::{RepoKind, DEFAULT_ENDPOINT};
pub use transfer::{story_cut, Fetched, FileProvenance, STORY_SEPARATOR};

use hub::HubSettings;

/// The artifact's record of what was fetched.
pub const PROVENANCE_FILE: &str = "provenance.json";

/// What went wrong fetching from the hub. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The repository id is not `owner/name`.
    #[error(
        "`{repo}` is not a repository id; expected `owner/name` (e.g. `roneneldan/TinyStories`)"
    )]
    BadRepoId { repo: String },
    /// A path inside the repository is unusable.
    #[error("bad path in repository `{path}`: {message}")]
    BadPathInRepo { path: String, message: String },
    /// The hub has no such repository (or it is private and no token was given).
    #[error(
        "{kind} repository `{repo}` was not found at {endpoint}; check the `repo` name and \
         `repo_type`, or set HF_TOKEN if it is private"
    )]
    RepoNotFound {
        repo: String,
        kind: &'static str,
        endpoint: String,
    },
    /// The repository exists but the revision does not.
    #[error("revision `{revision}` of {kind} repository `{repo}` was not found at {endpoint}; check `revision`")]
    RevisionNotFound {
        repo: String,
        kind: &'static str,
        revision: String,
        endpoint: String,
    },
    /// The repository exists but has no such file at the revision.
    #[error("file `{path}` was not found in {kind} repository `{repo}` at revision {revision}; check `files`")]
    FileNotFound {
        repo: String,
        kind: &'static str,
        revision: String,
        path: String,
    },
    /// The hub refused access.
    #[error(
        "access to `{repo}` was refused ({message}); set HF_TOKEN to a token that can read it"
    )]
    AccessDenied { repo: String, message: String },
    /// No connection to the hub.
    #[error(
        "cannot reach the hub at {endpoint} ({message}). To work without it: fetch once on a \
         machine with access and copy the hub cache, or import local files with `itera hub \
         import`, then set `offline = true` (or HF_HUB_OFFLINE=1); or set HF_ENDPOINT to a \
         reachable mirror; or use a `files` stage for local data"
    )]
    Unreachable { endpoint: String, message: String },
    /// Offline and the cache does not have what is needed.
    #[error(
        "offline, and {what} of `{repo}` is not in the hub cache {cache_dir}. Populate the \
         cache first (run once online, copy a cache from another machine, or `itera hub \
         import`), point `cache_dir` / HF_HUB_CACHE at a populated cache, pin `revision` to \
         a cached commit, or use a `files` stage for local data"
    )]
    OfflineNotCached {
        repo: String,
        what: String,
        cache_dir: PathBuf,
    },
    /// A download kept failing part-way.
    #[error(
        "downloading `{path}` from `{repo}` failed {attempts} time(s), last: {message}. Nothing \
         was published; run again to retry"
    )]
    Interrupted {
        repo: String,
        path: String,
        attempts: u32,
        message: String,
    },
    /// A prefix contains no story separator.
    #[error(
        "the first {max_bytes} bytes of `{path}` contain no complete story (no `<|endoftext|>` \
         line); raise `max_bytes`"
    )]
    NoCompleteStory { path: String, max_bytes: u64 },
    /// A cached blob does not match its etag.
    #[error(
        "cached blob {} is damaged: its sha256 is {actual}, its etag says {etag}; delete it and \
         run again", blob.display()
    )]
    CorruptBlob {
        blob: PathBuf,
        etag: String,
        actual: String,
    },
    /// `import_into_cache` was given no files.
    #[error("nothing to import: give at least one file")]
    NothingToImport,
    /// The HTTP client could not be set up.
    #[error(
        "cannot set up a hub client for {endpoint}: {message}; check `endpoint` / HF_ENDPOINT"
    )]
    Client { endpoint: String, message: String },
    /// Any other answer from the hub.
    #[error("hub error for `{repo}`{}: {message}", path.as_ref().map(|p| format!(" file `{p}`")).unwrap_or_default())]
    Hub {
        repo: String,
        path: Option<String>,
        message: String,
    },
    /// A local file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Parameters of `kind = "hf-fetch"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HfFetchParams {
    /// Repository id on the hub, `owner/name` (e.g. `roneneldan/TinyStories`).
    pub repo: String,
    /// Kind of repository: `dataset` (default) or `model`.
    #[serde(default)]
    pub repo_type: RepoKind,
    /// Branch, tag or 40-hex commit sha. A commit sha pins the data: it is never
    /// downloaded twice and needs no request to check. A branch (default `main`) is resolved
    /// to its commit before each run, so a moved branch is noticed.
    #[serde(default = "default_revision")]
    pub revision: String,
    /// Files to fetch: name in the artifact -> path in the repository, e.g.
    /// `{ "TinyStories-train.txt" = "TinyStories-train.txt" }`.
    pub files: BTreeMap<String, String>,
    /// Per file (by artifact name): fetch only about this many bytes from the start, with
    /// HTTP range requests, cut after the last complete story (`<|endoftext|>` line). The
    /// prefix is kept in the artifact only, never in the hub cache.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("additionalProperties" = { "type": "integer", "format": "uint64", "minimum": 1 }))]
    pub max_bytes: BTreeMap<String, u64>,
    /// Hub base URL. Default: the `HF_ENDPOINT` environment variable, else
    /// `https://huggingface.co`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Hub cache folder (relative to the pipeline file). Default: `HF_HUB_CACHE`, else
    /// `$HF_HOME/hub`, else `~/.cache/huggingface/hub` (shared with Python tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<String>,
    /// Use only the hub cache, never the network. Also on when `HF_HUB_OFFLINE=1`.
    #[serde(default)]
    pub offline: bool,
}

fn default_revision() -> String {
    "main".into()
}

/// An issue at `key.sub` where `sub` may contain dots (file names).
fn issue_at(key: &str, sub: &str, message: String) -> ParamIssue {
    ParamIssue {
        path: vec![key.to_owned(), sub.to_owned()],
        message,
        help: None,
    }
}

/// Checks a path inside a repository: relative, no `..`, no empty segments.
pub(crate) fn check_path_in_repo(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("is empty".into());
    }
    if path.starts_with('/') || path.contains('\\') {
        return Err("must be a relative path with `/` separators".into());
    }
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err("must not contain empty, `.` or `..` segments".into());
    }
    Ok(())
}

impl HfFetchParams {
    fn settings(&self, base_dir: &std::path::Path) -> HubSettings {
        HubSettings {
            repo: self.repo.clone(),
            kind: self.repo_type,
            endpoint: hub::endpoint_from(self.endpoint.as_deref()),
            cache_dir: hub::cache_dir_from(self.cache_dir.as_deref(), base_dir),
            offline: self.offline || hub::offline_from_env(),
        }
    }
}

/// The `hf-fetch` stage kind.
pub struct HfFetch;

impl StageKind for HfFetch {
    type Params = HfFetchParams;
    const KIND: &'static str = "hf-fetch";
    /// 2: `provenance.json` holds only key-dependent data (no time, source, endpoint).
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str =
        "Fetch files (or story-boundary prefixes) from a Hugging Face hub repository through the shared hub cache";

    fn validate(p: &HfFetchParams) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        if let Err(e) = hub::check_repo_id(&p.repo) {
            issues.push(ParamIssue::new("repo", e.to_string()));
        }
        if p.revision.trim().is_empty() {
            issues.push(
                ParamIssue::new("revision", "must not be empty")
                    .with_help("use `main`, a tag or a commit sha"),
            );
        }
        if p.files.is_empty() {
            issues.push(ParamIssue::new("files", "names no file").with_help(
                r#"e.g. files = { "TinyStories-valid.txt" = "TinyStories-valid.txt" }"#,
            ));
        }
        for (name, path) in &p.files {
            if name.is_empty()
                || name.contains('/')
                || name == "."
                || name == ".."
                || name == PROVENANCE_FILE
            {
                issues.push(issue_at(
                    "files",
                    name,
                    format!("`{name}` cannot be a file name in the artifact (no `/`, not `{PROVENANCE_FILE}`)"),
                ));
            }
            if let Err(message) = check_path_in_repo(path) {
                issues.push(issue_at("files", name, format!("path `{path}` {message}")));
            }
        }
        for (name, &bytes) in &p.max_bytes {
            if !p.files.contains_key(name) {
                let known: Vec<&str> = p.files.keys().map(String::as_str).collect();
                issues.push(
                    issue_at(
                        "max_bytes",
                        name,
                        format!("`{name}` is not a key of `files`"),
                    )
                    .with_help(format!("known files: {}", known.join(", "))),
                );
            }
            if bytes == 0 {
                issues.push(issue_at("max_bytes", name, "must be at least 1".into()));
            }
        }
        if let Some(endpoint) = &p.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                issues.push(
                    ParamIssue::new("endpoint", format!("`{endpoint}` is not an http(s) URL"))
                        .with_help("e.g. endpoint = \"https://hf-mirror.example.org\""),
                );
            }
        }
        issues
    }

    fn inputs(_: &HfFetchParams) -> InputSlots {
        InputSlots::Named(Vec::new())
    }

    fn outputs(p: &HfFetchParams) -> Vec<OutputDecl> {
        let mut outs: Vec<OutputDecl> = p
            .files
            .keys()
            .map(|name| OutputDecl::new(name.clone(), name.clone()))
            .collect();
        outs.push(OutputDecl::new("provenance", PROVENANCE_FILE));
        outs
    }

    fn fingerprint(p: &HfFetchParams, ctx: &FingerprintContext) -> anyhow::Result<Option<String>> {
        let resolved = p.settings(&ctx.base_dir).resolve(&p.revision)?;
        Ok(Some(resolved.sha))
    }

    fn run(p: &HfFetchParams, ctx: &StageContext) -> anyhow::Result<()> {
        let hub = p.settings(&ctx.base_dir);
        let resolved = hub.resolve(&p.revision)?;
        let client = if hub.offline {
            None
        } else {
            Some(hub.client()?)
        };
        ctx.log.line(format!(
            "hf-fetch {} `{}` revision `{}` -> commit {} (endpoint {}, cache {}, {})",
            hub.kind.singular(),
            hub.repo,
            resolved.requested,
            resolved.sha,
            hub.endpoint,
            hub.cache_dir.display(),
            if hub.offline { "offline" } else { "online" }
        ));
        let mut files = BTreeMap::new();
        for (name, path_in_repo) in &p.files {
            if ctx.cancel.is_cancelled() {
                anyhow::bail!("cancelled");
            }
            let dest = ctx.out_dir.join(name);
            let fetched = match p.max_bytes.get(name) {
                Some(&max) => transfer::fetch_prefix(
                    &hub,
                    client.as_ref(),
                    path_in_repo,
                    &resolved.sha,
                    max,
                    &dest,
                    &ctx.work_dir,
                    &ctx.progress,
                )?,
                None => transfer::fetch_whole(
                    &hub,
                    client.as_ref(),
                    path_in_repo,
                    &resolved.sha,
                    &dest,
                    &ctx.progress,
                )?,
            };
            let record = fetched.record;
            ctx.log.line(format!(
                "{name} <- {path_in_repo}: {} bytes{}{}, sha256 {}, from {}, at {}",
                record.size,
                if record.prefix { " (prefix)" } else { "" },
                match fetched.remote_size {
                    Some(n) if record.prefix => format!(" of {n}"),
                    _ => String::new(),
                },
                record.sha256,
                fetched.source,
                transfer::now()
            ));
            files.insert(name.clone(), record);
        }
        // Recorded for offline runs and for Python tools: `refs/<branch>` -> the commit used.
        if !is_commit_sha(&resolved.requested) && !hub.offline {
            hub.repo_cache()
                .write_ref(&resolved.requested, &resolved.sha)?;
        }
        let provenance = Provenance {
            repo: hub.repo.clone(),
            repo_type: hub.kind,
            requested_revision: resolved.requested,
            resolved_revision: resolved.sha,
            files,
        };
        let json = serde_json::to_vec_pretty(&provenance)?;
        cache::write_atomically(&ctx.out_dir.join(PROVENANCE_FILE), &json)?;
        Ok(())
    }
}

/// `provenance.json`: where the artifact's files came from; only key-dependent data (the
/// endpoint, online/offline, the source and time of each file are in the stage log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    pub repo: String,
    pub repo_type: RepoKind,
    /// The `revision` param as written (branch, tag or sha).
    pub requested_revision: String,
    /// The commit sha it resolved to.
    pub resolved_revision: String,
    /// By artifact file name.
    pub files: BTreeMap<String, FileProvenance>,
}
