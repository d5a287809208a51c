//! The training loop's building block: [`Trainer`] owns the parameters, AdamW state and
//! step counter, runs one optimizer step per batch on its own rayon pool, evaluates, and
//! saves/resumes checkpoints so an interrupted run ends bit-identical to an
//! uninterrupted one (dropout masks and data order depend only on seed and step).
//!
//! A checkpoint folder holds `model.safetensors` + `config.json` (a loadable model),
//! `optimizer.safetensors` (`{name}.exp_avg`, `{name}.exp_avg_sq`, and `{name}.ema` when
//! the weights are averaged) and
//! `trainer_state.json` (step, seed, train config, sampler state).

use crate::config::ModelConfig;
use crate::model::{forward_scaled, DropoutKey};
use crate::ops::{grad_of, splitmix64};
use crate::optim::{clip_global_norm, update_average, AdamW};
use crate::parallel::run_parts;
use crate::params::Params;
use crate::real::Real;
use crate::sampler::{BatchSampler, SamplerState};
use crate::score::{check_tokens, score, ScoreError};
use crate::train_config::TrainConfig;
use crate::weights::{self, WeightsError};
use dfdx::prelude::{Cpu, OwnedTape};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// File of the optimizer moments in a checkpoint folder.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File of the step counter, seed and settings in a checkpoint folder.
pub const STATE_FILE: &str = "trainer_state.json";
/// `trainer_state.json`'s format name and version (2: training settings nested as
/// `optimizer` and `schedule`).
pub const CHECKPOINT_FORMAT: &str = "itera-lite-checkpoint";
pub const CHECKPOINT_VERSION: u32 = 2;

/// Why training cannot start or continue.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model or train config has invalid values.
    #[error("invalid {what} config: {issues}")]
    Config { what: &'static str, issues: String },
    /// The batch does not have `batch * (seq + 1)` tokens or `seq` is out of range.
    #[error("a batch of {batch} sequences of {seq} tokens needs {expected} tokens (seq + 1 per sequence), got {found}; seq must be 1..={max}")]
    BatchShape {
        batch: usize,
        seq: usize,
        expected: usize,
        found: usize,
        max: usize,
    },
    /// Token ids outside the vocabulary, or a bad scoring shape.
    #[error(transparent)]
    Tokens(#[from] ScoreError),
    /// The loss is NaN or infinite.
    #[error("the loss became {loss} at step {step}; lower learning_rate or enable grad_clip")]
    NonFinite { step: u64, loss: f64 },
    /// Weights or optimizer files could not be read or written.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The checkpoint state file could not be read or written.
    #[error("{path}: {message}")]
    State { path: PathBuf, message: String },
    /// The thread pool could not be created.
    #[error("cannot start {threads} training threads: {message}")]
    Threads { threads: usize, message: String },
}

/// What one optimizer step did (passed to progress callbacks).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepStats {
    /// Steps completed, this one included.
    pub step: u64,
    /// The optimised loss: `ce_loss + load_balance_loss_weight * aux_loss`.
    pub loss: f64,
    /// Mean next-token cross-entropy (nats).
    pub ce_loss: f64,
    /// Mean MoE balance loss (1.0 = perfectly balanced); 0 without MoE layers.
    pub aux_loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens predicted in this step.
    pub tokens: usize,
    /// Wall time of the step (seconds).
    pub seconds: f64,
    /// `tokens / seconds`.
    pub tokens_per_s: f64,
    /// Per MoE layer, the share of top-k assignments each expert received.
    pub expert_usage: Vec<Vec<f64>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TrainerState {
    format: String,
    version: u32,
    dtype: String,
    step: u64,
    adam_t: u64,
    seed: u64,
    train: TrainConfig,
    sampler: Option<SamplerState>,
}

/// Parameters, optimizer and step counter of one training run.
pub struct Trainer<E: Real = f32> {
    params: Params<E>,
    adam: AdamW<E>,
    /// The moving average of the weights (`optimizer.ema_decay > 0`).
    ema: Option<Vec<Vec<E>>>,
    train: TrainConfig,
    seed: u64,
    step: u64,
    threads: usize,
    pool: rayon::ThreadPool,
}

fn issues_text(issues: Vec<crate::config::ConfigIssue>) -> Option<String> {
    (!issues.is_empty()).then(|| {
        issues
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// The micro-batches of a step of `batch` sequences of `seq` tokens: ranges of sequences,
/// computed as independent parts (see [`run_parts`]) whose gradients are added in order.
/// A function of the shape alone, so the result never depends on the thread count: two
/// halves when the batch has at least two sequences and 256 tokens, else one part.
pub fn micro_batches(batch: usize, seq: usize) -> Vec<std::ops::Range<usize>> {
    if batch >= 2 && batch * seq >= 256 {
        let half = batch.div_ceil(2);
        vec![0..half, half..batch]
    } else {
        std::iter::once(0..batch).collect()
    }
}

/// `acc += g`, tensor by tensor, elementwise.
fn add_grads<E: Real>(acc: &mut [Vec<E>], g: &[Vec<E>]) {
    for (a, g) in acc.iter_mut().zip(g) {
        a.par_iter_mut()
            .with_min_len(4096)
            .zip(g.par_iter())
            .for_each(|(a, &g)| *a += g);
    }
}

fn values_of<E: Real>(params: &Params<E>) -> Vec<Vec<E>> {
    params.values.iter().map(|v| v.data().to_vec()).collect()
}

fn pool(threads: usize) -> Result<rayon::ThreadPool, TrainError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("itera-train-{i}"))
        .build()
        .map_err(|e| TrainError::Threads {
            threads,
            message: e.to_string(),
        })
}

impl<E: Real> Trainer<E> {
    /// A fresh run: parameters initialised from `seed`, zero optimizer state, step 0,
    /// computing on `threads` threads (results are bit-identical for equal seed, data and
    /// thread count).
    pub fn new(
        cfg: &ModelConfig,
        train: &TrainConfig,
        seed: u64,
        threads: usize,
    ) -> Result<Self, TrainError> {
        if let Some(issues) = issues_text(cfg.issues()) {
            return Err(TrainError::Config {
                what: "model",
                issues,
            });
        }
        if let Some(issues) = issues_text(train.issues(cfg.max_seq_length)) {
            return Err(TrainError::Config {
                what: "train",
                issues,
            });
        }
        let params = Params::init(cfg, seed);
        let adam = AdamW::new(&params);
        let ema = (train.optimizer.ema_decay > 0.0).then(|| values_of(&params));
        Ok(Self {
            params,
            adam,
            ema,
            train: train.clone(),
            seed,
            step: 0,
            threads: threads.max(1),
            pool: pool(threads)?,
        })
    }

    /// One optimizer step on `batch` sequences of `seq + 1` tokens each (inputs are the
    /// first `seq`, targets the last `seq` of each), laid out one after the other.
    pub fn step(
        &mut self,
        batch_tokens: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<StepStats, TrainError> {
        let cfg = &self.params.config;
        let max = cfg.max_seq_length;
        let expected = batch * (seq + 1);
        if batch == 0 || seq == 0 || seq > max || batch_tokens.len() != expected {
            return Err(TrainError::BatchShape {
                batch,
                seq,
                expected,
                found: batch_tokens.len(),
                max,
            });
        }
        check_tokens(batch_tokens, cfg.vocab_size)?;
        let start = Instant::now();
        let key = splitmix64(self.seed ^ splitmix64(self.step.wrapping_add(0x5EED)));
        let p = self.params.config.dropout;
        let parts = micro_batches(batch, seq);
        let lr = self.train.lr_at(self.step);
        let (params, adam, ema, train) =
            (&mut self.params, &mut self.adam, &mut self.ema, &self.train);
        let (out_ce, out_aux, counts, grad_norm) = self.pool.install(|| {
            // Each micro-batch's loss is scaled by its share of the tokens, so the parts'
            // gradients, added in part order, are the step's gradient.
            let results = run_parts(parts.len(), |i| {
                let range = parts[i].clone();
                let share = range.len() as f64 / batch as f64;
                let mut x = Vec::with_capacity(range.len() * seq);
                let mut y = Vec::with_capacity(range.len() * seq);
                for w in
                    batch_tokens[range.start * (seq + 1)..range.end * (seq + 1)].chunks(seq + 1)
                {
                    x.extend_from_slice(&w[..seq]);
                    y.extend_from_slice(&w[1..]);
                }
                let dropout = DropoutKey {
                    p,
                    key: splitmix64(key ^ i as u64),
                };
                let params = &*params;
                let out = forward_scaled::<E, OwnedTape<E, Cpu>>(
                    params,
                    &x,
                    &y,
                    seq,
                    Some(dropout),
                    share,
                );
                let (ce, aux, counts) = (out.ce, out.aux, out.expert_counts);
                let mut g = out.loss.backward();
                let grads: Vec<Vec<E>> = params.values.iter().map(|v| grad_of(&mut g, v)).collect();
                (share, ce, aux, counts, grads)
            });
            let (mut ce, mut aux) = (0.0, 0.0);
            let mut counts: Vec<Vec<usize>> = Vec::new();
            let mut grads: Vec<Vec<E>> = Vec::new();
            for (share, c, a, n, g) in results {
                ce += share * c;
                aux += share * a;
                if counts.is_empty() {
                    counts = n;
                } else {
                    for (total, part) in counts.iter_mut().zip(n) {
                        total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
                    }
                }
                if grads.is_empty() {
                    grads = g;
                } else {
                    add_grads(&mut grads, &g);
                }
            }
            let norm = clip_global_norm(&mut grads, train.optimizer.grad_clip);
            if ce.is_finite() && norm.is_finite() {
                adam.update(params, &grads, lr, &train.optimizer);
                if let Some(avg) = ema {
                    update_average(avg, params, train.optimizer.ema_decay, adam.t);
                }
            }
            (ce, aux, counts, norm)
        });
        let loss = out_ce + self.params.config.load_balance_loss_weight * out_aux;
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.step,
                loss: if loss.is_finite() { grad_norm } else { loss },
            });
        }
        self.step += 1;
        let seconds = start.elapsed().as_secs_f64();
        let tokens = batch * seq;
        let expert_usage = counts
            .iter()
            .map(|c| {
                let total: usize = c.iter().sum();
                c.iter().map(|&n| n as f64 / total.max(1) as f64).collect()
            })
            .collect();
        Ok(StepStats {
            step: self.step,
            loss,
            ce_loss: out_ce,
            aux_loss: out_aux,
            lr,
            grad_norm,
            tokens,
            seconds,
            tokens_per_s: tokens as f64 / seconds.max(1e-12),
            expert_usage,
        })
    }

    /// Trains until `train.steps` steps are done, drawing batches from `sampler` and
    /// calling `on_step` after each; `on_step` returns `false` to stop early (e.g. to
    /// checkpoint and exit).
    pub fn fit(
        &mut self,
        sampler: &mut BatchSampler,
        mut on_step: impl FnMut(&Self, &StepStats) -> bool,
    ) -> Result<(), TrainError> {
        let (batch, seq) = (sampler.state().batch, sampler.state().seq);
        while self.step < self.train.steps {
            let tokens = sampler.next_batch();
            let stats = self.step(&tokens, batch, seq)?;
            if !on_step(self, &stats) {
                break;
            }
        }
        Ok(())
    }

    /// Sum of next-token NLL over `tokens` and the number of predicted tokens (see
    /// [`score`]), on this trainer's threads.
    pub fn score(
        &self,
        tokens: &[u32],
        seq: usize,
        batch: usize,
    ) -> Result<(f64, usize), TrainError> {
        let model = self.model();
        Ok(self.pool.install(|| score(&model, tokens, seq, batch))?)
    }

    /// Mean next-token NLL (nats) over `tokens`, in windows of the train config's
    /// `seq_len`, `batch_size` at a time.
    pub fn evaluate(&self, tokens: &[u32]) -> Result<f64, TrainError> {
        let (sum, n) = self.score(tokens, self.train.seq_len, self.train.batch_size)?;
        Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
    }

    /// The weights the run produces: the moving average when `optimizer.ema_decay > 0`,
    /// else the current parameters.
    pub fn model(&self) -> std::borrow::Cow<'_, Params<E>> {
        match &self.ema {
            Some(avg) => {
                std::borrow::Cow::Owned(Params::from_values(&self.params.config, avg.clone()))
            }
            None => std::borrow::Cow::Borrowed(&self.params),
        }
    }

    /// Writes a model folder (`model.safetensors`, `config.json`) of [`Self::model`].
    pub fn export(&self, dir: &Path) -> Result<(), TrainError> {
        Ok(weights::export(&self.model(), dir)?)
    }

    /// Writes a checkpoint folder (replacing an existing one atomically: written beside
    /// it, then renamed). `sampler` is the data position to resume from.
    pub fn save_checkpoint(
        &self,
        dir: &Path,
        sampler: Option<&SamplerState>,
    ) -> Result<(), TrainError> {
        let state_err = |path: &Path, message: String| TrainError::State {
            path: path.to_path_buf(),
            message,
        };
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "checkpoint".into());
        let tmp = dir.with_file_name(format!(".{name}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| state_err(&tmp, e.to_string()))?;
        }
        weights::export(&self.params, &tmp)?;
        let mut moments: Vec<(String, Vec<usize>, &[E])> = Vec::new();
        for (i, s) in self.params.specs.iter().enumerate() {
            moments.push((
                format!("{}.exp_avg", s.name),
                s.shape.clone(),
                &self.adam.m[i],
            ));
            moments.push((
                format!("{}.exp_avg_sq", s.name),
                s.shape.clone(),
                &self.adam.v[i],
            ));
            if let Some(avg) = &self.ema {
                moments.push((format!("{}.ema", s.name), s.shape.clone(), &avg[i]));
            }
        }
        weights::write_tensors(&tmp.join(OPTIMIZER_FILE), &moments, weights::metadata())?;
        let state = TrainerState {
            format: CHECKPOINT_FORMAT.into(),
            version: CHECKPOINT_VERSION,
            dtype: format!("{:?}", E::SAFETENSORS_DTYPE),
            step: self.step,
            adam_t: self.adam.t,
            seed: self.seed,
            train: self.train.clone(),
            sampler: sampler.cloned(),
        };
        let path = tmp.join(STATE_FILE);
        // Invariant: the state serialises (plain numbers and strings).
        let json = serde_json::to_string_pretty(&state).expect("state serialises");
        std::fs::write(&path, json + "\n").map_err(|e| state_err(&path, e.to_string()))?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| state_err(dir, e.to_string()))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| state_err(dir, e.to_string()))
    }

    /// Continues a run from a checkpoint folder on `threads` threads; also returns the
    /// saved sampler state.
    pub fn resume(dir: &Path, threads: usize) -> Result<(Self, Option<SamplerState>), TrainError> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::State {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| TrainError::State {
                path: path.clone(),
                message: format!("not a trainer state: {e}"),
            })?;
        let (format, version) = (&value["format"], &value["version"]);
        if format != CHECKPOINT_FORMAT || version != CHECKPOINT_VERSION {
            return Err(TrainError::State {
                path,
                message: format!(
                    "unsupported checkpoint format {format} v{version} (this build reads \
                     {CHECKPOINT_FORMAT} v{CHECKPOINT_VERSION})"
                ),
            });
        }
        let state: TrainerState = serde_json::from_value(value).map_err(|e| TrainError::State {
            path: path.clone(),
            message: format!("not a trainer state: {e}"),
        })?;
        let cfg = weights::load_config(dir)?;
        let params = weights::load_params::<E>(&cfg, &dir.join(weights::WEIGHTS_FILE))?;
        let opt_path = dir.join(OPTIMIZER_FILE);
        let mut moments = weights::read_tensors::<E>(&opt_path)?;
        let mut adam = AdamW::new(&params);
        adam.t = state.adam_t;
        let mut ema = (state.train.optimizer.ema_decay > 0.0).then(|| values_of(&params));
        for (i, s) in params.specs.iter().enumerate() {
            let mut slots = vec![("exp_avg", &mut adam.m[i]), ("exp_avg_sq", &mut adam.v[i])];
            if let Some(avg) = ema.as_mut() {
                slots.push(("ema", &mut avg[i]));
            }
            for (suffix, slot) in slots {
                let name = format!("{}.{suffix}", s.name);
                let (shape, v) = moments.remove(&name).ok_or_else(|| WeightsError::Missing {
                    path: opt_path.clone(),
                    name: name.clone(),
                })?;
                if shape != s.shape {
                    return Err(WeightsError::Shape {
                        path: opt_path.clone(),
                        name,
                        expected: s.shape.clone(),
                        found: shape,
                    }
                    .into());
                }
                *slot = v;
            }
        }
        let trainer = Self {
            params,
            adam,
            ema,
            train: state.train,
            seed: state.seed,
            step: state.step,
            threads: threads.max(1),
            pool: pool(threads)?,
        };
        Ok((trainer, state.sampler))
    }

    /// The current parameters (the optimizer's, not the average: see [`Self::model`]).
    pub fn params(&self) -> &Params<E> {
        &self.params
    }

    /// The model config.
    pub fn model_config(&self) -> &ModelConfig {
        &self.params.config
    }

    /// The optimisation settings.
    pub fn train_config(&self) -> &TrainConfig {
        &self.train
    }

    /// Steps completed.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// The seed of the run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Threads the trainer computes on.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The optimizer state.
    pub fn optimizer(&self) -> &AdamW<E> {
        &self.adam
    }
}
