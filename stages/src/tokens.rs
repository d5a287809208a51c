//! Reading a `tokenize` artifact from the study stages: `meta.json` (how the token files are
//! laid out), `stats.json` (bytes and tokens per split, for bits per byte), `train.bin` /
//! `valid.bin` (flat little-endian u16 or u32 token ids) and `tokenizer.json`.
//!
//! Only the fields the study stages need are read, so the tokenize stage may add others.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// `meta.json` of a tokenize artifact (the fields read here).
#[derive(Debug, Clone, Deserialize)]
pub struct DataMeta {
    pub scheme: String,
    pub vocab_size: usize,
    /// Element type of `train.bin` / `valid.bin`.
    pub dtype: crate::tokenize::Dtype,
    pub eos_id: u32,
    pub train_tokens: u64,
    pub valid_tokens: u64,
}

/// One split of `stats.json` (the fields read here).
#[derive(Debug, Clone, Deserialize)]
pub struct SplitStats {
    /// Bytes of story text the split's tokens stand for.
    pub text_bytes: u64,
    /// Tokens in the split's `.bin` file (story tokens plus one `<eos>` per story).
    pub tokens: u64,
    /// Share of text tokens that are `<unk>`.
    #[serde(default)]
    pub unknown_rate: f64,
}

#[derive(Debug, Clone, Deserialize)]
struct Stats {
    valid: SplitStats,
}

/// Which token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Valid,
}

impl Split {
    fn file(self) -> &'static str {
        match self {
            Split::Train => "train.bin",
            Split::Valid => "valid.bin",
        }
    }
}

/// An opened tokenize artifact.
#[derive(Debug, Clone)]
pub struct TokenizedData {
    pub dir: PathBuf,
    pub meta: DataMeta,
    /// Statistics of the validation split.
    pub valid: SplitStats,
}

impl TokenizedData {
    /// Opens the artifact in `dir`, with an error that says what is missing.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        for f in [
            "meta.json",
            "stats.json",
            "tokenizer.json",
            "train.bin",
            "valid.bin",
        ] {
            anyhow::ensure!(
                dir.join(f).is_file(),
                "input `{}` is not a tokenize artifact: it has no `{f}` (connect the `data` input to a `tokenize` stage)",
                dir.display()
            );
        }
        let meta: DataMeta = crate::records::read_json(&dir.join("meta.json"))?;
        let stats: Stats = crate::records::read_json(&dir.join("stats.json"))?;
        Ok(Self {
            dir: dir.to_owned(),
            meta,
            valid: stats.valid,
        })
    }

    /// Path of `tokenizer.json`.
    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }

    /// The first `limit` tokens (all when `None`) of a split, checked against the vocabulary.
    pub fn read(&self, split: Split, limit: Option<usize>) -> anyhow::Result<Vec<u32>> {
        let path = self.dir.join(split.file());
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read `{}`", path.display()))?;
        let width = self.meta.dtype.bytes();
        anyhow::ensure!(
            bytes.len() % width == 0,
            "`{}` has {} bytes, not a whole number of {}-byte tokens: the file is truncated",
            path.display(),
            bytes.len(),
            width
        );
        let n = (bytes.len() / width).min(limit.unwrap_or(usize::MAX));
        let tokens: Vec<u32> = bytes
            .chunks_exact(width)
            .take(n)
            .map(|c| match c {
                [a, b] => u32::from(u16::from_le_bytes([*a, *b])),
                [a, b, c, d] => u32::from_le_bytes([*a, *b, *c, *d]),
                _ => unreachable!("chunks_exact yields chunks of `width` bytes"),
            })
            .collect();
        if let Some((i, &t)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= self.meta.vocab_size)
        {
            anyhow::bail!(
                "`{}`: token {i} is id {t}, outside the vocabulary of {} (meta.json); the artifact is corrupt",
                path.display(),
                self.meta.vocab_size
            );
        }
        Ok(tokens)
    }

    /// Bytes of text per validation token: `text_bytes / tokens` of the valid split.
    pub fn valid_bytes_per_token(&self) -> f64 {
        if self.valid.tokens == 0 {
            0.0
        } else {
            self.valid.text_bytes as f64 / self.valid.tokens as f64
        }
    }
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A small hand-made tokenize artifact for unit tests.
    use super::*;

    /// Writes an artifact with `vocab` ids, `train` and `valid` tokens (u16).
    pub fn write(dir: &Path, vocab: usize, train: &[u32], valid: &[u32]) {
        let meta = serde_json::json!({
            "scheme": "word", "vocab_size": vocab, "dtype": "u16", "byte_order": "little",
            "eos_id": 3, "train_tokens": train.len(), "valid_tokens": valid.len()
        });
        std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
        let split =
            |n: usize| serde_json::json!({"text_bytes": n * 4, "tokens": n, "unknown_rate": 0.0});
        let stats = serde_json::json!({"train": split(train.len()), "valid": split(valid.len())});
        std::fs::write(dir.join("stats.json"), stats.to_string()).unwrap();
        let bin = |t: &[u32]| {
            t.iter()
                .flat_map(|&x| (x as u16).to_le_bytes())
                .collect::<Vec<u8>>()
        };
        std::fs::write(dir.join("train.bin"), bin(train)).unwrap();
        std::fs::write(dir.join("valid.bin"), bin(valid)).unwrap();
        std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tokens_and_refuses_out_of_vocabulary_ids() {
        let dir = tempfile::tempdir().unwrap();
        fixture::write(dir.path(), 10, &[1, 2, 3, 9], &[4, 5, 6]);
        let data = TokenizedData::open(dir.path()).unwrap();
        assert_eq!(data.read(Split::Train, None).unwrap(), [1, 2, 3, 9]);
        assert_eq!(data.read(Split::Valid, Some(2)).unwrap(), [4, 5]);
        assert_eq!(data.valid_bytes_per_token(), 4.0);
        fixture::write(dir.path(), 5, &[1, 2, 3, 9], &[4]);
        let err = TokenizedData::open(dir.path())
            .unwrap()
            .read(Split::Train, None)
            .unwrap_err();
        assert!(err.to_string().contains("token 3 is id 9"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = TokenizedData::open(empty.path()).unwrap_err();
        assert!(err.to_string().contains("not a tokenize artifact"), "{err}");
    }
}
