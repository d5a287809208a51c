//! Text generation from a model artifact for people who want to play with a trained model
//! (`itera generate`): loads the weights, config and tokenizer of a model folder, and
//! streams the continuation of a prompt as text while it is generated.

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use itera_model::decode::{Decoder, Precision, SamplingConfig, Weights};
use tokenizers::Tokenizer;

use crate::evaluate::measure::{continue_prompt, TextRules};
use itera_model::artifact::{check_dir as check_model_dir, TOKENIZER_FILE};

/// A loaded model ready to generate.
pub struct Session {
    decoder: Decoder,
    tokenizer: Tokenizer,
    rules: TextRules,
}

/// How a generation went.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub seconds: f64,
    /// Why it stopped: `"max-tokens"`, `"eos"` or `"context"` (the model's max_seq_length).
    pub stop: &'static str,
}

impl Session {
    /// Loads the model in `dir` (model.safetensors, config.json, tokenizer.json).
    pub fn load(dir: &Path, precision: Precision) -> anyhow::Result<Self> {
        check_model_dir(dir)?;
        let tokenizer_path = dir.join(TOKENIZER_FILE);
        anyhow::ensure!(
            tokenizer_path.is_file(),
            "`{}` has no tokenizer.json: generate needs a model artifact from a `train` or `half-convert` stage",
            dir.display()
        );
        let tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| anyhow::anyhow!("cannot load `{}`: {e}", tokenizer_path.display()))?;
        let weights = Weights::load_dir(dir)
            .with_context(|| format!("cannot load the model in `{}`", dir.display()))?;
        let rules = match tokenizer.token_to_id("<eos>") {
            Some(eos) => TextRules::new(&tokenizer, eos),
            None => TextRules {
                eos: None,
                banned: Vec::new(),
            },
        };
        Ok(Self {
            decoder: Decoder::new(&weights, precision),
            tokenizer,
            rules,
        })
    }

    /// The model's context length.
    pub fn context(&self) -> usize {
        self.decoder.config().max_seq_length
    }

    /// Generates up to `max_new_tokens` after `prompt`, calling `on_text` with each new
    /// piece of text as soon as it is complete (stopping at `<eos>`; `<unk>`, `<pad>` and `<bos>` are never drawn).
    pub fn generate(
        &self,
        prompt: &str,
        max_new_tokens: usize,
        sampling: &SamplingConfig,
        mut on_text: impl FnMut(&str),
    ) -> anyhow::Result<GenerationStats> {
        let ids = crate::evaluate::measure::encode_prompt(&self.tokenizer, prompt)?;
        anyhow::ensure!(
            ids.len() < self.context(),
            "the prompt is {} tokens long but the model's context is {}: shorten it",
            ids.len(),
            self.context()
        );
        let start = Instant::now();
        let mut out: Vec<u32> = Vec::new();
        let mut shown = 0usize;
        let mut decode_error = None;
        let new = continue_prompt(
            &self.decoder,
            &ids,
            max_new_tokens,
            sampling,
            &self.rules,
            |token| {
                out.push(token);
                match self.tokenizer.decode(&out, true) {
                    // Text ending in a partial UTF-8 sequence (byte-level tokens) waits for more.
                    Ok(text) if !text.ends_with('\u{FFFD}') => {
                        // The word decoder closes up " ' " once the next word is there
                        // ("Lily ' s" -> "Lily's"): a trailing apostrophe waits for it.
                        let stable = text.len() - if text.ends_with(" '") { 2 } else { 0 };
                        if stable > shown && text.is_char_boundary(shown) {
                            on_text(&text[shown..stable]);
                            shown = stable;
                        }
                        true
                    }
                    Ok(_) => true,
                    Err(e) => {
                        decode_error = Some(e.to_string());
                        false
                    }
                }
            },
        )?;
        if let Some(e) = decode_error {
            anyhow::bail!("cannot decode the generated tokens: {e}");
        }
        // Whatever was held back (a trailing apostrophe) is final now.
        if let Ok(text) = self.tokenizer.decode(&out, true) {
            if text.len() > shown && text.is_char_boundary(shown) {
                on_text(&text[shown..]);
            }
        }
        let stop = if new.len() == max_new_tokens {
            "max-tokens"
        } else if ids.len() + new.len() >= self.context() {
            "context"
        } else {
            "eos"
        };
        Ok(GenerationStats {
            prompt_tokens: ids.len(),
            new_tokens: new.len(),
            seconds: start.elapsed().as_secs_f64(),
            stop,
        })
    }
}
