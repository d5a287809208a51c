//! `--log-format json`: every stderr line of a smoke run (and of a failing run, an invalid
//! file and a bad flag) is one JSON object with the documented fields.

use serde_json::Value;

use crate::test::Test;

/// Parses every stderr line; panics naming the first line that is not a JSON object with
/// `timestamp`, `level`, `event` and `message`.
fn events(stderr: &str) -> Vec<Value> {
    assert!(!stderr.trim().is_empty(), "nothing on stderr");
    stderr
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n--- stderr\n{stderr}"));
            for field in ["timestamp", "level", "event", "message"] {
                assert!(v.get(field).is_some(), "no `{field}` in {line}");
            }
            v
        })
        .collect()
}

fn of<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

fn is_key(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|k| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[test]
fn every_line_of_a_smoke_run_is_a_json_event() {
    let t = Test::new();
    let smoke = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/smoke.toml");
    let out = t.itera(&["--log-format", "json", "-vv", "run", smoke], 0);
    let all = events(&out.stderr);
    let started = of(&all, "run.started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["pipeline"], "smoke");
    assert_eq!(started[0]["stages"], 6);
    let stage_started = of(&all, "stage.started");
    let finished = of(&all, "stage.finished");
    assert_eq!(stage_started.len(), 6);
    assert_eq!(finished.len(), 6);
    for e in stage_started.iter().chain(&finished) {
        assert!(is_key(&e["key"]), "{e}");
        assert!(e["stage"].is_string(), "{e}");
    }
    for e in &finished {
        assert_eq!(e["status"], "ran");
        assert!(e["duration_s"].as_f64().is_some_and(|d| d >= 0.0), "{e}");
    }
    let progress = of(&all, "stage.progress");
    assert!(
        progress
            .iter()
            .any(|e| e["stage"] == "train" && e["unit"] == "steps"),
        "{progress:?}"
    );
    // Training metrics: every logged step (smoke: every 5 of 40), as numbers and text.
    let metrics = of(&all, "stage.metrics");
    assert_eq!(metrics.len(), 8, "{metrics:?}");
    for (i, e) in metrics.iter().enumerate() {
        assert_eq!(e["stage"], "train");
        assert_eq!(e["metrics"]["step"], 5.0 * (i + 1) as f64);
        assert_eq!(e["metrics"]["steps"], 40.0);
        for name in ["loss", "lr", "tokens_per_s", "elapsed_s"] {
            assert!(
                e["metrics"][name].as_f64().is_some_and(f64::is_finite),
                "{name}: {e}"
            );
        }
    }
    assert!(metrics.iter().any(|e| e["metrics"]["val_loss"].is_number()));
    let train_messages: Vec<&str> = metrics.iter().filter_map(|e| e["text"].as_str()).collect();
    assert!(
        train_messages.iter().all(|t| t.contains("loss")),
        "{train_messages:?}"
    );
    // The ETA is the progress display's (live), not frozen into the status text.
    assert!(
        train_messages.iter().all(|t| !t.contains("ETA")),
        "{train_messages:?}"
    );
    assert!(
        progress.iter().all(|e| e.get("eta_s").is_some()),
        "{progress:?}"
    );
    // The vocabulary sample's size is what was read (the whole small train file), not
    // the cap (`train_sample_bytes = 500_000`).
    let train_bytes = progress
        .iter()
        .find(|e| e["phase"] == "tokenize train")
        .map(|e| e["total"].clone())
        .unwrap();
    let sample = format!("read a {train_bytes}-byte sample");
    assert!(
        of(&all, "stage.message")
            .iter()
            .any(|e| e["text"].as_str().is_some_and(|t| t.starts_with(&sample))),
        "{sample}"
    );
    let summary = of(&all, "run.finished");
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0]["status"], "succeeded");
    assert_eq!(summary[0]["ran"], 6);
    assert!(is_key(&summary[0]["stages"]["report"]["key"]));
    assert!(is_key(&summary[0]["stages"]["report"]["digest"]));

    // Cached: every stage says so with its key.
    let again = events(&t.itera(&["--log-format", "json", "run", smoke], 0).stderr);
    let cached = of(&again, "stage.cached");
    assert_eq!(cached.len(), 6);
    assert!(cached
        .iter()
        .all(|e| is_key(&e["key"]) && e["status"] == "cached"));
}

#[test]
fn failures_and_invalid_input_are_json_too() {
    let t = Test::with_pipeline(
        r#"
[pipeline]
name = "broken"

[stages.bad]
kind = "shell"
command = "echo about to fail; exit 3"
outputs = []
"#,
    );
    let out = t.itera(&["--log-format", "json", "run", "pipeline.toml"], 1);
    let all = events(&out.stderr);
    let failed = of(&all, "stage.failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["level"], "error");
    assert_eq!(failed[0]["stage"], "bad");
    assert!(
        failed[0]["log_tail"].to_string().contains("about to fail"),
        "{}",
        failed[0]
    );
    assert_eq!(of(&all, "run.finished")[0]["status"], "failed");

    t.write("invalid.toml", "[pipeline]\nname = \"x\"\n\n[stages.a]\nkind = \"shell\"\ncommand = \"true\"\noutptus = []\n");
    let out = t.itera(&["--log-format", "json", "validate", "invalid.toml"], 2);
    let all = events(&out.stderr);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["event"], "error");
    assert_eq!(all[0]["code"], 2);
    let d = &all[0]["diagnostics"][0];
    assert!(d["message"].as_str().unwrap().contains("outptus"), "{d}");
    assert_eq!(d["line"], 7);
    assert_eq!(d["column"], 1);
    assert!(
        d["place"].as_str().unwrap().ends_with("invalid.toml:7:1"),
        "{d}"
    );

    let out = t.itera(&["--log-format", "json", "run", "--no-such-flag"], 2);
    let all = events(&out.stderr);
    assert_eq!(all[0]["event"], "error");
}
