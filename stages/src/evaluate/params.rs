//! Params of the `evaluate` stage: how many validation tokens, the scoring window and
//! scorer, the prompts and sampling of the generations, and the speed measurements.

use itera_engine::stage::ParamIssue;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::scoring::ScorerKind;

/// The seed study's five prompts.
pub const SEED_PROMPTS: [&str; 5] = [
    "once upon a time",
    "the cat",
    "there was a",
    "in the beginning",
    "the quick brown",
];

/// Params of `kind = "evaluate"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// Validation tokens scored for every model: the first ones of `valid.bin` (fewer if
    /// the split is shorter), the same tokens for every model.
    #[serde(default = "defaults::eval_tokens")]
    #[schemars(range(min = 1))]
    pub eval_tokens: u64,
    /// Scoring window: each token is predicted from at most this many previous tokens.
    /// Default: the smallest `max_seq_length` of the models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub seq_len: Option<usize>,
    /// Prompts to generate from. Default: the seed study's five.
    #[serde(default = "defaults::prompts")]
    #[schemars(length(min = 1))]
    pub prompts: Vec<String>,
    /// Tokens generated per prompt (fewer if `<eos>` comes first or the context fills up).
    #[serde(default = "defaults::max_new_tokens")]
    #[schemars(range(min = 1))]
    pub max_new_tokens: usize,
    /// Settings of the sampled generations (the greedy ones need none).
    #[serde(default)]
    pub sampling: SamplingParams,
    /// Timed repetitions behind every speed (the median is reported, every run recorded).
    #[serde(default = "defaults::speed_runs")]
    #[schemars(range(min = 1))]
    pub speed_runs: usize,
    /// Tokens generated per timed generation run (capped by the context length).
    #[serde(default = "defaults::speed_tokens")]
    #[schemars(range(min = 1))]
    pub speed_tokens: usize,
    /// Validation tokens scored per timed scoring run (capped by `eval_tokens`).
    #[serde(default = "defaults::speed_score_tokens")]
    #[schemars(range(min = 1))]
    pub speed_score_tokens: u64,
    /// Threads for scoring. Default: the stage's thread budget. Generation is batch-1 and
    /// single-threaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub threads: Option<usize>,
    /// How losses are computed: `batched` (the parallel forward pass, fast) or `recurrent`
    /// (the decoder, token by token); they agree to rounding.
    #[serde(default)]
    pub scorer: ScorerKind,
}

/// How the `sampled` generations draw tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamplingParams {
    /// Softmax temperature (> 0).
    #[serde(default = "defaults::temperature")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub temperature: f64,
    /// Sample among the k most likely tokens only.
    #[serde(default = "defaults::top_k", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub top_k: Option<usize>,
    /// Nucleus sampling: the most likely tokens whose probabilities reach `top_p`, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("exclusiveMinimum" = 0), range(max = 1))]
    pub top_p: Option<f64>,
    /// Random seed. Default: the pipeline's seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: defaults::temperature(),
            top_k: defaults::top_k(),
            top_p: None,
            seed: None,
        }
    }
}

mod defaults {
    pub fn eval_tokens() -> u64 {
        32_768
    }
    pub fn prompts() -> Vec<String> {
        super::SEED_PROMPTS
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    }
    pub fn max_new_tokens() -> usize {
        32
    }
    pub fn speed_runs() -> usize {
        5
    }
    pub fn speed_tokens() -> usize {
        96
    }
    pub fn speed_score_tokens() -> u64 {
        4096
    }
    pub fn temperature() -> f64 {
        0.8
    }
    pub fn top_k() -> Option<usize> {
        Some(40)
    }
}

/// Every problem with `p`, each at its param's path.
pub fn issues(p: &EvaluateParams) -> Vec<ParamIssue> {
    let mut issues = Vec::new();
    let mut at_least_one = |path: &str, v: u64| {
        if v == 0 {
            issues.push(ParamIssue::new(path, "must be at least 1, found 0"));
        }
    };
    at_least_one("eval_tokens", p.eval_tokens);
    at_least_one("max_new_tokens", p.max_new_tokens as u64);
    at_least_one("speed_runs", p.speed_runs as u64);
    at_least_one("speed_tokens", p.speed_tokens as u64);
    at_least_one("speed_score_tokens", p.speed_score_tokens);
    if let Some(s) = p.seq_len {
        at_least_one("seq_len", s as u64);
    }
    if let Some(t) = p.threads {
        at_least_one("threads", t as u64);
    }
    if let Some(k) = p.sampling.top_k {
        at_least_one("sampling.top_k", k as u64);
    }
    if p.prompts.is_empty() {
        issues.push(
            ParamIssue::new("prompts", "must list at least one prompt")
                .with_help("omit `prompts` to use the seed study's five"),
        );
    }
    if let Some(i) = p.prompts.iter().position(|s| s.trim().is_empty()) {
        issues.push(ParamIssue::new(
            &format!("prompts.{i}"),
            "is empty: give some text to continue",
        ));
    }
    if !(p.sampling.temperature > 0.0 && p.sampling.temperature.is_finite()) {
        issues.push(ParamIssue::new("sampling.temperature", format!("must be a positive number, found {}", p.sampling.temperature)).with_help("greedy generations are always reported; the sampled ones need a temperature above 0"));
    }
    if let Some(tp) = p.sampling.top_p {
        if !(tp > 0.0 && tp <= 1.0) {
            issues.push(ParamIssue::new(
                "sampling.top_p",
                format!("must be in (0, 1], found {tp}"),
            ));
        }
    }
    issues
}
