//! Params of the `train` stage: the model table (a [`ModelConfig`] whose `vocab_size` may be
//! left to the tokenizer), AdamW, the warmup + cosine schedule, the run's length and batch
//! shape, and how often to log, validate and checkpoint.

use std::borrow::Cow;

use itera_engine::stage::ParamIssue;
use itera_model::config::ModelConfig;
use itera_model::{OptimizerConfig, ScheduleConfig, TrainConfig};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Params of `kind = "train"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// The model's sizes (every field of the model config). `vocab_size`, when omitted,
    /// is the tokenizer's vocabulary size (from the `data` input's meta.json).
    #[serde(default)]
    pub model: ModelParams,
    /// AdamW settings.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule: linear warmup, then cosine decay to `min_lr_ratio` times the
    /// peak at the last step.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Optimizer steps. Give `steps` or `epochs`, not both; default 1000 steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub steps: Option<u64>,
    /// Passes over the training windows (`(train tokens - 1) / seq_len` windows each);
    /// converted to `ceil(epochs * windows / batch_size)` steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub epochs: Option<f64>,
    /// Sequences per batch.
    #[serde(default = "defaults::batch_size")]
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    /// Tokens per training sequence (at most `model.max_seq_length`).
    #[serde(default = "defaults::seq_len")]
    #[schemars(range(min = 1))]
    pub seq_len: usize,
    /// Write a `train_log.jsonl` line every this many steps (and after the last).
    #[serde(default = "defaults::log_every")]
    #[schemars(range(min = 1))]
    pub log_every: u64,
    /// Measure the validation loss every this many steps (and after the last).
    #[serde(default = "defaults::eval_every")]
    #[schemars(range(min = 1))]
    pub eval_every: u64,
    /// Validation tokens per validation pass (the first ones of `valid.bin`).
    #[serde(default = "defaults::eval_tokens")]
    #[schemars(range(min = 1))]
    pub eval_tokens: u64,
    /// Save a checkpoint in the stage's work folder every this many steps (a killed run
    /// resumes from the last one). 0 disables periodic checkpoints (an interrupted run
    /// still saves one when it stops).
    #[serde(default = "defaults::checkpoint_every")]
    pub checkpoint_every: u64,
    /// Training threads. Default: the stage's thread budget. Results are bit-identical for
    /// the same seed, data and thread count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub threads: Option<usize>,
    /// Seed of the initialisation, batch order and dropout. Default: the pipeline's seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// Default number of steps when neither `steps` nor `epochs` is given.
pub const DEFAULT_STEPS: u64 = itera_model::train_config::defaults::steps();

mod defaults {
    pub use itera_model::train_config::defaults::{batch_size, seq_len};
    pub fn log_every() -> u64 {
        10
    }
    pub fn eval_every() -> u64 {
        100
    }
    pub fn eval_tokens() -> u64 {
        16_384
    }
    pub fn checkpoint_every() -> u64 {
        100
    }
}

/// The `model` table: a [`ModelConfig`] that remembers whether `vocab_size` was given.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelParams {
    /// `vocab_size` as written; `None` means "the tokenizer's".
    pub vocab_size: Option<usize>,
    /// Every other field (its `vocab_size` is a placeholder until resolved).
    pub config: ModelConfig,
}

impl ModelParams {
    /// The model config with `vocab_size` resolved against the tokenizer's vocabulary.
    pub fn resolve(&self, tokenizer_vocab: usize) -> ModelConfig {
        ModelConfig {
            vocab_size: self.vocab_size.unwrap_or(tokenizer_vocab),
            ..self.config.clone()
        }
    }
}

impl<'de> Deserialize<'de> for ModelParams {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let vocab_size = match map.remove("vocab_size") {
            None => None,
            Some(v) => Some(
                serde_json::from_value::<usize>(v)
                    .map_err(|e| D::Error::custom(format!("vocab_size: {e}")))?,
            ),
        };
        let config: ModelConfig =
            serde_json::from_value(serde_json::Value::Object(map)).map_err(D::Error::custom)?;
        Ok(Self { vocab_size, config })
    }
}

impl Serialize for ModelParams {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let mut value = serde_json::to_value(&self.config).map_err(S::Error::custom)?;
        if let Some(map) = value.as_object_mut() {
            map.remove("vocab_size");
            if let Some(v) = self.vocab_size {
                map.insert("vocab_size".into(), v.into());
            }
        }
        value.serialize(s)
    }
}

impl JsonSchema for ModelParams {
    fn schema_name() -> Cow<'static, str> {
        "ModelParams".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        ModelConfig::json_schema(generator)
    }
}

impl TrainParams {
    /// The optimisation settings for a run of `steps` steps.
    pub fn train_config(&self, steps: u64) -> TrainConfig {
        TrainConfig {
            optimizer: self.optimizer.clone(),
            schedule: self.schedule.clone(),
            steps,
            batch_size: self.batch_size,
            seq_len: self.seq_len,
        }
    }

    /// A warmup that does not end before the run does (the learning rate would never
    /// reach its peak or never decay); `steps` is the run's length. For `epochs`, whose
    /// steps depend on the data, the train stage checks this when it starts.
    pub fn warmup_problem(&self, steps: u64) -> Option<String> {
        let warmup = self.schedule.warmup_steps;
        (steps > 0 && warmup >= steps).then(|| {
            format!(
                "a warmup of {warmup} steps does not end before the run's last step ({steps} steps): the learning rate would never decay"
            )
        })
    }

    /// Steps of the run, given the number of training tokens.
    pub fn total_steps(&self, train_tokens: usize) -> u64 {
        match (self.steps, self.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => {
                let windows = train_tokens.saturating_sub(1) / self.seq_len.max(1);
                ((e * windows as f64) / self.batch_size.max(1) as f64)
                    .ceil()
                    .max(1.0) as u64
            }
            (None, None) => DEFAULT_STEPS,
        }
    }

    /// Every problem with the params, with its key path.
    pub fn issues(&self) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        let config = self.model.resolve(self.model.vocab_size.unwrap_or(2));
        for i in config.issues() {
            issues.push(ParamIssue::new(&format!("model.{}", i.field), i.message));
        }
        let steps = self.steps.unwrap_or(DEFAULT_STEPS);
        for i in self
            .train_config(steps.max(1))
            .issues(config.max_seq_length)
        {
            issues.push(ParamIssue::new(i.field, i.message));
        }
        if let Some(problem) = self.warmup_problem(steps).filter(|_| self.epochs.is_none()) {
            issues.push(
                ParamIssue::new("schedule.warmup_steps", problem)
                    .with_help("lower schedule.warmup_steps or train for more steps"),
            );
        }
        if self.steps.is_some() && self.epochs.is_some() {
            issues.push(
                ParamIssue::new("epochs", "give `steps` or `epochs`, not both")
                    .with_help("remove one of them"),
            );
        }
        if let Some(e) = self.epochs {
            if !(e > 0.0 && e.is_finite()) {
                issues.push(ParamIssue::new(
                    "epochs",
                    format!("must be a positive number, found {e}"),
                ));
            }
        }
        for (path, v) in [
            ("log_every", self.log_every),
            ("eval_every", self.eval_every),
            ("eval_tokens", self.eval_tokens),
        ] {
            if v == 0 {
                issues.push(ParamIssue::new(path, "must be at least 1, found 0"));
            }
        }
        if self.threads == Some(0) {
            issues.push(
                ParamIssue::new("threads", "must be at least 1, found 0")
                    .with_help("omit it to use the stage's thread budget"),
            );
        }
        issues
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TrainParams, String> {
        let value: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        value.try_into().map_err(|e: toml::de::Error| e.to_string())
    }

    #[test]
    fn vocab_size_is_left_to_the_tokenizer_unless_given() {
        let p = parse("[model]\nhidden_size = 64").unwrap();
        assert_eq!(p.model.vocab_size, None);
        assert_eq!(p.model.resolve(300).vocab_size, 300);
        assert_eq!(p.model.resolve(300).hidden_size, 64);
        let json = serde_json::to_value(&p).unwrap();
        assert!(json["model"].get("vocab_size").is_none(), "{json}");
        let p = parse("[model]\nvocab_size = 500").unwrap();
        assert_eq!(p.model.resolve(300).vocab_size, 500);
        let back: TrainParams = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn unknown_and_invalid_values_are_reported_with_their_path() {
        let err = parse("[model]\nhiden_size = 64").unwrap_err();
        assert!(err.contains("hiden_size"), "{err}");
        let err = parse("stepz = 3").unwrap_err();
        assert!(err.contains("stepz"), "{err}");
        let p = parse(
            "steps = 10\nepochs = 1.0\nseq_len = 500\nlog_every = 0\n[model]\ntop_k_experts = 9",
        )
        .unwrap();
        let paths: Vec<String> = p.issues().iter().map(|i| i.path.join(".")).collect();
        for want in ["model.top_k_experts", "seq_len", "epochs", "log_every"] {
            assert!(paths.iter().any(|p| p == want), "{want} not in {paths:?}");
        }
    }

    #[test]
    fn a_warmup_as_long_as_the_run_is_reported() {
        let issues = parse("steps = 50\n[schedule]\nwarmup_steps = 50")
            .unwrap()
            .issues();
        let warmup: Vec<_> = issues
            .iter()
            .filter(|i| i.path == ["schedule", "warmup_steps"])
            .collect();
        assert_eq!(warmup.len(), 1, "{issues:?}");
        assert!(
            warmup[0].message.contains("50 steps"),
            "{}",
            warmup[0].message
        );
        // The default 100-step warmup is longer than a 40-step run.
        assert!(!parse("steps = 40").unwrap().issues().is_empty());
        assert!(parse("steps = 51\n[schedule]\nwarmup_steps = 50")
            .unwrap()
            .issues()
            .is_empty());
        // With epochs the steps depend on the data: checked when the stage starts.
        let p = parse("epochs = 1.0\nbatch_size = 4\nseq_len = 10").unwrap();
        assert!(p.issues().is_empty());
        assert!(p.warmup_problem(p.total_steps(1001)).is_some());
    }

    #[test]
    fn epochs_become_steps() {
        let p = parse("epochs = 2.0\nbatch_size = 4\nseq_len = 10").unwrap();
        // 1001 tokens -> 100 windows; 2 epochs = 200 windows = 50 batches of 4.
        assert_eq!(p.total_steps(1001), 50);
        assert_eq!(parse("").unwrap().total_steps(1001), DEFAULT_STEPS);
    }
}
