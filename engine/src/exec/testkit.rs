//! Test helpers for the executors: a small deterministic stage kind and a pipeline
//! builder, so executor tests run real stages without the pipeline-file loader.

use std::path::Path;
use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Event, EventSink, Force, Mode, RunJob};
use crate::record::RunDir;
use crate::spec::{InputRef, Pipeline, Resources, StageSpec};
use crate::stage::{CancelToken, Registry, StageContext, StageKind};
use crate::store::Store;

/// `kind = "concat"`: writes `text` followed by every input's `result.txt` into
/// `result.txt`, and appends the stage's name to `<base_dir>/executions.log`.
pub struct Concat;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcatParams {
    pub text: String,
    #[serde(default)]
    pub fail: bool,
}

impl StageKind for Concat {
    type Params = ConcatParams;
    const KIND: &'static str = "concat";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test kind";

    fn run(params: &ConcatParams, ctx: &StageContext) -> anyhow::Result<()> {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(ctx.base_dir.join("executions.log"))?;
        // One write per line: stages running at once append to the same file.
        log.write_all(format!("{}\n", ctx.stage).as_bytes())?;
        ctx.log.line(format!("concat {}", params.text));
        if params.fail {
            anyhow::bail!("asked to fail");
        }
        let mut text = params.text.clone();
        for list in ctx.inputs.values() {
            for input in list {
                text.push_str(&std::fs::read_to_string(input.path.join("result.txt"))?);
            }
        }
        std::fs::write(ctx.out_dir.join("result.txt"), text)?;
        Ok(())
    }
}

pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register::<Concat>();
    r
}

/// A pipeline of `concat` stages: `(name, text, upstream stages)`.
pub fn pipeline(base_dir: &Path, stages: &[(&str, &str, &[&str])]) -> Pipeline {
    let stages = stages
        .iter()
        .map(|(name, text, ups)| {
            let inputs = ups
                .iter()
                .map(|u| {
                    (
                        format!("in_{u}"),
                        vec![InputRef {
                            stage: (*u).to_owned(),
                            output: None,
                        }],
                    )
                })
                .collect();
            let spec = StageSpec {
                name: (*name).to_owned(),
                kind: "concat".into(),
                inputs,
                resources: Resources::default(),
                params: serde_json::json!({"fail": false, "text": text}),
            };
            ((*name).to_owned(), spec)
        })
        .collect();
    Pipeline {
        name: "test".into(),
        description: None,
        seed: 1,
        slurm: Resources::default(),
        stages,
        source: base_dir.join("p.toml"),
        base_dir: base_dir.to_owned(),
        overrides: vec![],
        resolved_toml: String::new(),
    }
}

/// Collects events.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<Event>>);
impl EventSink for Recorder {
    fn event(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

/// A job running every stage of `pipeline` with runs under `runs_dir`.
pub fn job(pipeline: Pipeline, runs_dir: &Path, events: Arc<Recorder>) -> RunJob {
    let run = RunDir::create(runs_dir, "test").unwrap();
    RunJob {
        selected: pipeline.stages.keys().cloned().collect(),
        pipeline: Arc::new(pipeline),
        registry: registry(),
        store: Store::new(runs_dir),
        run,
        force: Force::None,
        mode: Mode::Run,
        cancel: CancelToken::default(),
        events,
        cores: 2,
    }
}

/// Stage names in `<base>/executions.log`, one per execution, then clears it.
pub fn take_executions(base: &Path) -> Vec<String> {
    let path = base.join("executions.log");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    let mut v: Vec<String> = text.lines().map(str::to_owned).collect();
    v.sort();
    v
}

/// Sets `text` of a stage.
pub fn set_text(p: &mut Pipeline, stage: &str, text: &str) {
    p.stages.get_mut(stage).unwrap().params["text"] = serde_json::json!(text);
}

/// Makes a stage fail.
pub fn set_fail(p: &mut Pipeline, stage: &str) {
    p.stages.get_mut(stage).unwrap().params["fail"] = serde_json::json!(true);
}
