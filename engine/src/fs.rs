//! Filesystem primitives the engine relies on: IO errors that carry the path and the
//! operation, atomic file writes (temp file + fsync + rename), atomic symlink replacement,
//! and a recursive copy. This is the only place that writes files atomically.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// An IO failure on a named path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} `{}`: {source}", path.display())]
pub struct FsError {
    /// What was being done ("read", "create directory", ...).
    pub op: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FsError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self {
            op,
            path: path.into(),
            source,
        }
    }
}

/// An error and its causes on one line, each cause once: an error that already quotes
/// its source (`cannot write `x`: No space left on device (os error 28)`) is not followed
/// by that source again.
pub fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Attaches the path and operation to an IO result.
pub trait IoContext<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T, FsError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T, FsError> {
        self.map_err(|e| FsError::new(op, path, e))
    }
}

/// `fs::create_dir_all` with the path in the error.
pub fn create_dir_all(path: &Path) -> Result<(), FsError> {
    fs::create_dir_all(path).at("create directory", path)
}

/// Reads a UTF-8 file.
pub fn read_to_string(path: &Path) -> Result<String, FsError> {
    fs::read_to_string(path).at("read", path)
}

/// Removes a directory tree; a missing one is fine.
pub fn remove_dir_all_if_exists(path: &Path) -> Result<(), FsError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.at("remove", path),
    }
}

/// How durable an atomic write must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the file before the rename: the content survives a power loss once visible.
    Fsync,
    /// Rename only: readers never see a partial file, but a crash may lose the update.
    /// For frequently rewritten status files.
    RenameOnly,
}

/// Writes `bytes` to `path` atomically: readers see the old content or the new, never a
/// mix. The temp file lives beside the target (same filesystem), named after our pid.
pub fn write_atomic(path: &Path, bytes: &[u8], durability: Durability) -> Result<(), FsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let result = (|| {
        let mut file = fs::File::create(&tmp).at("create", &tmp)?;
        file.write_all(bytes).at("write", &tmp)?;
        if durability == Durability::Fsync {
            file.sync_all().at("sync", &tmp)?;
        }
        fs::rename(&tmp, path).at("rename into place", path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsyncs a directory so a rename inside it is durable.
pub fn sync_dir(path: &Path) -> Result<(), FsError> {
    fs::File::open(path)
        .and_then(|d| d.sync_all())
        .at("sync directory", path)
}

/// Points the symlink `link` at `target`, replacing any existing link atomically.
pub fn replace_symlink(target: &Path, link: &Path) -> Result<(), FsError> {
    let dir = link.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        link.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id(),
        fastrand::u32(..)
    ));
    std::os::unix::fs::symlink(target, &tmp).at("create symlink", &tmp)?;
    fs::rename(&tmp, link).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        FsError::new("replace symlink", link, e)
    })
}

/// Copies a file or a folder tree from `from` to `to` (which must not exist). Symlinks are
/// copied as links; permissions are kept.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), FsError> {
    let meta = fs::symlink_metadata(from).at("read metadata of", from)?;
    if meta.file_type().is_symlink() {
        let target = fs::read_link(from).at("read symlink", from)?;
        std::os::unix::fs::symlink(&target, to).at("create symlink", to)
    } else if meta.is_dir() {
        fs::create_dir(to).at("create directory", to)?;
        for entry in fs::read_dir(from).at("list", from)? {
            let entry = entry.at("list", from)?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        fs::copy(from, to).at("copy", from).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_content_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one", Durability::Fsync).unwrap();
        write_atomic(&path, b"two", Durability::RenameOnly).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn error_text_names_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(28);
        let err = anyhow::Error::new(FsError::new("write", "/x/y", io)).context("train failed");
        let text = error_text(&err);
        assert_eq!(text.matches("os error 28").count(), 1, "{text}");
        assert!(
            text.starts_with("train failed: cannot write `/x/y`"),
            "{text}"
        );
    }

    #[test]
    fn replace_symlink_swaps_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("latest");
        replace_symlink(Path::new("run-a"), &link).unwrap();
        replace_symlink(Path::new("run-b"), &link).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("run-b"));
    }

    #[test]
    fn copy_tree_copies_nested_folders_and_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/x.txt"), "x").unwrap();
        copy_tree(&src, &dir.path().join("dst")).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("dst/sub/x.txt")).unwrap(),
            "x"
        );
        let err = copy_tree(&dir.path().join("missing"), &dir.path().join("d2")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
