//! Content digests: the only hashing code in Itera. An artifact (a folder, or a single
//! file) is digested as a blake3 Merkle hash over its sorted relative paths, entry kinds,
//! executable bits and file contents, never mtimes or owners. Files are hashed in parallel
//! (rayon); large files are memory-mapped and hashed with blake3's multi-threaded
//! `update_mmap_rayon`, so no file is ever read whole into memory.
//!
//! The [`Manifest`] lists every entry with its size and hash: `meta.json` keeps it, so a
//! store hit is checked cheaply (structure and sizes) and `itera verify` can say exactly
//! which file changed.

use std::fmt;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::fs::{FsError, IoContext};

/// Files below this size are read into a buffer; larger ones are memory-mapped and hashed
/// on several threads.
const MMAP_THRESHOLD: u64 = 256 * 1024;

/// A blake3 digest, as 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Digest(String);

impl Digest {
    /// The digest of some bytes.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(blake3::hash(bytes).to_hex().to_string())
    }
    /// Parses 64 hex characters.
    pub fn parse(hex: &str) -> Option<Self> {
        blake3::Hash::from_hex(hex)
            .ok()
            .map(|h| Self(h.to_hex().to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first 12 characters, for display.
    pub fn short(&self) -> &str {
        &self.0[..12.min(self.0.len())]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an entry of an artifact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One entry of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Path relative to the artifact root, `/`-separated; `""` when the root is a file.
    pub path: String,
    pub kind: EntryKind,
    /// Bytes (files), target length (symlinks), 0 (folders).
    pub size: u64,
    /// Content hash (files) or hash of the link target (symlinks); empty for folders.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
}

/// Every entry of an artifact, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Manifest(pub Vec<ManifestEntry>);

impl Manifest {
    /// The Merkle root over the entries.
    pub fn root(&self) -> Digest {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"itera-tree-v1\0");
        for e in &self.0 {
            let tag: u8 = match e.kind {
                EntryKind::File => b'f',
                EntryKind::Dir => b'd',
                EntryKind::Symlink => b'l',
            };
            hasher.update(&[tag, u8::from(e.executable)]);
            hasher.update(&(e.path.len() as u64).to_le_bytes());
            hasher.update(e.path.as_bytes());
            hasher.update(&(e.hash.len() as u64).to_le_bytes());
            hasher.update(e.hash.as_bytes());
        }
        Digest(hasher.finalize().to_hex().to_string())
    }
    /// The manifest without the entries at or below any of `paths` (relative, `/`-separated).
    pub fn without(&self, paths: &[String]) -> Manifest {
        let excluded = |p: &str| {
            paths.iter().any(|x| {
                let x = x.trim_matches('/');
                p == x || p.strip_prefix(x).is_some_and(|rest| rest.starts_with('/'))
            })
        };
        Manifest(
            self.0
                .iter()
                .filter(|e| !excluded(&e.path))
                .cloned()
                .collect(),
        )
    }
    /// Total bytes of the files.
    pub fn total_size(&self) -> u64 {
        self.0
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| e.size)
            .sum()
    }
}

/// Why an artifact could not be digested.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// Reading the tree failed.
    #[error(transparent)]
    Io(#[from] FsError),
    /// A file name is not UTF-8, so it has no portable place in the manifest.
    #[error("`{}` has a file name that is not UTF-8; rename it", path.display())]
    NonUtf8Name { path: std::path::PathBuf },
    /// Sockets, fifos and devices cannot be stored.
    #[error("`{}` is neither a file, a folder nor a symlink", path.display())]
    UnsupportedFileType { path: std::path::PathBuf },
}

/// Lists the entries of `root` (a folder or a single file) without hashing: paths, kinds,
/// sizes and executable bits. Hashes are left empty.
pub fn scan(root: &Path) -> Result<Manifest, DigestError> {
    let mut entries = Vec::new();
    let meta = std::fs::symlink_metadata(root).at("read metadata of", root)?;
    if meta.is_dir() {
        scan_dir(root, "", &mut entries)?;
    } else {
        entries.push(entry_for(root, String::new(), &meta)?);
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Manifest(entries))
}

fn scan_dir(dir: &Path, prefix: &str, out: &mut Vec<ManifestEntry>) -> Result<(), DigestError> {
    for item in std::fs::read_dir(dir).at("list", dir)? {
        let item = item.at("list", dir)?;
        let path = item.path();
        let name = item
            .file_name()
            .into_string()
            .map_err(|_| DigestError::NonUtf8Name { path: path.clone() })?;
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = std::fs::symlink_metadata(&path).at("read metadata of", &path)?;
        let entry = entry_for(&path, rel.clone(), &meta)?;
        let is_dir = entry.kind == EntryKind::Dir;
        out.push(entry);
        if is_dir {
            scan_dir(&path, &rel, out)?;
        }
    }
    Ok(())
}

fn entry_for(
    path: &Path,
    rel: String,
    meta: &std::fs::Metadata,
) -> Result<ManifestEntry, DigestError> {
    use std::os::unix::fs::PermissionsExt;
    let ft = meta.file_type();
    let (kind, size, executable) = if ft.is_symlink() {
        let target = std::fs::read_link(path).at("read symlink", path)?;
        (EntryKind::Symlink, target.as_os_str().len() as u64, false)
    } else if ft.is_dir() {
        (EntryKind::Dir, 0, false)
    } else if ft.is_file() {
        (
            EntryKind::File,
            meta.len(),
            meta.permissions().mode() & 0o111 != 0,
        )
    } else {
        return Err(DigestError::UnsupportedFileType {
            path: path.to_owned(),
        });
    };
    Ok(ManifestEntry {
        path: rel,
        kind,
        size,
        hash: String::new(),
        executable,
    })
}

/// Digests `root` (a folder or a single file): its Merkle root and full manifest.
pub fn digest_tree(root: &Path) -> Result<(Digest, Manifest), DigestError> {
    let mut manifest = scan(root)?;
    manifest
        .0
        .par_iter_mut()
        .try_for_each(|e| -> Result<(), DigestError> {
            let path = if e.path.is_empty() {
                root.to_owned()
            } else {
                root.join(&e.path)
            };
            e.hash = match e.kind {
                EntryKind::File => hash_file(&path, e.size)?,
                EntryKind::Symlink => {
                    let target = std::fs::read_link(&path).at("read symlink", &path)?;
                    blake3::hash(target.as_os_str().as_encoded_bytes())
                        .to_hex()
                        .to_string()
                }
                EntryKind::Dir => String::new(),
            };
            Ok(())
        })?;
    Ok((manifest.root(), manifest))
}

/// Hashes one file's content; `size` picks the strategy.
fn hash_file(path: &Path, size: u64) -> Result<String, FsError> {
    let mut hasher = blake3::Hasher::new();
    if size < MMAP_THRESHOLD {
        let bytes = std::fs::read(path).at("read", path)?;
        hasher.update(&bytes);
    } else {
        hasher.update_mmap_rayon(path).at("read", path)?;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// How an artifact on disk differs from its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeChange {
    /// Listed but gone.
    Missing { path: String },
    /// Present but not listed.
    Added { path: String },
    /// Kind, size or content differ.
    Modified { path: String, what: &'static str },
}

impl fmt::Display for TreeChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |p: &str| {
            if p.is_empty() {
                ".".to_owned()
            } else {
                p.to_owned()
            }
        };
        match self {
            Self::Missing { path } => write!(f, "{} is missing", shown(path)),
            Self::Added { path } => write!(f, "{} was added", shown(path)),
            Self::Modified { path, what } => write!(f, "{} changed ({what})", shown(path)),
        }
    }
}

/// Compares two manifests entry by entry. `with_hashes = false` compares structure and
/// sizes only (the cheap check of a store hit).
pub fn compare(expected: &Manifest, actual: &Manifest, with_hashes: bool) -> Vec<TreeChange> {
    use std::collections::BTreeMap;
    let exp: BTreeMap<&str, &ManifestEntry> =
        expected.0.iter().map(|e| (e.path.as_str(), e)).collect();
    let act: BTreeMap<&str, &ManifestEntry> =
        actual.0.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut changes = Vec::new();
    for (path, e) in &exp {
        match act.get(path) {
            None => changes.push(TreeChange::Missing {
                path: (*path).to_owned(),
            }),
            Some(a) => {
                let what = if a.kind != e.kind {
                    Some("kind")
                } else if a.size != e.size {
                    Some("size")
                } else if a.executable != e.executable {
                    Some("executable bit")
                } else if with_hashes && a.hash != e.hash {
                    Some("content")
                } else {
                    None
                };
                if let Some(what) = what {
                    changes.push(TreeChange::Modified {
                        path: (*path).to_owned(),
                        what,
                    });
                }
            }
        }
    }
    for path in act.keys() {
        if !exp.contains_key(path) {
            changes.push(TreeChange::Added {
                path: (*path).to_owned(),
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fs;

    #[test]
    fn without_drops_only_the_named_files_and_folders() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write_tree(
            a.path(),
            &[
                ("w.bin", b"same"),
                ("eval.json", b"1"),
                ("m/t.txt", b"x"),
                ("mx.txt", b"y"),
            ],
        );
        write_tree(
            b.path(),
            &[
                ("w.bin", b"same"),
                ("eval.json", b"2"),
                ("m/t.txt", b"z"),
                ("mx.txt", b"y"),
            ],
        );
        let (da, ma) = digest_tree(a.path()).unwrap();
        let (db, mb) = digest_tree(b.path()).unwrap();
        assert_ne!(da, db);
        let skip = ["eval.json".to_owned(), "m/".to_owned()];
        assert_eq!(ma.without(&skip).root(), mb.without(&skip).root());
        // `m` must not swallow the sibling `mx.txt`, and a real difference still shows.
        assert!(ma.without(&skip).0.iter().any(|e| e.path == "mx.txt"));
        write_tree(b.path(), &[("w.bin", b"other")]);
        let (_, mb) = digest_tree(b.path()).unwrap();
        assert_ne!(ma.without(&skip).root(), mb.without(&skip).root());
    }

    fn write_tree(root: &Path, files: &[(&str, &[u8])]) {
        for (path, content) in files {
            let p = root.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
    }

    #[test]
    fn digest_depends_on_paths_and_contents_only() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write_tree(a.path(), &[("x.txt", b"1"), ("d/y.bin", b"22")]);
        // Created in the other order, later: mtimes and creation order differ.
        write_tree(b.path(), &[("d/y.bin", b"22"), ("x.txt", b"1")]);
        let (da, ma) = digest_tree(a.path()).unwrap();
        let (db, _) = digest_tree(b.path()).unwrap();
        assert_eq!(da, db);
        assert_eq!(
            ma.0.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["d", "d/y.bin", "x.txt"]
        );

        fs::write(b.path().join("x.txt"), b"2").unwrap();
        assert_ne!(digest_tree(b.path()).unwrap().0, da, "content change");
        fs::write(b.path().join("x.txt"), b"1").unwrap();
        fs::rename(b.path().join("x.txt"), b.path().join("z.txt")).unwrap();
        assert_ne!(digest_tree(b.path()).unwrap().0, da, "rename");
        fs::rename(b.path().join("z.txt"), b.path().join("x.txt")).unwrap();
        fs::create_dir(b.path().join("empty")).unwrap();
        assert_ne!(digest_tree(b.path()).unwrap().0, da, "empty folder");
    }

    #[test]
    fn large_files_hash_like_small_ones() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..3 * MMAP_THRESHOLD as usize)
            .map(|i| (i % 251) as u8)
            .collect();
        fs::write(dir.path().join("big"), &big).unwrap();
        let (_, m) = digest_tree(dir.path()).unwrap();
        assert_eq!(m.0[0].hash, blake3::hash(&big).to_hex().to_string());
        assert_eq!(m.total_size(), big.len() as u64);
    }

    #[test]
    fn a_single_file_is_an_artifact_with_an_empty_path() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"hi").unwrap();
        let (_, m) = digest_tree(&dir.path().join("f")).unwrap();
        assert_eq!(m.0.len(), 1);
        assert_eq!(m.0[0].path, "");
    }

    #[test]
    fn compare_reports_missing_added_and_modified_entries() {
        let dir = tempfile::tempdir().unwrap();
        write_tree(dir.path(), &[("a", b"1"), ("b", b"2"), ("c", b"3")]);
        let (_, before) = digest_tree(dir.path()).unwrap();
        fs::remove_file(dir.path().join("a")).unwrap();
        fs::write(dir.path().join("b"), b"9").unwrap();
        fs::write(dir.path().join("c"), b"33").unwrap();
        fs::write(dir.path().join("d"), b"4").unwrap();
        let (_, after) = digest_tree(dir.path()).unwrap();
        let shown: Vec<String> = compare(&before, &after, true)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "a is missing",
                "b changed (content)",
                "c changed (size)",
                "d was added"
            ]
        );
        // The cheap check does not see the same-size content change of `b`.
        assert_eq!(compare(&before, &after, false).len(), 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn digest_is_independent_of_creation_order(
            files in proptest::collection::btree_map("[a-c]{1,3}(/[a-c]{1,2})?", proptest::collection::vec(any::<u8>(), 0..64), 1..6)
        ) {
            // Drop names that are both a file and a folder prefix.
            let names: Vec<&String> = files.keys().collect();
            let files: Vec<(&String, &Vec<u8>)> = files.iter()
                .filter(|(k, _)| !names.iter().any(|o| o.starts_with(&format!("{k}/"))))
                .collect();
            let a = tempfile::tempdir().unwrap();
            let b = tempfile::tempdir().unwrap();
            for (k, v) in &files { write_tree(a.path(), &[(k.as_str(), v.as_slice())]); }
            for (k, v) in files.iter().rev() { write_tree(b.path(), &[(k.as_str(), v.as_slice())]); }
            prop_assert_eq!(digest_tree(a.path()).unwrap().0, digest_tree(b.path()).unwrap().0);
        }
    }
}
