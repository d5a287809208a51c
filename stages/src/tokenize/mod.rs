//! The `tokenize` stage kind: fits a tokenizer (`word`, `bpe` or `byte` scheme) on a sample
//! of a TinyStories-format corpus and encodes its train and valid files into flat token
//! files, streaming in bounded memory with the stage's threads.
//!
//! Artifact: `tokenizer.json` (Hugging Face `tokenizers` format, loadable from Python) with
//! `tokenizer_config.json` and `special_tokens_map.json` (so `transformers`'
//! `AutoTokenizer.from_pretrained(folder)` works, special tokens included; see `hf`),
//! `train.bin` / `valid.bin` (little-endian u16 ids, u32 above 65,536 tokens; layout in
//! `meta.json`), `stats.json` (bytes, stories, tokens, bytes per token, unknown rate,
//! vocabulary coverage, top tokens).

mod corpus;
mod encoder;
pub mod hf;
mod stats;
mod vocab;

use std::io::Write;
use std::path::{Path, PathBuf};

use itera_engine::stage::{InputSlot, InputSlots, OutputDecl, ParamIssue, StageContext, StageKind};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use corpus::{stories, Block, BlockReader};
pub use encoder::{byte_level_pieces, word_pieces, FastEncoder, PieceCache};
pub use stats::{Counter, Dtype, Meta, SplitStats, Stats, TopToken};
pub use vocab::{
    build as build_tokenizer, byte_chars, BYTE_VOCAB, EOS_ID, SEPARATOR, SPECIALS, UNK_ID,
};

/// What went wrong tokenizing.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    /// The corpus artifact lacks the named file.
    #[error("the corpus has no file `{name}` (set by `{param}`); it has: {available}")]
    MissingFile {
        name: String,
        param: &'static str,
        available: String,
    },
    /// The corpus input is a file, not a folder.
    #[error(
        "input `corpus` is the single file {}; reference the whole upstream artifact (`corpus = \"STAGE\"`), not one of its outputs",
        path.display()
    )]
    CorpusIsFile { path: PathBuf },
    /// The text is not UTF-8.
    #[error("{} is not UTF-8 text (first bad byte at offset {offset})", path.display())]
    NotUtf8 { path: PathBuf, offset: u64 },
    /// A prefix limit leaves no complete story.
    #[error(
        "the first {limit} bytes of {} contain no complete story (no `<|endoftext|>` separator); raise the limit",
        path.display()
    )]
    NoCompleteStory { path: PathBuf, limit: u64 },
    /// One story is implausibly long.
    #[error(
        "{} has more than {max} bytes without a `<|endoftext|>` separator (from offset {offset}); is it a TinyStories-format file?",
        path.display()
    )]
    StoryTooLong {
        path: PathBuf,
        offset: u64,
        max: usize,
    },
    /// The `tokenizers` library failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A local file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl TokenizeError {
    pub(crate) fn tokenizer(e: impl std::fmt::Display) -> Self {
        Self::Tokenizer(e.to_string())
    }
}

/// How text becomes tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Words and punctuation marks (the seed's scheme), vocabulary capped by frequency;
    /// rare words become `<unk>`.
    Word,
    /// Byte-level BPE trained on the corpus: no unknown tokens, lossless.
    #[default]
    Bpe,
    /// The 256 byte values: no training, no unknown tokens, lossless.
    Byte,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Self::Word => "word",
            Self::Bpe => "bpe",
            Self::Byte => "byte",
        }
    }
}

/// Parameters of `kind = "tokenize"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeParams {
    /// Tokenization scheme: `word`, `bpe` (default) or `byte`.
    #[serde(default)]
    pub scheme: Scheme,
    /// Vocabulary size including the 4 special tokens (`<unk>`, `<pad>`, `<bos>`, `<eos>`).
    /// Default 8192; `bpe` needs at least 260 (the 256 bytes + specials); `byte` is always
    /// 260 and takes no value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 5))]
    pub vocab_size: Option<u32>,
    /// `word`: a word needs this many occurrences in the sample to enter the vocabulary;
    /// `bpe`: a pair needs this many to be merged. Not used by `byte`.
    #[serde(default = "default_min_frequency")]
    #[schemars(range(min = 1))]
    pub min_frequency: u64,
    /// Lowercase text before splitting (`word` only: `bpe` and `byte` are lossless).
    #[serde(default)]
    pub lowercase: bool,
    /// Use only about this many bytes from the start of the train file (cut after a story).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_train_bytes: Option<u64>,
    /// Bytes from the start of the train file used to fit the vocabulary (cut after a story).
    #[serde(default = "default_train_sample_bytes")]
    #[schemars(range(min = 1))]
    pub train_sample_bytes: u64,
    /// The train file inside the `corpus` artifact.
    #[serde(default = "default_train_file")]
    pub train_file: String,
    /// The validation file inside the `corpus` artifact.
    #[serde(default = "default_valid_file")]
    pub valid_file: String,
}

fn default_min_frequency() -> u64 {
    2
}
fn default_train_sample_bytes() -> u64 {
    32 << 20
}
fn default_train_file() -> String {
    "TinyStories-train.txt".into()
}
fn default_valid_file() -> String {
    "TinyStories-valid.txt".into()
}

/// Default vocabulary size of `word` and `bpe`.
pub const DEFAULT_VOCAB_SIZE: u32 = 8192;

impl TokenizeParams {
    /// The vocabulary size the scheme will have at most.
    pub fn vocab_size(&self) -> usize {
        match self.scheme {
            Scheme::Byte => BYTE_VOCAB,
            _ => self.vocab_size.unwrap_or(DEFAULT_VOCAB_SIZE) as usize,
        }
    }
}

/// The `tokenize` stage kind.
pub struct Tokenize;

/// Output files.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TRAIN_FILE: &str = "train.bin";
pub const VALID_FILE: &str = "valid.bin";
pub const STATS_FILE: &str = "stats.json";
pub const META_FILE: &str = "meta.json";

impl StageKind for Tokenize {
    type Params = TokenizeParams;
    const KIND: &'static str = "tokenize";
    /// 2: tokenizer_config.json and special_tokens_map.json, the word decoder, meta.json `text`.
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str =
        "Fit a word, byte-level BPE or byte tokenizer and encode a corpus's train and valid files to token ids";

    fn validate(p: &TokenizeParams) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        match (p.scheme, p.vocab_size) {
            (Scheme::Byte, Some(v)) if v as usize != BYTE_VOCAB => issues.push(
                ParamIssue::new(
                    "vocab_size",
                    format!("the byte scheme always has {BYTE_VOCAB} tokens, found {v}"),
                )
                .with_help("remove `vocab_size`"),
            ),
            (Scheme::Bpe, Some(v)) if (v as usize) < BYTE_VOCAB => issues.push(ParamIssue::new(
                "vocab_size",
                format!(
                    "must be at least {BYTE_VOCAB} for bpe (256 bytes + 4 specials), found {v}"
                ),
            )),
            (Scheme::Word, Some(v)) if (v as usize) <= SPECIALS.len() => {
                issues.push(ParamIssue::new(
                    "vocab_size",
                    format!(
                        "must be more than {} (the special tokens), found {v}",
                        SPECIALS.len()
                    ),
                ))
            }
            _ => {}
        }
        if p.lowercase && p.scheme != Scheme::Word {
            issues.push(
                ParamIssue::new(
                    "lowercase",
                    format!(
                        "only the word scheme lowercases; `{}` is lossless",
                        p.scheme.name()
                    ),
                )
                .with_help("remove `lowercase` or use scheme = \"word\""),
            );
        }
        if p.min_frequency == 0 {
            issues.push(ParamIssue::new("min_frequency", "must be at least 1"));
        }
        if p.train_sample_bytes == 0 {
            issues.push(ParamIssue::new("train_sample_bytes", "must be at least 1"));
        }
        if p.max_train_bytes == Some(0) {
            issues.push(ParamIssue::new("max_train_bytes", "must be at least 1"));
        }
        for (key, value) in [("train_file", &p.train_file), ("valid_file", &p.valid_file)] {
            if value.is_empty() || value.starts_with('/') || value.split('/').any(|s| s == "..") {
                issues.push(ParamIssue::new(
                    key,
                    format!("`{value}` must be a relative path inside the corpus artifact"),
                ));
            }
        }
        issues
    }

    fn inputs(_: &TokenizeParams) -> InputSlots {
        InputSlots::Named(vec![InputSlot::required(
            "corpus",
            "an artifact holding the train and valid text files (from `hf-fetch` or `files`)",
        )])
    }

    fn outputs(_: &TokenizeParams) -> Vec<OutputDecl> {
        vec![
            OutputDecl::new("tokenizer", TOKENIZER_FILE),
            OutputDecl::new("train", TRAIN_FILE),
            OutputDecl::new("valid", VALID_FILE),
            OutputDecl::new("stats", STATS_FILE),
            OutputDecl::new("meta", META_FILE),
        ]
    }

    fn run(p: &TokenizeParams, ctx: &StageContext) -> anyhow::Result<()> {
        let corpus = &ctx.input("corpus")?.path;
        let train_path = corpus_file(corpus, &p.train_file, "train_file")?;
        let valid_path = corpus_file(corpus, &p.valid_file, "valid_file")?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(ctx.threads.max(1))
            .build()?;
        pool.install(|| tokenize(p, ctx, &train_path, &valid_path))
    }
}

/// Finds `name` in the corpus folder, listing what is there if it is missing.
fn corpus_file(corpus: &Path, name: &str, param: &'static str) -> Result<PathBuf, TokenizeError> {
    if corpus.is_file() {
        return Err(TokenizeError::CorpusIsFile {
            path: corpus.to_owned(),
        });
    }
    let path = corpus.join(name);
    if path.is_file() {
        return Ok(path);
    }
    let mut available: Vec<String> = std::fs::read_dir(corpus)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    available.sort();
    Err(TokenizeError::MissingFile {
        name: name.into(),
        param,
        available: if available.is_empty() {
            "nothing".into()
        } else {
            available.join(", ")
        },
    })
}

fn tokenize(
    p: &TokenizeParams,
    ctx: &StageContext,
    train: &Path,
    valid: &Path,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let sample_limit = p
        .max_train_bytes
        .map_or(p.train_sample_bytes, |m| m.min(p.train_sample_bytes));
    let sample: Vec<String> = if p.scheme == Scheme::Byte {
        Vec::new()
    } else {
        let blocks: Vec<Block> =
            BlockReader::open(train, Some(sample_limit))?.collect::<Result<_, _>>()?;
        let read: u64 = blocks.iter().map(|b| b.file_bytes).sum();
        ctx.progress.message(format!(
            "read a {read}-byte sample of the train file (at most {sample_limit}) to fit the vocabulary"
        ));
        ctx.log.line(format!(
            "vocabulary sample: the first {read} bytes of the train file (at most {sample_limit})"
        ));
        blocks.into_iter().map(|b| b.text).collect()
    };
    let sample_stories: Vec<&str> = sample.iter().flat_map(|b| stories(b)).collect();
    ctx.progress.message(format!(
        "fitting the {} vocabulary on {} stories",
        p.scheme.name(),
        sample_stories.len()
    ));
    let tokenizer = vocab::build(
        p.scheme,
        &sample_stories,
        p.vocab_size(),
        p.min_frequency,
        p.lowercase,
    )?;
    let vocab_size = tokenizer.get_vocab_size(true);
    let mut encoder = FastEncoder::new(p.scheme, p.lowercase, &tokenizer);
    encoder.seed(&sample_stories)?;
    drop(sample_stories);
    drop(sample);
    let dtype = Dtype::for_vocab(vocab_size);
    let out = &ctx.out_dir;
    let fitted = started.elapsed().as_secs_f64();
    ctx.log.line(format!(
        "fitted the {} vocabulary ({vocab_size} tokens) in {fitted:.2} s",
        p.scheme.name()
    ));
    tokenizer
        .save(out.join(TOKENIZER_FILE), true)
        .map_err(TokenizeError::tokenizer)?;
    hf::write_files(out, None)?;

    let train_stats = encode_file(
        ctx,
        &encoder,
        train,
        p.max_train_bytes,
        &out.join(TRAIN_FILE),
        dtype,
        vocab_size,
        "train",
    )?;
    let encoded = started.elapsed().as_secs_f64() - fitted;
    ctx.log.line(format!(
        "encoded {} train bytes in {encoded:.2} s ({:.1} MB/s)",
        train_stats.file_bytes,
        train_stats.file_bytes as f64 / 1e6 / encoded.max(1e-9)
    ));
    let valid_stats = encode_file(
        ctx,
        &encoder,
        valid,
        None,
        &out.join(VALID_FILE),
        dtype,
        vocab_size,
        "valid",
    )?;

    let meta = Meta {
        scheme: p.scheme.name().into(),
        vocab_size,
        dtype,
        byte_order: "little".into(),
        layout: Meta::layout_text(),
        unk_id: UNK_ID,
        pad_id: 1,
        bos_id: 2,
        eos_id: EOS_ID,
        lowercase: p.lowercase,
        text: Meta::text_rules(),
        train_tokens: train_stats.tokens,
        valid_tokens: valid_stats.tokens,
    };
    std::fs::write(out.join(META_FILE), serde_json::to_vec_pretty(&meta)?)?;
    let stats = Stats {
        scheme: p.scheme.name().into(),
        vocab_size,
        train: train_stats.summary(&tokenizer),
        valid: valid_stats.summary(&tokenizer),
    };
    std::fs::write(out.join(STATS_FILE), serde_json::to_vec_pretty(&stats)?)?;
    ctx.log.line(format!(
        "tokenize {}: vocab {vocab_size}, train {} tokens ({:.2} bytes/token, unk {:.4}), valid {} tokens",
        p.scheme.name(),
        stats.train.tokens,
        stats.train.bytes_per_token,
        stats.train.unknown_rate,
        stats.valid.tokens
    ));
    Ok(())
}

/// Encodes one block: ids of every story, each followed by `<eos>`, and their counts.
pub fn encode_block(
    encoder: &FastEncoder<'_>,
    block: &Block,
    vocab_size: usize,
) -> Result<(Vec<u32>, Counter), TokenizeError> {
    let mut ids = Vec::with_capacity(block.text.len() / 3);
    let mut counter = Counter::new(vocab_size);
    counter.file_bytes = block.file_bytes;
    let mut local = PieceCache::new();
    for story in stories(&block.text) {
        let start = ids.len();
        encoder.encode_into(story, &mut ids, &mut local)?;
        ids.push(EOS_ID);
        counter.story(story.len(), &ids[start..]);
    }
    Ok((ids, counter))
}

/// Streams `input` through the encoder into `output`: blocks are read in order, encoded in
/// parallel a batch at a time (a batch is twice the thread count), and written in order,
/// so memory stays at a few blocks per thread whatever the corpus size.
#[allow(clippy::too_many_arguments)]
fn encode_file(
    ctx: &StageContext,
    encoder: &FastEncoder<'_>,
    input: &Path,
    limit: Option<u64>,
    output: &Path,
    dtype: Dtype,
    vocab_size: usize,
    split: &str,
) -> anyhow::Result<Counter> {
    let total = match limit {
        Some(l) => l.min(std::fs::metadata(input)?.len()),
        None => std::fs::metadata(input)?.len(),
    };
    ctx.progress
        .start(&format!("tokenize {split}"), Some(total), "bytes");
    let io = |source| TokenizeError::Io {
        path: output.to_owned(),
        source,
    };
    let mut writer =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(output).map_err(io)?);
    let mut reader = BlockReader::open(input, limit)?;
    let mut counter = Counter::new(vocab_size);
    let batch = 2 * rayon::current_num_threads().max(1);
    let mut bytes = Vec::new();
    loop {
        if ctx.cancel.is_cancelled() {
            anyhow::bail!("cancelled");
        }
        let blocks: Vec<Block> = reader.by_ref().take(batch).collect::<Result<_, _>>()?;
        if blocks.is_empty() {
            break;
        }
        let encoded: Vec<(Vec<u32>, Counter)> = blocks
            .par_iter()
            .map(|b| encode_block(encoder, b, vocab_size))
            .collect::<Result<_, _>>()?;
        for (ids, c) in &encoded {
            bytes.clear();
            dtype.write(ids, &mut bytes);
            writer.write_all(&bytes).map_err(io)?;
            counter.merge(c);
        }
        ctx.progress.set_position(counter.file_bytes);
    }
    writer.flush().map_err(io)?;
    Ok(counter)
}
