//! The sections of `report.md`: the comparison of every model, the settings that differ
//! between variants, size, quality (with the best model and its rule), speed, training,
//! generations with their repetition measures, extra texts, and provenance.

use std::fmt::Write as _;

use super::findings::{fmt_bytes, fmt_count, fmt_duration, fmt_rate, own_speed};
use super::study::{Study, BEST_RULE};
use super::Provenance;
use crate::evaluate::repetition::LOOPING_THRESHOLD;

/// Text safe inside a markdown table cell.
pub fn cell(s: &str) -> String {
    s.replace('|', "\\|")
        .replace(['\n', '\r'], " ")
        .trim()
        .to_owned()
}

fn opt_rate(r: Option<f64>) -> String {
    r.map_or_else(|| "—".into(), fmt_rate)
}

/// One row per model with every headline number.
pub fn comparison(md: &mut String, study: &Study) {
    md.push_str("## Comparison\n\n");
    md.push_str("Every model of the study; training numbers where the model's `train` stage was given, speeds as measured (medians), wall times of training and of the whole evaluation of the model.\n\n");
    md.push_str("| model | dtype | bits/byte | val loss | perplexity | bits/token | weights file | training tokens/s | training time | scoring tokens/s | generation tokens/s (f32) | evaluation time | repeated 4-grams greedy / sampled |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for m in &study.models {
        let train = study.train_of(&m.name);
        let _ = writeln!(
            md,
            "| {} | {} | {:.4} | {:.4} | {:.3} | {:.4} | {} | {} | {} | {} | {} | {} | {:.1}% / {:.1}% |",
            cell(&m.name),
            m.dtype,
            m.bits_per_byte,
            m.val_loss,
            m.perplexity,
            m.bits_per_token,
            fmt_bytes(m.file_bytes),
            opt_rate(train.map(|t| t.summary.tokens_per_s)),
            train.map_or_else(|| "—".into(), |t| fmt_duration(t.summary.train_seconds)),
            fmt_rate(m.scoring_tokens_per_s),
            opt_rate(own_speed(m)),
            fmt_duration(m.seconds),
            m.degeneration.greedy.repeated_4gram_share * 100.0,
            m.degeneration.sampled.repeated_4gram_share * 100.0,
        );
    }
    md.push('\n');
}

/// The recorded training settings that differ between the variants.
pub fn variants(md: &mut String, study: &Study) {
    if study.trains.len() < 2 {
        return;
    }
    md.push_str("## Variants\n\n");
    let s = &study.settings;
    if s.keys.is_empty() {
        md.push_str("The training runs have the same recorded settings.\n\n");
        return;
    }
    md.push_str("Training settings that differ between the training runs (from each run's `summary.json`; everything else is the same).\n\n");
    let keys: Vec<String> = s.keys.iter().map(|k| format!("`{}`", cell(k))).collect();
    let _ = writeln!(md, "| training run | {} |", keys.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(keys.len()));
    for row in &s.rows {
        let vals: Vec<String> = row.values.iter().map(|v| cell(v)).collect();
        let _ = writeln!(md, "| {} | {} |", cell(&row.name), vals.join(" | "));
    }
    md.push('\n');
}

pub fn size(md: &mut String, study: &Study) {
    md.push_str("## Size\n\n![weights file size](size.svg)\n\n");
    md.push_str(
        "| model | dtype | parameters | weights file | vs reference |\n|---|---|---:|---:|---:|\n",
    );
    for m in &study.models {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} ({} bytes) | {:.3}× |",
            cell(&m.name),
            m.dtype,
            fmt_count(m.parameters),
            fmt_bytes(m.file_bytes),
            fmt_count(m.file_bytes),
            m.delta.size_ratio
        );
    }
    md.push('\n');
}

pub fn quality(md: &mut String, study: &Study) {
    md.push_str("## Quality\n\n");
    for e in &study.evaluations {
        let of = if study.evaluations.len() > 1 {
            format!("`{}`: on", e.stage)
        } else {
            "On".into()
        };
        let _ = writeln!(
            md,
            "{of} the same {} validation tokens ({} bytes of text), scored in windows of {} tokens ({} scorer).\n",
            fmt_count(e.eval.eval_tokens),
            fmt_count(e.eval.eval_bytes.round() as u64),
            e.eval.seq_len,
            e.eval.scorer
        );
    }
    md.push_str("| model | val loss (nats/token) | Δ loss | perplexity | bits/token | bits/byte |\n|---|---:|---:|---:|---:|---:|\n");
    for m in &study.models {
        let _ = writeln!(
            md,
            "| {} | {:.4} | {:+.4} ({:+.3}%) | {:.3} | {:.4} | {:.4} |",
            cell(&m.name),
            m.val_loss,
            m.delta.val_loss,
            m.delta.val_loss_pct,
            m.perplexity,
            m.bits_per_token,
            m.bits_per_byte
        );
    }
    md.push('\n');
    if let Some(best) = study.best() {
        let _ = writeln!(
            md,
            "Best model: **`{}`** ({:.4} bits/byte, {}). Rule: {BEST_RULE}.\n",
            best.name,
            best.bits_per_byte,
            fmt_bytes(best.file_bytes)
        );
    }
}

/// What each generation precision measures (the Speed section's legend).
pub const PRECISIONS: &str = "Precisions: `f32` is f32 weights and arithmetic (a half model's weights widened to f32 once, at load); `f16-upcast` keeps the weights in f16 and widens them to f32 inside each matrix-vector product (f32 arithmetic, half the weight memory traffic); `f16-native` also does the matrix-vector products in f16 arithmetic (f16 inputs and accumulators; emulated with F16C rounding on CPUs without AVX512-FP16), the rest of the step in f32.\n\n";

pub fn speeds(md: &mut String, study: &Study) {
    let first = &study.evaluations[0].eval;
    let _ = writeln!(
        md,
        "## Speed\n\n![generation speed](speed.svg)\n\nBatch-1 generation of {} tokens after the first prompt with the recurrent decoder, and scoring of validation windows on {} threads ({} scorer); each speed is the median of {} runs.\n",
        first.speed_tokens, first.threads, first.scorer, first.speed_runs
    );
    md.push_str(PRECISIONS);
    md.push_str("| model | precision | generation tokens/s | threads | every run | scoring tokens/s |\n|---|---|---:|---:|---|---:|\n");
    for m in &study.models {
        for s in &m.generation_speed {
            let runs: Vec<String> = s.runs.iter().map(|r| fmt_rate(*r)).collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                cell(&m.name),
                s.precision,
                fmt_rate(s.tokens_per_s),
                s.threads,
                runs.join(", "),
                fmt_rate(m.scoring_tokens_per_s)
            );
        }
    }
    md.push('\n');
}

pub fn training(md: &mut String, study: &Study) {
    if study.trains.is_empty() {
        return;
    }
    md.push_str("## Training\n\n![loss curves](loss.svg)\n\n");
    md.push_str("| training run | steps | batch × seq | tokens seen | epochs | wall time | tokens/s | threads | final train loss | final val loss |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for t in &study.trains {
        let s = &t.summary;
        let _ = writeln!(
            md,
            "| {} | {} | {} × {} | {} | {:.2} | {} | {} | {} | {:.4} | {:.4} |",
            cell(&t.name),
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
    }
    md.push('\n');
    for t in &study.trains {
        if let Some(step) = t.summary.resumed_from_step {
            let _ = writeln!(
                md,
                "`{}` was interrupted and resumed from the checkpoint at step {step}.\n",
                t.name
            );
        }
    }
    let lines: Vec<String> = study
        .trains
        .iter()
        .map(|t| format!("{} in `{}`", t.log.len(), t.name))
        .collect();
    let _ = writeln!(md, "train_log.jsonl lines: {}.\n", lines.join(", "));
}

pub fn generations(md: &mut String, study: &Study) {
    let first = &study.evaluations[0].eval;
    let _ = writeln!(
        md,
        "## Generations\n\n{} new tokens per prompt; greedy, then sampled at temperature {}{}{} with seed {}.\n",
        first.max_new_tokens,
        first.sampling.temperature,
        first.sampling.top_k.map(|k| format!(", top-k {k}")).unwrap_or_default(),
        first.sampling.top_p.map(|p| format!(", top-p {p}")).unwrap_or_default(),
        first.sampling.seed
    );
    let names: Vec<String> = study.models.iter().map(|m| cell(&m.name)).collect();
    let _ = writeln!(md, "| prompt | mode | {} |", names.join(" | "));
    let _ = writeln!(md, "|---|---|{}", "---|".repeat(names.len()));
    let prompts = study.models[0].generations.iter().map(|g| g.prompt.clone());
    for (i, prompt) in prompts.enumerate() {
        for (mode, pick) in [("greedy", true), ("sampled", false)] {
            let cells: Vec<String> = study
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
    let _ = writeln!(
        md,
        "### Repetition\n\nOver the words of the continuations (prompts excluded): **repeated 4-grams** is the share of word 4-grams that repeat an earlier 4-gram of the same continuation (above {:.0}% the model is flagged as looping); **distinct-2** is the number of distinct word bigrams over all bigrams of the mode's continuations together.\n",
        LOOPING_THRESHOLD * 100.0
    );
    md.push_str("| model | greedy: repeated 4-grams | greedy: distinct-2 | sampled: repeated 4-grams | sampled: distinct-2 | words (greedy / sampled) |\n|---|---:|---:|---:|---:|---:|\n");
    for m in &study.models {
        let d = &m.degeneration;
        let _ = writeln!(
            md,
            "| {} | {:.1}% | {:.3} | {:.1}% | {:.3} | {} / {} |",
            cell(&m.name),
            d.greedy.repeated_4gram_share * 100.0,
            d.greedy.distinct_2,
            d.sampled.repeated_4gram_share * 100.0,
            d.sampled.distinct_2,
            d.greedy.words,
            d.sampled.words
        );
    }
    md.push('\n');
}

/// The extra texts each model was scored on (the evaluate stage's `texts` input).
pub fn texts(md: &mut String, study: &Study) {
    if study.models.iter().all(|m| m.texts.is_empty()) {
        return;
    }
    md.push_str("## Texts\n\nExtra texts scored whole with each model's own tokenizer, stories cut at `<|endoftext|>` as in the validation split; bits per byte over the UTF-8 bytes of the story text.\n\n");
    md.push_str("| model | text | stories | tokens | bytes | loss | perplexity | bits/token | bits/byte | `<unk>` rate |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for m in &study.models {
        for t in &m.texts {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {:.4} | {:.3} | {:.4} | {:.4} | {} |",
                cell(&m.name),
                cell(&t.name),
                fmt_count(t.stories),
                fmt_count(t.tokens),
                fmt_count(t.bytes),
                t.loss,
                t.perplexity,
                t.bits_per_token,
                t.bits_per_byte,
                t.unknown_rate
                    .map_or_else(|| "—".into(), |r| format!("{:.2}%", r * 100.0))
            );
        }
    }
    md.push('\n');
}

pub fn provenance(md: &mut String, p: &Provenance) {
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
