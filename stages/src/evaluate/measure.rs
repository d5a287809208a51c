//! The measurements of one model: the recurrent scorer's windows and sums, scoring and
//! generation speeds (medians of timed repetitions), and greedy and
//! sampled generations decoded to text.

use std::time::Instant;

use itera_model::decode::{generate, Decoder, Precision, Sampler, SamplingConfig};
use tokenizers::Tokenizer;

use crate::records::{median, GenerationRecord, SpeedPrecision, SpeedRecord};
use crate::scoring::ModelScorer;

/// The validation tokens cut into windows: window `i` is `tokens[i*len .. (i+1)*len + 1]`,
/// so every token after the first is predicted exactly once, from at most `len` tokens of
/// context (the window starts from an empty state).
pub fn windows(tokens: &[u32], len: usize) -> Vec<&[u32]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start + 1 < tokens.len() {
        let end = (start + len + 1).min(tokens.len());
        out.push(&tokens[start..end]);
        start += len;
    }
    out
}

/// Sum of the negative log-likelihoods (nats) and number of predicted tokens over `windows`,
/// scored with the recurrent decoder on `threads` threads (the `recurrent` scorer). Per-window sums are added in window order, so the result
/// does not depend on the thread count.
pub fn score(decoder: &Decoder, windows: &[&[u32]], threads: usize) -> anyhow::Result<(f64, u64)> {
    let threads = threads.clamp(1, windows.len().max(1));
    let chunk = windows.len().div_ceil(threads).max(1);
    let per_window: Vec<anyhow::Result<Vec<(f64, usize)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = windows
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|w| decoder.score(w).map_err(anyhow::Error::from))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a scoring thread panicked")))
            })
            .collect()
    });
    let mut nll = 0.0;
    let mut n = 0u64;
    for part in per_window {
        for (w_nll, w_n) in part? {
            nll += w_nll;
            n += w_n as u64;
        }
    }
    Ok((nll, n))
}

/// Median scoring throughput (predicted tokens per second) of `scorer` on `tokens` in
/// windows of `seq`, over `runs` timed passes.
pub fn scoring_speed(
    scorer: &ModelScorer,
    tokens: &[u32],
    seq: usize,
    runs: usize,
) -> anyhow::Result<f64> {
    let mut rates = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let (_, n) = scorer.nll(tokens, seq)?;
        rates.push(n as f64 / t.elapsed().as_secs_f64().max(1e-9));
    }
    Ok(median(&rates))
}

/// Batch-1 generation speed: `new_tokens` greedy tokens after `prompt`, never stopping
/// early, timed `runs` times after one warm-up. Single-threaded by construction.
pub fn generation_speed(
    decoder: &Decoder,
    precision: Precision,
    prompt: &[u32],
    new_tokens: usize,
    runs: usize,
) -> anyhow::Result<SpeedRecord> {
    let greedy = SamplingConfig::greedy();
    generate(decoder, prompt, new_tokens.min(8), &greedy, |_| true, None)?;
    let mut rates = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let out = generate(decoder, prompt, new_tokens, &greedy, |_| true, None)?;
        rates.push(out.len() as f64 / t.elapsed().as_secs_f64().max(1e-9));
    }
    Ok(SpeedRecord {
        precision: speed_precision(precision),
        tokens_per_s: median(&rates),
        runs: rates,
        threads: 1,
    })
}

/// How eval.json names a decoder precision.
pub fn speed_precision(p: Precision) -> SpeedPrecision {
    match p {
        Precision::F32 => SpeedPrecision::F32,
        Precision::F16 => SpeedPrecision::F16Upcast,
        Precision::F16Native => SpeedPrecision::F16Native,
    }
}

/// Greedy and sampled continuations of every prompt, decoded to text (special tokens
/// dropped); generation stops at `<eos>`.
pub fn generations(
    decoder: &Decoder,
    tokenizer: &Tokenizer,
    prompts: &[String],
    max_new_tokens: usize,
    sampling: &SamplingConfig,
    eos: u32,
) -> anyhow::Result<Vec<GenerationRecord>> {
    prompts
        .iter()
        .map(|prompt| {
            let ids = encode_prompt(tokenizer, prompt)?;
            let rules = TextRules::new(tokenizer, eos);
            let text = |cfg: &SamplingConfig| -> anyhow::Result<String> {
                let out = continue_prompt(decoder, &ids, max_new_tokens, cfg, &rules, |_| true)?;
                tokenizer
                    .decode(&out, true)
                    .map_err(|e| anyhow::anyhow!("cannot decode generated tokens: {e}"))
            };
            Ok(GenerationRecord {
                prompt: prompt.clone(),
                greedy: text(&SamplingConfig::greedy())?,
                sampled: text(sampling)?,
            })
        })
        .collect()
}

/// Which tokens a text continuation may produce.
pub struct TextRules {
    /// Ends the continuation (not returned); never the first token.
    pub eos: Option<u32>,
    /// Never produced (`<unk>`, `<pad>`, `<bos>`: they decode to no text).
    pub banned: Vec<u32>,
}

impl TextRules {
    /// The rules for a tokenizer with the usual special tokens.
    pub fn new(tokenizer: &Tokenizer, eos: u32) -> Self {
        Self {
            eos: Some(eos),
            banned: ["<unk>", "<pad>", "<bos>"]
                .iter()
                .filter_map(|t| tokenizer.token_to_id(t))
                .filter(|&t| t != eos)
                .collect(),
        }
    }
}

/// Continues `prompt` by up to `max_new_tokens` tokens drawn with `sampling` under `rules`
/// (at least one token, so the text is never empty; stops at `<eos>` or a full context).
/// `on_token` sees each new token and returns whether to go on.
pub fn continue_prompt(
    decoder: &Decoder,
    prompt: &[u32],
    max_new_tokens: usize,
    sampling: &SamplingConfig,
    rules: &TextRules,
    mut on_token: impl FnMut(u32) -> bool,
) -> anyhow::Result<Vec<u32>> {
    let mut sampler = Sampler::new(sampling)?;
    let mut state = decoder.new_state();
    let mut logits = decoder.prefill(&mut state, prompt)?.to_vec();
    let context = decoder.config().max_seq_length;
    let mut out = Vec::new();
    while out.len() < max_new_tokens {
        for &b in &rules.banned {
            logits[b as usize] = f32::NEG_INFINITY;
        }
        if let (Some(e), true) = (rules.eos, out.is_empty()) {
            logits[e as usize] = f32::NEG_INFINITY;
        }
        let token = sampler.sample(&logits);
        if Some(token) == rules.eos {
            break;
        }
        out.push(token);
        if !on_token(token) || out.len() == max_new_tokens || state.position() == context {
            break;
        }
        logits.copy_from_slice(decoder.step(&mut state, token)?);
    }
    Ok(out)
}

/// Token ids of `prompt` (no special tokens added); an error if it encodes to nothing.
pub fn encode_prompt(tokenizer: &Tokenizer, prompt: &str) -> anyhow::Result<Vec<u32>> {
    let enc = tokenizer
        .encode(prompt, false)
        .map_err(|e| anyhow::anyhow!("cannot tokenize prompt {prompt:?}: {e}"))?;
    let ids = enc.get_ids().to_vec();
    anyhow::ensure!(
        !ids.is_empty(),
        "prompt {prompt:?} encodes to no tokens; give a non-empty prompt"
    );
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_predict_every_token_once() {
        let tokens: Vec<u32> = (0..10).collect();
        let w = windows(&tokens, 4);
        assert_eq!(w, [&tokens[0..5], &tokens[4..9], &tokens[8..10]]);
        let predicted: usize = w.iter().map(|w| w.len() - 1).sum();
        assert_eq!(predicted, 9);
        assert!(windows(&tokens[..1], 4).is_empty());
    }
}
