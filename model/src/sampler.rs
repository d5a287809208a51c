//! Seeded, resumable batches from a token stream: the stream is cut into windows of
//! `seq + 1` tokens starting every `seq` tokens (inputs and shifted targets); each epoch
//! visits every window once in an order drawn from `(seed, epoch)`. The state is one
//! counter, so a sampler restored from [`SamplerState`] continues exactly.

use crate::ops::splitmix64;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// Everything needed to continue a sampler: its settings and the next window's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub seed: u64,
    pub batch: usize,
    pub seq: usize,
    /// Windows handed out so far (across epochs).
    pub position: u64,
}

/// Why a sampler cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// The stream has fewer than `seq + 1` tokens.
    #[error("the token stream has {len} tokens, too few for one sequence of {seq} (+1 target); use more data or a smaller seq_len")]
    TooShort { len: usize, seq: usize },
    /// Invalid batch shape.
    #[error("batch size and sequence length must be at least 1 (found batch {batch}, seq {seq})")]
    EmptyBatch { batch: usize, seq: usize },
}

/// Draws batches of `batch` windows of `seq + 1` tokens.
#[derive(Debug, Clone)]
pub struct BatchSampler {
    tokens: std::sync::Arc<[u32]>,
    state: SamplerState,
    windows: usize,
    epoch: u64,
    order: Vec<u32>,
}

impl BatchSampler {
    /// A sampler at the start of the stream.
    pub fn new(
        tokens: impl Into<std::sync::Arc<[u32]>>,
        batch: usize,
        seq: usize,
        seed: u64,
    ) -> Result<Self, SamplerError> {
        Self::restore(
            tokens,
            SamplerState {
                seed,
                batch,
                seq,
                position: 0,
            },
        )
    }

    /// A sampler continuing from `state`.
    pub fn restore(
        tokens: impl Into<std::sync::Arc<[u32]>>,
        state: SamplerState,
    ) -> Result<Self, SamplerError> {
        let tokens = tokens.into();
        let SamplerState { batch, seq, .. } = state;
        if batch == 0 || seq == 0 {
            return Err(SamplerError::EmptyBatch { batch, seq });
        }
        if tokens.len() < seq + 1 {
            return Err(SamplerError::TooShort {
                len: tokens.len(),
                seq,
            });
        }
        let windows = (tokens.len() - 1) / seq;
        let mut s = Self {
            tokens,
            state,
            windows,
            epoch: u64::MAX,
            order: Vec::new(),
        };
        s.shuffle(0);
        Ok(s)
    }

    fn shuffle(&mut self, epoch: u64) {
        if self.epoch == epoch {
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            splitmix64(self.state.seed) ^ splitmix64(epoch.wrapping_add(1)),
        );
        self.order = (0..self.windows as u32).collect();
        self.order.shuffle(&mut rng);
        self.epoch = epoch;
    }

    /// The next batch: `batch * (seq + 1)` tokens, one window after the other.
    pub fn next_batch(&mut self) -> Vec<u32> {
        let (batch, seq) = (self.state.batch, self.state.seq);
        let mut out = Vec::with_capacity(batch * (seq + 1));
        for _ in 0..batch {
            let p = self.state.position;
            self.shuffle(p / self.windows as u64);
            let w = self.order[(p % self.windows as u64) as usize] as usize;
            out.extend_from_slice(&self.tokens[w * seq..w * seq + seq + 1]);
            self.state.position += 1;
        }
        out
    }

    /// The state to save in a checkpoint.
    pub fn state(&self) -> &SamplerState {
        &self.state
    }

    /// Windows per epoch.
    pub fn windows(&self) -> usize {
        self.windows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_visits_every_window_once_and_resume_continues() {
        let tokens: Vec<u32> = (0..101).collect();
        let mut s = BatchSampler::new(tokens.clone(), 2, 10, 9).unwrap();
        assert_eq!(s.windows(), 10);
        let mut starts = Vec::new();
        for _ in 0..5 {
            let b = s.next_batch();
            assert_eq!(b.len(), 22);
            for w in b.chunks(11) {
                assert!(
                    w.windows(2).all(|p| p[1] == p[0] + 1),
                    "windows are contiguous"
                );
                starts.push(w[0]);
            }
        }
        starts.sort();
        assert_eq!(starts, (0..10).map(|i| i * 10).collect::<Vec<_>>());
        let saved = s.state().clone();
        let next = s.next_batch();
        let mut r = BatchSampler::restore(tokens, saved).unwrap();
        assert_eq!(r.next_batch(), next);
    }

    #[test]
    fn too_short_streams_are_rejected_with_a_reason() {
        let e = BatchSampler::new(vec![1, 2, 3], 1, 5, 0).unwrap_err();
        assert!(e.to_string().contains("3 tokens"));
    }
}
