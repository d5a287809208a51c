//! Optimisation settings of a training run (the `optim` part of the `train` stage's
//! params): AdamW, the warmup + cosine learning-rate schedule, clipping, batch shape and
//! length of the run; validated with actionable messages.

use crate::config::ConfigIssue;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How to train: AdamW hyper-parameters, schedule, clipping, batch shape, steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Peak learning rate, reached at the end of warmup.
    #[serde(default = "defaults::learning_rate")]
    pub learning_rate: f64,
    /// AdamW first-moment decay (beta1).
    #[serde(default = "defaults::beta1")]
    pub beta1: f64,
    /// AdamW second-moment decay (beta2).
    #[serde(default = "defaults::beta2")]
    pub beta2: f64,
    /// AdamW epsilon added to the root of the second moment.
    #[serde(default = "defaults::eps")]
    pub eps: f64,
    /// Decoupled weight decay (Loshchilov & Hutter 2019) applied to weight matrices only:
    /// never to norms, biases, embeddings, `A_log` or `D`.
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f64,
    /// Steps of linear warmup from 0 to `learning_rate`.
    #[serde(default = "defaults::warmup_steps")]
    pub warmup_steps: u64,
    /// The cosine schedule decays to `min_lr_ratio * learning_rate` at `steps`.
    #[serde(default = "defaults::min_lr_ratio")]
    pub min_lr_ratio: f64,
    /// Clip the global L2 norm of the gradient to this value (0 disables clipping).
    #[serde(default = "defaults::grad_clip")]
    pub grad_clip: f64,
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

mod defaults {
    pub fn learning_rate() -> f64 {
        1e-3
    }
    pub fn beta1() -> f64 {
        0.9
    }
    pub fn beta2() -> f64 {
        0.95
    }
    pub fn eps() -> f64 {
        1e-8
    }
    pub fn weight_decay() -> f64 {
        0.1
    }
    pub fn warmup_steps() -> u64 {
        100
    }
    pub fn min_lr_ratio() -> f64 {
        0.1
    }
    pub fn grad_clip() -> f64 {
        1.0
    }
    pub fn steps() -> u64 {
        1000
    }
    pub fn batch_size() -> usize {
        32
    }
    pub fn seq_len() -> usize {
        128
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            learning_rate: defaults::learning_rate(),
            beta1: defaults::beta1(),
            beta2: defaults::beta2(),
            eps: defaults::eps(),
            weight_decay: defaults::weight_decay(),
            warmup_steps: defaults::warmup_steps(),
            min_lr_ratio: defaults::min_lr_ratio(),
            grad_clip: defaults::grad_clip(),
            steps: defaults::steps(),
            batch_size: defaults::batch_size(),
            seq_len: defaults::seq_len(),
        }
    }
}

impl TrainConfig {
    /// Learning rate of the 0-based optimizer step `step`: linear warmup over
    /// `warmup_steps`, then cosine decay to `min_lr_ratio * learning_rate` at `steps`.
    pub fn lr_at(&self, step: u64) -> f64 {
        let peak = self.learning_rate;
        if step < self.warmup_steps {
            return peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let min = peak * self.min_lr_ratio;
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
        let lr = self.learning_rate;
        bad(
            "learning_rate",
            lr > 0.0 && lr.is_finite(),
            format!("must be a positive number, found {lr}"),
        );
        bad(
            "beta1",
            (0.0..1.0).contains(&self.beta1),
            format!("must be in [0, 1), found {}", self.beta1),
        );
        bad(
            "beta2",
            (0.0..1.0).contains(&self.beta2),
            format!("must be in [0, 1), found {}", self.beta2),
        );
        bad(
            "eps",
            self.eps > 0.0 && self.eps.is_finite(),
            format!("must be a positive number, found {}", self.eps),
        );
        let wd = self.weight_decay;
        bad(
            "weight_decay",
            (0.0..1.0).contains(&wd),
            format!("must be in [0, 1), found {wd}"),
        );
        let r = self.min_lr_ratio;
        bad(
            "min_lr_ratio",
            (0.0..=1.0).contains(&r),
            format!("must be in [0, 1], found {r}"),
        );
        let c = self.grad_clip;
        bad(
            "grad_clip",
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
            learning_rate: 1.0,
            warmup_steps: 10,
            steps: 110,
            min_lr_ratio: 0.1,
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
            learning_rate: 0.0,
            beta2: 1.0,
            seq_len: 256,
            batch_size: 0,
            ..Default::default()
        };
        let issues = c.issues(128);
        let fields: Vec<_> = issues.iter().map(|i| i.field).collect();
        assert_eq!(fields, ["learning_rate", "beta2", "batch_size", "seq_len"]);
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
    }
}
