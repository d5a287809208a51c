//! Findings: sentences computed from the measured numbers (never asserted), and the
//! formatting helpers the report's tables share.

use super::study::{bpb_key, loops, ranked, Study, BEST_RULE};
use crate::evaluate::repetition::LOOPING_THRESHOLD;
use crate::records::{ModelEval, SpeedPrecision, TrainLogLine, TrainSummary};

/// The generation speed the seed study reported (whole prefix re-run per token).
pub const SEED_TOKENS_PER_S: f64 = 92.9;

/// Every finding, in reading order.
pub fn findings(study: &Study) -> Vec<String> {
    let mut out = Vec::new();
    let many_trains = study.trains.len() > 1;
    for t in &study.trains {
        let f = training_finding(&t.summary, &t.log);
        out.push(if many_trains {
            format!("`{}`: {f}", t.name)
        } else {
            f
        });
    }
    if let Some(f) = variants_finding(study) {
        out.push(f);
    }
    let Some(reference) = study.models.first() else {
        return out;
    };
    let first = &study.evaluations[0].eval;
    out.push(format!(
        "`{}` reaches a validation loss of {:.4} nats/token: perplexity {:.2}, {:.4} bits per byte, over {} validation tokens ({} bytes of text).",
        reference.name,
        reference.val_loss,
        reference.perplexity,
        reference.bits_per_byte,
        first.eval_tokens,
        first.eval_bytes.round()
    ));
    if let Some(f) = best_finding(study) {
        out.push(f);
    }
    // Each evaluation's further models against its own first (e.g. FP16 against FP32).
    for e in &study.evaluations {
        if let Some((r, rest)) = e.eval.models.split_first() {
            for m in rest {
                out.push(compression_finding(r, m));
                out.push(agreement_finding(r, m));
            }
        }
    }
    if let Some(s) = reference
        .generation_speed
        .iter()
        .find(|s| s.precision == SpeedPrecision::F32)
    {
        out.push(format!(
            "Batch-1 generation with the recurrent decoder (constant work per token) runs at {} tokens/s in f32 on {} thread{} (median of {} runs of {} tokens); the seed study reported {SEED_TOKENS_PER_S} tokens/s re-running the whole prefix for every token (on another machine, so compare with care).",
            fmt_rate(s.tokens_per_s),
            s.threads,
            if s.threads == 1 { "" } else { "s" },
            s.runs.len(),
            first.speed_tokens
        ));
    }
    out.push(looping_finding(&study.models));
    let mut unknown = Vec::new();
    for e in &study.evaluations {
        if e.eval.unknown_rate > 0.0 {
            let f = format!(
                "The {} tokenizer maps {:.2}% of validation words to `<unk>`; predicting `<unk>` is easy, so bits per byte here flatter the model compared with a lossless tokenizer (bpe or byte).",
                e.eval.scheme,
                e.eval.unknown_rate * 100.0
            );
            if !unknown.contains(&f) {
                unknown.push(f);
            }
        }
    }
    out.extend(unknown);
    out
}

/// The best model by the stated rule, the runner-up, and the looping models with as
/// few or fewer bits per byte that the rule passed over.
fn best_finding(study: &Study) -> Option<String> {
    let order = ranked(&study.models);
    let (best, runner_up) = match order.as_slice() {
        [best, runner_up, ..] => (*best, *runner_up),
        _ => return None,
    };
    let passed_over: Vec<String> = if loops(best) {
        Vec::new()
    } else {
        order
            .iter()
            .filter(|m| loops(m) && bpb_key(m) <= bpb_key(best))
            .map(|m| format!("`{}` ({:.4})", m.name, m.bits_per_byte))
            .collect()
    };
    let passed = if passed_over.is_empty() {
        String::new()
    } else {
        format!(
            " Not named although as good or better by bits per byte, because their continuations loop: {}.",
            passed_over.join(", ")
        )
    };
    Some(format!(
        "The best of the {} models is `{}` ({:.4} bits per byte, {}); next is `{}` ({:.4} bits per byte, {}).{passed} Rule: {BEST_RULE}.",
        study.models.len(),
        best.name,
        best.bits_per_byte,
        fmt_bytes(best.file_bytes),
        runner_up.name,
        runner_up.bits_per_byte,
        fmt_bytes(runner_up.file_bytes)
    ))
}

/// Which settings the training runs differ in.
fn variants_finding(study: &Study) -> Option<String> {
    let s = &study.settings;
    if study.trains.len() < 2 || s.keys.is_empty() {
        return None;
    }
    let parts: Vec<String> = s
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let vals: Vec<&str> = s.rows.iter().map(|r| r.values[i].as_str()).collect();
            format!("`{k}` ({})", vals.join(", "))
        })
        .collect();
    Some(format!(
        "The {} training runs differ in {}.",
        study.trains.len(),
        parts.join(", ")
    ))
}

/// Flags models whose continuations loop (repeated-4-gram share above the threshold).
pub fn looping_finding(models: &[ModelEval]) -> String {
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    let mut flagged = Vec::new();
    for m in models {
        for (mode, r) in [
            ("greedy", &m.degeneration.greedy),
            ("sampled", &m.degeneration.sampled),
        ] {
            if r.repeated_4gram_share > LOOPING_THRESHOLD {
                flagged.push(format!(
                    "`{}` {mode} ({} of word 4-grams repeat, distinct-2 {:.3})",
                    m.name,
                    pct(r.repeated_4gram_share),
                    r.distinct_2
                ));
            }
        }
    }
    let threshold = pct(LOOPING_THRESHOLD);
    if !flagged.is_empty() {
        return format!(
            "Looping generations: {} — above the {threshold} repeated-4-gram threshold, so these continuations mostly repeat themselves.",
            flagged.join("; ")
        );
    }
    let max_of = |pick: fn(&ModelEval) -> f64| {
        models
            .iter()
            .max_by(|a, b| pick(a).total_cmp(&pick(b)))
            .map(|m| format!("{} (`{}`)", pct(pick(m)), m.name))
            .unwrap_or_default()
    };
    format!(
        "No model loops: the repeated-4-gram share is at most {} in greedy and {} in sampled continuations, below the {threshold} threshold.",
        max_of(|m| m.degeneration.greedy.repeated_4gram_share),
        max_of(|m| m.degeneration.sampled.repeated_4gram_share)
    )
}

fn training_finding(summary: &TrainSummary, log: &[TrainLogLine]) -> String {
    let first_val = log.iter().find_map(|l| l.val_loss);
    let start = first_val
        .map(|v| {
            format!(
                "from {v:.4} (step {}) ",
                log.iter()
                    .find(|l| l.val_loss.is_some())
                    .map_or(0, |l| l.step)
            )
        })
        .unwrap_or_default();
    format!(
        "Training ran {} steps of {}×{} tokens ({} tokens, {:.2} epochs of the {}-token training split) in {} at {} tokens/s on {} threads; validation loss went {}to {:.4} (best {:.4}).",
        summary.steps,
        summary.batch_size,
        summary.seq_len,
        fmt_count(summary.tokens_seen),
        summary.epochs,
        fmt_count(summary.train_tokens_available),
        fmt_duration(summary.train_seconds),
        fmt_rate(summary.tokens_per_s),
        summary.threads,
        start,
        summary.final_val_loss,
        summary.best_val_loss
    )
}

fn compression_finding(reference: &ModelEval, m: &ModelEval) -> String {
    let threads = m.generation_speed.first().map_or(1, |s| s.threads);
    let on = format!(
        "on this CPU ({threads} thread{})",
        if threads == 1 { "" } else { "s" }
    );
    let size = if m.delta.size_ratio <= 0.51 {
        format!(
            "halves the weights ({} → {}, {:.3}×)",
            fmt_bytes(reference.file_bytes),
            fmt_bytes(m.file_bytes),
            m.delta.size_ratio
        )
    } else {
        format!(
            "stores the weights in {} vs {} ({:.3}×)",
            fmt_bytes(m.file_bytes),
            fmt_bytes(reference.file_bytes),
            m.delta.size_ratio
        )
    };
    let quality = format!(
        "moves validation loss by {:+.3}% ({:.4} → {:.4}; bits per byte {:.4} → {:.4})",
        m.delta.val_loss_pct,
        reference.val_loss,
        m.val_loss,
        reference.bits_per_byte,
        m.bits_per_byte
    );
    let mut s = format!("{} (`{}`) {size} and {quality}", m.dtype, m.name);
    let base = speed(reference, SpeedPrecision::F32);
    let native = speed(m, SpeedPrecision::F16Native);
    let upcast = speed(m, SpeedPrecision::F16Upcast);
    match (base, native) {
        (Some(b), Some(n)) if b > 0.0 && n > 0.0 => {
            let r = n / b;
            let verdict = if r < 0.9 {
                format!("{on} f16 arithmetic is {:.1}× slower than f32 ({} vs {} tokens/s), so {} is a storage format here", 1.0 / r, fmt_rate(n), fmt_rate(b), m.dtype)
            } else if r > 1.1 {
                format!(
                    "{on} f16 arithmetic is {r:.1}× faster than f32 ({} vs {} tokens/s)",
                    fmt_rate(n),
                    fmt_rate(b)
                )
            } else {
                format!(
                    "{on} f16 arithmetic runs about as fast as f32 ({} vs {} tokens/s)",
                    fmt_rate(n),
                    fmt_rate(b)
                )
            };
            s.push_str("; ");
            s.push_str(&verdict);
        }
        _ => {}
    }
    if let (Some(b), Some(u)) = (base, upcast) {
        if b > 0.0 {
            s.push_str(&format!(
                "; with its f16 weights widened to f32 inside each matrix-vector product (`f16-upcast`: f32 arithmetic, half the weight traffic) it generates at {} tokens/s ({:.2}× f32)",
                fmt_rate(u),
                u / b
            ));
        }
    }
    s.push('.');
    s
}

fn agreement_finding(reference: &ModelEval, m: &ModelEval) -> String {
    let pairs: Vec<_> = reference.generations.iter().zip(&m.generations).collect();
    let same = pairs.iter().filter(|(a, b)| a.greedy == b.greedy).count();
    let first_diff = pairs
        .iter()
        .find(|(a, b)| a.greedy != b.greedy)
        .map(|(a, b)| {
            let words = a
                .greedy
                .split_whitespace()
                .zip(b.greedy.split_whitespace())
                .take_while(|(x, y)| x == y)
                .count();
            format!(
                "; where they differ (\"{}\") they agree on the first {words} words",
                a.prompt
            )
        })
        .unwrap_or_default();
    format!(
        "Greedy generations of `{}` and `{}` are identical on {same} of {} prompts{first_diff}.",
        m.name,
        reference.name,
        pairs.len()
    )
}

/// The median generation speed of `m` at `precision`, if measured.
/// The model's own generation speed: at f32 arithmetic, or for a quantized model with its
/// stored integers.
pub fn own_speed(m: &ModelEval) -> Option<f64> {
    speed(m, SpeedPrecision::F32)
        .or_else(|| m.dtype.quantized_precision().and_then(|p| speed(m, p)))
}

pub fn speed(m: &ModelEval, precision: SpeedPrecision) -> Option<f64> {
    m.generation_speed
        .iter()
        .find(|s| s.precision == precision)
        .map(|s| s.tokens_per_s)
}

/// `1234567` -> `"1.23 MB (1,234,567 bytes)"`.
pub fn fmt_bytes(b: u64) -> String {
    let v = b as f64;
    if v >= 1e6 {
        format!("{:.2} MB", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} kB", v / 1e3)
    } else {
        format!("{b} B")
    }
}

/// Thousands separators: `1234567` -> `"1,234,567"`.
pub fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate with sensible precision: `12345.6` -> `"12,346"`, `92.94` -> `"92.9"`.
pub fn fmt_rate(r: f64) -> String {
    if r >= 1000.0 {
        fmt_count(r.round() as u64)
    } else if r >= 10.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.2}")
    }
}

/// Seconds as `"41.3 s"`, `"12 min 5 s"`.
pub fn fmt_duration(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        let total = s.round() as u64;
        format!("{} min {} s", total / 60, total % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(fmt_count(1234567), "1,234,567");
        assert_eq!(fmt_count(12), "12");
        assert_eq!(fmt_bytes(1_234_567), "1.23 MB");
        assert_eq!(fmt_rate(92.94), "92.9");
        assert_eq!(fmt_duration(725.0), "12 min 5 s");
    }
}
