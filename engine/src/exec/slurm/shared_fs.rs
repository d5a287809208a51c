//! A best-effort check that a runs folder can be shared with compute nodes: jobs read and
//! write the store and the run records there, so a node-local path (`/tmp`, `/dev/shm`,
//! `$TMPDIR`, a tmpfs) breaks every job on a real cluster. It can only warn: a single-node
//! cluster (or the test one) is served well by `/tmp`.

use std::path::{Path, PathBuf};

/// Folders that are private to one node on practically every cluster.
const NODE_LOCAL: &[&str] = &[
    "/tmp",
    "/var/tmp",
    "/dev/shm",
    "/run/user",
    "/scratch/local",
    "/local",
];

/// Filesystem types that live in one machine's memory.
const MEMORY_FS: &[&str] = &["tmpfs", "ramfs"];

/// Why `path` is probably not visible from compute nodes, if it looks node-local.
pub fn node_local_warning(path: &Path) -> Option<String> {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut prefixes: Vec<PathBuf> = NODE_LOCAL.iter().map(PathBuf::from).collect();
    if let Some(tmp) = std::env::var_os("TMPDIR").filter(|t| !t.is_empty()) {
        prefixes.push(std::fs::canonicalize(&tmp).unwrap_or_else(|_| PathBuf::from(tmp)));
    }
    if let Some(p) = prefixes.iter().find(|p| abs.starts_with(p)) {
        return Some(warning(
            &abs,
            &format!("it is under {}, which is local to each node", p.display()),
        ));
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    match mount_fs_type(&mounts, &abs) {
        Some(fs) if MEMORY_FS.contains(&fs.as_str()) => Some(warning(
            &abs,
            &format!("it is on a {fs} filesystem, which lives in this machine's memory"),
        )),
        _ => None,
    }
}

fn warning(path: &Path, why: &str) -> String {
    format!(
        "the runs folder {} is probably not shared with the compute nodes: {why}. \
         Jobs read and write the store and run records there; use a folder on a shared \
         filesystem (home or project space), e.g. with --runs-dir or ITERA_RUNS_DIR",
        path.display()
    )
}

/// The filesystem type of the longest mount point containing `path` (`/proc/self/mounts`).
fn mount_fs_type(mounts: &str, path: &Path) -> Option<String> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _dev = f.next()?;
            let mnt = unescape_mount(f.next()?);
            let fs = f.next()?;
            path.starts_with(&mnt).then(|| (mnt, fs.to_owned()))
        })
        .max_by_key(|(mnt, _)| mnt.as_os_str().len())
        .map(|(_, fs)| fs)
}

/// `/proc/mounts` writes spaces and tabs in mount points as octal escapes.
fn unescape_mount(s: &str) -> PathBuf {
    PathBuf::from(
        s.replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_folders_are_flagged() {
        let w = node_local_warning(Path::new("/tmp/study/runs")).unwrap();
        assert!(w.contains("/tmp") && w.contains("shared filesystem"), "{w}");
        assert!(node_local_warning(Path::new("/dev/shm/runs")).is_some());
    }

    #[test]
    fn mount_table_lookup_takes_the_longest_mount() {
        let mounts = "\
overlay / overlay rw 0 0
server:/export/home /home nfs4 rw 0 0
tmpfs /home/me/ram tmpfs rw 0 0
lustre@o2ib:/proj /proj\\040space lustre rw 0 0
";
        assert_eq!(
            mount_fs_type(mounts, Path::new("/home/me/runs")).as_deref(),
            Some("nfs4")
        );
        assert_eq!(
            mount_fs_type(mounts, Path::new("/home/me/ram/runs")).as_deref(),
            Some("tmpfs")
        );
        assert_eq!(
            mount_fs_type(mounts, Path::new("/proj space/x")).as_deref(),
            Some("lustre")
        );
        assert_eq!(
            mount_fs_type(mounts, Path::new("/opt/x")).as_deref(),
            Some("overlay")
        );
    }
}
