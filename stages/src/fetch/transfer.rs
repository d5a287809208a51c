//! Moving one file's bytes: a whole file through the hub cache (then hard-linked or copied
//! into the artifact), or a prefix through HTTP range requests into the stage's work folder
//! (never into the hub cache: a prefix is not the blob its etag names), cut after the last
//! complete story. Interrupted transfers are retried; nothing partial reaches the artifact.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::progress::{DownloadEvent, ProgressEvent as HubEvent, ProgressHandler};
use hf_hub::HFError;
use itera_engine::stage::Progress;
use serde::{Deserialize, Serialize};

use super::cache::{copy_into, sha256_file, shareable_temp_file, RepoCache};
use super::hub::{HubRepo, HubSettings};
use super::FetchError;

/// How many times a transfer is tried before giving up.
pub const ATTEMPTS: u32 = 3;
/// Range requests for prefixes fetch this many bytes each (resumable units).
const RANGE_CHUNK: u64 = 8 << 20;
/// The story separator line of TinyStories-format text.
pub const STORY_SEPARATOR: &[u8] = b"<|endoftext|>";

/// What `provenance.json` says about one file: only what the stage's key determines (the
/// commit and the params), so fetching the same key again, online, offline or from the
/// cache, gives the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProvenance {
    /// Path inside the repository.
    pub path_in_repo: String,
    /// Bytes in the artifact.
    pub size: u64,
    /// sha256 of the bytes in the artifact.
    pub sha256: String,
    /// The hub's etag of the whole file (for LFS files, the sha256 of the whole file).
    pub etag: String,
    /// True when the artifact holds only a prefix of the file (`max_bytes`).
    pub prefix: bool,
}

/// One fetched file: its provenance, and how this particular fetch went (for the stage
/// log, never the artifact).
#[derive(Debug, Clone)]
pub struct Fetched {
    pub record: FileProvenance,
    /// Where the bytes came from: `network`, `hub-cache` (no request needed) or `work-dir`
    /// (a prefix resumed from an interrupted run).
    pub source: &'static str,
    /// Size of the whole file, when known.
    pub remote_size: Option<u64>,
}

/// Bridges `hf-hub` download events to the stage's byte progress.
struct ByteProgress(Progress);
impl ProgressHandler for ByteProgress {
    fn on_progress(&self, event: &HubEvent) {
        if let HubEvent::Download(DownloadEvent::Progress { files }) = event {
            if let Some(f) = files.last() {
                self.0.set_position(f.bytes_completed);
            }
        }
    }
}

/// Retry transient failures: transport errors (connection refused, reset or dropped
/// mid-body), IO errors and 5xx answers. 404s, auth errors and the like are final.
fn retryable(err: &HFError) -> bool {
    match err {
        HFError::Request { .. } | HFError::Io(_) => true,
        HFError::Http { context } => context.status.is_server_error(),
        _ => false,
    }
}

fn with_retries<T>(
    what: &str,
    progress: &Progress,
    mut op: impl FnMut() -> Result<T, HFError>,
) -> Result<T, (HFError, u32)> {
    let mut attempt = 1;
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                progress.message(format!("{what}: attempt {attempt} failed ({e}); retrying"));
                std::thread::sleep(Duration::from_millis(250 * u64::from(attempt)));
                attempt += 1;
            }
            Err(e) => return Err((e, attempt)),
        }
    }
}

/// Fetches the whole of `path_in_repo` at `sha` into the hub cache (unless already there,
/// or `offline`), then places it at `dest`.
pub fn fetch_whole(
    hub: &HubSettings,
    client: Option<&HubRepo>,
    path_in_repo: &str,
    sha: &str,
    dest: &Path,
    progress: &Progress,
) -> Result<Fetched, FetchError> {
    let cache = hub.repo_cache();
    let (blob, etag, source) = match cache.cached_file(sha, path_in_repo) {
        Some((blob, etag)) => (blob, etag, "hub-cache"),
        None => {
            let Some(client) = client else {
                return Err(FetchError::OfflineNotCached {
                    repo: hub.repo.clone(),
                    what: format!("file `{path_in_repo}` at commit {sha}"),
                    cache_dir: hub.cache_dir.clone(),
                });
            };
            progress.start(&format!("download {path_in_repo}"), None, "bytes");
            let handler = hf_hub::progress::Progress::new(ByteProgress(progress.clone()));
            with_retries(path_in_repo, progress, || {
                client.download_to_cache(path_in_repo, sha, handler.clone())
            })
            .map_err(|(e, attempts)| download_error(hub, e, attempts, sha, path_in_repo))?;
            let (blob, etag) =
                cache
                    .cached_file(sha, path_in_repo)
                    .ok_or_else(|| FetchError::Hub {
                        repo: hub.repo.clone(),
                        path: Some(path_in_repo.into()),
                        message: "hf-hub reported success but the file is not in the cache".into(),
                    })?;
            (blob, etag, "network")
        }
    };
    place(&blob, dest)?;
    let (sha256, size) = sha256_file(dest)?;
    if etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit()) && etag != sha256 {
        // LFS etags are the content's sha256: a mismatch means a damaged cache blob.
        let _ = std::fs::remove_file(dest);
        return Err(FetchError::CorruptBlob {
            blob,
            etag,
            actual: sha256,
        });
    }
    Ok(Fetched {
        record: FileProvenance {
            path_in_repo: path_in_repo.into(),
            size,
            sha256,
            etag,
            prefix: false,
        },
        source,
        remote_size: Some(size),
    })
}

/// Fetches at most `max_bytes` of `path_in_repo`, cut after the last story separator line,
/// into `dest`. A whole file already in the hub cache is cut locally without a request; a
/// file no larger than `max_bytes` is fetched whole (through the cache). Otherwise the
/// prefix is downloaded with range requests into `work_dir` (resuming what an interrupted
/// run left there) and then cut.
#[allow(clippy::too_many_arguments)]
pub fn fetch_prefix(
    hub: &HubSettings,
    client: Option<&HubRepo>,
    path_in_repo: &str,
    sha: &str,
    max_bytes: u64,
    dest: &Path,
    work_dir: &Path,
    progress: &Progress,
) -> Result<Fetched, FetchError> {
    let cache = hub.repo_cache();
    if let Some((blob, etag)) = cache.cached_file(sha, path_in_repo) {
        let remote_size = file_len(&blob)?;
        if remote_size <= max_bytes {
            return fetch_whole(hub, client, path_in_repo, sha, dest, progress);
        }
        cut_prefix(&blob, max_bytes, dest, path_in_repo)?;
        return prefix_provenance(path_in_repo, dest, etag, Some(remote_size), "hub-cache");
    }
    let Some(client) = client else {
        return Err(FetchError::OfflineNotCached {
            repo: hub.repo.clone(),
            what: format!("file `{path_in_repo}` at commit {sha}"),
            cache_dir: hub.cache_dir.clone(),
        });
    };
    let remote = with_retries(path_in_repo, progress, || {
        client.metadata(path_in_repo, sha)
    })
    .map_err(|(e, attempts)| download_error(hub, e, attempts, sha, path_in_repo))?;
    if remote.size > 0 && remote.size <= max_bytes {
        return fetch_whole(hub, Some(client), path_in_repo, sha, dest, progress);
    }
    let want = if remote.size > 0 {
        max_bytes.min(remote.size)
    } else {
        max_bytes
    };
    // Keyed by etag: a resumed part is only ever extended with bytes of the same file.
    let part = work_dir.join("prefix").join(format!(
        "{}.{}.part",
        RepoCache::safe_name(path_in_repo),
        remote.etag
    ));
    let dir = part.parent().expect("part paths have a parent");
    std::fs::create_dir_all(dir).map_err(|source| FetchError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut have = if part.exists() { file_len(&part)? } else { 0 };
    let source = if have > 0 { "work-dir" } else { "network" };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .map_err(|source| FetchError::Io {
            path: part.clone(),
            source,
        })?;
    progress.start(
        &format!("download {path_in_repo} (first {want} bytes)"),
        Some(want),
        "bytes",
    );
    progress.set_position(have.min(want));
    while have < want {
        let end = (have + RANGE_CHUNK).min(want);
        let bytes = with_retries(path_in_repo, progress, || {
            client.range(path_in_repo, sha, have..end)
        })
        .map_err(|(e, attempts)| download_error(hub, e, attempts, sha, path_in_repo))?;
        if bytes.is_empty() || bytes.len() as u64 > end - have {
            return Err(FetchError::Hub {
                repo: hub.repo.clone(),
                path: Some(path_in_repo.into()),
                message: format!(
                    "asked for bytes {have}..{end} and got {} bytes; the server does not honour range requests",
                    bytes.len()
                ),
            });
        }
        file.write_all(&bytes).map_err(|source| FetchError::Io {
            path: part.clone(),
            source,
        })?;
        have += bytes.len() as u64;
        progress.set_position(have);
    }
    file.sync_all().map_err(|source| FetchError::Io {
        path: part.clone(),
        source,
    })?;
    drop(file);
    cut_prefix(&part, want, dest, path_in_repo)?;
    let remote_size = (remote.size > 0).then_some(remote.size);
    prefix_provenance(path_in_repo, dest, remote.etag, remote_size, source)
}

fn prefix_provenance(
    path_in_repo: &str,
    dest: &Path,
    etag: String,
    remote_size: Option<u64>,
    source: &'static str,
) -> Result<Fetched, FetchError> {
    let (sha256, size) = sha256_file(dest)?;
    Ok(Fetched {
        record: FileProvenance {
            path_in_repo: path_in_repo.into(),
            size,
            sha256,
            etag,
            prefix: true,
        },
        source,
        remote_size,
    })
}

/// Copies the first `max_bytes` of `src`, cut right after the last story separator line
/// (the separator and its line break included), to `dest`.
pub fn cut_prefix(
    src: &Path,
    max_bytes: u64,
    dest: &Path,
    path_in_repo: &str,
) -> Result<(), FetchError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| FetchError::Io { path, source }
    };
    let file = std::fs::File::open(src).map_err(io(src))?;
    // The prefix is read once into memory: `max_bytes` bounds it.
    let mut head = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, max_bytes), &mut head)
        .map_err(io(src))?;
    let cut = story_cut(&head).ok_or_else(|| FetchError::NoCompleteStory {
        path: path_in_repo.into(),
        max_bytes,
    })?;
    let dir = dest.parent().expect("artifact paths have a parent");
    let mut tmp = shareable_temp_file(dir).map_err(io(dir))?;
    tmp.write_all(&head[..cut]).map_err(io(dest))?;
    tmp.persist(dest).map_err(|e| FetchError::Io {
        path: dest.to_owned(),
        source: e.error,
    })?;
    Ok(())
}

/// The length of `text` up to and including the last story separator and the line break
/// after it; `None` if there is no separator.
pub fn story_cut(text: &[u8]) -> Option<usize> {
    let at = memchr::memmem::rfind(text, STORY_SEPARATOR)?;
    let mut end = at + STORY_SEPARATOR.len();
    if text.get(end) == Some(&b'\r') {
        end += 1;
    }
    if text.get(end) == Some(&b'\n') {
        end += 1;
    }
    Some(end)
}

/// Hard-links `blob` to `dest`, or copies it when linking is impossible (another
/// filesystem). The copy goes through a temporary file so `dest` is never half-written.
fn place(blob: &Path, dest: &Path) -> Result<(), FetchError> {
    let _ = std::fs::remove_file(dest);
    if std::fs::hard_link(blob, dest).is_ok() {
        return Ok(());
    }
    let dir = dest.parent().expect("artifact paths have a parent");
    let io = |path: PathBuf| move |source| FetchError::Io { path, source };
    let mut tmp = shareable_temp_file(dir).map_err(io(dir.to_owned()))?;
    copy_into(blob, tmp.as_file_mut()).map_err(io(blob.to_owned()))?;
    tmp.persist(dest).map_err(|e| FetchError::Io {
        path: dest.to_owned(),
        source: e.error,
    })?;
    Ok(())
}

fn file_len(path: &Path) -> Result<u64, FetchError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|source| FetchError::Io {
            path: path.to_owned(),
            source,
        })
}

fn download_error(
    hub: &HubSettings,
    err: HFError,
    attempts: u32,
    sha: &str,
    path: &str,
) -> FetchError {
    if retryable(&err) {
        if let HFError::Request { source, .. } = &err {
            if source.is_connect() {
                return hub.map_error(err, sha, Some(path));
            }
        }
        return FetchError::Interrupted {
            repo: hub.repo.clone(),
            path: path.into(),
            attempts,
            message: err.to_string(),
        };
    }
    hub.map_error(err, sha, Some(path))
}

pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
