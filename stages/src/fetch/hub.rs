//! Talking to the hub through `hf-hub`: where (endpoint, cache folder, offline or not),
//! resolving a revision to a commit sha, and turning `hf-hub`'s errors into
//! [`FetchError`]s a user can act on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::{HFClient, HFError, RepoTypeDataset, RepoTypeModel};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cache::{is_commit_sha, RepoCache, ResolvedCommit};
use super::FetchError;

/// The public hub, used when neither the `endpoint` param nor `HF_ENDPOINT` is set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Which kind of repository on the hub.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RepoKind {
    /// A dataset repository (`/datasets/owner/name`).
    #[default]
    Dataset,
    /// A model repository (`/owner/name`).
    Model,
}

impl RepoKind {
    /// The cache folder prefix and API path segment (`datasets`, `models`).
    pub fn plural(self) -> &'static str {
        match self {
            Self::Dataset => "datasets",
            Self::Model => "models",
        }
    }
    pub fn singular(self) -> &'static str {
        match self {
            Self::Dataset => "dataset",
            Self::Model => "model",
        }
    }
}

/// Checks an `owner/name` repository id.
pub(crate) fn check_repo_id(repo: &str) -> Result<(), FetchError> {
    let ok = match repo.split_once('/') {
        Some((owner, name)) => {
            let part_ok = |p: &str| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                    && p != "."
                    && p != ".."
            };
            part_ok(owner) && part_ok(name)
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(FetchError::BadRepoId { repo: repo.into() })
    }
}

/// Where and how to reach the hub, resolved from params and the environment.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub repo: String,
    pub kind: RepoKind,
    pub endpoint: String,
    pub cache_dir: PathBuf,
    /// No network at all: everything comes from the cache.
    pub offline: bool,
}

impl HubSettings {
    pub fn repo_cache(&self) -> RepoCache {
        RepoCache::new(&self.cache_dir, &self.repo, self.kind)
    }

    /// Resolves `revision` to a commit sha. A commit sha is returned as is (no request);
    /// offline, a branch or tag is read from the cache's `refs/`; online, the hub is asked
    /// (`GET /api/<kind>s/<repo>/revision/<revision>`).
    pub fn resolve(&self, revision: &str) -> Result<ResolvedCommit, FetchError> {
        if is_commit_sha(revision) {
            return Ok(ResolvedCommit {
                requested: revision.into(),
                sha: revision.to_ascii_lowercase(),
            });
        }
        if self.offline {
            return match self.repo_cache().read_ref(revision)? {
                Some(sha) if is_commit_sha(&sha) => Ok(ResolvedCommit {
                    requested: revision.into(),
                    sha,
                }),
                _ => Err(FetchError::OfflineNotCached {
                    repo: self.repo.clone(),
                    what: format!("revision `{revision}`"),
                    cache_dir: self.cache_dir.clone(),
                }),
            };
        }
        let client = self.client()?;
        let sha = client
            .info_sha(revision)
            .map_err(|e| self.map_error(e, revision, None))?;
        Ok(ResolvedCommit {
            requested: revision.into(),
            sha,
        })
    }

    /// An `hf-hub` client for this repository. `HF_TOKEN` (or the token file) is picked up
    /// by `hf-hub` itself and sent only as an `Authorization` header, never logged.
    pub fn client(&self) -> Result<HubRepo, FetchError> {
        let client = HFClient::builder()
            .endpoint(self.endpoint.clone())
            .cache_dir(self.cache_dir.clone())
            .retry_max_attempts(2)
            .retry_base_delay(Duration::from_millis(200))
            .build_sync()
            .map_err(|e| FetchError::Client {
                endpoint: self.endpoint.clone(),
                message: e.to_string(),
            })?;
        let (owner, name) = self.repo.split_once('/').expect("repo ids are checked");
        Ok(match self.kind {
            RepoKind::Dataset => HubRepo::Dataset(client.dataset(owner, name)),
            RepoKind::Model => HubRepo::Model(client.model(owner, name)),
        })
    }

    /// Turns an `hf-hub` error into one that names the repository, revision and file.
    pub fn map_error(&self, err: HFError, revision: &str, path: Option<&str>) -> FetchError {
        let code = match &err {
            HFError::RepoNotFound { context, .. }
            | HFError::RevisionNotFound { context, .. }
            | HFError::EntryNotFound { context, .. } => {
                context.as_ref().and_then(|c| c.error_code.clone())
            }
            _ => None,
        };
        match err {
            HFError::RepoNotFound { .. } => self.repo_not_found(),
            HFError::RevisionNotFound { .. } | HFError::EntryNotFound { .. }
                if code.as_deref() == Some("RepoNotFound") =>
            {
                self.repo_not_found()
            }
            HFError::RevisionNotFound { .. } => FetchError::RevisionNotFound {
                repo: self.repo.clone(),
                kind: self.kind.singular(),
                revision: revision.into(),
                endpoint: self.endpoint.clone(),
            },
            HFError::EntryNotFound { path: entry, .. } => FetchError::FileNotFound {
                repo: self.repo.clone(),
                kind: self.kind.singular(),
                revision: revision.into(),
                path: path.map(str::to_owned).unwrap_or(entry),
            },
            HFError::AuthRequired { .. } | HFError::Forbidden { .. } => FetchError::AccessDenied {
                repo: self.repo.clone(),
                message: err.to_string(),
            },
            HFError::Request { ref source, .. } if source.is_connect() || source.is_timeout() => {
                FetchError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    message: err.to_string(),
                }
            }
            other => FetchError::Hub {
                repo: self.repo.clone(),
                path: path.map(str::to_owned),
                message: other.to_string(),
            },
        }
    }

    fn repo_not_found(&self) -> FetchError {
        FetchError::RepoNotFound {
            repo: self.repo.clone(),
            kind: self.kind.singular(),
            endpoint: self.endpoint.clone(),
        }
    }
}

/// `HF_HUB_OFFLINE` set to a true value (`1`, `true`, `yes`, `on`).
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// The endpoint from the param, else `HF_ENDPOINT`, else the public hub.
pub fn endpoint_from(param: Option<&str>) -> String {
    param
        .map(str::to_owned)
        .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A cache folder from the param (relative to `base_dir`), else the standard default.
pub fn cache_dir_from(param: Option<&str>, base_dir: &Path) -> PathBuf {
    match param {
        Some(dir) => base_dir.join(dir),
        None => super::cache::default_cache_dir(),
    }
}

/// A blocking `hf-hub` repository handle of either kind.
pub enum HubRepo {
    Dataset(hf_hub::HFRepositorySync<RepoTypeDataset>),
    Model(hf_hub::HFRepositorySync<RepoTypeModel>),
}

/// File facts from a `HEAD` on the resolve URL (at a commit sha, so they cannot move).
#[derive(Debug, Clone)]
pub struct RemoteFile {
    pub etag: String,
    pub size: u64,
}

macro_rules! each_kind {
    ($self:expr, $repo:ident => $body:expr) => {
        match $self {
            HubRepo::Dataset($repo) => $body,
            HubRepo::Model($repo) => $body,
        }
    };
}

impl HubRepo {
    /// The commit sha `revision` points at.
    pub fn info_sha(&self, revision: &str) -> Result<String, HFError> {
        let sha = match self {
            HubRepo::Dataset(r) => r.info().revision(revision).send()?.sha,
            HubRepo::Model(r) => r.info().revision(revision).send()?.sha,
        };
        sha.ok_or_else(|| {
            HFError::Other(format!(
                "the hub returned no commit sha for revision `{revision}`"
            ))
        })
    }

    /// Downloads `path` at commit `sha` into the cache (or finds it there); returns the
    /// snapshot path.
    pub fn download_to_cache(
        &self,
        path: &str,
        sha: &str,
        progress: hf_hub::progress::Progress,
    ) -> Result<PathBuf, HFError> {
        each_kind!(self, r => r
            .download_file()
            .filename(path)
            .revision(sha)
            .progress(progress)
            .send())
    }

    /// `HEAD` on the file: etag, size and commit.
    pub fn metadata(&self, path: &str, sha: &str) -> Result<RemoteFile, HFError> {
        let meta =
            each_kind!(self, r => r.get_file_metadata().filepath(path).revision(sha).send())?;
        Ok(RemoteFile {
            etag: meta.etag,
            size: meta.file_size,
        })
    }

    /// The bytes `range` of `path` at commit `sha` (an HTTP range request).
    pub fn range(
        &self,
        path: &str,
        sha: &str,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, HFError> {
        each_kind!(self, r => r
            .download_file_to_bytes()
            .filename(path)
            .revision(sha)
            .range(range)
            .send())
    }
}
