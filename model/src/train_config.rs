//! Optimisation settings of a training run, with their one set of defaults: AdamW and
//! clipping ([`OptimizerConfig`], the `train` stage's `optimizer` table), the warmup +
//! cosine learning-rate schedule ([`ScheduleConfig`], its `schedule` table), batch shape
//! and length of the run; validated with actionable messages naming each key's path.

use crate::config::ConfigIssue;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How to train: AdamW hyper-parameters, the learning-rate schedule, and the batch shape
/// and length of the run. The `train` stage's `optimizer` and `schedule` tables are
/// [`OptimizerConfig`] and [`ScheduleConfig`] themselves, so every default lives here once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// AdamW settings.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Optimizer steps of the whole run.
    #[serde(default = "defaults::steps")]
    pub steps: u64,
    /// Sequences per batch.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Tokens per training sequence (at most the model's `max_seq_length`).
    #[serde(default = "defaults::seq_len")]
    pub seq_len: usize,
}

/// AdamW (decoupled weight decay) and gradient clipping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Peak learning rate, reached at the end of warmup.
    #[serde(default = "defaults::learning_rate")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub learning_rate: f64,
    /// First-moment decay (beta1).
    #[serde(default = "defaults::beta1")]
    #[schemars(range(min = 0), extend("exclusiveMaximum" = 1))]
    pub beta1: f64,
    /// Second-moment decay (beta2).
    #[serde(default = "defaults::beta2")]
    #[schemars(range(min = 0), extend("exclusiveMaximum" = 1))]
    pub beta2: f64,
    /// Added to the root of the second moment.
    #[serde(default = "defaults::eps")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub eps: f64,
    /// Decoupled weight decay (Loshchilov & Hutter 2019) of the weight matrices only:
    /// never of norms, biases, embeddings, `A_log` or `D`.
    #[serde(default = "defaults::weight_decay")]
    #[schemars(range(min = 0), extend("exclusiveMaximum" = 1))]
    pub weight_decay: f64,
    /// Clip the gradient's global L2 norm to this (0 disables clipping).
    #[serde(default = "defaults::grad_clip")]
    #[schemars(range(min = 0))]
    pub grad_clip: f64,
    /// Also apply `weight_decay` to the token and position embeddings (with tied
    /// embeddings the token embedding is the output head too).
    #[serde(default)]
    pub decay_embeddings: bool,
    /// Keep an exponential moving average of the weights, updated after every step with
    /// decay `min(ema_decay, (1 + t) / (10 + t))` at step `t`, and use it for validation
    /// and the exported model (0 disables it: the last step's weights are exported).
    #[serde(default)]
    #[schemars(range(min = 0), extend("exclusiveMaximum" = 1))]
    pub ema_decay: f64,
}

/// Linear warmup, then cosine decay to `min_lr_ratio` times the peak at the last step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Steps of linear warmup from 0 to the peak learning rate.
    #[serde(default = "defaults::warmup_steps")]
    pub warmup_steps: u64,
    /// Learning rate at the last step, as a fraction of the peak.
    #[serde(default = "defaults::min_lr_ratio")]
    #[schemars(range(min = 0, max = 1))]
    pub min_lr_ratio: f64,
}

/// The defaults of every training setting (the `train` stage uses these too).
pub mod defaults {
    pub const fn learning_rate() -> f64 {
        3e-4
    }
    pub const fn beta1() -> f64 {
        0.9
    }
    pub const fn beta2() -> f64 {
        0.95
    }
    pub const fn eps() -> f64 {
        1e-8
    }
    pub const fn weight_decay() -> f64 {
        0.1
    }
    pub const fn warmup_steps() -> u64 {
        100
    }
    pub const fn min_lr_ratio() -> f64 {
        0.1
    }
    pub const fn grad_clip() -> f64 {
        1.0
    }
    pub const fn steps() -> u64 {
        1000
    }
    pub const fn batch_size() -> usize {
        32
    }
    pub const fn seq_len() -> usize {
        128
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            optimizer: OptimizerConfig::default(),
            schedule: ScheduleConfig::default(),
            steps: defaults::steps(),
            batch_size: defaults::batch_size(),
            seq_len: defaults::seq_len(),
        }
    }
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            learning_rate: defaults::learning_rate(),
            beta1: defaults::beta1(),
            beta2: defaults::beta2(),
            eps: defaults::eps(),
            weight_decay: defaults::weight_decay(),
            grad_clip: defaults::grad_clip(),
            decay_embeddings: false,
            ema_decay: 0.0,
        }
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            warmup_steps: defaults::warmup_steps(),
            min_lr_ratio: defaults::min_lr_ratio(),
        }
    }
}

impl TrainConfig {
    /// Learning rate of the 0-based optimizer step `step`: linear warmup over
    /// `warmup_steps`, then cosine decay to `min_lr_ratio * learning_rate` at `steps`.
    pub fn lr_at(&self, step: u64) -> f64 {
        let peak = self.optimizer.learning_rate;
        let warmup = self.schedule.warmup_steps;
        if step < warmup {
            return peak * (step + 1) as f64 / warmup as f64;
        }
        let span = self.steps.saturating_sub(warmup).max(1);
        let progress = ((step - warmup) as f64 / span as f64).min(1.0);
        let min = peak * self.schedule.min_lr_ratio;
        min + 0.5 * (peak - min) * (1.0 + (std::f64::consts::PI * progress).cos())
    }

    /// Every problem with the settings (empty when valid); `max_seq_length` is the model's.
    pub fn issues(&self, max_seq_length: usize) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut bad = |field: &'static str, ok: bool, message: String| {
            if !ok {
                issues.push(ConfigIssue { field, message });
            }
        };
        let (o, sch) = (&self.optimizer, &self.schedule);
        let lr = o.learning_rate;
        bad(
            "optimizer.learning_rate",
            lr > 0.0 && lr.is_finite(),
            format!("must be a positive number, found {lr}"),
        );
        bad(
            "optimizer.beta1",
            (0.0..1.0).contains(&o.beta1),
            format!("must be in [0, 1), found {}", o.beta1),
        );
        bad(
            "optimizer.beta2",
            (0.0..1.0).contains(&o.beta2),
            format!("must be in [0, 1), found {}", o.beta2),
        );
        bad(
            "optimizer.eps",
            o.eps > 0.0 && o.eps.is_finite(),
            format!("must be a positive number, found {}", o.eps),
        );
        let wd = o.weight_decay;
        bad(
            "optimizer.weight_decay",
            (0.0..1.0).contains(&wd),
            format!("must be in [0, 1), found {wd}"),
        );
        let r = sch.min_lr_ratio;
        bad(
            "schedule.min_lr_ratio",
            (0.0..=1.0).contains(&r),
            format!("must be in [0, 1], found {r}"),
        );
        bad(
            "optimizer.ema_decay",
            (0.0..1.0).contains(&o.ema_decay),
            format!(
                "must be in [0, 1) (0 turns averaging off), found {}",
                o.ema_decay
            ),
        );
        let c = o.grad_clip;
        bad(
            "optimizer.grad_clip",
            c >= 0.0 && c.is_finite(),
            format!("must be zero (off) or positive, found {c}"),
        );
        bad(
            "steps",
            self.steps >= 1,
            "must be at least 1, found 0".into(),
        );
        bad(
            "batch_size",
            self.batch_size >= 1,
            "must be at least 1, found 0".into(),
        );
        bad(
            "seq_len",
            (1..=max_seq_length).contains(&self.seq_len),
            format!(
                "must be between 1 and the model's max_seq_length ({max_seq_length}), found {}; \
                 raise model.max_seq_length or lower seq_len",
                self.seq_len
            ),
        );
        issues
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let c = TrainConfig {
            optimizer: OptimizerConfig {
                learning_rate: 1.0,
                ..Default::default()
            },
            schedule: ScheduleConfig {
                warmup_steps: 10,
                min_lr_ratio: 0.1,
            },
            steps: 110,
            ..Default::default()
        };
        assert!((c.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(10) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(60) - 0.55).abs() < 1e-12);
        assert!((c.lr_at(110) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(500) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn invalid_settings_are_all_reported() {
        let c = TrainConfig {
            optimizer: OptimizerConfig {
                learning_rate: 0.0,
                beta2: 1.0,
                ..Default::default()
            },
            seq_len: 256,
            batch_size: 0,
            ..Default::default()
        };
        let issues = c.issues(128);
        let fields: Vec<_> = issues.iter().map(|i| i.field).collect();
        assert_eq!(
            fields,
            [
                "optimizer.learning_rate",
                "optimizer.beta2",
                "batch_size",
                "seq_len"
            ]
        );
        assert!(issues[3].message.contains("max_seq_length (128)"));
        assert!(TrainConfig::default().issues(128).is_empty());
    }

    #[test]
    fn unknown_fields_are_rejected_and_defaults_filled() {
        let c: TrainConfig = serde_json::from_str(r#"{"steps": 5}"#).unwrap();
        assert_eq!(c.steps, 5);
        assert_eq!(c.batch_size, 32);
        let e = serde_json::from_str::<TrainConfig>(r#"{"stepz": 5}"#).unwrap_err();
        assert!(e.to_string().contains("stepz"));
        let e = serde_json::from_str::<TrainConfig>(r#"{"optimizer": {"lr": 1}}"#).unwrap_err();
        assert!(e.to_string().contains("lr"));
    }
}
