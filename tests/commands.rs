//! Read-only commands: `validate`, `dag`, `status`, `explain`, `runs`, `show`.

use crate::test::{snapshot_settings, Test, DIAMOND};

#[test]
fn validate_and_dag() {
    let t = Test::with_pipeline(DIAMOND);
    let out = t.itera(&["validate", "pipeline.toml"], 0);
    assert_eq!(
        out.stdout,
        "ok: pipeline `diamond` (pipeline.toml): 4 stage(s), seed 7\n"
    );
    let dot = t.itera(&["dag", "pipeline.toml", "--format", "dot"], 0);
    assert!(dot.stdout.contains("digraph"), "{}", dot.stdout);
    let mermaid = t.itera(&["dag", "pipeline.toml", "--format", "mermaid"], 0);
    assert!(
        mermaid.stdout.contains("flowchart") || mermaid.stdout.contains("graph"),
        "{}",
        mermaid.stdout
    );
    assert!(!t.path("runs").exists(), "read-only commands write nothing");
}

#[test]
fn status_and_explain_say_what_would_run_and_why() {
    let t = Test::with_pipeline(DIAMOND);
    let before = t.itera(&["status", "pipeline.toml"], 0);
    assert!(
        before
            .stdout
            .starts_with("pipeline `diamond`: 4 to run, 0 cached"),
        "{}",
        before.stdout
    );
    assert!(!t.path("runs/store").exists());

    t.run(&[]);
    let changed = DIAMOND.replace("LEVEL = \"1\"", "LEVEL = \"3\"");
    t.write("pipeline.toml", &changed);
    let status = t.itera(&["status", "pipeline.toml"], 0);
    snapshot_settings().bind(|| {
        insta::assert_snapshot!("status_after_param_change", t.redact(&status.stdout));
    });
    let explain = t.itera(&["explain", "pipeline.toml", "c"], 0);
    snapshot_settings().bind(|| {
        insta::assert_snapshot!("explain_changed_param", t.redact(&explain.stdout));
    });
    let dry = t.itera(&["run", "pipeline.toml", "--dry-run"], 0);
    assert_eq!(dry.stdout, status.stdout);
    assert!(t.executions().len() == 4, "the dry run executed nothing");
}

#[test]
fn runs_and_show_list_recorded_runs() {
    let t = Test::with_pipeline(DIAMOND);
    assert!(t.itera(&["runs"], 0).stdout.starts_with("no runs in"));
    t.run(&[]);
    t.run(&[]);
    let runs = t.itera(&["runs"], 0);
    snapshot_settings().bind(|| {
        insta::assert_snapshot!("runs_list", t.redact(&runs.stdout));
    });
    let show = t.itera(&["show"], 0);
    snapshot_settings().bind(|| {
        insta::assert_snapshot!("show_cached_run", t.redact(&show.stdout));
    });
    let json = t.itera(&["show", "latest", "--json"], 0);
    let record: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(record["format"], 1);
    assert_eq!(record["stages"]["d"]["status"], "cached");
    assert!(record["pipeline"]["resolved_toml"]
        .as_str()
        .unwrap()
        .contains("[stages.d]"));
    let err = t.itera(&["show", "nope"], 2);
    assert!(err.stderr.contains("no run `nope`"), "{}", err.stderr);
}

/// Every pipeline the repository ships (phase 8, smoke, examples, sweeps) loads and
/// validates with this build, as a user's `itera validate` would.
#[test]
fn every_shipped_pipeline_validates() {
    fn collect(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                collect(&path, out);
            } else if path.extension().is_some_and(|e| e == "toml") {
                out.push(path);
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    let t = Test::new();
    for file in &files {
        t.itera(&["validate", file.to_str().unwrap()], 0);
    }
}

/// `show` lists stages in DAG order (upstream first, not alphabetically) with each
/// result folder, and names the report; `path` prints a result folder or one output.
#[test]
fn show_is_in_dag_order_with_result_folders_and_path_prints_results() {
    let t = Test::with_pipeline(
        r#"
[pipeline]
name = "order"

[stages.zeta]
kind = "shell"
command = "echo z > {out}/z.txt"
outputs = ["z.txt"]

[stages.alpha]
kind = "shell"
inputs = { z = "zeta.z.txt" }
command = "cat {inputs.z} > {out}/a.txt"
outputs = ["a.txt"]
"#,
    );
    t.run(&[]);
    let show = t.itera(&["show"], 0).stdout;
    let zeta = show.find("  zeta ").expect("zeta listed");
    let alpha = show.find("  alpha ").expect("alpha listed");
    assert!(zeta < alpha, "upstream first:\n{show}");
    let file = t.itera(&["path", "latest", "alpha.a.txt"], 0).stdout;
    let file = std::path::Path::new(file.trim());
    assert_eq!(std::fs::read_to_string(file).unwrap(), "z\n");
    let dir = t.itera(&["path", "latest", "alpha"], 0).stdout;
    assert!(show.contains(&format!("result: {}", dir.trim())), "{show}");
    let err = t.itera(&["path", "latest", "alpha.b.txt"], 2).stderr;
    assert!(
        err.contains("no output `b.txt`; its outputs: a.txt"),
        "{err}"
    );
    let err = t.itera(&["path", "latest", "beta"], 2).stderr;
    assert!(
        err.contains("has no stage `beta`; its stages: alpha, zeta"),
        "{err}"
    );

    // A report stage: `show` names its report.md, which `path` finds too.
    let t = Test::new();
    let smoke = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/smoke.toml");
    t.itera(&["--progress", "quiet", "run", smoke], 0);
    let show = t.itera(&["show", "latest"], 0).stdout;
    let report = t.itera(&["path", "latest", "report.markdown"], 0).stdout;
    assert!(report.trim().ends_with("/out/report.md"), "{report}");
    assert!(
        show.ends_with(&format!("report: {}\n", report.trim())),
        "{show}"
    );
    let order: Vec<usize> = ["fetch", "tokenize", "train", "half", "evaluate", "report"]
        .iter()
        .map(|s| show.find(&format!("  {s} ")).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{show}");
}

/// `dag` lists a stage's inputs as written: a list keeps its order, with positions, so the
/// reference model (`models[0]`) is visible.
#[test]
fn dag_keeps_the_order_of_an_input_list() {
    let t = Test::with_pipeline(
        r#"
[pipeline]
name = "order"

[stages.zz]
kind = "shell"
command = "echo z > {out}/m"
outputs = ["m"]

[stages.aa]
kind = "shell"
command = "echo a > {out}/m"
outputs = ["m"]

[stages.compare]
kind = "shell"
inputs = { models = ["zz", "aa"] }
command = "cat {inputs.models} > {out}/c"
outputs = ["c"]
"#,
    );
    let text = t.itera(&["dag", "pipeline.toml"], 0).stdout;
    assert!(text.contains("<- zz [models[0]], aa [models[1]]"), "{text}");
    let dot = t
        .itera(&["dag", "pipeline.toml", "--format", "dot"], 0)
        .stdout;
    assert!(
        dot.contains("\"zz\" -> \"compare\" [label=\"models[0]\"]"),
        "{dot}"
    );
}
