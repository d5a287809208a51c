//! The `train` stage kind: trains an Itera-Lite model on a `tokenize` artifact and writes a
//! self-contained model artifact (`model.safetensors`, `config.json`, `tokenizer.json`,
//! `tokenizer_config.json`, `special_tokens_map.json`)
//! with `train_log.jsonl` and `summary.json` ([`crate::records`]).
//!
//! Resumable: checkpoints (weights, AdamW moments, sampler position, and this stage's log
//! and accumulators) live in the stage's work folder; a killed or cancelled run continues
//! from the last one and ends with the same weights as an uninterrupted run.

pub mod params;

use std::fs;
use std::path::Path;

use anyhow::Context as _;
use itera_engine::stage::{InputSlot, InputSlots, OutputDecl, ParamIssue, StageContext, StageKind};
use itera_model::{BatchSampler, Trainer};
use serde::{Deserialize, Serialize};

use crate::records::{self, TrainLogLine, TrainSummary};
use crate::report::findings::{fmt_duration, fmt_rate};
use crate::tokens::{Split, TokenizedData};
use itera_model::artifact::{CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
pub use params::TrainParams;

/// Folder of the checkpoint inside the work folder.
const CHECKPOINT_DIR: &str = "checkpoint";
/// This stage's own resume state beside the checkpoint.
const RESUME_FILE: &str = "train_resume.json";

/// The `train` kind.
pub struct Train;

impl StageKind for Train {
    type Params = TrainParams;
    const KIND: &'static str = "train";
    /// 2: tokenizer_config.json and special_tokens_map.json in the model folder.
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str =
        "Trains an Itera-Lite SSM + MoE model (AdamW, warmup + cosine) on tokenized data; resumable";

    fn validate(params: &Self::Params) -> Vec<ParamIssue> {
        params.issues()
    }

    fn inputs(_params: &Self::Params) -> InputSlots {
        InputSlots::Named(vec![InputSlot::required(
            "data",
            "a `tokenize` stage (train.bin, valid.bin, tokenizer.json)",
        )])
    }

    fn outputs(_params: &Self::Params) -> Vec<OutputDecl> {
        vec![
            OutputDecl::new("weights", WEIGHTS_FILE),
            OutputDecl::new("config", CONFIG_FILE),
            OutputDecl::new("tokenizer", TOKENIZER_FILE),
            OutputDecl::new("log", records::TRAIN_LOG_FILE),
            OutputDecl::new("summary", records::SUMMARY_FILE),
        ]
    }

    /// Step timings and tokens/s in the log and summary; the weights are exact.
    fn measurements(_params: &Self::Params) -> Vec<String> {
        vec![records::TRAIN_LOG_FILE.into(), records::SUMMARY_FILE.into()]
    }

    /// The kernels' instruction set: matrix products round differently on AVX-512,
    /// AVX2 and the portable path (never with the thread count).
    fn environment(_params: &Self::Params) -> std::collections::BTreeMap<String, String> {
        [("kernels".to_owned(), itera_model::isa::kernel_path())].into()
    }

    fn run(params: &Self::Params, ctx: &StageContext) -> anyhow::Result<()> {
        train(params, ctx)
    }
}

/// What the stage saves beside the model's checkpoint to continue exactly.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ResumeState {
    /// The checkpoint's step (this file is only trusted when it matches).
    step: u64,
    log: Vec<TrainLogLine>,
    /// Accumulators of the current log interval; the loss sum as f64 bits (exact).
    interval_loss_bits: u64,
    interval_steps: u64,
    interval_tokens: u64,
    interval_seconds: f64,
    train_seconds: f64,
    best_val: Option<f64>,
    resumed_from_step: Option<u64>,
}

fn train(p: &TrainParams, ctx: &StageContext) -> anyhow::Result<()> {
    let data = TokenizedData::open(&ctx.input("data")?.path)?;
    let config = p.model.resolve(data.meta.vocab_size);
    anyhow::ensure!(
        config.vocab_size >= data.meta.vocab_size,
        "model.vocab_size = {} is smaller than the tokenizer's vocabulary ({}): omit it to use the tokenizer's",
        config.vocab_size,
        data.meta.vocab_size
    );
    let train_tokens = data.read(Split::Train, None)?;
    let val_tokens = data.read(Split::Valid, Some(p.eval_tokens as usize + 1))?;
    anyhow::ensure!(
        val_tokens.len() >= 2,
        "the validation split is empty: nothing to validate on"
    );
    let steps = p.total_steps(train_tokens.len());
    if let Some(problem) = p.warmup_problem(steps) {
        anyhow::bail!("schedule.warmup_steps: {problem} (epochs = {} of this data); lower schedule.warmup_steps or train for more epochs", p.epochs.unwrap_or_default());
    }
    let train_config = p.train_config(steps);
    let threads = p.threads.unwrap_or(ctx.threads).max(1);
    let seed = p.seed.unwrap_or(ctx.seed);
    let (batch, seq) = (p.batch_size, p.seq_len);

    let ckpt = ctx.work_dir.join(CHECKPOINT_DIR);
    let resume_path = ctx.work_dir.join(RESUME_FILE);
    let (mut trainer, mut sampler, mut st) =
        match resume(&ckpt, &resume_path, threads, &train_tokens)? {
            Some((t, s, st))
                if t.model_config() == &config
                    && t.train_config() == &train_config
                    && t.seed() == seed =>
            {
                ctx.log.line(format!(
                    "resuming from the checkpoint at step {}",
                    t.steps_done()
                ));
                (t, s, st)
            }
            other => {
                if other.is_some() {
                    ctx.log.line(
                    "the checkpoint in the work folder was made with other settings: starting over",
                );
                }
                let t = Trainer::<f32>::new(&config, &train_config, seed, threads)?;
                let s = BatchSampler::new(train_tokens.clone(), batch, seq, seed)?;
                (t, s, ResumeState::default())
            }
        };
    if trainer.steps_done() > 0 && st.resumed_from_step.is_none() {
        st.resumed_from_step = Some(trainer.steps_done());
    }

    ctx.progress.start("train", Some(steps), "steps");
    ctx.progress.set_position(trainer.steps_done());
    let mut interval_loss = f64::from_bits(st.interval_loss_bits);
    while trainer.steps_done() < steps {
        if ctx.cancel.is_cancelled() {
            st.interval_loss_bits = interval_loss.to_bits();
            save(&trainer, &sampler, &ckpt, &resume_path, &mut st)?;
            anyhow::bail!("training interrupted at step {} of {steps}; the checkpoint is saved and the next run resumes from it", trainer.steps_done());
        }
        let tokens = sampler.next_batch();
        let stats = trainer.step(&tokens, batch, seq)?;
        interval_loss += stats.loss;
        st.interval_steps += 1;
        st.interval_tokens += stats.tokens as u64;
        st.interval_seconds += stats.seconds;
        st.train_seconds += stats.seconds;
        let step = stats.step;
        let last = step == steps;
        if step % p.log_every == 0 || last {
            let val_loss = if step % p.eval_every == 0 || last {
                let v = trainer.evaluate(&val_tokens)?;
                anyhow::ensure!(
                    v.is_finite(),
                    "validation loss became {v} at step {step}: lower optimizer.learning_rate"
                );
                st.best_val = Some(st.best_val.map_or(v, |b: f64| b.min(v)));
                Some(v)
            } else {
                None
            };
            let line = TrainLogLine {
                step,
                tokens: step * (batch * seq) as u64,
                loss: interval_loss / st.interval_steps as f64,
                lr: stats.lr,
                val_loss,
                tokens_per_s: st.interval_tokens as f64 / st.interval_seconds.max(1e-9),
                elapsed_s: st.train_seconds,
            };
            let eta = eta_seconds(steps, step, st.train_seconds);
            let msg = format!(
                "step {step}/{steps} loss {:.4}{} lr {:.2e} {} tok/s",
                line.loss,
                val_loss.map(|v| format!(" val {v:.4}")).unwrap_or_default(),
                line.lr,
                fmt_rate(line.tokens_per_s),
            );
            ctx.log.line(format!("{msg} ETA {}", fmt_duration(eta)));
            // No ETA in the status text: it would go stale between messages, next to the
            // progress display's own live estimate.
            let mut values = vec![
                ("step", step as f64),
                ("steps", steps as f64),
                ("loss", line.loss),
                ("lr", line.lr),
                ("tokens_per_s", line.tokens_per_s),
                ("elapsed_s", line.elapsed_s),
            ];
            if let Some(v) = val_loss {
                values.push(("val_loss", v));
            }
            ctx.progress.metrics(msg, &values);
            records::to_finite_json(&line)?;
            st.log.push(line);
            interval_loss = 0.0;
            st.interval_steps = 0;
            st.interval_tokens = 0;
            st.interval_seconds = 0.0;
        }
        ctx.progress.set_position(step);
        if p.checkpoint_every > 0 && step % p.checkpoint_every == 0 && !last {
            st.interval_loss_bits = interval_loss.to_bits();
            save(&trainer, &sampler, &ckpt, &resume_path, &mut st)?;
        }
    }
    finish(
        p,
        ctx,
        &data,
        &trainer,
        &st,
        train_tokens.len() as u64,
        threads,
        seed,
    )
}

/// Seconds left for `steps - step` steps. `train_seconds` is the time of every step so far,
/// across resumes (it is saved in the resume state), so the rate is over all `step` steps:
/// right after a resume the estimate is as good as before the kill.
fn eta_seconds(steps: u64, step: u64, train_seconds: f64) -> f64 {
    steps.saturating_sub(step) as f64 * train_seconds / step.max(1) as f64
}

/// Loads the checkpoint and this stage's resume state, if both are there and agree.
fn resume(
    ckpt: &Path,
    resume_path: &Path,
    threads: usize,
    train_tokens: &[u32],
) -> anyhow::Result<Option<(Trainer<f32>, BatchSampler, ResumeState)>> {
    if !ckpt.join(itera_model::trainer::STATE_FILE).is_file() || !resume_path.is_file() {
        return Ok(None);
    }
    // A checkpoint another itera build wrote in a format this one does not read is
    // not resumed: training starts over (the result is the same, only later).
    let (trainer, sampler_state) = match Trainer::<f32>::resume(ckpt, threads) {
        Ok(resumed) => resumed,
        Err(itera_model::TrainError::State { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let st: ResumeState = records::read_json(resume_path)?;
    let Some(sampler_state) = sampler_state else {
        return Ok(None);
    };
    if st.step != trainer.steps_done() {
        return Ok(None);
    }
    let sampler = BatchSampler::restore(train_tokens.to_vec(), sampler_state)?;
    Ok(Some((trainer, sampler, st)))
}

fn save(
    trainer: &Trainer<f32>,
    sampler: &BatchSampler,
    ckpt: &Path,
    resume_path: &Path,
    st: &mut ResumeState,
) -> anyhow::Result<()> {
    st.step = trainer.steps_done();
    trainer.save_checkpoint(ckpt, Some(sampler.state()))?;
    let tmp = resume_path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec(st)?)
        .with_context(|| format!("cannot write `{}`", tmp.display()))?;
    fs::rename(&tmp, resume_path)
        .with_context(|| format!("cannot write `{}`", resume_path.display()))?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn finish(
    p: &TrainParams,
    ctx: &StageContext,
    data: &TokenizedData,
    trainer: &Trainer<f32>,
    st: &ResumeState,
    train_tokens: u64,
    threads: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let out = &ctx.out_dir;
    trainer.export(out)?;
    fs::copy(data.tokenizer_path(), out.join(TOKENIZER_FILE))
        .context("cannot copy tokenizer.json into the model")?;
    crate::tokenize::hf::write_files(out, Some(trainer.model_config().max_seq_length))
        .context("cannot write tokenizer_config.json into the model")?;
    let mut log_text = String::new();
    for line in &st.log {
        log_text.push_str(&serde_json::to_string(&records::to_finite_json(line)?)?);
        log_text.push('\n');
    }
    fs::write(out.join(records::TRAIN_LOG_FILE), log_text)
        .context("cannot write train_log.jsonl")?;
    let steps = trainer.steps_done();
    let tokens_seen = steps * (p.batch_size * p.seq_len) as u64;
    let last = st.log.last().context("training logged nothing")?;
    let final_val = st
        .log
        .iter()
        .rev()
        .find_map(|l| l.val_loss)
        .context("no validation loss was measured")?;
    let summary = TrainSummary {
        config: trainer.model_config().clone(),
        parameters: trainer.params().count() as u64,
        steps,
        batch_size: p.batch_size,
        seq_len: p.seq_len,
        train_tokens_available: train_tokens,
        tokens_seen,
        epochs: tokens_seen as f64 / train_tokens.max(1) as f64,
        final_train_loss: last.loss,
        final_val_loss: final_val,
        best_val_loss: st.best_val.unwrap_or(final_val),
        val_tokens: (p.eval_tokens).min(data.meta.valid_tokens.saturating_sub(1)),
        train_seconds: st.train_seconds,
        tokens_per_s: tokens_seen as f64 / st.train_seconds.max(1e-9),
        threads,
        seed,
        resumed_from_step: st.resumed_from_step,
        params: Some(serde_json::to_value(p)?),
    };
    records::write_json(&out.join(records::SUMMARY_FILE), &summary)?;
    ctx.log.line(format!(
        "trained {steps} steps in {} ({} tok/s); final val loss {:.4}",
        fmt_duration(st.train_seconds),
        fmt_rate(summary.tokens_per_s),
        final_val
    ));
    Ok(())
}

#[cfg(test)]
mod eta_tests {
    use super::eta_seconds;

    #[test]
    fn the_eta_right_after_a_resume_uses_the_rate_of_every_step_so_far() {
        // 500 steps at 0.1 s before the kill, one step after the resume.
        let eta = eta_seconds(1000, 501, 50.1);
        assert!((eta - 49.9).abs() < 0.1, "{eta}");
        assert_eq!(eta_seconds(1000, 1000, 100.0), 0.0);
    }
}
