//! Every malformed pipeline in `tests/fixtures/invalid/` (with `--set` arguments from a
//! `.set` file beside it, one per line) fails to load, and its rendered diagnostics match
//! the reviewed snapshot in `tests/snapshots/`. Paths are relative to the crate, so the
//! output is the same on every machine.

mod spec_support;

use std::path::Path;

use itera_engine::spec;

/// Loads a fixture (path relative to the crate) and renders what went wrong.
fn render(relative: &Path) -> String {
    let set_file = relative.with_extension("set");
    let overrides: Vec<String> = std::fs::read_to_string(&set_file)
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default();
    let sets: String = overrides.iter().map(|s| format!(" --set '{s}'")).collect();
    match spec::load(relative, &overrides, &spec_support::registry()) {
        Ok(_) => panic!("{} should not load", relative.display()),
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty());
            format!(
                "$ itera validate {}{sets}\n{diagnostics}\n",
                relative.display()
            )
        }
    }
}

#[test]
fn invalid_pipelines_are_reported() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    insta::glob!("fixtures/invalid/*.toml", |path| {
        let relative = path
            .strip_prefix(crate_dir)
            .expect("fixtures are inside the crate");
        insta::assert_snapshot!(render(relative));
    });
}

#[test]
fn the_corpus_is_large_enough() {
    let count = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/invalid"
    ))
    .expect("fixtures folder")
    .filter(|e| {
        e.as_ref()
            .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "toml"))
    })
    .count();
    assert!(count >= 35, "only {count} invalid fixtures");
}

#[test]
fn one_pass_finds_every_problem() {
    let registry = spec_support::registry();
    let load =
        |file: &str| spec::load(Path::new(file), &[], &registry).expect_err("fixture is invalid");
    // Problems in four stages and the pipeline table, all in one report.
    assert_eq!(load("tests/fixtures/invalid/many_problems.toml").len(), 7);
    // Several type errors and unknown keys inside one stage.
    assert_eq!(
        load("tests/fixtures/invalid/many_problems_one_stage.toml").len(),
        6
    );
    // Several `validate` issues of one stage.
    assert_eq!(
        load("tests/fixtures/invalid/many_problems_range.toml").len(),
        3
    );
}

#[test]
fn an_unreadable_pipeline_file_is_one_problem_without_a_line() {
    let err = spec::load(
        Path::new("tests/fixtures/no-such-file.toml"),
        &[],
        &spec_support::registry(),
    )
    .expect_err("missing file");
    assert_eq!(err.len(), 1);
    let text = err.to_string();
    assert!(
        text.starts_with("error: cannot read pipeline file `tests/fixtures/no-such-file.toml`: "),
        "{text}"
    );
    assert!(text
        .ends_with("error: 1 problem found in tests/fixtures/no-such-file.toml; nothing was run"));
    // Diagnostics travel as an ordinary error (the CLI wraps them in anyhow).
    let wrapped = anyhow::Error::new(err);
    assert!(wrapped.to_string().contains("no-such-file.toml"));
}

#[test]
fn each_problem_is_listed_with_its_place() {
    let err = spec::load(
        Path::new("tests/fixtures/invalid/set_several.toml"),
        &[
            "train.steps=0".to_owned(),
            "tokenize.scheme=wordpiece".to_owned(),
        ],
        &spec_support::registry(),
    )
    .expect_err("invalid");
    let places: Vec<String> = err
        .iter()
        .map(|d| {
            d.origin
                .as_ref()
                .map(|o| o.place.clone())
                .unwrap_or_default()
        })
        .collect();
    // In the order the arguments were given.
    assert_eq!(
        places,
        ["--set train.steps=0", "--set tokenize.scheme=wordpiece"]
    );
}
