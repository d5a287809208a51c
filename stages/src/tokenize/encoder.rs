//! Fast encoding of story text to ids, equal to what the `tokenizer.json` tokenizer gives
//! (tests check this on the real sample) but without building an `Encoding` per story:
//! the scheme's pre-tokenization is done here directly and each distinct piece is encoded
//! once by the real tokenizer and then looked up.
//!
//! Word-scheme normalization (documented contract, tested): the text is lowercased if asked
//! (char by char, like `tokenizers`' `Lowercase`), split on Unicode whitespace (dropped),
//! and every punctuation character (ASCII punctuation or Unicode categories Pc, Pd, Ps, Pe,
//! Pi, Pf, Po) becomes a token of its own; the runs in between are words. So `Lily's
//! “red” ball!` -> `Lily`, `'`, `s`, `“`, `red`, `”`, `ball`, `!`. Words outside the
//! vocabulary become `<unk>`.

use std::sync::LazyLock;

use ahash::AHashMap;

use tokenizers::Tokenizer;
use unicode_categories::UnicodeCategories;

use super::vocab::{SPECIALS, UNK_ID};
use super::{Scheme, TokenizeError};

/// The GPT-2 pre-tokenization pattern of `tokenizers`' `ByteLevel`, minus its one
/// look-ahead (`\s+(?!\S)`), which [`byte_level_pieces`] applies by hand.
static BYTE_LEVEL_RE: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+")
        .expect("the GPT-2 pattern compiles")
});

/// Calls `f` with each piece `tokenizers`' `ByteLevel` pre-tokenizer (with its regex) cuts
/// `text` into. ASCII text is scanned by hand ([`ascii_piece`]); a piece that touches a
/// non-ASCII character is cut by the regex itself.
pub fn byte_level_pieces<'t>(text: &'t str, mut f: impl FnMut(&'t str)) {
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let end = match ascii_piece(bytes, at) {
            Some(end) => end,
            None => regex_piece(text, at),
        };
        f(&text[at..end]);
        at = end;
    }
}

/// The end of the regex piece starting at `at` (a char boundary), by the regex.
fn regex_piece(text: &str, at: usize) -> usize {
    let m = BYTE_LEVEL_RE
        .find_at(text, at)
        .expect("every character matches one of the alternatives");
    debug_assert_eq!(m.start(), at, "pieces are contiguous");
    let piece = m.as_str();
    // `\s+(?!\S)`: a whitespace run followed by text leaves its last char to the next piece.
    if m.end() < text.len() && piece.chars().all(char::is_whitespace) {
        let last = piece.chars().next_back().expect("matches are non-empty");
        if piece.len() > last.len_utf8() {
            return m.end() - last.len_utf8();
        }
    }
    m.end()
}

/// Character classes of the GPT-2 pattern, for ASCII bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn class(b: u8) -> Class {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' => Class::Letter,
        b'0'..=b'9' => Class::Number,
        // Unicode White_Space within ASCII: \t \n \v \f \r and space.
        b'\t'..=b'\r' | b' ' => Class::Space,
        _ => Class::Other,
    }
}

/// The end of the ASCII run of `class` from `from`, or `None` if it runs into a non-ASCII
/// byte (whose class only the regex knows).
fn run_end(bytes: &[u8], from: usize, of: Class) -> Option<usize> {
    let mut end = from;
    while end < bytes.len() {
        let b = bytes[end];
        if b >= 0x80 {
            return None;
        }
        if class(b) != of {
            break;
        }
        end += 1;
    }
    Some(end)
}

/// The end of the piece at `at` when it can be decided from ASCII alone, else `None`.
/// Mirrors the alternatives in order: contractions, ` ?\p{L}+`, ` ?\p{N}+`,
/// ` ?[^\s\p{L}\p{N}]+`, `\s+(?!\S)`, `\s+`.
fn ascii_piece(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes[at];
    if b >= 0x80 {
        return None;
    }
    if b == b'\'' {
        match (bytes.get(at + 1), bytes.get(at + 2)) {
            (Some(b's' | b't' | b'm' | b'd'), _) => return Some(at + 2),
            (Some(b'r'), Some(b'e')) | (Some(b'v'), Some(b'e')) | (Some(b'l'), Some(b'l')) => {
                return Some(at + 3)
            }
            _ => {}
        }
    }
    match class(b) {
        Class::Space => {
            if b == b' ' {
                if let Some(&next) = bytes.get(at + 1) {
                    if next >= 0x80 {
                        return None;
                    }
                    let c = class(next);
                    if c != Class::Space {
                        return run_end(bytes, at + 1, c);
                    }
                }
            }
            let end = run_end(bytes, at, Class::Space)?;
            if end < bytes.len() && end - at > 1 {
                // Followed by text: the last space goes with it.
                Some(end - 1)
            } else {
                Some(end)
            }
        }
        c => run_end(bytes, at, c),
    }
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// Calls `f` with each word-scheme piece of `text` (see the module doc).
pub fn word_pieces(text: &str, lowercase: bool, mut f: impl FnMut(&str)) {
    let lowered;
    let text = if lowercase {
        lowered = text
            .chars()
            .flat_map(char::to_lowercase)
            .collect::<String>();
        lowered.as_str()
    } else {
        text
    };
    let mut start = None;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() || is_punctuation(c) {
            if let Some(s) = start.take() {
                f(&text[s..i]);
            }
            if !c.is_whitespace() {
                f(&text[i..i + c.len_utf8()]);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        f(&text[s..]);
    }
}

/// Piece -> ids, shared read-only by all threads (seeded from the training sample).
pub type PieceCache = AHashMap<String, Vec<u32>>;

/// Encodes story text the way `tokenizer` does.
pub struct FastEncoder<'t> {
    scheme: Scheme,
    lowercase: bool,
    tokenizer: &'t Tokenizer,
    words: AHashMap<String, u32>,
    shared: PieceCache,
}

impl<'t> FastEncoder<'t> {
    pub fn new(scheme: Scheme, lowercase: bool, tokenizer: &'t Tokenizer) -> Self {
        let words = match scheme {
            Scheme::Word => tokenizer.get_vocab(false).into_iter().collect(),
            _ => AHashMap::new(),
        };
        Self {
            scheme,
            lowercase,
            tokenizer,
            words,
            shared: PieceCache::new(),
        }
    }

    /// Pre-encodes every distinct BPE piece of `stories` so that encoding rarely needs the
    /// slow path.
    pub fn seed(&mut self, stories: &[&str]) -> Result<(), TokenizeError> {
        if self.scheme != Scheme::Bpe {
            return Ok(());
        }
        use rayon::prelude::*;
        let mut distinct: Vec<&str> = stories
            .par_iter()
            .fold(std::collections::HashSet::new, |mut acc, s| {
                byte_level_pieces(s, |p| {
                    acc.insert(p);
                });
                acc
            })
            .reduce(std::collections::HashSet::new, |mut a, b| {
                a.extend(b);
                a
            })
            .into_iter()
            .collect();
        distinct.sort_unstable();
        let encoded: Result<Vec<(String, Vec<u32>)>, TokenizeError> = distinct
            .par_iter()
            .map(|p| Ok(((*p).to_owned(), self.slow(p)?)))
            .collect();
        self.shared = encoded?.into_iter().collect();
        Ok(())
    }

    fn slow(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        let encoding = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(TokenizeError::tokenizer)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Appends the ids of `story` (no `<eos>`) to `out`; `local` caches pieces the shared
    /// cache lacks.
    pub fn encode_into(
        &self,
        story: &str,
        out: &mut Vec<u32>,
        local: &mut PieceCache,
    ) -> Result<(), TokenizeError> {
        // Text that may hold a special token (`<eos>`, also after lowercasing) goes through
        // the tokenizer itself, which matches those first. Stories rarely contain `<`.
        if story.contains('<') {
            out.extend(self.slow(story)?);
            return Ok(());
        }
        match self.scheme {
            Scheme::Byte => out.extend(story.bytes().map(|b| SPECIALS.len() as u32 + u32::from(b))),
            Scheme::Word => word_pieces(story, self.lowercase, |w| {
                out.push(self.words.get(w).copied().unwrap_or(UNK_ID));
            }),
            Scheme::Bpe => {
                let mut failed = None;
                byte_level_pieces(story, |p| {
                    if failed.is_some() {
                        return;
                    }
                    if let Some(ids) = self.shared.get(p).or_else(|| local.get(p)) {
                        out.extend_from_slice(ids);
                        return;
                    }
                    match self.slow(p) {
                        Ok(ids) => {
                            out.extend_from_slice(&ids);
                            local.insert(p.to_owned(), ids);
                        }
                        Err(e) => failed = Some(e),
                    }
                });
                if let Some(e) = failed {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}
