//! The `report` stage kind: turns one or more `eval.json` (and, when given, the training
//! artifacts' `train_log.jsonl` and `summary.json`) into `report.md` comparing every model
//! of the study — quality, size, speeds, wall times, the settings that differ between
//! variants, the best model by a stated rule, repetition in generations — with findings
//! computed from the numbers, SVG plots, `report.json`, and the provenance of every number.

pub mod compression;
pub mod findings;
pub mod study;
pub mod svg;
pub mod tables;

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::Context as _;
use itera_engine::stage::{InputSlot, InputSlots, OutputDecl, StageContext, StageKind};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::records::{self, EvalReport, TrainSummary, WeightsFormat};
use findings::fmt_rate;
use study::{Evaluation, Settings, Study, TrainRun};

pub use findings::findings;

/// Params of `kind = "report"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// Title of report.md.
    #[serde(default = "default_title")]
    pub title: String,
}

fn default_title() -> String {
    "Phase 8: quality training and production compression".into()
}

impl Default for ReportParams {
    fn default() -> Self {
        Self {
            title: default_title(),
        }
    }
}

/// `report.json`: the report's numbers and findings for machines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportJson {
    pub title: String,
    pub findings: Vec<String>,
    /// The best model by `rule` (absent with a single model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<Best>,
    /// One row per model of the study, in study order.
    pub comparison: Vec<ComparisonRow>,
    /// Every stored format against the F32 reference, with the recommendations
    /// (empty without an F32 reference and another format).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compression: Vec<compression::CompressionRow>,
    /// Training settings that differ between the training runs.
    pub settings: Settings,
    /// Every training run given, in input order.
    pub training: Vec<NamedSummary>,
    /// Every evaluation given, in input order.
    pub evaluations: Vec<Evaluation>,
    pub provenance: Provenance,
}

/// The best model and the rule that chose it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Best {
    pub model: String,
    pub rule: String,
}

/// A training run's summary under its stage name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamedSummary {
    pub name: String,
    pub summary: TrainSummary,
}

/// The headline numbers of one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComparisonRow {
    pub name: String,
    /// The evaluate stage that measured it.
    pub evaluation: String,
    pub dtype: WeightsFormat,
    pub parameters: u64,
    pub file_bytes: u64,
    /// `file_bytes` over the study reference's (the first model).
    pub size_ratio: f64,
    pub val_loss: f64,
    pub perplexity: f64,
    pub bits_per_token: f64,
    pub bits_per_byte: f64,
    pub scoring_tokens_per_s: f64,
    /// Batch-1 f32 generation speed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_tokens_per_s: Option<f64>,
    /// From the model's training run, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_tokens_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_seconds: Option<f64>,
    /// Wall seconds of the model's evaluation.
    pub eval_seconds: f64,
    pub repeated_4gram_share_greedy: f64,
    pub repeated_4gram_share_sampled: f64,
    pub distinct_2_greedy: f64,
    pub distinct_2_sampled: f64,
}

/// Where the numbers come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provenance {
    /// `itera <version>`.
    pub tool: String,
    /// Every input artifact with its digest (the digests enter this stage's cache key).
    pub inputs: Vec<InputProvenance>,
    pub machine: Machine,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputProvenance {
    pub slot: String,
    pub stage: String,
    pub digest: itera_engine::store::Digest,
}

/// The machine the report was written on (evaluation and training ran on the same one
/// unless the run was spread over a cluster; their thread counts are in their records).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub hostname: String,
    pub cpu: String,
    pub logical_cores: usize,
    pub os: String,
}

impl Machine {
    /// Facts about this machine (best effort: unknown fields say "unknown").
    pub fn current() -> Self {
        let read = |p: &str| fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
        let cpu = read("/proc/cpuinfo")
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            hostname: read("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into()),
            cpu,
            logical_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}

/// The `report` kind.
pub struct Report;

impl StageKind for Report {
    type Params = ReportParams;
    const KIND: &'static str = "report";
    /// 3: the f16-upcast finding names what was measured; the Speed section explains the precisions.
    /// 4: a model whose continuations loop is neither named best nor recommended while
    /// another model does not loop.
    const VERSION: u32 = 4;
    const DESCRIPTION: &'static str =
        "Writes report.md (tables, computed findings, generations), report.json and SVG plots from an evaluation";

    fn inputs(_params: &Self::Params) -> InputSlots {
        InputSlots::Named(vec![
            InputSlot::many(
                "eval",
                "one or more `evaluate` stages (eval.json); their models are compared together, the first model first",
            ),
            InputSlot {
                required: false,
                ..InputSlot::many(
                    "train",
                    "`train` stages of the models (train_log.jsonl, summary.json), for loss curves, training speed and the settings that differ",
                )
            },
        ])
    }

    fn outputs(_params: &Self::Params) -> Vec<OutputDecl> {
        vec![
            OutputDecl::new("markdown", "report.md"),
            OutputDecl::new("json", "report.json"),
            OutputDecl::new("loss_plot", "loss.svg"),
            OutputDecl::new("speed_plot", "speed.svg"),
            OutputDecl::new("size_plot", "size.svg"),
        ]
    }

    /// The tables, findings and speed plot quote measured speeds; the loss and size plots
    /// are exact.
    fn measurements(_params: &Self::Params) -> Vec<String> {
        vec!["report.md".into(), "report.json".into(), "speed.svg".into()]
    }

    fn run(params: &Self::Params, ctx: &StageContext) -> anyhow::Result<()> {
        let evaluations = ctx
            .inputs_of("eval")
            .iter()
            .map(|a| {
                let eval: EvalReport =
                    records::read_json(&artifact_file(&a.path, records::EVAL_FILE))?;
                Ok(Evaluation {
                    stage: a.stage.clone(),
                    eval,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(
            !evaluations.is_empty(),
            "stage `{}` has no evaluation to report: set `inputs.eval`",
            ctx.stage
        );
        let trains = ctx
            .inputs_of("train")
            .iter()
            .map(|a| {
                Ok(TrainRun {
                    name: a.stage.clone(),
                    summary: records::read_json(&artifact_file(&a.path, records::SUMMARY_FILE))?,
                    log: records::read_train_log(&artifact_file(&a.path, records::TRAIN_LOG_FILE))?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut inputs: Vec<InputProvenance> = ctx
            .inputs
            .iter()
            .flat_map(|(slot, arts)| {
                arts.iter().map(move |a| InputProvenance {
                    slot: slot.clone(),
                    stage: a.stage.clone(),
                    digest: a.digest.clone(),
                })
            })
            .collect();
        inputs.sort_by(|a, b| (&a.slot, &a.stage).cmp(&(&b.slot, &b.stage)));
        let provenance = Provenance {
            tool: format!("itera {}", env!("CARGO_PKG_VERSION")),
            inputs,
            machine: Machine::current(),
            seed: ctx.seed,
        };
        let study = Study::new(evaluations, trains)?;
        write_report(&ctx.out_dir, &params.title, &study, &provenance)?;
        ctx.log.line(format!(
            "report written to {}",
            ctx.out_dir.join("report.md").display()
        ));
        Ok(())
    }
}

/// `dir/name`, accepting a reference to the file itself (`"stage.output"`) too.
fn artifact_file(dir: &Path, name: &str) -> std::path::PathBuf {
    if dir.is_file() {
        dir.to_owned()
    } else {
        dir.join(name)
    }
}

/// Writes report.md, report.json and the plots into `out`.
pub fn write_report(
    out: &Path,
    title: &str,
    study: &Study,
    provenance: &Provenance,
) -> anyhow::Result<()> {
    let found = findings(study);
    let mut md = String::new();
    let _ = writeln!(md, "# {title}\n");
    md.push_str("## Findings\n\n");
    for f in &found {
        let _ = writeln!(md, "- {f}");
    }
    md.push('\n');
    tables::comparison(&mut md, study);
    tables::variants(&mut md, study);
    tables::size(&mut md, study);
    compression::section(&mut md, study);
    tables::quality(&mut md, study);
    tables::speeds(&mut md, study);
    tables::training(&mut md, study);
    tables::generations(&mut md, study);
    tables::texts(&mut md, study);
    tables::provenance(&mut md, provenance);

    let write = |name: &str, text: &str| {
        fs::write(out.join(name), text).with_context(|| format!("cannot write {name}"))
    };
    write("report.md", &md)?;
    write("loss.svg", &loss_plot(&study.trains))?;
    let speed_bars: Vec<svg::Bar> = study
        .models
        .iter()
        .flat_map(|m| {
            m.generation_speed.iter().map(move |s| svg::Bar {
                label: format!("{} {}", m.name, s.precision),
                value: s.tokens_per_s,
            })
        })
        .collect();
    write(
        "speed.svg",
        &svg::bar_chart(
            &format!(
                "Batch-1 generation speed (median of {} runs)",
                study.evaluations[0].eval.speed_runs
            ),
            "tokens / s",
            &speed_bars,
            fmt_rate,
        ),
    )?;
    let size_bars: Vec<svg::Bar> = study
        .models
        .iter()
        .map(|m| svg::Bar {
            label: format!("{} ({})", m.name, m.dtype),
            value: m.file_bytes as f64 / 1e6,
        })
        .collect();
    write(
        "size.svg",
        &svg::bar_chart("Weights file size", "MB", &size_bars, |v| {
            format!("{v:.2} MB")
        }),
    )?;
    let json = ReportJson {
        title: title.to_owned(),
        findings: found,
        best: study.best().map(|b| Best {
            model: b.name.clone(),
            rule: study::BEST_RULE.into(),
        }),
        comparison: comparison_rows(study),
        compression: compression::rows(study),
        settings: study.settings.clone(),
        training: study
            .trains
            .iter()
            .map(|t| NamedSummary {
                name: t.name.clone(),
                summary: t.summary.clone(),
            })
            .collect(),
        evaluations: study.evaluations.clone(),
        provenance: provenance.clone(),
    };
    records::write_json(&out.join("report.json"), &json)
}

fn comparison_rows(study: &Study) -> Vec<ComparisonRow> {
    study
        .models
        .iter()
        .zip(&study.model_eval)
        .map(|(m, &e)| {
            let train = study.train_of(&m.name);
            ComparisonRow {
                name: m.name.clone(),
                evaluation: study.evaluations[e].stage.clone(),
                dtype: m.dtype,
                parameters: m.parameters,
                file_bytes: m.file_bytes,
                size_ratio: m.delta.size_ratio,
                val_loss: m.val_loss,
                perplexity: m.perplexity,
                bits_per_token: m.bits_per_token,
                bits_per_byte: m.bits_per_byte,
                scoring_tokens_per_s: m.scoring_tokens_per_s,
                generation_tokens_per_s: findings::own_speed(m),
                train_tokens_per_s: train.map(|t| t.summary.tokens_per_s),
                train_seconds: train.map(|t| t.summary.train_seconds),
                eval_seconds: m.seconds,
                repeated_4gram_share_greedy: m.degeneration.greedy.repeated_4gram_share,
                repeated_4gram_share_sampled: m.degeneration.sampled.repeated_4gram_share,
                distinct_2_greedy: m.degeneration.greedy.distinct_2,
                distinct_2_sampled: m.degeneration.sampled.distinct_2,
            }
        })
        .collect()
}

/// Training (solid) and validation (dashed) loss of every training run, one colour each.
fn loss_plot(trains: &[TrainRun]) -> String {
    let mut series = Vec::new();
    for (i, t) in trains.iter().enumerate() {
        let (train_name, val_name) = if trains.len() == 1 {
            ("train loss".to_owned(), "validation loss".to_owned())
        } else {
            (
                format!("{} train", t.name),
                format!("{} validation", t.name),
            )
        };
        series.push(svg::Series {
            name: train_name,
            points: t.log.iter().map(|l| (l.step as f64, l.loss)).collect(),
            colour: i,
            dashed: false,
        });
        series.push(svg::Series {
            name: val_name,
            points: t
                .log
                .iter()
                .filter_map(|l| l.val_loss.map(|v| (l.step as f64, v)))
                .collect(),
            colour: i,
            dashed: true,
        });
    }
    svg::line_chart(
        "Loss during training (solid: train, dashed: validation)",
        "step",
        "nats / token",
        &series,
    )
}

#[cfg(test)]
mod tests;
