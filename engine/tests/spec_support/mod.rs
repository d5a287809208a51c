//! Stage kinds for the spec tests: small but complete kinds with typed params, `validate`
//! hooks, input slots and outputs, shaped like the built-in ones (a source, a tokenizer,
//! a trainer with nested model params, a many-input comparison, and a free-form command).

#![allow(dead_code)]

use std::collections::BTreeMap;

use itera_engine::stage::{
    InputSlot, InputSlots, OutputDecl, ParamIssue, Registry, StageContext, StageKind,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every test kind.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register::<Source>()
        .register::<Tokenize>()
        .register::<Train>()
        .register::<Compare>()
        .register::<Command>();
    r
}

/// Writes `name` with `text` into the stage's artifact.
fn write_out(ctx: &StageContext, name: &str, text: &str) -> anyhow::Result<()> {
    let path = ctx.out_dir.join(name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)?;
    Ok(())
}

pub struct Source;
/// Downloads a text.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceParams {
    /// Where the text comes from.
    pub url: String,
    /// Pinned revision.
    #[serde(default)]
    pub revision: Option<String>,
}
impl StageKind for Source {
    type Params = SourceParams;
    const KIND: &'static str = "source";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "Fetch a text corpus";
    fn inputs(_: &Self::Params) -> InputSlots {
        InputSlots::Named(Vec::new())
    }
    fn outputs(_: &Self::Params) -> Vec<OutputDecl> {
        vec![OutputDecl::new("text", "text.txt")]
    }
    fn run(params: &Self::Params, ctx: &StageContext) -> anyhow::Result<()> {
        write_out(ctx, "text.txt", &params.url)
    }
}

pub struct Tokenize;
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    #[default]
    Word,
    Bpe,
    Char,
}
/// Splits text into tokens.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeParams {
    /// Tokenization scheme.
    #[serde(default)]
    pub scheme: Scheme,
    /// Vocabulary size (at least 16).
    #[serde(default = "default_vocab")]
    pub vocab_size: u32,
}
fn default_vocab() -> u32 {
    8000
}
impl StageKind for Tokenize {
    type Params = TokenizeParams;
    const KIND: &'static str = "tokenize";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "Tokenize a corpus";
    fn validate(p: &Self::Params) -> Vec<ParamIssue> {
        if p.vocab_size < 16 {
            vec![ParamIssue::new(
                "vocab_size",
                format!("must be at least 16, found {}", p.vocab_size),
            )]
        } else {
            Vec::new()
        }
    }
    fn inputs(_: &Self::Params) -> InputSlots {
        InputSlots::Named(vec![InputSlot::required("corpus", "text to tokenize")])
    }
    fn outputs(_: &Self::Params) -> Vec<OutputDecl> {
        vec![
            OutputDecl::new("tokens", "tokens.bin"),
            OutputDecl::new("vocab", "vocab.json"),
        ]
    }
    fn run(params: &Self::Params, ctx: &StageContext) -> anyhow::Result<()> {
        let corpus = std::fs::read_to_string(&ctx.input("corpus")?.path)?;
        let n = corpus.split_whitespace().count();
        write_out(ctx, "tokens.bin", &n.to_string())?;
        write_out(ctx, "vocab.json", &params.vocab_size.to_string())
    }
}

pub struct Train;
/// Model shape.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelParams {
    /// Width of the hidden state (a multiple of 8).
    #[serde(default = "default_hidden")]
    pub hidden_size: usize,
    /// Number of layers.
    #[serde(default = "default_layers")]
    pub layers: usize,
}
fn default_hidden() -> usize {
    64
}
fn default_layers() -> usize {
    2
}
impl Default for ModelParams {
    fn default() -> Self {
        Self {
            hidden_size: default_hidden(),
            layers: default_layers(),
        }
    }
}
/// Trains a model.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// Optimizer steps.
    pub steps: u64,
    /// Learning rate, in (0, 1).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Worker threads.
    #[serde(default = "default_threads")]
    pub threads: u32,
    #[serde(default)]
    pub model: ModelParams,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
}
fn default_lr() -> f64 {
    3e-4
}
fn default_threads() -> u32 {
    1
}
impl StageKind for Train {
    type Params = TrainParams;
    const KIND: &'static str = "train";
    const VERSION: u32 = 3;
    const DESCRIPTION: &'static str = "Train a model";
    fn validate(p: &Self::Params) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        if p.steps == 0 {
            issues.push(ParamIssue::new("steps", "must be at least 1, found 0"));
        }
        if !(p.lr > 0.0 && p.lr < 1.0) {
            issues.push(ParamIssue::new(
                "lr",
                format!("must be in (0, 1), found {}", p.lr),
            ));
        }
        if p.model.hidden_size % 8 != 0 {
            issues.push(
                ParamIssue::new(
                    "model.hidden_size",
                    format!("must be a multiple of 8, found {}", p.model.hidden_size),
                )
                .with_help(format!(
                    "try {}",
                    p.model.hidden_size.div_ceil(8).max(1) * 8
                )),
            );
        }
        issues
    }
    fn inputs(_: &Self::Params) -> InputSlots {
        InputSlots::Named(vec![
            InputSlot::required("tokens", "tokenized corpus"),
            InputSlot::optional("init", "weights to start from"),
        ])
    }
    fn outputs(_: &Self::Params) -> Vec<OutputDecl> {
        vec![
            OutputDecl::new("model", "model"),
            OutputDecl::new("metrics", "metrics.json"),
        ]
    }
    fn run(params: &Self::Params, ctx: &StageContext) -> anyhow::Result<()> {
        write_out(
            ctx,
            "model/config.json",
            &params.model.hidden_size.to_string(),
        )?;
        write_out(ctx, "metrics.json", &params.steps.to_string())
    }
}

pub struct Compare;
/// Compares models.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompareParams {
    /// Metric to compare on.
    #[serde(default = "default_metric")]
    pub metric: String,
}
fn default_metric() -> String {
    "loss".into()
}
impl StageKind for Compare {
    type Params = CompareParams;
    const KIND: &'static str = "compare";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "Compare several models";
    fn inputs(_: &Self::Params) -> InputSlots {
        InputSlots::Named(vec![
            InputSlot::many("models", "models to compare"),
            InputSlot::required("data", "held-out tokens"),
        ])
    }
    fn run(params: &Self::Params, ctx: &StageContext) -> anyhow::Result<()> {
        let n = ctx.inputs_of("models").len();
        write_out(
            ctx,
            "report.txt",
            &format!("{} over {n} models", params.metric),
        )
    }
}

pub struct Command;
/// Runs a command.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandParams {
    /// Shell command.
    pub run: String,
    /// Outputs it writes, by name -> path.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
}
impl StageKind for Command {
    type Params = CommandParams;
    const KIND: &'static str = "command";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "Run a command";
    fn outputs(p: &Self::Params) -> Vec<OutputDecl> {
        p.outputs
            .iter()
            .map(|(n, path)| OutputDecl::new(n.clone(), path.clone()))
            .collect()
    }
    fn run(params: &Self::Params, ctx: &StageContext) -> anyhow::Result<()> {
        write_out(ctx, "command.txt", &params.run)
    }
}
