//! Parameter sweeps (`matrix`): expansion and names, caching per variant, following and
//! gathering, selecting by base and full name, `explain`, `rerun --verify`, and invalid
//! sweeps rejected before anything is written.

use crate::test::Test;

/// `train` swept over two env params (4 variants); `half` follows it; `evaluate` follows
/// `train` and `half` (zipped); `report` gathers every `evaluate`. Every execution is
/// logged with its values.
pub const SWEEP: &str = r#"
[pipeline]
name = "sweep"

[stages.prep]
kind = "shell"
command = "echo prep >> executions.log; echo data > {out}/data.txt"
outputs = ["data.txt"]

[stages.train]
kind = "shell"
inputs = { data = "prep.data.txt" }
env = { LR = "0", LEN = "0", STEPS = "5" }
command = "echo train-$LR-$LEN >> executions.log; echo $LR $LEN $STEPS > {out}/model.txt"
outputs = ["model.txt"]

[stages.train.matrix]
"env.LR" = ["1e-3", "2e-3"]
"env.LEN" = ["64", "128"]

[stages.half]
kind = "shell"
inputs = { model = "train.model.txt" }
command = "echo half >> executions.log; sed 's/^/half /' {inputs.model} > {out}/half.txt"
outputs = ["half.txt"]

[stages.evaluate]
kind = "shell"
inputs = { model = "train.model.txt", half = "half.half.txt" }
command = "echo evaluate >> executions.log; cat {inputs.model} {inputs.half} > {out}/eval.txt"
outputs = ["eval.txt"]

[stages.report]
kind = "shell"
inputs = { evals = "evaluate[*].eval.txt" }
command = "echo report >> executions.log; cat {inputs.evals} > {out}/report.txt"
outputs = ["report.txt"]
"#;

const VARIANTS: [&str; 4] = [
    "LEN=128,LR=1e-3",
    "LEN=128,LR=2e-3",
    "LEN=64,LR=1e-3",
    "LEN=64,LR=2e-3",
];

fn log(entries: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// The `report.txt` of the latest run's `report` stage.
fn report(t: &Test) -> String {
    let entry = t
        .store_entries()
        .into_iter()
        .find(|e| e.join("out/report.txt").exists())
        .expect("a report entry");
    std::fs::read_to_string(entry.join("out/report.txt")).unwrap()
}

#[test]
fn dag_shows_one_stage_per_variant_with_followers_and_the_gather() {
    let t = Test::with_pipeline(SWEEP);
    let dag = t.itera(&["dag", "pipeline.toml"], 0).stdout;
    for v in VARIANTS {
        assert!(dag.contains(&format!("train@{v} (shell)")), "{dag}");
        assert!(dag.contains(&format!("half@{v} (shell)")), "{dag}");
        // Zipped: each evaluate reads its own train and half variant.
        let line = dag
            .lines()
            .find(|l| l.starts_with(&format!("evaluate@{v} ")))
            .unwrap_or_else(|| panic!("evaluate@{v} in\n{dag}"));
        assert!(
            line.contains(&format!("train@{v} [model: model.txt]")),
            "{line}"
        );
        assert!(
            line.contains(&format!("half@{v} [half: half.txt]")),
            "{line}"
        );
        assert_eq!(line.matches('@').count(), 3, "{line}");
    }
    let report = dag
        .lines()
        .find(|l| l.starts_with("report "))
        .expect("report");
    assert_eq!(report.matches("evaluate@").count(), 4, "{report}");
    assert_eq!(dag.lines().count(), 1 + 4 * 3 + 1, "{dag}");
    let ok = t.itera(&["validate", "pipeline.toml"], 0).stdout;
    assert!(
        ok.contains("14 stage(s) (sweeps: evaluate x4, half x4, train x4)"),
        "{ok}"
    );
    // A filter gathers the variants with one value.
    let filtered = t
        .itera(
            &[
                "dag",
                "pipeline.toml",
                "--set",
                r#"report.inputs.evals="evaluate[LEN=64].eval.txt""#,
            ],
            0,
        )
        .stdout;
    let report = filtered
        .lines()
        .find(|l| l.starts_with("report "))
        .expect("report");
    assert!(
        report.ends_with(
            "<- evaluate@LEN=64,LR=1e-3 [evals[0]: eval.txt], evaluate@LEN=64,LR=2e-3 [evals[1]: eval.txt]"
        ),
        "{report}"
    );
    // DOT and Mermaid carry the names too.
    let dot = t
        .itera(&["dag", "pipeline.toml", "--format", "dot"], 0)
        .stdout;
    assert!(dot.contains("\"train@LEN=64,LR=1e-3\""), "{dot}");
}

#[test]
fn each_variant_is_cached_on_its_own() {
    let t = Test::with_pipeline(SWEEP);
    let first = t.run(&[]);
    assert!(
        first.stderr.contains("14 ran, 0 cached"),
        "{}",
        first.stderr
    );
    let mut expected = vec!["prep", "report"];
    expected.extend([
        "train-1e-3-64",
        "train-2e-3-64",
        "train-1e-3-128",
        "train-2e-3-128",
    ]);
    expected.extend(["half"; 4]);
    expected.extend(["evaluate"; 4]);
    assert_eq!(t.executions(), log(&expected));
    // The gather's order: the first swept key slowest, values in the order listed.
    let lines: Vec<String> = report(&t)
        .lines()
        .filter(|l| !l.starts_with("half"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        lines,
        ["1e-3 64 5", "2e-3 64 5", "1e-3 128 5", "2e-3 128 5"]
    );

    // The names are in the run record, status files and logs.
    let show = t.itera(&["show", "latest"], 0).stdout;
    assert!(show.contains("train@LEN=64,LR=1e-3"), "{show}");
    let run_dir = std::fs::read_link(t.path("runs/latest")).expect("latest link");
    let run_dir = t.path("runs").join(run_dir);
    assert!(
        run_dir.join("stages/train@LEN=64,LR=1e-3.json").exists()
            || std::fs::read_dir(run_dir.join("stages"))
                .unwrap()
                .flatten()
                .any(|e| e
                    .file_name()
                    .to_string_lossy()
                    .contains("train@LEN=64,LR=1e-3")),
        "a status file per variant"
    );

    // Nothing changed: nothing runs.
    let second = t.run(&[]);
    assert!(
        second.stderr.contains("0 ran, 14 cached"),
        "{}",
        second.stderr
    );
    assert!(t.executions().is_empty());

    // Adding a value runs only the new variants (and the gather, whose inputs changed).
    let added = SWEEP.replace(r#"["1e-3", "2e-3"]"#, r#"["1e-3", "2e-3", "4e-3"]"#);
    t.write("pipeline.toml", &added);
    let status = t.itera(&["status", "pipeline.toml"], 0).stdout;
    assert!(status.contains("train@LEN=64,LR=4e-3"), "{status}");
    t.run(&[]);
    assert_eq!(
        t.executions(),
        log(&[
            "train-4e-3-64",
            "train-4e-3-128",
            "half",
            "half",
            "evaluate",
            "evaluate",
            "report"
        ])
    );

    // Removing values runs nothing: every remaining variant (and the report over the
    // original four) is stored.
    t.write("pipeline.toml", SWEEP);
    let back = t.run(&[]);
    assert!(t.executions().is_empty(), "{}", back.stderr);
    t.run(&[
        "--set",
        r#"train.matrix."env.LEN"=["64"]"#,
        "--until",
        "half",
    ]);
    assert!(t.executions().is_empty());

    // Setting a swept param narrows the sweep to that value: the same variants, stored.
    let narrowed = t.run(&["--set", r#"train.env.LR="2e-3""#, "--until", "evaluate"]);
    assert!(
        narrowed.stderr.contains("0 ran, 7 cached"),
        "{}",
        narrowed.stderr
    );
    assert!(!narrowed.stderr.contains("LR=1e-3"), "{}", narrowed.stderr);
    assert!(t.executions().is_empty());
    // The record holds the narrowed sweep: a rerun has the same stages.
    let rerun = t.itera(&["rerun", "latest"], 0);
    assert!(rerun.stderr.contains("0 ran, 7 cached"), "{}", rerun.stderr);

    // A param set for every variant reruns them all.
    t.run(&["--set", r#"train.env.STEPS="6""#, "--until", "train"]);
    assert_eq!(
        t.executions(),
        log(&[
            "train-1e-3-64",
            "train-2e-3-64",
            "train-1e-3-128",
            "train-2e-3-128"
        ])
    );
}

#[test]
fn only_and_force_take_the_base_name_or_a_full_variant_name() {
    let t = Test::with_pipeline(SWEEP);
    t.run(&["--until", "train"]);
    assert_eq!(
        t.executions(),
        log(&[
            "prep",
            "train-1e-3-64",
            "train-2e-3-64",
            "train-1e-3-128",
            "train-2e-3-128"
        ])
    );
    // The base name means every variant.
    t.run(&["--only", "train", "--force", "train"]);
    assert_eq!(
        t.executions(),
        log(&[
            "train-1e-3-64",
            "train-2e-3-64",
            "train-1e-3-128",
            "train-2e-3-128"
        ])
    );
    // A full name means that variant; its follower by its full name too.
    t.run(&[
        "--only",
        "train@LEN=128,LR=2e-3",
        "half@LEN=128,LR=2e-3",
        "--force",
        "train@LEN=128,LR=2e-3",
    ]);
    assert_eq!(t.executions(), log(&["train-2e-3-128", "half"]));
    // `--until` a follower's variant runs just its chain.
    t.run(&["--until", "evaluate@LEN=64,LR=1e-3"]);
    assert_eq!(t.executions(), log(&["half", "evaluate"]));
    // A name that is neither: exit 2 with a suggestion.
    let bad = t.itera(&["run", "pipeline.toml", "--only", "trian"], 2);
    assert!(
        bad.stderr.contains("did you mean `train`"),
        "{}",
        bad.stderr
    );
    let bad = t.itera(
        &["run", "pipeline.toml", "--only", "train@LEN=32,LR=1e-3"],
        2,
    );
    assert!(bad.stderr.contains("unknown stage"), "{}", bad.stderr);
}

#[test]
fn explain_and_rerun_verify_work_per_variant() {
    let t = Test::with_pipeline(SWEEP);
    t.run(&["--until", "half"]);
    t.executions();
    let explain = t.itera(&["explain", "pipeline.toml", "train"], 0).stdout;
    for v in VARIANTS {
        assert!(
            explain.contains(&format!("stage `train@{v}` (kind `shell`)")),
            "{explain}"
        );
    }
    assert_eq!(explain.matches("status: stored").count(), 4, "{explain}");
    let one = t
        .itera(&["explain", "pipeline.toml", "half@LEN=64,LR=2e-3"], 0)
        .stdout;
    assert!(
        one.contains("model = train@LEN=64,LR=2e-3.model.txt"),
        "{one}"
    );

    let out = t.itera(&["rerun", "latest", "--verify"], 0);
    assert_eq!(
        out.stderr.matches("reproduced the recorded digest").count(),
        9,
        "{}",
        out.stderr
    );
}

#[test]
fn invalid_sweeps_exit_2_and_write_nothing() {
    let cases: [(&str, Vec<&str>, &str); 5] = [
        (SWEEP, vec!["--set", r#"train.matrix."env.LR"=[]"#], "has no values"),
        (SWEEP, vec!["--set", r#"train.matrix.evn.LR=["1"]"#], "unknown parameter `evn`"),
        (SWEEP, vec!["--set", r#"train.matrix."env.LR"=[1, 2]"#], "invalid parameter `env.LR`"),
        (
            &SWEEP.replace("evaluate[*].eval.txt", "prep[*].data.txt"),
            vec![],
            "which is not swept",
        ),
        (
            &SWEEP.replace(r#""env.LEN" = ["64", "128"]"#, r#""env.LEN" = ["64", "128"]
"command" = ["echo 1", "echo 2", "echo 3", "echo 4", "echo 5", "echo 6", "echo 7", "echo 8", "echo 9", "echo 10", "echo 11", "echo 12", "echo 13", "echo 14", "echo 15", "echo 16", "echo 17", "echo 18", "echo 19", "echo 20", "echo 21", "echo 22", "echo 23", "echo 24", "echo 25", "echo 26", "echo 27", "echo 28", "echo 29", "echo 30", "echo 31", "echo 32", "echo 33", "echo 34", "echo 35", "echo 36", "echo 37", "echo 38", "echo 39", "echo 40", "echo 41", "echo 42", "echo 43", "echo 44", "echo 45", "echo 46", "echo 47", "echo 48", "echo 49", "echo 50", "echo 51", "echo 52", "echo 53", "echo 54", "echo 55", "echo 56", "echo 57", "echo 58", "echo 59", "echo 60", "echo 61", "echo 62", "echo 63", "echo 64", "echo 65"]"#),
            vec![],
            "more than the limit of 256",
        ),
    ];
    for (pipeline, extra, message) in cases {
        let t = Test::with_pipeline(pipeline);
        let mut args = vec!["run", "pipeline.toml"];
        args.extend(extra.iter().copied());
        let out = t.itera(&args, 2);
        assert!(out.stderr.contains(message), "{message}:\n{}", out.stderr);
        assert!(
            out.stderr.contains("pipeline.toml:") || out.stderr.contains("--> --set"),
            "{}",
            out.stderr
        );
        assert!(!t.path("runs").exists(), "nothing written for {message}");
        assert!(t.executions().is_empty());
    }
}
