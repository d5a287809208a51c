//! Findings: sentences computed from the measured numbers (never asserted), and the
//! formatting helpers the report's tables share.

use crate::records::{EvalReport, ModelEval, TrainLogLine, TrainSummary};

/// The generation speed the seed study reported (whole prefix re-run per token).
pub const SEED_TOKENS_PER_S: f64 = 92.9;

/// Every finding, in reading order.
pub fn findings(eval: &EvalReport, train: Option<(&TrainSummary, &[TrainLogLine])>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((summary, log)) = train {
        out.push(training_finding(summary, log));
    }
    let Some(reference) = eval.models.first() else {
        return out;
    };
    out.push(format!(
        "`{}` reaches a validation loss of {:.4} nats/token: perplexity {:.2}, {:.4} bits per byte, over {} validation tokens ({} bytes of text).",
        reference.name,
        reference.val_loss,
        reference.perplexity,
        reference.bits_per_byte,
        eval.eval_tokens,
        eval.eval_bytes.round()
    ));
    for m in &eval.models[1..] {
        out.push(compression_finding(reference, m, eval.threads));
        out.push(agreement_finding(reference, m));
    }
    if let Some(f32_speed) = speed(reference, "f32") {
        out.push(format!(
            "Batch-1 generation with the recurrent decoder (constant work per token) runs at {} tokens/s in f32 on {} thread{} (median of {} runs); the seed study reported {SEED_TOKENS_PER_S} tokens/s re-running the whole prefix for every token (on another machine, so compare with care).",
            fmt_rate(f32_speed),
            eval.threads,
            if eval.threads == 1 { "" } else { "s" },
            eval.speed_runs
        ));
    }
    out
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

fn compression_finding(reference: &ModelEval, m: &ModelEval, threads: usize) -> String {
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
    let base = speed(reference, "f32");
    let native = speed(m, "f16-native");
    let upcast = speed(m, "f16-upcast");
    match (base, native) {
        (Some(b), Some(n)) if b > 0.0 && n > 0.0 => {
            let r = n / b;
            let verdict = if r < 0.9 {
                format!("on this CPU ({threads} threads) f16 arithmetic is {:.1}× slower than f32 ({} vs {} tokens/s), so {} is a storage format here", 1.0 / r, fmt_rate(n), fmt_rate(b), m.dtype)
            } else if r > 1.1 {
                format!("on this CPU ({threads} threads) f16 arithmetic is {r:.1}× faster than f32 ({} vs {} tokens/s)", fmt_rate(n), fmt_rate(b))
            } else {
                format!("on this CPU ({threads} threads) f16 arithmetic runs about as fast as f32 ({} vs {} tokens/s)", fmt_rate(n), fmt_rate(b))
            };
            s.push_str("; ");
            s.push_str(&verdict);
        }
        _ => {}
    }
    if let (Some(b), Some(u)) = (base, upcast) {
        if b > 0.0 {
            s.push_str(&format!(
                "; widened to f32 at load it generates at {} tokens/s ({:.2}× f32)",
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
pub fn speed(m: &ModelEval, precision: &str) -> Option<f64> {
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
