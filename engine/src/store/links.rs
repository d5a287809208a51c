//! Artifacts are self-contained: a symbolic link inside an artifact may point only to
//! another place inside the same artifact. A link that leaves it (an absolute target, or
//! `..` past the artifact's root) would make consumers depend on outside state that no
//! digest or key captures, so publishing refuses it. Targets are judged by their text
//! (lexically), never by following them.

use std::path::{Component, Path};

use super::digest::{EntryKind, Manifest};

/// A link of an artifact that points outside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscapingLink {
    /// The link's path inside the artifact.
    pub path: String,
    /// What it points to, as written in the link.
    pub target: String,
}

impl std::fmt::Display for EscapingLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` -> `{}`", self.path, self.target)
    }
}

/// Whether `target`, read from a link at `link` (relative to the artifact root), stays
/// inside the artifact.
fn stays_inside(link: &str, target: &Path) -> bool {
    let mut depth: usize = link.split('/').filter(|c| !c.is_empty()).count();
    // The link's own name is not a folder: targets resolve from its parent.
    depth = depth.saturating_sub(1);
    for c in target.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return false,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::Normal(_) => depth += 1,
        }
    }
    true
}

/// Every link of the artifact at `root` (described by `manifest`) that leaves it. A root
/// that is itself a link always leaves.
pub fn escaping(root: &Path, manifest: &Manifest) -> Vec<EscapingLink> {
    manifest
        .0
        .iter()
        .filter(|e| e.kind == EntryKind::Symlink)
        .filter_map(|e| {
            let path = if e.path.is_empty() {
                root.to_owned()
            } else {
                root.join(&e.path)
            };
            let target = std::fs::read_link(&path).ok()?;
            (e.path.is_empty() || !stays_inside(&e.path, &target)).then(|| EscapingLink {
                path: e.path.clone(),
                target: target.display().to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_inside_are_fine_and_links_out_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        let link = |target: &str, at: &str| std::os::unix::fs::symlink(target, root.join(at));
        link("a.txt", "ok1").unwrap();
        link("../a.txt", "sub/ok2").unwrap();
        link("./sub/../a.txt", "ok3").unwrap();
        link("/etc/passwd", "abs").unwrap();
        link("..", "up").unwrap();
        link("../../x", "sub/up2").unwrap();
        let manifest = crate::store::digest::scan(&root).unwrap();
        let mut bad: Vec<String> = escaping(&root, &manifest)
            .iter()
            .map(ToString::to_string)
            .collect();
        bad.sort();
        assert_eq!(
            bad,
            [
                "`abs` -> `/etc/passwd`",
                "`sub/up2` -> `../../x`",
                "`up` -> `..`"
            ]
        );
    }
}
