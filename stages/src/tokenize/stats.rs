//! Counting what tokenization produced (`stats.json`) and describing the token files
//! (`meta.json`).

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::vocab::{EOS_ID, UNK_ID};

/// How many of the most frequent tokens `stats.json` lists.
pub const TOP_TOKENS: usize = 20;

/// Running counts for one split, mergeable across blocks.
#[derive(Debug, Clone, Default)]
pub struct Counter {
    pub file_bytes: u64,
    pub text_bytes: u64,
    pub stories: u64,
    pub tokens: u64,
    pub unknown: u64,
    pub per_id: Vec<u64>,
}

impl Counter {
    pub fn new(vocab_size: usize) -> Self {
        Self {
            per_id: vec![0; vocab_size],
            ..Self::default()
        }
    }
    /// Counts one story's ids (including its trailing `<eos>`).
    pub fn story(&mut self, text_bytes: usize, ids: &[u32]) {
        self.stories += 1;
        self.text_bytes += text_bytes as u64;
        self.tokens += ids.len() as u64;
        for &id in ids {
            if id == UNK_ID {
                self.unknown += 1;
            }
            if let Some(n) = self.per_id.get_mut(id as usize) {
                *n += 1;
            }
        }
    }
    pub fn merge(&mut self, other: &Counter) {
        self.file_bytes += other.file_bytes;
        self.text_bytes += other.text_bytes;
        self.stories += other.stories;
        self.tokens += other.tokens;
        self.unknown += other.unknown;
        if self.per_id.len() < other.per_id.len() {
            self.per_id.resize(other.per_id.len(), 0);
        }
        for (a, b) in self.per_id.iter_mut().zip(&other.per_id) {
            *a += b;
        }
    }

    pub fn summary(&self, tokenizer: &Tokenizer) -> SplitStats {
        let text_tokens = self.tokens.saturating_sub(self.stories);
        let used = self.per_id.iter().filter(|&&n| n > 0).count();
        let mut ranked: Vec<(usize, u64)> = self
            .per_id
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .collect();
        ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let top_tokens = ranked
            .into_iter()
            .take(TOP_TOKENS)
            .map(|(id, count)| TopToken {
                id: id as u32,
                token: tokenizer.id_to_token(id as u32).unwrap_or_default(),
                count,
            })
            .collect();
        SplitStats {
            file_bytes: self.file_bytes,
            text_bytes: self.text_bytes,
            stories: self.stories,
            tokens: self.tokens,
            text_tokens,
            bytes_per_token: ratio(self.text_bytes, text_tokens),
            unknown_tokens: self.unknown,
            unknown_rate: ratio(self.unknown, text_tokens),
            vocabulary_used: used as u64,
            vocabulary_coverage: ratio(used as u64, self.per_id.len() as u64),
            top_tokens,
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// One split's entry in `stats.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    /// Bytes of the input file used (separators and whitespace included).
    pub file_bytes: u64,
    /// Bytes of story text (after trimming; separators excluded).
    pub text_bytes: u64,
    pub stories: u64,
    /// Tokens in the `.bin` file: story tokens plus one `<eos>` per story.
    pub tokens: u64,
    /// Tokens without the `<eos>`s.
    pub text_tokens: u64,
    /// `text_bytes / text_tokens`.
    pub bytes_per_token: f64,
    pub unknown_tokens: u64,
    /// `unknown_tokens / text_tokens` (always 0 for `bpe` and `byte`).
    pub unknown_rate: f64,
    /// Distinct token ids that occur.
    pub vocabulary_used: u64,
    /// `vocabulary_used / vocab_size`.
    pub vocabulary_coverage: f64,
    pub top_tokens: Vec<TopToken>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopToken {
    pub id: u32,
    pub token: String,
    pub count: u64,
}

/// `stats.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub scheme: String,
    pub vocab_size: usize,
    pub train: SplitStats,
    pub valid: SplitStats,
}

/// Element type of the token files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    U16,
    U32,
}

impl Dtype {
    /// Bytes per token.
    pub fn bytes(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }

    /// u16 when every id fits (vocabulary of at most 65,536), else u32.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            Self::U16
        } else {
            Self::U32
        }
    }
    pub fn width(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }
    /// Appends `ids` little-endian.
    pub fn write(self, ids: &[u32], out: &mut Vec<u8>) {
        out.reserve(ids.len() * self.width());
        match self {
            // The vocabulary fits in u16, so every id does.
            Self::U16 => ids
                .iter()
                .for_each(|&id| out.extend_from_slice(&(id as u16).to_le_bytes())),
            Self::U32 => ids
                .iter()
                .for_each(|&id| out.extend_from_slice(&id.to_le_bytes())),
        }
    }
}

/// `meta.json`: how to read `train.bin` / `valid.bin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub scheme: String,
    pub vocab_size: usize,
    /// Element type of the token files, little-endian.
    pub dtype: Dtype,
    pub byte_order: String,
    /// Prose description of the token files' layout.
    pub layout: String,
    pub unk_id: u32,
    pub pad_id: u32,
    pub bos_id: u32,
    pub eos_id: u32,
    pub lowercase: bool,
    /// How a story's text is taken from the corpus file (separators, whitespace, the
    /// byte-order mark), so other tools can encode the same text.
    #[serde(default)]
    pub text: String,
    /// Tokens in each file.
    pub train_tokens: u64,
    pub valid_tokens: u64,
}

impl Meta {
    pub fn layout_text() -> String {
        format!(
            "a flat array of token ids; stories in corpus order, each story's tokens followed by \
             <eos> (id {EOS_ID}); no <bos>, no padding; story text is trimmed of surrounding \
             whitespace"
        )
    }

    pub fn text_rules() -> String {
        "a story is the text between `<|endoftext|>` separators (or the file's start or end), \
         trimmed of surrounding whitespace; a UTF-8 byte-order mark (U+FEFF) at its start is \
         removed (TinyStories' valid file begins with one: read it with Python's \
         encoding=\"utf-8-sig\" to get the same ids); empty stories are skipped"
            .into()
    }
}
