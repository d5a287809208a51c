//! Reading a TinyStories-format corpus in bounded blocks that end on story boundaries, and
//! splitting a block into stories.
//!
//! A story is the text between two `<|endoftext|>` separators (or the file's start or end),
//! with surrounding whitespace (and a leading byte-order mark) removed; empty stories are
//! skipped. A block ends right after a separator, so splitting blocks gives the same
//! stories as splitting the whole file.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::vocab::SEPARATOR;
use super::TokenizeError;

/// Blocks aim at this size; a block grows until it holds a separator.
pub const BLOCK_BYTES: usize = 4 << 20;
/// A single story longer than this is an input error (probably not a TinyStories file).
const MAX_STORY_BYTES: usize = 256 << 20;

/// Splits block text into stories (see the module doc).
pub fn stories(block: &str) -> impl Iterator<Item = &str> {
    block
        .split(SEPARATOR)
        .map(|s| s.trim_start_matches('\u{feff}').trim())
        .filter(|s| !s.is_empty())
}

/// A run of complete stories read from a file.
#[derive(Debug)]
pub struct Block {
    pub text: String,
    /// Bytes of the file this block covers (including separators and whitespace).
    pub file_bytes: u64,
}

/// Reads `path` in blocks that end after a separator. With `limit`, only a prefix of about
/// `limit` bytes is used, cut after its last separator.
pub struct BlockReader {
    file: File,
    path: PathBuf,
    limit: Option<u64>,
    read: u64,
    pending: Vec<u8>,
    done: bool,
    /// Whether a block has been returned (a limit then just drops the partial tail).
    emitted: bool,
    block_bytes: usize,
}

impl BlockReader {
    pub fn open(path: &Path, limit: Option<u64>) -> Result<Self, TokenizeError> {
        let file = File::open(path).map_err(|source| TokenizeError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            file,
            path: path.to_owned(),
            limit,
            read: 0,
            pending: Vec::new(),
            done: false,
            emitted: false,
            block_bytes: BLOCK_BYTES,
        })
    }

    /// Uses blocks of about `bytes` (tests use small ones to exercise the boundaries).
    pub fn with_block_bytes(mut self, bytes: usize) -> Self {
        self.block_bytes = bytes.max(1);
        self
    }

    /// Fills `pending` up to `want` bytes; returns whether the input is exhausted (end of
    /// file or limit).
    fn fill(&mut self, want: usize) -> Result<bool, TokenizeError> {
        while self.pending.len() < want {
            let mut room = want - self.pending.len();
            if let Some(limit) = self.limit {
                let left = limit.saturating_sub(self.read);
                if left == 0 {
                    return Ok(true);
                }
                room = room.min(usize::try_from(left).unwrap_or(usize::MAX));
            }
            let start = self.pending.len();
            self.pending.resize(start + room, 0);
            let n = self
                .file
                .read(&mut self.pending[start..])
                .map_err(|source| TokenizeError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            self.pending.truncate(start + n);
            self.read += n as u64;
            if n == 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn next_block(&mut self) -> Result<Option<Block>, TokenizeError> {
        if self.done {
            return Ok(None);
        }
        let mut want = self.block_bytes;
        loop {
            let exhausted = self.fill(want)?;
            let limited = exhausted && self.limit.is_some_and(|l| self.read >= l);
            let cut = if exhausted && !limited {
                // End of file: everything left is the last block.
                Some(self.pending.len())
            } else {
                crate::fetch::story_cut(&self.pending)
            };
            match cut {
                Some(cut) => {
                    if exhausted {
                        self.done = true;
                    }
                    let rest = self.pending.split_off(cut);
                    let bytes = std::mem::replace(&mut self.pending, rest);
                    if bytes.is_empty() {
                        return Ok(None);
                    }
                    let offset = self.read - (bytes.len() + self.pending.len()) as u64;
                    let file_bytes = bytes.len() as u64;
                    let text = String::from_utf8(bytes).map_err(|e| TokenizeError::NotUtf8 {
                        path: self.path.clone(),
                        offset: offset + e.utf8_error().valid_up_to() as u64,
                    })?;
                    self.emitted = true;
                    return Ok(Some(Block { text, file_bytes }));
                }
                // The limit cut a story short after earlier blocks: drop the partial tail.
                None if limited && self.emitted => {
                    self.done = true;
                    return Ok(None);
                }
                None if limited => {
                    return Err(TokenizeError::NoCompleteStory {
                        path: self.path.clone(),
                        limit: self.limit.unwrap_or_default(),
                    });
                }
                None if want >= MAX_STORY_BYTES => {
                    return Err(TokenizeError::StoryTooLong {
                        path: self.path.clone(),
                        offset: self.read - self.pending.len() as u64,
                        max: MAX_STORY_BYTES,
                    });
                }
                None => want = (want * 2).min(MAX_STORY_BYTES),
            }
        }
    }
}

impl Iterator for BlockReader {
    type Item = Result<Block, TokenizeError>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.next_block() {
            Ok(Some(b)) => Some(Ok(b)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
