//! The `report` stage kind: turns `eval.json` (and, when given, the training artifact's
//! `train_log.jsonl` and `summary.json`) into `report.md` with the seed study's tables
//! made honest, findings computed from the numbers, SVG plots, `report.json`, and the
//! provenance of every number.

mod findings;
pub mod svg;

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::Context as _;
use itera_engine::stage::{InputSlot, InputSlots, OutputDecl, StageContext, StageKind};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::records::{self, EvalReport, TrainLogLine, TrainSummary};
use findings::{fmt_bytes, fmt_count, fmt_duration, fmt_rate};

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainSummary>,
    pub evaluation: EvalReport,
    pub provenance: Provenance,
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
    pub digest: String,
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
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "Writes report.md (tables, computed findings, generations), report.json and SVG plots from an evaluation";

    fn inputs(_params: &Self::Params) -> InputSlots {
        InputSlots::Named(vec![
            InputSlot::required("eval", "an `evaluate` stage (eval.json)"),
            InputSlot::optional(
                "train",
                "the `train` stage of the reference model (train_log.jsonl, summary.json), for the loss curves",
            ),
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

    fn run(params: &Self::Params, ctx: &StageContext) -> anyhow::Result<()> {
        let eval_dir = &ctx.input("eval")?.path;
        let eval: EvalReport = records::read_json(&artifact_file(eval_dir, records::EVAL_FILE))?;
        let train = match ctx.inputs_of("train") {
            [] => None,
            [one] => {
                let summary: TrainSummary =
                    records::read_json(&artifact_file(&one.path, records::SUMMARY_FILE))?;
                let log =
                    records::read_train_log(&artifact_file(&one.path, records::TRAIN_LOG_FILE))?;
                Some((summary, log))
            }
            _ => anyhow::bail!("input `train` takes one training artifact"),
        };
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
        write_report(
            &ctx.out_dir,
            &params.title,
            &eval,
            train.as_ref().map(|(s, l)| (s, l.as_slice())),
            &provenance,
        )?;
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
    eval: &EvalReport,
    train: Option<(&TrainSummary, &[TrainLogLine])>,
    provenance: &Provenance,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !eval.models.is_empty(),
        "eval.json lists no models: nothing to report"
    );
    let found = findings(eval, train);
    let mut md = String::new();
    let _ = writeln!(md, "# {title}\n");
    md.push_str("## Findings\n\n");
    for f in &found {
        let _ = writeln!(md, "- {f}");
    }
    md.push('\n');
    size_table(&mut md, eval);
    quality_table(&mut md, eval);
    speed_table(&mut md, eval);
    if let Some((summary, log)) = train {
        training_section(&mut md, summary, log);
    }
    generations_section(&mut md, eval);
    provenance_section(&mut md, provenance);

    let write = |name: &str, text: &str| {
        fs::write(out.join(name), text).with_context(|| format!("cannot write {name}"))
    };
    write("report.md", &md)?;
    write("loss.svg", &loss_plot(train.map(|t| t.1).unwrap_or(&[])))?;
    let speed_bars: Vec<svg::Bar> = eval
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
                "Batch-1 generation speed ({} threads, median of {})",
                eval.threads, eval.speed_runs
            ),
            "tokens / s",
            &speed_bars,
            fmt_rate,
        ),
    )?;
    let size_bars: Vec<svg::Bar> = eval
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
        training: train.map(|t| t.0.clone()),
        evaluation: eval.clone(),
        provenance: provenance.clone(),
    };
    records::write_json(&out.join("report.json"), &json)
}

fn size_table(md: &mut String, eval: &EvalReport) {
    md.push_str("## Size\n\n![weights file size](size.svg)\n\n");
    md.push_str(
        "| model | dtype | parameters | weights file | vs reference |\n|---|---|---:|---:|---:|\n",
    );
    for m in &eval.models {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} ({} bytes) | {:.3}× |",
            m.name,
            m.dtype,
            fmt_count(m.parameters),
            fmt_bytes(m.file_bytes),
            fmt_count(m.file_bytes),
            m.delta.size_ratio
        );
    }
    md.push('\n');
}

fn quality_table(md: &mut String, eval: &EvalReport) {
    let _ = writeln!(
        md,
        "## Quality\n\nOn the same {} validation tokens ({} bytes of text), scored in windows of {} tokens.\n",
        fmt_count(eval.eval_tokens),
        fmt_count(eval.eval_bytes.round() as u64),
        eval.seq_len
    );
    md.push_str("| model | val loss (nats/token) | Δ loss | perplexity | bits/token | bits/byte |\n|---|---:|---:|---:|---:|---:|\n");
    for m in &eval.models {
        let _ = writeln!(
            md,
            "| {} | {:.4} | {:+.4} ({:+.3}%) | {:.3} | {:.4} | {:.4} |",
            m.name,
            m.val_loss,
            m.delta.val_loss,
            m.delta.val_loss_pct,
            m.perplexity,
            m.bits_per_token,
            m.bits_per_byte
        );
    }
    md.push('\n');
}

fn speed_table(md: &mut String, eval: &EvalReport) {
    let _ = writeln!(
        md,
        "## Speed\n\n![generation speed](speed.svg)\n\nBatch-1 generation of {} tokens per prompt with the recurrent decoder, and batched scoring; each speed is the median of {} runs on {} threads.\n",
        eval.max_new_tokens, eval.speed_runs, eval.threads
    );
    md.push_str("| model | precision | generation tokens/s | every run | scoring tokens/s |\n|---|---|---:|---|---:|\n");
    for m in &eval.models {
        for s in &m.generation_speed {
            let runs: Vec<String> = s.runs.iter().map(|r| fmt_rate(*r)).collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                m.name,
                s.precision,
                fmt_rate(s.tokens_per_s),
                runs.join(", "),
                fmt_rate(m.scoring_tokens_per_s)
            );
        }
    }
    md.push('\n');
}

fn training_section(md: &mut String, s: &TrainSummary, log: &[TrainLogLine]) {
    let _ = writeln!(
        md,
        "## Training\n\n![loss curves](loss.svg)\n\n| steps | batch × seq | tokens seen | epochs | wall time | tokens/s | threads | final train loss | final val loss |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|\n| {} | {} × {} | {} | {:.2} | {} | {} | {} | {:.4} | {:.4} |\n",
        s.steps,
        s.batch_size,
        s.seq_len,
        fmt_count(s.tokens_seen),
        s.epochs,
        fmt_duration(s.train_seconds),
        fmt_rate(s.tokens_per_s),
        s.threads,
        s.final_train_loss,
        s.final_val_loss
    );
    if let Some(step) = s.resumed_from_step {
        let _ = writeln!(
            md,
            "Training was interrupted and resumed from the checkpoint at step {step}.\n"
        );
    }
    let _ = writeln!(md, "{} log lines in train_log.jsonl.\n", log.len());
}

fn generations_section(md: &mut String, eval: &EvalReport) {
    let _ = writeln!(
        md,
        "## Generations\n\n{} new tokens per prompt; greedy, then sampled at temperature {}{}{} with seed {}.\n",
        eval.max_new_tokens,
        eval.sampling.temperature,
        eval.sampling.top_k.map(|k| format!(", top-k {k}")).unwrap_or_default(),
        eval.sampling.top_p.map(|p| format!(", top-p {p}")).unwrap_or_default(),
        eval.sampling.seed
    );
    let names: Vec<&str> = eval.models.iter().map(|m| m.name.as_str()).collect();
    let _ = writeln!(md, "| prompt | mode | {} |", names.join(" | "));
    let _ = writeln!(md, "|---|---|{}", "---|".repeat(names.len()));
    let prompts = eval.models[0].generations.iter().map(|g| g.prompt.clone());
    for (i, prompt) in prompts.enumerate() {
        for (mode, pick) in [("greedy", true), ("sampled", false)] {
            let cells: Vec<String> = eval
                .models
                .iter()
                .map(|m| {
                    m.generations
                        .get(i)
                        .map(|g| cell(if pick { &g.greedy } else { &g.sampled }))
                        .unwrap_or_default()
                })
                .collect();
            let _ = writeln!(md, "| {} | {mode} | {} |", cell(&prompt), cells.join(" | "));
        }
    }
    md.push('\n');
}

fn provenance_section(md: &mut String, p: &Provenance) {
    let _ = writeln!(
        md,
        "## Provenance\n\n- tool: {}\n- machine: {} ({}, {} logical cores, {})\n- pipeline seed: {}",
        p.tool, p.machine.hostname, p.machine.cpu, p.machine.logical_cores, p.machine.os, p.seed
    );
    for i in &p.inputs {
        let _ = writeln!(
            md,
            "- input `{}` from stage `{}`: digest `{}`",
            i.slot, i.stage, i.digest
        );
    }
    md.push('\n');
}

/// Text safe inside a markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
        .replace(['\n', '\r'], " ")
        .trim()
        .to_owned()
}

fn loss_plot(log: &[TrainLogLine]) -> String {
    let train = svg::Series {
        name: "train loss".into(),
        points: log.iter().map(|l| (l.step as f64, l.loss)).collect(),
    };
    let val = svg::Series {
        name: "validation loss".into(),
        points: log
            .iter()
            .filter_map(|l| l.val_loss.map(|v| (l.step as f64, v)))
            .collect(),
    };
    svg::line_chart(
        "Loss during training",
        "step",
        "nats / token",
        &[train, val],
    )
}

#[cfg(test)]
mod tests;
