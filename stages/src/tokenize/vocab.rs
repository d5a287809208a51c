//! Building the Hugging Face `tokenizers` tokenizer of each scheme (what `tokenizer.json`
//! holds): `word` (WordLevel over whitespace + punctuation splits, vocabulary by frequency),
//! `bpe` (byte-level BPE trained with the `tokenizers` trainer), `byte` (the 256 bytes, no
//! training). Every scheme starts with the same four special tokens and maps the corpus's
//! `<|endoftext|>` separator to `<eos>`.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::wordpiece::WordPiece;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::normalizers::replace::Replace as ReplaceDecoder;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{
    AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer, Trainer,
};

use super::encoder::{byte_level_pieces, word_pieces};
use super::{Scheme, TokenizeError};

/// The special tokens, in id order: `<unk>` = 0, `<pad>` = 1, `<bos>` = 2, `<eos>` = 3.
pub const SPECIALS: [&str; 4] = ["<unk>", "<pad>", "<bos>", "<eos>"];
pub const UNK_ID: u32 = 0;
pub const EOS_ID: u32 = 3;
/// The corpus's story separator, which becomes `<eos>`.
pub const SEPARATOR: &str = "<|endoftext|>";
/// Vocabulary size of the `byte` scheme: the specials and the 256 byte values.
pub const BYTE_VOCAB: usize = SPECIALS.len() + 256;

fn special_tokens() -> Vec<AddedToken> {
    SPECIALS
        .iter()
        // `<eos>` is matched after normalization, where `<|endoftext|>` has become `<eos>`.
        .map(|s| AddedToken::from(*s, true).normalized(*s == "<eos>"))
        .collect()
}

fn separator_to_eos() -> NormalizerWrapper {
    Replace::new(SEPARATOR, "<eos>")
        .expect("a literal pattern always compiles")
        .into()
}

/// The GPT-2 byte -> printable char table of byte-level BPE.
pub fn byte_chars() -> [char; 256] {
    let mut printable: Vec<u8> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.iter().map(|&b| u32::from(b)).collect();
    let mut n = 0;
    for b in 0..=255u8 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut table = ['\0'; 256];
    for (b, c) in printable.into_iter().zip(chars) {
        table[usize::from(b)] = char::from_u32(c).expect("256 + n < 512 is a valid char");
    }
    table
}

fn byte_level_pre() -> ByteLevel {
    // No prefix space: encoding is lossless and decode(encode(text)) == text.
    ByteLevel::new(false, true, true)
}

/// The `byte` scheme: byte `b` is token `4 + b`.
pub fn byte_tokenizer() -> Result<Tokenizer, TokenizeError> {
    let mut vocab: ahash::AHashMap<String, u32> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| ((*s).to_owned(), i as u32))
        .collect();
    for (b, c) in byte_chars().iter().enumerate() {
        vocab.insert(c.to_string(), (SPECIALS.len() + b) as u32);
    }
    let model = BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .build()
        .map_err(TokenizeError::tokenizer)?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(separator_to_eos()))
        .map_err(TokenizeError::tokenizer)?;
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, false)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer
        .add_special_tokens(special_tokens())
        .map_err(TokenizeError::tokenizer)?;
    Ok(tokenizer)
}

/// The `bpe` scheme: byte-level BPE trained on `stories`. The trainer is fed the pieces of
/// the same pre-tokenization the saved tokenizer applies ([`byte_level_pieces`], checked
/// against `tokenizers`' own), in groups of stories so that counting runs in parallel.
pub fn bpe_tokenizer(
    stories: &[&str],
    vocab_size: usize,
    min_frequency: u64,
) -> Result<Tokenizer, TokenizeError> {
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .show_progress(false)
        .special_tokens(special_tokens())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect::<HashSet<char>>())
        .build();
    let table = byte_chars();
    let groups: Vec<String> = stories.chunks(256).map(|g| g.join(SEPARATOR)).collect();
    trainer
        .feed(groups.iter(), |group| {
            let mut words = Vec::new();
            for story in super::corpus::stories(group) {
                byte_level_pieces(story, |piece| {
                    words.push(
                        piece
                            .bytes()
                            .map(|b| table[usize::from(b)])
                            .collect::<String>(),
                    );
                });
            }
            Ok(words)
        })
        .map_err(TokenizeError::tokenizer)?;
    let mut model = BPE::default();
    trainer
        .train(&mut model)
        .map_err(TokenizeError::tokenizer)?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(separator_to_eos()))
        .map_err(TokenizeError::tokenizer)?;
    tokenizer.with_pre_tokenizer(Some(byte_level_pre()));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer
        .add_special_tokens(special_tokens())
        .map_err(TokenizeError::tokenizer)?;
    Ok(tokenizer)
}

/// The `word` scheme: the `vocab_size - 4` most frequent words of `stories` that occur at
/// least `min_frequency` times (ties broken alphabetically), after the documented
/// normalization ([`word_pieces`]).
pub fn word_tokenizer(
    stories: &[&str],
    vocab_size: usize,
    min_frequency: u64,
    lowercase: bool,
) -> Result<Tokenizer, TokenizeError> {
    let counts: HashMap<String, u64> = stories
        .par_iter()
        .fold(HashMap::new, |mut acc: HashMap<String, u64>, story| {
            word_pieces(story, lowercase, |w| {
                if let Some(n) = acc.get_mut(w) {
                    *n += 1;
                } else {
                    acc.insert(w.to_owned(), 1);
                }
            });
            acc
        })
        .reduce(HashMap::new, |mut a, b| {
            for (w, n) in b {
                *a.entry(w).or_default() += n;
            }
            a
        });
    let mut ranked: Vec<(String, u64)> = counts
        .into_iter()
        .filter(|(w, n)| *n >= min_frequency && !SPECIALS.contains(&w.as_str()))
        .collect();
    ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(vocab_size.saturating_sub(SPECIALS.len()));
    let mut vocab: HashMap<String, u32> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| ((*s).to_owned(), i as u32))
        .collect();
    for (i, (w, _)) in ranked.into_iter().enumerate() {
        vocab.insert(w, (SPECIALS.len() + i) as u32);
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token(SPECIALS[UNK_ID as usize].to_owned())
        .build()
        .map_err(TokenizeError::tokenizer)?;
    let mut tokenizer = Tokenizer::new(model);
    let mut normalizers = vec![separator_to_eos()];
    if lowercase {
        normalizers.push(Lowercase.into());
    }
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(TokenizeError::tokenizer)?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        PreTokenizerWrapper::WhitespaceSplit(WhitespaceSplit),
        PreTokenizerWrapper::Punctuation(Punctuation::new(SplitDelimiterBehavior::Isolated)),
    ])));
    tokenizer.with_decoder(Some(word_decoder()));
    tokenizer
        .add_special_tokens(special_tokens())
        .map_err(TokenizeError::tokenizer)?;
    Ok(tokenizer)
}

/// Readable text from word tokens: words joined with spaces, then the space before
/// `. , ! ? ; :` removed and an apostrophe between two words closed up ("Lily ' s" ->
/// "Lily's"). Built from standard decoders (WordPiece joining, Fuse, Replace), so Python's
/// `tokenizers` and `transformers` decode the same way. The pre-tokenizer splits every
/// punctuation mark off, so no word starts with WordPiece's `##` prefix.
fn word_decoder() -> DecoderWrapper {
    let mut steps: Vec<DecoderWrapper> = vec![
        WordPiece::new("##".into(), false).into(),
        Fuse::new().into(),
        ReplaceDecoder::new(" ' ", "'")
            .expect("a literal pattern always compiles")
            .into(),
    ];
    for mark in [".", ",", "!", "?", ";", ":"] {
        steps.push(
            ReplaceDecoder::new(format!(" {mark}"), mark)
                .expect("a literal pattern always compiles")
                .into(),
        );
    }
    DecoderSequence::new(steps).into()
}

/// Builds the tokenizer of `scheme` (training on `stories` where the scheme needs it).
pub fn build(
    scheme: Scheme,
    stories: &[&str],
    vocab_size: usize,
    min_frequency: u64,
    lowercase: bool,
) -> Result<Tokenizer, TokenizeError> {
    match scheme {
        Scheme::Byte => byte_tokenizer(),
        Scheme::Bpe => bpe_tokenizer(stories, vocab_size, min_frequency),
        Scheme::Word => word_tokenizer(stories, vocab_size, min_frequency, lowercase),
    }
}
