//! Caching: what runs on the first run, an identical rerun, a changed param, an edited
//! input file, a renamed stage.

use crate::test::{Test, DIAMOND};

#[test]
fn first_run_executes_every_stage_and_an_identical_rerun_none() {
    let t = Test::with_pipeline(DIAMOND);
    let first = t.run(&[]);
    assert_eq!(t.executions(), ["a", "b", "c", "d"]);
    assert!(first.stderr.contains("4 ran, 0 cached"), "{}", first.stderr);

    let second = t.run(&[]);
    assert!(
        t.executions().is_empty(),
        "nothing executes the second time"
    );
    assert!(
        second.stderr.contains("0 ran, 4 cached"),
        "{}",
        second.stderr
    );

    // The result is the one the stages computed: d = b + C.
    let entries = t.store_entries();
    assert_eq!(entries.len(), 4);
    let d = entries
        .iter()
        .find(|e| e.join("out/d.txt").exists())
        .expect("d's entry");
    assert_eq!(
        std::fs::read_to_string(d.join("out/d.txt")).unwrap(),
        "alpha\nbeta\nALPHA\n1\n"
    );
}

#[test]
fn changing_one_param_reruns_exactly_that_stage_and_its_downstream() {
    let t = Test::with_pipeline(DIAMOND);
    t.run(&[]);
    t.executions();

    t.run(&["--set", "c.env.LEVEL=\"2\""]);
    assert_eq!(t.executions(), ["c", "d"]);
    // The override is recorded in the run.
    let show = t.itera(&["show", "latest"], 0);
    assert!(
        show.stdout.contains("--set:    c.env.LEVEL=\"2\""),
        "{}",
        show.stdout
    );

    // Editing the file itself (same change) reuses what the override computed.
    t.write(
        "pipeline.toml",
        &DIAMOND.replace("LEVEL = \"1\"", "LEVEL = \"2\""),
    );
    t.run(&[]);
    assert!(t.executions().is_empty());

    // A change to b leaves c cached.
    t.write(
        "pipeline.toml",
        &DIAMOND
            .replace("echo beta", "echo BETA")
            .replace("LEVEL = \"1\"", "LEVEL = \"2\""),
    );
    t.run(&[]);
    assert_eq!(t.executions(), ["b", "d"]);
}

const WITH_FILES: &str = r#"
[pipeline]
name = "files"

[stages.data]
kind = "files"
paths = ["data/corpus.txt", "notes"]

[stages.count]
kind = "shell"
inputs = { corpus = "data.corpus.txt" }
command = "echo count >> executions.log; wc -l < {inputs.corpus} > {out}/lines"
outputs = ["lines"]

[stages.list]
kind = "shell"
inputs = { notes = "data.notes" }
command = "echo list >> executions.log; ls {inputs.notes} > {out}/names"
outputs = ["names"]
"#;

#[test]
fn editing_a_file_behind_a_files_stage_reruns_its_consumers() {
    let t = Test::with_pipeline(WITH_FILES);
    t.write("data/corpus.txt", "one\ntwo\n");
    t.write("notes/a.md", "a");
    t.run(&[]);
    assert_eq!(t.executions(), ["count", "list"]);

    // Touching without changing content changes nothing (mtimes are not hashed).
    t.write("data/corpus.txt", "one\ntwo\n");
    t.run(&[]);
    assert!(t.executions().is_empty());

    t.write("data/corpus.txt", "one\ntwo\nthree\n");
    let out = t.run(&[]);
    assert!(out.stderr.contains("data: running"), "{}", out.stderr);
    // `list` reads `notes`, which did not change, but the `data` artifact as a whole did;
    // its key uses the whole artifact's digest, so both consumers rerun.
    assert_eq!(t.executions(), ["count", "list"]);
    let status = t.itera(&["status", "pipeline.toml"], 0);
    assert!(
        status.stdout.contains("0 to run, 3 cached"),
        "{}",
        status.stdout
    );

    // A new file in a snapshotted folder is noticed too.
    t.write("notes/b.md", "b");
    t.run(&[]);
    assert_eq!(t.executions(), ["count", "list"]);
}

#[test]
fn renaming_a_stage_reuses_the_cache() {
    let t = Test::with_pipeline(DIAMOND);
    t.run(&[]);
    t.executions();
    let renamed = DIAMOND
        .replace("[stages.b]", "[stages.beta]")
        .replace("left = \"b\"", "left = \"beta\"");
    t.write("pipeline.toml", &renamed);
    let out = t.run(&[]);
    assert!(t.executions().is_empty(), "{}", out.stderr);
    assert!(out.stderr.contains("beta: cached"), "{}", out.stderr);
}

#[test]
fn until_and_only_run_part_of_the_graph_and_force_recomputes() {
    let t = Test::with_pipeline(DIAMOND);
    t.run(&["--until", "b"]);
    assert_eq!(t.executions(), ["a", "b"]);

    // --only c works because a is stored; d is not selected.
    t.run(&["--only", "c"]);
    assert_eq!(t.executions(), ["c"]);

    // --only d with everything upstream stored.
    t.run(&["--only", "d"]);
    assert_eq!(t.executions(), ["d"]);

    t.run(&["--force", "b"]);
    assert_eq!(
        t.executions(),
        ["b"],
        "d's inputs did not change: b is deterministic"
    );
    t.run(&["--force-all", "--jobs", "2"]);
    assert_eq!(t.executions(), ["a", "b", "c", "d"]);
}
