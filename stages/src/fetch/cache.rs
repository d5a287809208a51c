//! The Hugging Face hub cache layout on disk, shared with Python's `huggingface_hub`:
//! `<cache>/<datasets|models>--<owner>--<name>/{blobs/<etag>, refs/<revision>,
//! snapshots/<commit>/<path>}` where each snapshot entry is a relative symlink to its blob.
//! Also [`import_into_cache`], which places local files into that layout so that offline
//! runs (and Python tools with `HF_HUB_OFFLINE=1`) find them.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::hub::RepoKind;
use super::FetchError;

/// A commit a revision resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedCommit {
    /// What was asked for: a branch, tag or commit sha.
    pub requested: String,
    /// The 40-hex commit sha it points at.
    pub sha: String,
}

/// Whether `revision` is a full 40-hex commit sha (the hub's and hf-hub's rule).
pub fn is_commit_sha(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The default hub cache folder: `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`
/// (the same order as `huggingface_hub` and `hf-hub`).
pub fn default_cache_dir() -> PathBuf {
    for var in ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"] {
        if let Some(dir) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return PathBuf::from(dir);
        }
    }
    if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join("hub");
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("huggingface").join("hub");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home)
        .join(".cache")
        .join("huggingface")
        .join("hub")
}

/// One repository's folder inside the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    root: PathBuf,
}

impl RepoCache {
    pub fn new(cache_dir: &Path, repo: &str, kind: RepoKind) -> Self {
        let folder = std::iter::once(kind.plural())
            .chain(repo.split('/'))
            .collect::<Vec<_>>()
            .join("--");
        Self {
            root: cache_dir.join(folder),
        }
    }
    /// A repository path flattened into one file name (`a/b.txt` -> `a--b.txt`).
    pub fn safe_name(path_in_repo: &str) -> String {
        path_in_repo.replace('/', "--")
    }
    pub fn ref_path(&self, revision: &str) -> PathBuf {
        self.root.join("refs").join(revision)
    }
    pub fn blob_path(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(etag)
    }
    pub fn snapshot_path(&self, sha: &str, path_in_repo: &str) -> PathBuf {
        self.root.join("snapshots").join(sha).join(path_in_repo)
    }

    /// The commit sha a branch or tag points at in this cache, if recorded.
    pub fn read_ref(&self, revision: &str) -> Result<Option<String>, FetchError> {
        let path = self.ref_path(revision);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(FetchError::Io { path, source }),
        }
    }

    /// Records that `revision` points at `sha` (atomically, as `huggingface_hub` does).
    pub fn write_ref(&self, revision: &str, sha: &str) -> Result<(), FetchError> {
        let path = self.ref_path(revision);
        write_atomically(&path, sha.as_bytes())
    }

    /// The cached file of `path_in_repo` at commit `sha`: the blob behind the snapshot
    /// symlink, with its etag (the blob's file name). `None` when not cached.
    pub fn cached_file(&self, sha: &str, path_in_repo: &str) -> Option<(PathBuf, String)> {
        let snapshot = self.snapshot_path(sha, path_in_repo);
        let blob = std::fs::canonicalize(&snapshot).ok()?;
        if !blob.is_file() {
            return None;
        }
        let etag = match std::fs::read_link(&snapshot) {
            Ok(target) => target.file_name()?.to_string_lossy().into_owned(),
            // A copy instead of a symlink (Windows layout): no etag to recover.
            Err(_) => String::new(),
        };
        Some((blob, etag))
    }

    /// Links `snapshots/<sha>/<path_in_repo>` to `blobs/<etag>` with a relative symlink.
    pub fn link_snapshot(
        &self,
        sha: &str,
        path_in_repo: &str,
        etag: &str,
    ) -> Result<PathBuf, FetchError> {
        let pointer = self.snapshot_path(sha, path_in_repo);
        let parent = pointer.parent().expect("a snapshot path has a parent");
        std::fs::create_dir_all(parent).map_err(|source| FetchError::Io {
            path: parent.to_owned(),
            source,
        })?;
        // `snapshots/<sha>/<a>/<b>` -> `../../../blobs/<etag>`: one `..` per folder below the repo root.
        let depth = pointer
            .strip_prefix(&self.root)
            .expect("snapshot paths are inside the repo folder")
            .components()
            .count()
            - 1;
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(etag);
        let tmp = pointer.with_extension(format!("itera-link-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(|source| FetchError::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &pointer).map_err(|source| FetchError::Io {
            path: pointer.clone(),
            source,
        })?;
        Ok(pointer)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    let dir = path.parent().expect("target paths have a parent");
    std::fs::create_dir_all(dir).map_err(|source| FetchError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let io = |source| FetchError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp = shareable_temp_file(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// A temporary file in `dir` (renamed into place later) created with mode 0666 less the
/// process umask, like any other file: `tempfile`'s default 0600 would keep the other
/// users of a shared store or hub cache from reading it.
pub(crate) fn shareable_temp_file(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
}

/// Copies `src`'s bytes into `dest` (unlike `std::fs::copy`, which would also copy the
/// source's permissions).
pub(crate) fn copy_into(src: &Path, dest: &mut std::fs::File) -> std::io::Result<()> {
    std::io::copy(&mut std::fs::File::open(src)?, dest)?;
    dest.flush()
}

/// Streams a file through sha256; returns (hex digest, size).
pub(crate) fn sha256_file(path: &Path) -> Result<(String, u64), FetchError> {
    let io = |source| FetchError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Imports local files into the hub cache as `repo` (of `kind`) at `revision`, so that a
/// later `hf-fetch` with `offline = true` (or Python with `HF_HUB_OFFLINE=1`) finds them.
///
/// `files` pairs a path inside the repository with a local file. Each file is copied into
/// `blobs/<sha256>` (the etag the hub gives LFS files), linked from `snapshots/<commit>/`.
/// `revision` may be a 40-hex commit sha (used as is) or a branch/tag name; for a name, the
/// commit sha is derived from the imported content (the first 40 hex digits of a sha256 over
/// the sorted paths and blob digests, so importing the same files twice gives the same commit) and `refs/<revision>`
/// is pointed at it. Existing blobs are reused; nothing is published half-written (blobs
/// and refs are written to temporary files and renamed).
///
/// This is what `itera hub import` calls.
pub fn import_into_cache(
    repo: &str,
    kind: RepoKind,
    revision: &str,
    files: &[(String, PathBuf)],
    cache_dir: &Path,
) -> Result<ResolvedCommit, FetchError> {
    super::hub::check_repo_id(repo)?;
    if files.is_empty() {
        return Err(FetchError::NothingToImport);
    }
    let cache = RepoCache::new(cache_dir, repo, kind);
    let mut imported: Vec<(String, String)> = Vec::with_capacity(files.len());
    for (path_in_repo, local) in files {
        super::check_path_in_repo(path_in_repo).map_err(|message| FetchError::BadPathInRepo {
            path: path_in_repo.clone(),
            message,
        })?;
        let (digest, _) = sha256_file(local)?;
        let blob = cache.blob_path(&digest);
        if !blob.is_file() {
            let dir = blob.parent().expect("blob paths have a parent");
            std::fs::create_dir_all(dir).map_err(|source| FetchError::Io {
                path: dir.to_owned(),
                source,
            })?;
            let io = |source| FetchError::Io {
                path: blob.clone(),
                source,
            };
            let mut tmp = shareable_temp_file(dir).map_err(io)?;
            copy_into(local, tmp.as_file_mut()).map_err(|source| FetchError::Io {
                path: local.clone(),
                source,
            })?;
            tmp.persist(&blob).map_err(|e| io(e.error))?;
        }
        imported.push((path_in_repo.clone(), digest));
    }
    let sha = if is_commit_sha(revision) {
        revision.to_ascii_lowercase()
    } else {
        let mut sorted = imported.clone();
        sorted.sort();
        let mut hasher = Sha256::new();
        for (path, digest) in &sorted {
            hasher.update(path.as_bytes());
            hasher.update([0]);
            hasher.update(digest.as_bytes());
            hasher.update([b'\n']);
        }
        // 40 hex digits, like a git commit id (the content digest truncated).
        hex(&hasher.finalize()[..20])
    };
    for (path, digest) in &imported {
        cache.link_snapshot(&sha, path, digest)?;
    }
    if !is_commit_sha(revision) {
        cache.write_ref(revision, &sha)?;
    }
    Ok(ResolvedCommit {
        requested: revision.to_owned(),
        sha,
    })
}
