//! A study: every model of one or more evaluations side by side, with the training runs
//! behind them, the settings that differ between those runs, and the best model by a
//! stated rule.
//!
//! Models keep the order of the `eval` inputs (and of the models inside each); the first is
//! the study's reference for the deltas. A training run belongs to the model of the same
//! stage name (a `half-convert` model has no training run of its own).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::evaluate::fill_deltas;
use crate::evaluate::repetition::LOOPING_THRESHOLD;
use crate::records::{EvalReport, ModelEval, TrainLogLine, TrainSummary};

/// The rule that names the best model, as stated in the report. A model whose
/// continuations the report flags as looping is not named best while another model does
/// not loop: the report would otherwise recommend a model in the same findings that flag
/// its text (a tie to 4 decimals with a smaller file used to be enough).
pub const BEST_RULE: &str = "lowest validation bits per byte (compared to 4 decimals, as shown) among the models whose continuations do not loop (at most 25% repeated 4-grams in greedy and in sampled text; all models when every one loops), ties going to the smaller weights file, then to the earlier model in the study";

/// Whether the report flags a model's continuations as looping: greedy or sampled text
/// with a repeated-4-gram share above [`LOOPING_THRESHOLD`].
pub fn loops(m: &ModelEval) -> bool {
    let d = &m.degeneration;
    d.greedy.repeated_4gram_share > LOOPING_THRESHOLD
        || d.sampled.repeated_4gram_share > LOOPING_THRESHOLD
}

/// `models` in the order of [`BEST_RULE`]: models that do not loop first, then by bits
/// per byte to 4 decimals, then by file size; equal keys keep the study's order.
pub fn ranked(models: &[ModelEval]) -> Vec<&ModelEval> {
    let mut order: Vec<&ModelEval> = models.iter().collect();
    order.sort_by_key(|m| (loops(m), bpb_key(m), m.file_bytes));
    order
}

/// Bits per byte as the rule compares them: to 4 decimals, as the report shows them.
pub fn bpb_key(m: &ModelEval) -> i64 {
    (m.bits_per_byte * 1e4).round() as i64
}

/// One `train` input: its stage name, summary and log.
#[derive(Debug, Clone)]
pub struct TrainRun {
    pub name: String,
    pub summary: TrainSummary,
    pub log: Vec<TrainLogLine>,
}

/// One `eval` input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    /// The evaluate stage.
    pub stage: String,
    pub eval: EvalReport,
}

/// Everything the report shows.
#[derive(Debug, Clone)]
pub struct Study {
    pub evaluations: Vec<Evaluation>,
    /// Every model of every evaluation, deltas against the first.
    pub models: Vec<ModelEval>,
    /// For each model, the index of its evaluation.
    pub model_eval: Vec<usize>,
    pub trains: Vec<TrainRun>,
    pub settings: Settings,
}

/// The recorded training settings that differ between the training runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Dotted keys (`model.hidden_size`, `optimizer.learning_rate`, `steps`, ...).
    pub keys: Vec<String>,
    /// Per training run, in input order, its value of each key (`—` when not recorded).
    pub rows: Vec<SettingsRow>,
}

/// One training run's values of the differing settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsRow {
    pub name: String,
    pub values: Vec<String>,
}

impl Study {
    /// Merges the evaluations (names made unique by prefixing the evaluate stage where two
    /// evaluations hold models of the same name) and the training runs.
    pub fn new(evaluations: Vec<Evaluation>, trains: Vec<TrainRun>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            evaluations.iter().any(|e| !e.eval.models.is_empty()),
            "the evaluations list no models: nothing to report"
        );
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &evaluations {
            for m in &e.eval.models {
                *count.entry(m.name.as_str()).or_default() += 1;
            }
        }
        let mut models = Vec::new();
        let mut model_eval = Vec::new();
        for (i, e) in evaluations.iter().enumerate() {
            for m in &e.eval.models {
                let mut m = m.clone();
                if count.get(m.name.as_str()).copied().unwrap_or(0) > 1 {
                    m.name = format!("{}/{}", e.stage, m.name);
                }
                models.push(m);
                model_eval.push(i);
            }
        }
        fill_deltas(&mut models);
        let settings = differing_settings(&trains);
        Ok(Self {
            evaluations,
            models,
            model_eval,
            trains,
            settings,
        })
    }

    /// The training run of a model, if one was given.
    pub fn train_of(&self, model: &str) -> Option<&TrainRun> {
        self.trains.iter().find(|t| t.name == model)
    }

    /// The best model by [`BEST_RULE`] (only with two or more models).
    pub fn best(&self) -> Option<&ModelEval> {
        best(&self.models)
    }
}

/// The best of `models` by [`BEST_RULE`]; `None` for fewer than two.
pub fn best(models: &[ModelEval]) -> Option<&ModelEval> {
    if models.len() < 2 {
        return None;
    }
    ranked(models).first().copied()
}

/// A training run's settings as dotted keys: its recorded params (defaults filled), then
/// what the summary resolved (the model config with the tokenizer's vocabulary, steps from
/// epochs, seed, threads), which wins.
pub fn settings_of(summary: &TrainSummary) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(params) = &summary.params {
        flatten("", params, &mut out);
    }
    if let Ok(config) = serde_json::to_value(&summary.config) {
        flatten("model", &config, &mut out);
    }
    for (k, v) in [
        ("steps", summary.steps.to_string()),
        ("batch_size", summary.batch_size.to_string()),
        ("seq_len", summary.seq_len.to_string()),
        ("seed", summary.seed.to_string()),
        ("threads", summary.threads.to_string()),
    ] {
        out.insert(k.to_owned(), v);
    }
    // `epochs` is an alternative to `steps`, which is recorded resolved.
    out.remove("epochs");
    out
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                flatten(&key(k), x, out);
            }
        }
        serde_json::Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

/// The keys whose values are not the same in every training run.
pub fn differing_settings(trains: &[TrainRun]) -> Settings {
    if trains.len() < 2 {
        return Settings::default();
    }
    let all: Vec<BTreeMap<String, String>> =
        trains.iter().map(|t| settings_of(&t.summary)).collect();
    let keys: BTreeSet<&String> = all.iter().flat_map(|m| m.keys()).collect();
    let keys: Vec<String> = keys
        .into_iter()
        .filter(|k| {
            let first = all[0].get(*k);
            all.iter().any(|m| m.get(*k) != first)
        })
        .cloned()
        .collect();
    let rows = trains
        .iter()
        .zip(&all)
        .map(|(t, m)| SettingsRow {
            name: t.name.clone(),
            values: keys
                .iter()
                .map(|k| m.get(k).cloned().unwrap_or_else(|| "—".into()))
                .collect(),
        })
        .collect();
    Settings { keys, rows }
}
