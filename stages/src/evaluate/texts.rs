//! The evaluate stage's `texts` input: which files to score and what to call them. A
//! reference to a whole artifact (`texts = "corpus"`, a `files` stage) scores every file in
//! it, in path order; a reference to one output (`texts = "corpus.story.txt"`) scores that
//! file (or every file of that folder). Each is named `STAGE/PATH`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use itera_engine::stage::InputArtifact;

/// `(name, path)` of every text file of the inputs, in input order then path order.
pub fn files(inputs: &[InputArtifact]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for input in inputs {
        let base = match &input.output {
            Some(o) => format!("{}/{o}", input.stage),
            None => input.stage.clone(),
        };
        if input.path.is_file() {
            out.push((base, input.path.clone()));
            continue;
        }
        let mut found = Vec::new();
        walk(&input.path, &input.path, &mut found)?;
        anyhow::ensure!(
            !found.is_empty(),
            "input `texts` from stage `{}` holds no files: point it at a `files` stage with the texts to score",
            input.stage
        );
        found.sort();
        for rel in found {
            out.push((format!("{base}/{rel}"), input.path.join(&rel)));
        }
    }
    Ok(out)
}

/// Relative paths (with `/`) of the regular files under `dir`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list `{}`", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list `{}`", dir.display()))?;
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if path.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(
                rel.components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/"),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(stage: &str, output: Option<&str>, path: PathBuf) -> InputArtifact {
        InputArtifact {
            stage: stage.into(),
            output: output.map(str::to_owned),
            path,
            digest: itera_engine::store::Digest::of_bytes(b"d"),
        }
    }

    #[test]
    fn folders_list_their_files_in_order_and_files_stand_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        for f in ["b.txt", "a.txt", "sub/c.txt"] {
            std::fs::write(dir.path().join(f), "text").unwrap();
        }
        let got = files(&[
            artifact("corpus", None, dir.path().to_owned()),
            artifact("one", Some("b.txt"), dir.path().join("b.txt")),
        ])
        .unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "corpus/a.txt",
                "corpus/b.txt",
                "corpus/sub/c.txt",
                "one/b.txt"
            ]
        );
        assert_eq!(got[3].1, dir.path().join("b.txt"));
        let empty = tempfile::tempdir().unwrap();
        let err = files(&[artifact("e", None, empty.path().to_owned())]).unwrap_err();
        assert!(err.to_string().contains("holds no files"), "{err}");
    }
}
