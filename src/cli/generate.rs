//! `itera generate RUN_OR_MODEL_DIR --prompt "..."`: samples text from a trained model and
//! streams it to the terminal. The model is a model folder (a `train` or `half-convert`
//! artifact: model.safetensors, config.json, tokenizer.json) or a recorded run, whose
//! `train` stage (or the stage named with `--stage`) is used.

use std::io::Write as _;

use clap::{Args, ValueEnum};
use itera_stages::generate::Session;
use itera_stages::itera_model::decode::{Precision, SamplingConfig};

use super::model_dir::model_dir;
use super::{exit, invalid, Global};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A model folder, or a run (id, unique prefix/suffix, `latest`, or a run folder).
    pub model: String,
    /// Text to continue.
    #[arg(long, short)]
    pub prompt: String,
    /// Tokens to generate at most (generation also stops at `<eos>` and at the model's
    /// context length).
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Softmax temperature; 0 is greedy (always the most likely token).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample among the k most likely tokens only.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling: the most likely tokens whose probabilities reach p, in (0, 1].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Random seed: the same seed, model and prompt give the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Arithmetic of the decoder.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub precision: PrecisionArg,
    /// With a run: the stage whose model to use (default: its `train` stage).
    #[arg(long)]
    pub stage: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// f32 weights and arithmetic.
    F32,
    /// f16 weights widened to f32 inside each matrix-vector product.
    F16,
    /// f16 weights and f16 arithmetic in the matrix-vector products.
    F16Native,
}

pub fn main(g: &Global, args: GenerateArgs) -> anyhow::Result<u8> {
    let dir = model_dir(g, &args.model, args.stage.as_deref())?;
    let precision = match args.precision {
        PrecisionArg::F32 => Precision::F32,
        PrecisionArg::F16 => Precision::F16,
        PrecisionArg::F16Native => Precision::F16Native,
    };
    let session = Session::load(&dir, precision).map_err(|e| invalid(format!("{e:#}")))?;
    let sampling = SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{}", args.prompt)?;
    stdout.flush()?;
    let mut first = true;
    let mut io_error = None;
    let stats = session
        .generate(&args.prompt, args.max_tokens, &sampling, |piece| {
            let glue = if first
                && !args.prompt.ends_with(char::is_whitespace)
                && piece.starts_with(char::is_alphanumeric)
            {
                " "
            } else {
                ""
            };
            first = false;
            if let Err(e) = write!(stdout, "{glue}{piece}").and_then(|()| stdout.flush()) {
                io_error.get_or_insert(e);
            }
        })
        .map_err(|e| invalid(format!("{e:#}")))?;
    if let Some(e) = io_error {
        return Err(e.into());
    }
    writeln!(stdout)?;
    super::jsonlog::note(
        "generate.finished",
        &format!(
            "{} tokens in {:.2} s ({:.1} tokens/s, stopped by {}; prompt {} tokens; model {})",
            stats.new_tokens,
            stats.seconds,
            stats.new_tokens as f64 / stats.seconds.max(1e-9),
            stats.stop,
            stats.prompt_tokens,
            dir.display()
        ),
        serde_json::json!({
            "tokens": stats.new_tokens,
            "seconds": stats.seconds,
            "stop": stats.stop,
            "prompt_tokens": stats.prompt_tokens,
            "model": dir,
        }),
    );
    Ok(exit::OK)
}
