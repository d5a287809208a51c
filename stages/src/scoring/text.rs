//! Turning a text file into the token stream a model is scored on, exactly as the
//! `tokenize` stage turns its corpus into `valid.bin`: the text is cut into stories at
//! TinyStories' `<|endoftext|>` separators (each trimmed of surrounding whitespace and a
//! byte-order mark, empty ones skipped), every story is encoded with the model's own
//! `tokenizer.json` and followed by `<eos>`. Text without separators is one story.
//!
//! The scheme (`word`, `bpe`, `byte`) and lowercasing are read from `tokenizer.json` itself,
//! so the fast encoder of the tokenize stage ([`FastEncoder`]) gives the same ids as the
//! tokenize stage did for the same text.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tokenizers::Tokenizer;

use crate::tokenize::{self, Block, BlockReader, FastEncoder, Scheme, EOS_ID, SPECIALS, UNK_ID};

/// Why a text cannot be scored.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The text file is missing or unreadable.
    #[error("cannot read `{}`: {source}; give the path of a UTF-8 text file", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The text holds no story.
    #[error("`{}` holds no text to score (only whitespace and `<|endoftext|>` separators); give a file with some text", path.display())]
    Empty { path: PathBuf },
    /// The text encodes to a single token: nothing to predict.
    #[error("`{}` encodes to a single token, so no token can be predicted; give a longer text", path.display())]
    TooShort { path: PathBuf },
    /// The tokenizer file is missing or unreadable.
    #[error("cannot load the tokenizer `{}`: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    /// The tokenizer is not one an Itera `tokenize` stage writes.
    #[error("`{}` is not an Itera tokenizer (word, bpe or byte scheme with `<unk>` = 0 and `<eos>` = 3): {why}", path.display())]
    UnknownScheme { path: PathBuf, why: String },
    /// Tokenizing failed (not UTF-8, a story too long, the tokenizer library).
    #[error(transparent)]
    Tokenize(#[from] tokenize::TokenizeError),
}

/// A model's tokenizer with the scheme it was built with.
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    scheme: Scheme,
    lowercase: bool,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and finds its scheme.
    pub fn load(path: &Path) -> Result<Self, TextError> {
        let fail = |message: String| TextError::Tokenizer {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        let tokenizer = Tokenizer::from_file(path).map_err(|e| fail(e.to_string()))?;
        let (scheme, lowercase) = scheme_of(&json).map_err(|why| TextError::UnknownScheme {
            path: path.to_owned(),
            why,
        })?;
        for (id, name) in [(UNK_ID, SPECIALS[0]), (EOS_ID, SPECIALS[3])] {
            if tokenizer.token_to_id(name) != Some(id) {
                return Err(TextError::UnknownScheme {
                    path: path.to_owned(),
                    why: format!("`{name}` is not token {id}"),
                });
            }
        }
        Ok(Self {
            tokenizer,
            scheme,
            lowercase,
        })
    }

    /// The scheme's name (`word`, `bpe`, `byte`).
    pub fn scheme(&self) -> &'static str {
        match self.scheme {
            Scheme::Word => "word",
            Scheme::Bpe => "bpe",
            Scheme::Byte => "byte",
        }
    }

    /// Whether rare words become `<unk>` (the word scheme), so an unknown-token rate applies.
    pub fn is_lossy(&self) -> bool {
        self.scheme == Scheme::Word
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Encodes the file at `path` (see the module doc), on the current rayon pool.
    pub fn encode_file(&self, path: &Path) -> Result<EncodedText, TextError> {
        let meta = std::fs::metadata(path).map_err(|source| TextError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        if !meta.is_file() {
            return Err(TextError::Unreadable {
                path: path.to_owned(),
                source: std::io::Error::other("it is a folder, not a file"),
            });
        }
        let blocks: Vec<Block> = BlockReader::open(path, None)?.collect::<Result<_, _>>()?;
        let encoded = self.encode_blocks(&blocks)?;
        encoded.check(path)
    }

    /// Encodes `text` as if it were a file's content.
    pub fn encode_str(&self, text: &str) -> Result<EncodedText, TextError> {
        self.encode_blocks(&[Block {
            text: text.to_owned(),
            file_bytes: text.len() as u64,
        }])
    }

    fn encode_blocks(&self, blocks: &[Block]) -> Result<EncodedText, TextError> {
        let vocab = self.tokenizer.get_vocab_size(true);
        let mut encoder = FastEncoder::new(self.scheme, self.lowercase, &self.tokenizer);
        if self.scheme == Scheme::Bpe {
            // Pre-encode each distinct piece once (a cache: the ids are the same either way).
            let stories: Vec<&str> = blocks
                .iter()
                .flat_map(|b| tokenize::stories(&b.text))
                .collect();
            encoder.seed(&stories)?;
        }
        let parts: Vec<(Vec<u32>, tokenize::Counter)> = blocks
            .par_iter()
            .map(|b| tokenize::encode_block(&encoder, b, vocab))
            .collect::<Result<_, _>>()?;
        let mut out = EncodedText::default();
        for (ids, c) in parts {
            out.tokens.extend_from_slice(&ids);
            out.stories += c.stories;
            out.text_bytes += c.text_bytes;
            out.unknown += c.unknown;
        }
        Ok(out)
    }
}

/// The scheme and lowercasing of an Itera `tokenizer.json`.
fn scheme_of(json: &serde_json::Value) -> Result<(Scheme, bool), String> {
    let model = &json["model"];
    let scheme = match model["type"].as_str() {
        Some("WordLevel") => Scheme::Word,
        Some("BPE") => {
            // The byte scheme: no merges, and byte b is token 4 + b (what the fast encoder
            // assumes).
            let no_merges = model["merges"].as_array().is_none_or(|m| m.is_empty());
            let byte_ids = tokenize::byte_chars().iter().enumerate().all(|(b, c)| {
                model["vocab"][c.to_string()].as_u64() == Some((SPECIALS.len() + b) as u64)
            });
            if no_merges && byte_ids {
                Scheme::Byte
            } else {
                Scheme::Bpe
            }
        }
        other => return Err(format!("its model type is {other:?}")),
    };
    let lowercase = scheme == Scheme::Word && contains_type(&json["normalizer"], "Lowercase");
    Ok((scheme, lowercase))
}

/// Whether a JSON tree holds an object with `"type": name`.
fn contains_type(v: &serde_json::Value, name: &str) -> bool {
    match v {
        serde_json::Value::Object(m) => {
            m.get("type").and_then(|t| t.as_str()) == Some(name)
                || m.values().any(|x| contains_type(x, name))
        }
        serde_json::Value::Array(items) => items.iter().any(|x| contains_type(x, name)),
        _ => false,
    }
}

/// A text as tokens, with the counts its figures need.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedText {
    /// Every story's ids followed by `<eos>`, stories in file order.
    pub tokens: Vec<u32>,
    pub stories: u64,
    /// UTF-8 bytes of the story text (trimmed; separators and whitespace between stories
    /// excluded), as the tokenize stage counts them.
    pub text_bytes: u64,
    /// `<unk>` tokens among the text tokens.
    pub unknown: u64,
}

impl EncodedText {
    /// Tokens without the `<eos>` after each story.
    pub fn text_tokens(&self) -> u64 {
        (self.tokens.len() as u64).saturating_sub(self.stories)
    }

    /// Bytes of text per token (`<eos>` included in the tokens), as the evaluate stage
    /// computes it for the validation split.
    pub fn bytes_per_token(&self) -> f64 {
        if self.tokens.is_empty() {
            0.0
        } else {
            self.text_bytes as f64 / self.tokens.len() as f64
        }
    }

    /// `<unk>` share of the text tokens.
    pub fn unknown_rate(&self) -> f64 {
        match self.text_tokens() {
            0 => 0.0,
            n => self.unknown as f64 / n as f64,
        }
    }

    fn check(self, path: &Path) -> Result<Self, TextError> {
        match self.tokens.len() {
            0 => Err(TextError::Empty {
                path: path.to_owned(),
            }),
            1 => Err(TextError::TooShort {
                path: path.to_owned(),
            }),
            _ => Ok(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schemes_are_read_from_the_tokenizer_json() {
        let word = json!({"model": {"type": "WordLevel", "vocab": {}},
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "Replace"}, {"type": "Lowercase"}]}});
        assert_eq!(scheme_of(&word), Ok((Scheme::Word, true)));
        let word = json!({"model": {"type": "WordLevel"}, "normalizer": {"type": "Replace"}});
        assert_eq!(scheme_of(&word), Ok((Scheme::Word, false)));
        let bpe = json!({"model": {"type": "BPE", "merges": [["a", "b"]], "vocab": {}}});
        assert_eq!(scheme_of(&bpe), Ok((Scheme::Bpe, false)));
        let vocab: serde_json::Map<String, serde_json::Value> = tokenize::byte_chars()
            .iter()
            .enumerate()
            .map(|(b, c)| (c.to_string(), json!(b + 4)))
            .collect();
        let byte = json!({"model": {"type": "BPE", "merges": [], "vocab": vocab}});
        assert_eq!(scheme_of(&byte), Ok((Scheme::Byte, false)));
        // The bytes in another order are a BPE without merges, not the byte scheme.
        let shuffled: serde_json::Map<String, serde_json::Value> = tokenize::byte_chars()
            .iter()
            .enumerate()
            .map(|(b, c)| (c.to_string(), json!(259 - b)))
            .collect();
        let bpe = json!({"model": {"type": "BPE", "merges": [], "vocab": shuffled}});
        assert_eq!(scheme_of(&bpe), Ok((Scheme::Bpe, false)));
        let real = tokenize::build_tokenizer(Scheme::Byte, &[], 260, 1, false).unwrap();
        let real: serde_json::Value =
            serde_json::from_str(&real.to_string(false).unwrap()).unwrap();
        assert_eq!(scheme_of(&real), Ok((Scheme::Byte, false)));
        assert!(scheme_of(&json!({"model": {"type": "Unigram"}})).is_err());
    }

    /// A word tokenizer fitted on a few stories, saved and loaded back as a model has it.
    fn word_tokenizer(dir: &Path, lowercase: bool) -> TextTokenizer {
        let stories = ["the cat sat . the cat ran .", "a dog sat ."];
        let t = tokenize::build_tokenizer(Scheme::Word, &stories, 100, 1, lowercase).unwrap();
        let path = dir.join("tokenizer.json");
        t.save(&path, false).unwrap();
        TextTokenizer::load(&path).unwrap()
    }

    #[test]
    fn stories_are_cut_at_separators_and_end_with_eos() {
        let dir = tempfile::tempdir().unwrap();
        let tok = word_tokenizer(dir.path(), false);
        assert_eq!((tok.scheme(), tok.is_lossy()), ("word", true));
        let id = |w: &str| tok.tokenizer().token_to_id(w).unwrap();
        // BOM, surrounding whitespace, an empty story and a trailing separator are dropped.
        let text =
            "\u{feff} the cat sat .\n<|endoftext|>\n\n<|endoftext|>a bird sat<|endoftext|>\n";
        let e = tok.encode_str(text).unwrap();
        assert_eq!(
            e.tokens,
            [
                id("the"),
                id("cat"),
                id("sat"),
                id("."),
                EOS_ID,
                id("a"),
                UNK_ID,
                id("sat"),
                EOS_ID
            ]
        );
        assert_eq!((e.stories, e.unknown), (2, 1));
        // "the cat sat ." is 13 bytes, "a bird sat" 10.
        assert_eq!(e.text_bytes, 23);
        assert_eq!(e.text_tokens(), 7);
        assert!((e.unknown_rate() - 1.0 / 7.0).abs() < 1e-12);
        assert!((e.bytes_per_token() - 23.0 / 9.0).abs() < 1e-12);
        // Text without separators is one story.
        let one = tok.encode_str("the dog ran").unwrap();
        assert_eq!((one.stories, one.tokens.len()), (1, 4));
        // Lowercasing is read from the tokenizer.
        let dir = tempfile::tempdir().unwrap();
        let lower = word_tokenizer(dir.path(), true);
        assert_eq!(lower.encode_str("The CAT").unwrap().unknown, 0);
    }

    #[test]
    fn files_that_cannot_be_scored_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let tok = word_tokenizer(dir.path(), false);
        let missing = tok.encode_file(&dir.path().join("nope.txt")).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, " \n<|endoftext|>\n ").unwrap();
        let err = tok.encode_file(&empty).unwrap_err();
        assert!(err.to_string().contains("holds no text"), "{err}");
        let short = dir.path().join("short.txt");
        std::fs::write(&short, "").unwrap();
        assert!(matches!(
            tok.encode_file(&short),
            Err(TextError::Empty { .. })
        ));
        let folder = tok.encode_file(dir.path()).unwrap_err();
        assert!(folder.to_string().contains("folder"), "{folder}");
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, [b'a', 0xff, b'b']).unwrap();
        let err = tok.encode_file(&bad).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }
}
