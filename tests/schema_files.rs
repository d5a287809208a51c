//! `schemas/pipeline.schema.json` with a real third-party validator (`check-jsonschema`,
//! Python; skipped with a reason when it is not installed): every shipped pipeline is
//! valid, and every file in `tests/schema/invalid/` fails with a message naming the key
//! its `# expect: KEY` line gives; `itera validate` rejects each of them too, naming the
//! same key, so the schema's ranges and enums are itera's.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::test::ITERA;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `.toml` files under `dir`, recursively, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(toml_files(&path));
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Runs check-jsonschema on `files`; `None` (with the reason printed) when it is missing.
fn check_jsonschema(files: &[PathBuf]) -> Option<(bool, String)> {
    let out = Command::new("check-jsonschema")
        .arg("--schemafile")
        .arg(repo().join("schemas/pipeline.schema.json"))
        .args(files)
        .output();
    match out {
        Ok(out) => Some((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )),
        Err(e) => {
            println!(
                "skipping: check-jsonschema is not installed ({e}); `python3 -m pip install check-jsonschema`"
            );
            None
        }
    }
}

#[test]
fn every_shipped_pipeline_is_valid_under_the_schema() {
    let files = toml_files(&repo().join("pipelines"));
    assert!(files.len() >= 7, "{files:?}");
    let Some((ok, text)) = check_jsonschema(&files) else {
        return;
    };
    assert!(ok, "check-jsonschema rejected a shipped pipeline:\n{text}");
}

/// The `# expect: KEY` line of an invalid file.
fn expected_key(file: &Path) -> String {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{} has no `# expect: KEY` line", file.display()))
        .trim()
        .to_owned()
}

#[test]
fn each_invalid_file_fails_naming_its_bad_key_in_the_schema_and_in_itera() {
    let files = toml_files(&repo().join("tests/schema/invalid"));
    assert!(files.len() >= 10, "{files:?}");
    for file in &files {
        let key = expected_key(file);
        let out = Command::new(ITERA)
            .arg("validate")
            .arg(file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", file.display());
        assert!(
            stderr.contains(&key),
            "{}: itera does not name `{key}`:\n{stderr}",
            file.display()
        );
    }
    // One validator run over all of them: it prints each file's best match as
    // `FILE::$.path: message`.
    let Some((ok, message)) = check_jsonschema(&files) else {
        return;
    };
    assert!(!ok, "the invalid files passed the schema");
    for file in &files {
        let key = expected_key(file);
        let prefix = format!("{}::$", file.display());
        let lines: Vec<&str> = message.lines().filter(|l| l.contains(&prefix)).collect();
        assert!(
            !lines.is_empty(),
            "{} passed the schema:\n{message}",
            file.display()
        );
        assert!(
            lines.iter().any(|l| l.contains(&key)),
            "{}: `{key}` not named in {lines:?}",
            file.display()
        );
    }
}

/// The editors' validator (taplo, what Even Better TOML runs; skipped when not on PATH):
/// every shipped pipeline passes, every invalid file fails.
#[test]
fn taplo_accepts_the_shipped_pipelines_and_rejects_the_invalid_files() {
    let schema = format!(
        "file://{}",
        repo().join("schemas/pipeline.schema.json").display()
    );
    let check = |files: &[PathBuf]| {
        Command::new("taplo")
            .args(["check", "--schema", &schema])
            .args(files)
            .output()
    };
    let valid = toml_files(&repo().join("pipelines"));
    if let Err(e) = Command::new("taplo").arg("--version").output() {
        println!("skipping: taplo is not installed ({e}); `npm install -g @taplo/cli`");
        return;
    }
    let out = check(&valid).unwrap();
    assert!(
        out.status.success(),
        "taplo rejects a shipped pipeline:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One run over the invalid files: each is named in a failure (`┌─ FILE:line:col`).
    let invalid = toml_files(&repo().join("tests/schema/invalid"));
    let out = check(&invalid).unwrap();
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stderr);
    for file in &invalid {
        assert!(
            report.contains(&format!("┌─ {}:", file.display())),
            "taplo accepts {}:\n{report}",
            file.display()
        );
    }
}
