//! Batched scoring of a token stream with the parallel forward pass (no tape): the summed
//! next-token negative log-likelihood, for perplexity `exp(sum / n)` and bits per byte
//! `sum / (n_bytes ln 2)`.

use crate::model::forward;
use crate::parallel::run_parts;
use crate::params::Params;
use crate::real::Real;
use dfdx::prelude::NoneTape;

/// Why a stream cannot be scored.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// A token id is not in the model's vocabulary.
    #[error("token id {token} at position {position} is outside the model's vocabulary of {vocab}; was the stream made with this model's tokenizer?")]
    TokenOutOfRange {
        token: u32,
        position: usize,
        vocab: usize,
    },
    /// Invalid window shape.
    #[error("sequence length must be between 1 and the model's max_seq_length ({max}) and batch at least 1 (found seq {seq}, batch {batch})")]
    BadShape {
        seq: usize,
        batch: usize,
        max: usize,
    },
}

/// Checks every token id is `< vocab`.
pub fn check_tokens(tokens: &[u32], vocab: usize) -> Result<(), ScoreError> {
    match tokens.iter().position(|&t| t as usize >= vocab) {
        Some(position) => Err(ScoreError::TokenOutOfRange {
            token: tokens[position],
            position,
            vocab,
        }),
        None => Ok(()),
    }
}

/// Sum of `-ln p(token_i | tokens_<i)` over every token but the first, and how many
/// tokens that is (`tokens.len() - 1`). The stream is cut into windows of `seq + 1`
/// tokens starting every `seq` tokens (each window's first token is context only), run
/// `batch` windows at a time; a shorter last window covers the rest. Runs on the
/// current rayon pool, batches shared out to groups of its threads.
pub fn score<E: Real>(
    params: &Params<E>,
    tokens: &[u32],
    seq: usize,
    batch: usize,
) -> Result<(f64, usize), ScoreError> {
    let max = params.config.max_seq_length;
    if seq == 0 || seq > max || batch == 0 {
        return Err(ScoreError::BadShape { seq, batch, max });
    }
    check_tokens(tokens, params.config.vocab_size)?;
    if tokens.len() < 2 {
        return Ok((0.0, 0));
    }
    let full = (tokens.len() - 1) / seq;
    // Each batch of windows: its first token and length. The batches are computed by
    // groups of threads ([`run_parts`]) and their sums added in batch order, so the sum is
    // the same bits for any thread count.
    let mut batches: Vec<(Vec<usize>, usize)> = (0..full)
        .map(|w| w * seq)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|c| (c.to_vec(), seq))
        .collect();
    let rest = (tokens.len() - 1) % seq;
    if rest > 0 {
        batches.push((vec![full * seq], rest));
    }
    let sums = run_parts(batches.len(), |b| {
        let (starts, len) = (&batches[b].0, batches[b].1);
        let mut x = Vec::with_capacity(starts.len() * len);
        let mut y = Vec::with_capacity(starts.len() * len);
        for &s in starts {
            x.extend_from_slice(&tokens[s..s + len]);
            y.extend_from_slice(&tokens[s + 1..s + len + 1]);
        }
        let out = forward::<E, NoneTape>(params, &x, &y, len, None);
        out.ce * x.len() as f64
    });
    let sum: f64 = sums.into_iter().sum();
    Ok((sum, tokens.len() - 1))
}
