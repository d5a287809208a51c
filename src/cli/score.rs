//! `itera score MODEL FILE...`: a model's loss on any text. Each file is tokenized with the
//! model's own `tokenizer.json` the way the tokenize stage reads a corpus (stories cut at
//! `<|endoftext|>`, each followed by `<eos>`) and scored in windows of the model's context
//! with the evaluate stage's scoring function, so the validation text gives the evaluate
//! stage's numbers. Prints tokens, bytes, loss, perplexity, bits per token and per byte (and
//! the `<unk>` rate for word-level tokenizers) per file and in total; `--json` for machines.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use itera_model::artifact::{check_dir as check_model_dir, TOKENIZER_FILE};
use itera_stages::records::{to_finite_json, TextScore};
use itera_stages::scoring::{self, ModelScorer, ScorerKind, TextTokenizer};
use serde::Serialize;

use super::model_dir::model_dir;
use super::{exit, invalid, out, Global};

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// A model folder, or a run (id, unique prefix/suffix, `latest`, or a run folder).
    pub model: String,
    /// Text files to score (UTF-8; TinyStories' `<|endoftext|>` separates stories).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Threads for tokenizing and scoring (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Scoring window: each token is predicted from at most this many previous tokens
    /// (default: the model's context, max_seq_length).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// How the loss is computed: the batched forward pass (fast) or the recurrent decoder.
    #[arg(long, value_enum, default_value_t = ScorerArg::Batched)]
    pub scorer: ScorerArg,
    /// With a run: the stage whose model to use (default: its `train` stage).
    #[arg(long)]
    pub stage: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScorerArg {
    /// The parallel forward pass over batches of windows.
    Batched,
    /// The recurrent decoder, token by token.
    Recurrent,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct ScoreOutput {
    model: String,
    scheme: String,
    seq_len: usize,
    threads: usize,
    scorer: String,
    files: Vec<TextScore>,
    total: TextScore,
    seconds: f64,
    tokens_per_s: f64,
}

pub fn main(g: &Global, args: ScoreArgs) -> anyhow::Result<u8> {
    let dir = model_dir(g, &args.model, args.stage.as_deref())?;
    check_model_dir(&dir).map_err(|e| invalid(format!("{e:#}")))?;
    let tokenizer_path = dir.join(TOKENIZER_FILE);
    if !tokenizer_path.is_file() {
        return Err(invalid(format!(
            "`{}` has no tokenizer.json: score needs a model artifact from a `train` or `half-convert` stage",
            dir.display()
        )));
    }
    if let Some(0) = args.threads {
        return Err(invalid("--threads must be at least 1"));
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let kind = match args.scorer {
        ScorerArg::Batched => ScorerKind::Batched,
        ScorerArg::Recurrent => ScorerKind::Recurrent,
    };
    let tokenizer = TextTokenizer::load(&tokenizer_path).map_err(|e| invalid(e.to_string()))?;
    let scorer = ModelScorer::load(&dir, kind, threads).map_err(|e| invalid(format!("{e:#}")))?;
    let seq_len = args.seq_len.unwrap_or(scorer.context());
    if seq_len == 0 || seq_len > scorer.context() {
        return Err(invalid(format!(
            "--seq-len must be between 1 and the model's context ({} tokens), found {seq_len}",
            scorer.context()
        )));
    }
    // Read and tokenize every file first, so a bad file fails before any scoring.
    let mut encoded = Vec::new();
    for path in &args.files {
        let text = scorer
            .install(|| tokenizer.encode_file(path))
            .map_err(|e| invalid(e.to_string()))?;
        encoded.push((path.display().to_string(), text));
    }
    let started = Instant::now();
    let mut files = Vec::new();
    for (name, text) in &encoded {
        files.push(scorer.score_text(name, text, seq_len, tokenizer.is_lossy())?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let total = scoring::total("total", &files);
    let result = ScoreOutput {
        model: dir.display().to_string(),
        scheme: tokenizer.scheme().into(),
        seq_len,
        threads: scorer.threads(),
        scorer: kind.name().into(),
        tokens_per_s: total.predicted as f64 / seconds.max(1e-9),
        seconds,
        files,
        total,
    };
    if args.json {
        // Refuse NaN (serde would write `null`), then print in the struct's field order.
        to_finite_json(&result)?;
        out(&(serde_json::to_string_pretty(&result)? + "\n"))?;
    } else {
        out(&table(&result))?;
        super::jsonlog::note(
            "score.finished",
            &format!(
                "scored {} tokens in {:.2} s ({:.0} tokens/s, {} threads, {} scorer, windows of {})",
                result.total.predicted,
                result.seconds,
                result.tokens_per_s,
                result.threads,
                result.scorer,
                result.seq_len
            ),
            serde_json::json!({
                "tokens": result.total.predicted,
                "seconds": result.seconds,
                "tokens_per_s": result.tokens_per_s,
                "threads": result.threads,
            }),
        );
    }
    Ok(exit::OK)
}

/// The human-readable table: one row per file, then the total.
fn table(r: &ScoreOutput) -> String {
    let lossy = r.total.unknown_rate.is_some();
    let mut rows: Vec<Vec<String>> = vec![{
        let mut h: Vec<String> = [
            "file",
            "tokens",
            "bytes",
            "loss",
            "perplexity",
            "bits/token",
            "bits/byte",
        ]
        .map(String::from)
        .to_vec();
        if lossy {
            h.push("unk".into());
        }
        h
    }];
    let row = |s: &TextScore| {
        let mut v = vec![
            s.name.clone(),
            s.tokens.to_string(),
            s.bytes.to_string(),
            format!("{:.4}", s.loss),
            format!("{:.3}", s.perplexity),
            format!("{:.4}", s.bits_per_token),
            format!("{:.4}", s.bits_per_byte),
        ];
        if let Some(u) = s.unknown_rate {
            v.push(format!("{:.2}%", u * 100.0));
        }
        v
    };
    rows.extend(r.files.iter().map(row));
    if r.files.len() > 1 {
        rows.push(row(&r.total));
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| {
            rows.iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = format!("model {} ({} tokenizer)\n", r.model, r.scheme);
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, v)| {
                if c == 0 {
                    format!("{v:<w$}", w = widths[c])
                } else {
                    format!("{v:>w$}", w = widths[c])
                }
            })
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}
