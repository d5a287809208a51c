//! Store entries: `store/<key>/{out/, meta.json}`. [`Meta`] describes a published result;
//! [`check`] decides whether an entry on disk is a complete, intact result (a hit is only
//! declared after it); [`Claimed`] is the only way to create an entry: it holds the key's
//! lock and a private staging folder, and [`Claimed::publish`] digests the output, writes
//! `meta.json` last (fsynced) and renames the staging folder into place in one step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::digest::{self, Digest, Manifest, TreeChange};
use super::key::{CacheKey, KeyParts};
use super::lock::KeyLock;
use super::StoreError;
use crate::fs::{self, Durability, FsError, IoContext};

/// The marker `itera verify` writes into an entry whose files changed: a marked entry is
/// never a hit (the next run recomputes it; `gc` removes it).
pub const QUARANTINE_MARK: &str = "QUARANTINED";

/// Bump when `meta.json` changes shape.
pub const META_FORMAT: u32 = 1;

/// `store/<key>/meta.json`: what a result is and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    pub key: CacheKey,
    /// What the key was computed from (for `itera explain`).
    pub parts: KeyParts,
    /// Digest of `out/`.
    pub digest: Digest,
    pub kind: String,
    /// The stage that produced it (informational: names are not part of the key).
    pub stage: String,
    /// The run that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    pub host: String,
    pub started: String,
    pub finished: String,
    pub duration_ms: u64,
    /// What of the machine could change the bits (`StageKind::environment`), e.g. the
    /// kernels' instruction set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Every file of `out/` with its size and hash.
    pub manifest: Manifest,
}

/// A published, checked result.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    pub meta: Meta,
}

impl Entry {
    /// The artifact root.
    pub fn out_dir(&self) -> PathBuf {
        self.dir.join("out")
    }
}

/// Why an entry on disk is not a usable result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryProblem {
    /// `meta.json` is missing or unreadable: never a result.
    NoMeta(String),
    /// `meta.json` belongs to another key.
    WrongKey { found: String },
    /// The files no longer match the manifest.
    Changed(Vec<TreeChange>),
    /// `itera verify` found its files changed and marked it (the marker's text).
    Quarantined(String),
}

impl std::fmt::Display for EntryProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoMeta(why) => write!(f, "meta.json: {why}"),
            Self::WrongKey { found } => write!(f, "meta.json is for key {found}"),
            Self::Quarantined(why) => {
                write!(f, "quarantined by `itera verify`: {}", why.trim_end())
            }
            Self::Changed(changes) => {
                let shown: Vec<String> = changes.iter().take(5).map(|c| c.to_string()).collect();
                write!(f, "{}", shown.join("; "))?;
                if changes.len() > 5 {
                    write!(f, "; and {} more", changes.len() - 5)?;
                }
                Ok(())
            }
        }
    }
}

/// Reads `meta.json` of the entry at `dir`.
pub fn read_meta(dir: &Path) -> Result<Meta, EntryProblem> {
    let path = dir.join("meta.json");
    let text = std::fs::read_to_string(&path).map_err(|e| EntryProblem::NoMeta(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| EntryProblem::NoMeta(e.to_string()))
}

/// Checks the entry at `dir` cheaply: meta present and for `key`, and the files' structure,
/// kinds and sizes exactly as in the manifest (contents are not re-hashed).
pub fn check(dir: &Path, key: &CacheKey) -> Result<Entry, EntryProblem> {
    if let Some(why) = quarantined(dir) {
        return Err(EntryProblem::Quarantined(why));
    }
    let meta = read_meta(dir)?;
    if &meta.key != key {
        return Err(EntryProblem::WrongKey {
            found: meta.key.to_string(),
        });
    }
    let on_disk =
        digest::scan(&dir.join("out")).map_err(|e| EntryProblem::Changed(vec![missing_root(e)]))?;
    let changes = digest::compare(&meta.manifest, &on_disk, false);
    if !changes.is_empty() {
        return Err(EntryProblem::Changed(changes));
    }
    Ok(Entry {
        dir: dir.to_owned(),
        meta,
    })
}

fn missing_root(e: digest::DigestError) -> TreeChange {
    TreeChange::Modified {
        path: format!("out/ ({e})"),
        what: "unreadable",
    }
}

/// The quarantine marker's text, when the entry at `dir` is marked.
pub fn quarantined(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(QUARANTINE_MARK)).ok()
}

/// Marks the entry at `dir` as changed on disk: lookups refuse it from now on.
pub fn quarantine(dir: &Path, why: &str) -> Result<(), FsError> {
    fs::write_atomic(
        &dir.join(QUARANTINE_MARK),
        why.as_bytes(),
        Durability::Fsync,
    )
}

/// Re-hashes every file of the entry at `dir` and compares with its manifest.
pub fn verify(dir: &Path) -> Result<Vec<TreeChange>, EntryProblem> {
    let meta = read_meta(dir)?;
    let (digest, manifest) = digest::digest_tree(&dir.join("out"))
        .map_err(|e| EntryProblem::Changed(vec![missing_root(e)]))?;
    let mut changes = digest::compare(&meta.manifest, &manifest, true);
    if changes.is_empty() && digest != meta.digest {
        changes.push(TreeChange::Modified {
            path: String::new(),
            what: "digest differs from meta.json",
        });
    }
    Ok(changes)
}

/// What to do with a finished result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishMode {
    /// Move it into the store (replacing an entry of the same key, for `--force`).
    Publish,
    /// Only compute its digest, then throw it away (`rerun --verify`).
    Discard,
}

/// Facts about a finished stage recorded in `meta.json`.
#[derive(Debug, Clone)]
pub struct PublishInfo {
    pub parts: KeyParts,
    pub stage: String,
    pub run: Option<String>,
    pub started: SystemTime,
    pub finished: SystemTime,
    /// See [`Meta::environment`].
    pub environment: BTreeMap<String, String>,
}

/// A key being computed: holds the key's lock and a private staging folder in `tmp/`.
/// Dropping it without publishing removes the staging folder (the work dir stays, so a
/// re-run can resume).
#[derive(Debug)]
pub struct Claimed {
    pub(super) key: CacheKey,
    pub(super) staging: PathBuf,
    pub(super) entry_dir: PathBuf,
    pub(super) work_dir: PathBuf,
    /// Where a replaced version goes (`--force`): readers may still be using it.
    pub(super) retired: PathBuf,
    pub(super) lock: KeyLock,
}

/// What publishing produced.
#[derive(Debug, Clone)]
pub struct Published {
    pub digest: Digest,
    pub manifest: Manifest,
    /// The store entry, unless the result was discarded.
    pub entry: Option<Entry>,
}

impl Claimed {
    pub fn key(&self) -> &CacheKey {
        &self.key
    }
    /// Empty folder for the stage to write its artifact into.
    pub fn out_dir(&self) -> PathBuf {
        self.staging.join("out")
    }
    /// Persistent scratch for this key (created on demand); removed after publishing.
    pub fn work_dir(&self) -> Result<PathBuf, FsError> {
        fs::create_dir_all(&self.work_dir)?;
        Ok(self.work_dir.clone())
    }

    /// Digests the output and publishes it (or discards it) according to `mode`.
    pub fn publish(self, info: PublishInfo, mode: PublishMode) -> Result<Published, StoreError> {
        let out = self.out_dir();
        let (digest, manifest) = digest::digest_tree(&out)?;
        let escaping = super::links::escaping(&out, &manifest);
        if !escaping.is_empty() {
            return Err(StoreError::EscapingLinks {
                stage: info.stage,
                links: escaping,
            });
        }
        if mode == PublishMode::Discard {
            fs::remove_dir_all_if_exists(&self.work_dir)?;
            return Ok(Published {
                digest,
                manifest,
                entry: None,
            });
        }
        let duration_ms = info
            .finished
            .duration_since(info.started)
            .unwrap_or_default()
            .as_millis() as u64;
        let meta = Meta {
            format: META_FORMAT,
            key: self.key.clone(),
            kind: info.parts.kind.clone(),
            parts: info.parts,
            digest: digest.clone(),
            stage: info.stage,
            run: info.run,
            host: crate::host::hostname(),
            started: crate::host::timestamp(info.started),
            finished: crate::host::timestamp(info.finished),
            duration_ms,
            environment: info.environment,
            manifest: manifest.clone(),
        };
        let json = serde_json::to_vec_pretty(&meta).expect("meta serializes");
        fs::write_atomic(&self.staging.join("meta.json"), &json, Durability::Fsync)?;
        fs::sync_dir(&self.staging)?;
        if self.entry_dir.exists() {
            // `--force` recomputed a key that is already stored. Readers hold no lock, so
            // the old version is never deleted here: the new one takes its place in one
            // atomic exchange, and the old one moves to `retired/`, which `gc` empties
            // once no live run leases the key.
            replace_entry(&self.staging, &self.entry_dir, &self.retired)?;
        } else {
            std::fs::rename(&self.staging, &self.entry_dir).at("publish", &self.entry_dir)?;
        }
        if let Some(parent) = self.entry_dir.parent() {
            fs::sync_dir(parent)?;
        }
        fs::remove_dir_all_if_exists(&self.work_dir)?;
        Ok(Published {
            digest,
            manifest,
            entry: Some(Entry {
                dir: self.entry_dir.clone(),
                meta,
            }),
        })
    }
}

/// Puts `fresh` at `entry` and the version that was there at `retired`. On Linux the
/// swap is one `renameat2(RENAME_EXCHANGE)`, so `entry` always names a complete version;
/// elsewhere (or on a filesystem without it) two renames leave a moment with no entry,
/// which a concurrent lookup sees as a miss and handles by waiting for the key's lock.
fn replace_entry(fresh: &Path, entry: &Path, retired: &Path) -> Result<(), FsError> {
    if let Some(dir) = retired.parent() {
        fs::create_dir_all(dir)?;
    }
    if exchange(fresh, entry).is_ok() {
        // `fresh` now names the old version.
        return std::fs::rename(fresh, retired).at("retire the replaced entry", fresh);
    }
    std::fs::rename(entry, retired).at("move aside", entry)?;
    std::fs::rename(fresh, entry).at("publish", entry)
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths; renameat2 touches nothing else.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

impl Drop for Claimed {
    fn drop(&mut self) {
        // Published: the staging folder was renamed away and this is a no-op. Otherwise it
        // holds a partial or discarded result, which must not linger.
        let _ = fs::remove_dir_all_if_exists(&self.staging);
        // A work dir the stage never used is no resumable state: `remove_dir` only
        // removes it when empty.
        let _ = std::fs::remove_dir(&self.work_dir);
        let _ = &self.lock;
    }
}
