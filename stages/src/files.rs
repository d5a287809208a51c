//! `kind = "files"`: snapshots local files or folders into the store, so a pipeline can
//! depend on local data (or scripts) and notice when they change. Its fingerprint is the
//! content digest of the paths, so an edit changes its key and reruns its consumers, and
//! an unchanged folder is never copied again. Each path becomes a named output called
//! by its file name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use itera_engine::stage::{FingerprintContext, OutputDecl, ParamIssue, StageContext, StageKind};
use itera_engine::store::digest;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Parameters of a `files` stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesParams {
    /// Files or folders to snapshot, relative to the pipeline file's folder (or absolute).
    /// Each is copied to `{out}/<file name>` and is an output of that name.
    pub paths: Vec<String>,
}

/// The `files` kind.
pub struct Files;

fn name_of(path: &str) -> Option<&str> {
    Path::new(path).file_name().and_then(|n| n.to_str())
}

/// The path to snapshot. A named path that is itself a symbolic link is followed (its
/// target's content is what the user means, and what the key must follow); links *inside*
/// a folder are kept as links and must stay inside it (`store::links`).
fn resolve(base: &Path, path: &str) -> PathBuf {
    let full = base.join(path);
    std::fs::canonicalize(&full).unwrap_or(full)
}

impl StageKind for Files {
    type Params = FilesParams;
    const KIND: &'static str = "files";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "Snapshot local files or folders into the store (edits are noticed by content)";

    fn validate(p: &FilesParams) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        if p.paths.is_empty() {
            issues.push(
                ParamIssue::new("paths", "list at least one file or folder")
                    .with_help("e.g. `paths = [\"data/train.txt\"]`"),
            );
        }
        let mut seen = BTreeMap::new();
        for (i, path) in p.paths.iter().enumerate() {
            match name_of(path) {
                None => issues.push(
                    ParamIssue::new(
                        &format!("paths.{i}"),
                        format!("`{path}` has no file name to store it under"),
                    )
                    .with_help("name the file or folder itself, not `.` or `..`"),
                ),
                Some(name) => {
                    if let Some(first) = seen.insert(name, path) {
                        issues.push(
                            ParamIssue::new(
                                &format!("paths.{i}"),
                                format!("`{first}` and `{path}` would both be stored as `{name}`"),
                            )
                            .with_help("use a separate `files` stage for one of them"),
                        );
                    }
                }
            }
        }
        issues
    }

    fn check_local(p: &FilesParams, base_dir: &Path) -> Vec<ParamIssue> {
        p.paths
            .iter()
            .enumerate()
            .filter(|(_, path)| !base_dir.join(path).exists())
            .map(|(i, path)| {
                ParamIssue::new(
                    &format!("paths.{i}"),
                    format!(
                        "`{path}` does not exist (looked for `{}`)",
                        base_dir.join(path).display()
                    ),
                )
                .with_help("paths are relative to the pipeline file's folder; fix the path or create the file")
            })
            .collect()
    }

    fn outputs(p: &FilesParams) -> Vec<OutputDecl> {
        p.paths
            .iter()
            .filter_map(|path| name_of(path).map(|n| OutputDecl::new(n, n)))
            .collect()
    }

    fn fingerprint(p: &FilesParams, ctx: &FingerprintContext) -> anyhow::Result<Option<String>> {
        let mut parts = Vec::with_capacity(p.paths.len());
        for path in &p.paths {
            let full = resolve(&ctx.base_dir, path);
            if !full.exists() {
                bail!(
                    "`{path}` does not exist (looked for `{}`; paths are relative to the pipeline file)",
                    full.display()
                );
            }
            let (d, _) = digest::digest_tree(&full)
                .with_context(|| format!("cannot read `{}`", full.display()))?;
            parts.push(format!("{}={d}", name_of(path).unwrap_or(path)));
        }
        Ok(Some(
            digest::Digest::of_bytes(parts.join("\n").as_bytes()).to_string(),
        ))
    }

    fn run(p: &FilesParams, ctx: &StageContext) -> anyhow::Result<()> {
        for path in &p.paths {
            let from = resolve(&ctx.base_dir, path);
            let name = name_of(path).unwrap_or(path);
            ctx.log.line(format!("copy {} -> {name}", from.display()));
            itera_engine::fs::copy_tree(&from, &ctx.out_dir.join(name))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use itera_engine::stage::{CancelToken, Progress, StageLog};

    #[test]
    fn validation_table() {
        let cases: &[(&[&str], Option<&str>)] = &[
            (&["a.txt", "dir"], None),
            (&[], Some("list at least one file or folder")),
            (&[".."], Some("`..` has no file name")),
            (
                &["x/a.txt", "y/a.txt"],
                Some("would both be stored as `a.txt`"),
            ),
        ];
        for (paths, expected) in cases {
            let p = FilesParams {
                paths: paths.iter().map(|s| (*s).to_owned()).collect(),
            };
            let got = Files::validate(&p).first().map(|i| i.message.clone());
            match expected {
                None => assert_eq!(got, None),
                Some(e) => assert!(got.as_deref().unwrap_or("").contains(e), "{got:?}"),
            }
        }
    }

    #[test]
    fn fingerprint_follows_content_and_run_copies() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data/sub")).unwrap();
        std::fs::write(dir.path().join("data/sub/x"), "1").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "n").unwrap();
        let p = FilesParams {
            paths: vec!["data".into(), "notes.txt".into()],
        };
        let fctx = FingerprintContext {
            stage: "f".into(),
            base_dir: dir.path().to_owned(),
        };
        let before = Files::fingerprint(&p, &fctx).unwrap();
        assert_eq!(before, Files::fingerprint(&p, &fctx).unwrap());
        std::fs::write(dir.path().join("data/sub/x"), "2").unwrap();
        assert_ne!(before, Files::fingerprint(&p, &fctx).unwrap());

        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let ctx = StageContext {
            stage: "f".into(),
            inputs: BTreeMap::new(),
            out_dir: out.clone(),
            work_dir: dir.path().join("w"),
            base_dir: dir.path().to_owned(),
            seed: 0,
            threads: 1,
            progress: Progress::null(),
            log: StageLog::sink(),
            cancel: CancelToken::default(),
        };
        Files::run(&p, &ctx).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("data/sub/x")).unwrap(),
            "2"
        );
        assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "n");

        let missing = FilesParams {
            paths: vec!["nope.txt".into()],
        };
        let err = Files::fingerprint(&missing, &fctx).unwrap_err().to_string();
        assert!(err.contains("`nope.txt` does not exist"), "{err}");
    }
}
