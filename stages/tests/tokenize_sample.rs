//! `tokenize` on the real TinyStories samples and on small hand-checkable texts: vocabulary
//! sizes, lossless round trips, `tokenizer.json` reloading (Rust and Python) to the same
//! ids, the token file layout and the statistics.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use itera_engine::stage::{InputArtifact, Stage};
use itera_stages::tokenize::{stories, BlockReader, Dtype, Meta, Stats, EOS_ID};
use support::{context, data_dir};
use tokenizers::Tokenizer;

fn stage() -> std::sync::Arc<dyn Stage> {
    itera_stages::registry()
        .get("tokenize")
        .expect("tokenize is registered")
        .clone()
}

fn params(toml_text: &str) -> serde_json::Value {
    let table: toml::Table = toml::from_str(toml_text).expect("test params are TOML");
    stage()
        .check_params(&table)
        .unwrap_or_else(|issues| panic!("params rejected: {issues:?}"))
}

/// The shared samples as a `files`-stage-like corpus (their own names).
const SAMPLE_FILES: &str =
    "train_file = \"train-sample-00.txt\"\nvalid_file = \"valid-part-00.txt\"\n";

/// Runs the stage on `corpus`; returns the artifact folder.
fn run(params: &serde_json::Value, corpus: &Path, root: &Path) -> anyhow::Result<PathBuf> {
    let inputs = BTreeMap::from([(
        "corpus".to_owned(),
        vec![InputArtifact {
            stage: "fetch".into(),
            output: None,
            path: corpus.to_owned(),
            digest: itera_engine::store::Digest::of_bytes(b"test"),
        }],
    )]);
    let ctx = context(root, inputs, 2);
    stage().run(params, &ctx)?;
    Ok(ctx.out_dir)
}

fn read_ids(path: &Path, dtype: Dtype) -> Vec<u32> {
    let bytes = std::fs::read(path).unwrap();
    match dtype {
        Dtype::U16 => bytes
            .chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Dtype::U32 => bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

fn json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Stories of a file as the stage defines them.
fn file_stories(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    stories(&text).map(str::to_owned).collect()
}

/// Splits a token stream into stories at `<eos>`.
fn split_at_eos(ids: &[u32]) -> Vec<&[u32]> {
    assert_eq!(ids.last(), Some(&EOS_ID), "every story ends with <eos>");
    ids[..ids.len() - 1].split(|&id| id == EOS_ID).collect()
}

/// Checks the artifact against the source: ids reload identically through the saved
/// `tokenizer.json`, and (for lossless schemes) decode back to the story text.
fn check_against_source(out: &Path, valid: &Path, lossless: bool) -> (Meta, Stats) {
    let meta: Meta = json(&out.join("meta.json"));
    let stats: Stats = json(&out.join("stats.json"));
    let reloaded = Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert_eq!(reloaded.get_vocab_size(true), meta.vocab_size);
    let ids = read_ids(&out.join("valid.bin"), meta.dtype);
    assert_eq!(ids.len() as u64, stats.valid.tokens);
    assert_eq!(ids.len() as u64, meta.valid_tokens);
    let expected = file_stories(valid);
    assert_eq!(stats.valid.stories, expected.len() as u64);
    // The saved tokenizer, story by story, each followed by <eos>, gives the same stream.
    let mut stream = Vec::with_capacity(ids.len());
    for story in &expected {
        let fresh = reloaded.encode(story.as_str(), false).unwrap();
        if lossless {
            assert_eq!(&reloaded.decode(fresh.get_ids(), false).unwrap(), story);
        }
        stream.extend_from_slice(fresh.get_ids());
        stream.push(EOS_ID);
    }
    if let Some(at) = stream.iter().zip(&ids).position(|(a, b)| a != b) {
        panic!(
            "valid.bin differs from the saved tokenizer's encoding at token {at}: {:?} vs {:?}",
            &ids[at.saturating_sub(3)..(at + 5).min(ids.len())],
            &stream[at.saturating_sub(3)..(at + 5).min(stream.len())]
        );
    }
    assert_eq!(stream.len(), ids.len());
    (meta, stats)
}

#[test]
fn bpe_on_the_real_sample_is_lossless_and_reloads_to_the_same_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let p = params(&format!(
        "scheme = \"bpe\"\nvocab_size = 1024\n{SAMPLE_FILES}"
    ));
    let out = run(&p, &data_dir(), tmp.path()).unwrap();
    let (meta, stats) = check_against_source(&out, &data_dir().join("valid-part-00.txt"), true);
    assert_eq!(
        meta.vocab_size, 1024,
        "the trainer fills the vocabulary it is given"
    );
    assert_eq!(meta.dtype, Dtype::U16);
    assert_eq!(stats.train.unknown_tokens, 0);
    assert_eq!(stats.valid.unknown_rate, 0.0);
    // The train sample: 2,316 separated stories plus the truncated last one.
    assert_eq!(stats.train.stories, 2317);
    assert_eq!(stats.train.file_bytes, 2_097_152);
    assert!(
        stats.train.bytes_per_token > 2.5,
        "BPE compresses: {}",
        stats.train.bytes_per_token
    );
    let train_ids = read_ids(&out.join("train.bin"), meta.dtype);
    let reloaded = Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let train_stories = file_stories(&data_dir().join("train-sample-00.txt"));
    for (story, ids) in train_stories.iter().zip(split_at_eos(&train_ids)) {
        assert_eq!(&reloaded.decode(ids, false).unwrap(), story);
    }
    // The corpus separator maps to <eos> in the saved tokenizer too.
    let sep = reloaded.encode("<|endoftext|>", false).unwrap();
    assert_eq!(sep.get_ids(), &[EOS_ID]);
    python_reload_check(
        &out.join("tokenizer.json"),
        &train_stories[..50],
        &train_ids,
    );
}

#[test]
fn byte_scheme_maps_each_byte_and_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let p = params(&format!("scheme = \"byte\"\n{SAMPLE_FILES}"));
    let out = run(&p, &data_dir(), tmp.path()).unwrap();
    let (meta, stats) = check_against_source(&out, &data_dir().join("valid-part-00.txt"), true);
    assert_eq!(meta.vocab_size, 260);
    assert_eq!(stats.valid.unknown_tokens, 0);
    let ids = read_ids(&out.join("valid.bin"), meta.dtype);
    let first = &file_stories(&data_dir().join("valid-part-00.txt"))[0];
    let expected: Vec<u32> = first.bytes().map(|b| 4 + u32::from(b)).collect();
    assert_eq!(&ids[..expected.len()], &expected[..]);
    assert_eq!(ids[expected.len()], EOS_ID);
    assert_eq!(stats.valid.bytes_per_token, 1.0);
}

#[test]
fn word_scheme_caps_the_vocabulary_by_frequency() {
    let tmp = tempfile::tempdir().unwrap();
    let p = params(&format!(
        "scheme = \"word\"\nvocab_size = 500\nlowercase = true\n{SAMPLE_FILES}"
    ));
    let out = run(&p, &data_dir(), tmp.path()).unwrap();
    let (meta, stats) = check_against_source(&out, &data_dir().join("valid-part-00.txt"), false);
    assert_eq!(meta.vocab_size, 500);
    assert!(meta.lowercase);
    assert!(
        stats.valid.unknown_rate > 0.0 && stats.valid.unknown_rate < 0.2,
        "{}",
        stats.valid.unknown_rate
    );
    // The most frequent tokens of children's stories.
    let top: Vec<&str> = stats
        .train
        .top_tokens
        .iter()
        .take(6)
        .map(|t| t.token.as_str())
        .collect();
    for word in [".", "the", ","] {
        assert!(top.contains(&word), "{word} not in {top:?}");
    }
    let tok = Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert!(tok.token_to_id("Lily").is_none(), "lowercased vocabulary");
    assert!(tok.token_to_id("lily").is_some());
}

#[test]
fn word_normalization_splits_words_and_punctuation() {
    let mut pieces = Vec::new();
    itera_stages::tokenize::word_pieces("Lily's “red” ball!\n  Tom-cat 3.5", false, |w| {
        pieces.push(w.to_owned())
    });
    assert_eq!(
        pieces,
        ["Lily", "'", "s", "“", "red", "”", "ball", "!", "Tom", "-", "cat", "3", ".", "5"]
    );
    let mut lowered = Vec::new();
    itera_stages::tokenize::word_pieces("Ben SAID", true, |w| lowered.push(w.to_owned()));
    assert_eq!(lowered, ["ben", "said"]);
}

/// A corpus folder with hand-written text.
fn tiny_corpus(dir: &Path, train: &str, valid: &str) -> PathBuf {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("TinyStories-train.txt"), train).unwrap();
    std::fs::write(corpus.join("TinyStories-valid.txt"), valid).unwrap();
    corpus
}

#[test]
fn stats_are_right_on_a_hand_checkable_text() {
    let tmp = tempfile::tempdir().unwrap();
    let train = "Hello world.\n<|endoftext|>\nHi!\n<|endoftext|>\n";
    let corpus = tiny_corpus(tmp.path(), train, "\u{feff} Hi world.\n<|endoftext|>\n\n");

    let out = run(
        &params("scheme = \"byte\""),
        &corpus,
        &tmp.path().join("byte"),
    )
    .unwrap();
    let stats: Stats = json(&out.join("stats.json"));
    let t = &stats.train;
    assert_eq!(
        (
            t.file_bytes,
            t.text_bytes,
            t.stories,
            t.tokens,
            t.text_tokens
        ),
        (train.len() as u64, 15, 2, 17, 15)
    );
    assert_eq!(t.bytes_per_token, 1.0);
    // Distinct bytes of "Hello world." + "Hi!": H e l o ␠ w r d . i ! = 11, plus <eos>.
    assert_eq!(t.vocabulary_used, 12);
    assert!(
        (t.vocabulary_coverage - 12.0 / 260.0).abs() < 1e-12,
        "{}",
        t.vocabulary_coverage
    );
    assert_eq!(
        (t.top_tokens[0].token.as_str(), t.top_tokens[0].count),
        ("l", 3)
    );
    // The BOM and the spaces around the story are not story text.
    assert_eq!(
        (
            stats.valid.stories,
            stats.valid.text_bytes,
            stats.valid.tokens
        ),
        (1, 9, 10)
    );

    // Word scheme, min_frequency 1, room for 2 words: ties go alphabetically ("!" and ".").
    let p = params("scheme = \"word\"\nvocab_size = 6\nmin_frequency = 1");
    let out = run(&p, &corpus, &tmp.path().join("word")).unwrap();
    let stats: Stats = json(&out.join("stats.json"));
    let t = &stats.train;
    assert_eq!(
        (t.stories, t.tokens, t.text_tokens, t.unknown_tokens),
        (2, 7, 5, 3)
    );
    assert_eq!(t.unknown_rate, 0.6);
    assert_eq!(t.bytes_per_token, 3.0);
    let ids = read_ids(&out.join("train.bin"), Dtype::U16);
    // Hello world . <eos> Hi ! <eos>
    assert_eq!(ids, [0, 0, 5, 3, 0, 4, 3]);
}

#[test]
fn special_token_text_inside_a_story_matches_the_saved_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let text =
        "Tom saw <b>a dog</b>.\n<|endoftext|>\nSue said <EOS> and <eos>  twice.\n<|endoftext|>\n";
    let corpus = tiny_corpus(tmp.path(), text, text);
    for (scheme, extra) in [
        ("bpe", "vocab_size = 300\nmin_frequency = 1"),
        ("word", "min_frequency = 1\nlowercase = true"),
    ] {
        let p = params(&format!("scheme = \"{scheme}\"\n{extra}"));
        let out = run(&p, &corpus, &tmp.path().join(scheme)).unwrap();
        check_against_source(&out, &corpus.join("TinyStories-valid.txt"), false);
    }
}

#[test]
fn max_train_bytes_uses_a_story_boundary_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let p = params(&format!(
        "scheme = \"byte\"\nmax_train_bytes = 100000\n{SAMPLE_FILES}"
    ));
    let out = run(&p, &data_dir(), tmp.path()).unwrap();
    let stats: Stats = json(&out.join("stats.json"));
    let text = std::fs::read(data_dir().join("train-sample-00.txt")).unwrap();
    let cut = itera_stages::fetch::story_cut(&text[..100_000]).unwrap();
    assert_eq!(stats.train.file_bytes, cut as u64);
    let expected = stories(std::str::from_utf8(&text[..cut]).unwrap()).count();
    assert_eq!(stats.train.stories, expected as u64);
}

#[test]
fn blocks_split_on_story_boundaries_whatever_their_size() {
    let path = data_dir().join("valid-part-00.txt");
    let whole = file_stories(&path);
    for block in [100, 5_000, 1 << 20] {
        let mut got = Vec::new();
        for b in BlockReader::open(&path, None)
            .unwrap()
            .with_block_bytes(block)
        {
            got.extend(stories(&b.unwrap().text).map(str::to_owned));
        }
        assert_eq!(got, whole, "block size {block}");
    }
    // With a limit: the same stories as the prefix cut after its last separator.
    let text = std::fs::read(&path).unwrap();
    let cut = itera_stages::fetch::story_cut(&text[..100_000]).unwrap();
    let expected: Vec<&str> = stories(std::str::from_utf8(&text[..cut]).unwrap()).collect();
    for block in [100, 5_000, 99_999, 1 << 20] {
        let mut got = Vec::new();
        let mut file_bytes = 0;
        for b in BlockReader::open(&path, Some(100_000))
            .unwrap()
            .with_block_bytes(block)
        {
            let b = b.unwrap();
            file_bytes += b.file_bytes;
            got.extend(stories(&b.text).map(str::to_owned));
        }
        assert_eq!(got, expected, "block size {block} with a limit");
        assert_eq!(file_bytes, cut as u64);
    }
}

#[test]
fn a_missing_corpus_file_lists_what_is_there() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tiny_corpus(tmp.path(), "a\n<|endoftext|>\n", "b\n");
    let p = params("scheme = \"byte\"\ntrain_file = \"train.txt\"");
    let err = run(&p, &corpus, &tmp.path().join("x"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no file `train.txt` (set by `train_file`)"),
        "{err}"
    );
    assert!(
        err.contains("TinyStories-train.txt, TinyStories-valid.txt"),
        "{err}"
    );
}

#[test]
fn params_are_checked() {
    let check = |text: &str| {
        let table: toml::Table = toml::from_str(text).unwrap();
        stage()
            .check_params(&table)
            .unwrap_err()
            .iter()
            .map(|i| i.path.join("."))
            .collect::<Vec<_>>()
    };
    assert_eq!(check("scheme = \"bpe\"\nlowercase = true"), ["lowercase"]);
    assert_eq!(check("scheme = \"byte\"\nvocab_size = 300"), ["vocab_size"]);
    assert_eq!(check("scheme = \"bpe\"\nvocab_size = 100"), ["vocab_size"]);
    assert_eq!(check("scheme = \"wrod\""), ["scheme"]);
    assert_eq!(check("vocab = 3").len(), 1, "unknown keys are refused");
}

#[test]
fn u32_ids_above_65536_tokens() {
    assert_eq!(Dtype::for_vocab(65_536), Dtype::U16);
    assert_eq!(Dtype::for_vocab(65_537), Dtype::U32);
    let mut out = Vec::new();
    Dtype::U32.write(&[70_000, 1], &mut out);
    assert_eq!(out, [0x70, 0x11, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00]);
}

/// Loads `tokenizer.json` with Python's `tokenizers` and checks it gives the same ids for
/// the first stories; skipped (with the reason printed) where Python or the package is
/// missing.
fn python_reload_check(tokenizer: &Path, stories: &[String], ids: &[u32]) {
    let script = r#"
import json, sys
try:
    from tokenizers import Tokenizer
except ImportError as e:
    print("SKIP: " + str(e)); sys.exit(0)
tok = Tokenizer.from_file(sys.argv[1])
stories = json.load(sys.stdin)
print(json.dumps([tok.encode(s, add_special_tokens=False).ids for s in stories]))
"#;
    let child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(tokenizer)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        println!("skipping the Python reload check: python3 is not installed");
        return;
    };
    serde_json::to_writer(child.stdin.take().unwrap(), stories).unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    if let Some(reason) = stdout.strip_prefix("SKIP: ") {
        println!("skipping the Python reload check: {}", reason.trim());
        return;
    }
    let python: Vec<Vec<u32>> = serde_json::from_str(&stdout).unwrap();
    for (story_ids, rust_ids) in python.iter().zip(split_at_eos(ids)) {
        assert_eq!(story_ids.as_slice(), rust_ids);
    }
    assert_eq!(python.len(), stories.len());
    println!(
        "Python tokenizers reloaded tokenizer.json: same ids for {} stories",
        python.len()
    );
}

/// The hand-written pre-tokenizer cuts text exactly where `tokenizers`' `ByteLevel` (with
/// the GPT-2 regex) does, on tricky strings and on the whole real validation sample.
#[test]
fn byte_level_pieces_match_the_tokenizers_pre_tokenizer() {
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    let reference = |text: &str| -> Vec<(usize, usize)> {
        let mut pts = PreTokenizedString::from(text);
        ByteLevel::new(false, true, true)
            .pre_tokenize(&mut pts)
            .unwrap();
        pts.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(_, offsets, _)| offsets)
            .collect()
    };
    let ours = |text: &str| -> Vec<(usize, usize)> {
        let mut pieces = Vec::new();
        itera_stages::tokenize::byte_level_pieces(text, |p| {
            let start = p.as_ptr() as usize - text.as_ptr() as usize;
            pieces.push((start, start + p.len()));
        });
        pieces
    };
    let valid = std::fs::read_to_string(data_dir().join("valid-part-00.txt")).unwrap();
    let tricky = [
        "  hello\n\n world's 'll  café  x\u{a0}y 12ab!!  ",
        "don't I'M ''s '  \t\r\n\u{2003}Über 42nd ١٢٣ “quoted” — end.\n",
        " ",
        "\n",
        "a",
        "'",
        "'re",
        " 's",
        "x  ",
        "\u{feff} Spot.",
        "!!\"#$ %&'()*+,-./:;<=>?@[\\]^_`{|}~",
    ];
    for text in tricky.iter().copied().chain([valid.as_str()]) {
        assert_eq!(
            ours(text),
            reference(text),
            "pieces differ for {:?}",
            &text[..text.len().min(60)]
        );
    }
}

/// The word tokenizer of the sample shipped in the repository (`data/tinystories`).
fn shipped_word_tokenizer(root: &Path) -> PathBuf {
    let p = params(
        "scheme = \"word\"\nvocab_size = 2000\ntrain_file = \"train-sample.txt\"\nvalid_file = \"valid-sample.txt\"\n",
    );
    let data = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/tinystories"));
    run(&p, &data, root).unwrap()
}

const READABLE: &str =
    "Once upon a time, there was a little girl named Lily. Lily's mom was happy!";

/// The word scheme decodes to readable text (no "time , there"), the transformers files
/// name the special tokens, and meta.json states how the byte-order mark is handled.
#[test]
fn word_tokenizer_decodes_readably_and_names_its_special_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let out = shipped_word_tokenizer(tmp.path());
    let tok = Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let ids = tok.encode(READABLE, false).unwrap().get_ids().to_vec();
    assert!(
        !ids.contains(&0),
        "every word is in the vocabulary: {ids:?}"
    );
    assert_eq!(tok.decode(&ids, true).unwrap(), READABLE);
    let config: serde_json::Value = json(&out.join("tokenizer_config.json"));
    assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
    for (role, token) in [
        ("unk_token", "<unk>"),
        ("pad_token", "<pad>"),
        ("bos_token", "<bos>"),
        ("eos_token", "<eos>"),
    ] {
        assert_eq!(config[role], token);
        assert_eq!(tok.token_to_id(token), Some(SPECIAL_IDS[role]));
    }
    let map: serde_json::Value = json(&out.join("special_tokens_map.json"));
    assert_eq!(map["eos_token"], "<eos>");
    let meta: Meta = json(&out.join("meta.json"));
    assert!(
        meta.text.contains("byte-order mark") && meta.text.contains("utf-8-sig"),
        "{}",
        meta.text
    );
    // The shipped valid file starts with a BOM, and story 0's ids are those of its text without it.
    let valid = std::fs::read(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/tinystories/valid-sample.txt"
    )))
    .unwrap();
    assert!(valid.starts_with("\u{feff}".as_bytes()));
}

static SPECIAL_IDS: std::sync::LazyLock<BTreeMap<&str, u32>> = std::sync::LazyLock::new(|| {
    BTreeMap::from([
        ("unk_token", 0),
        ("pad_token", 1),
        ("bos_token", 2),
        ("eos_token", 3),
    ])
});

/// `AutoTokenizer.from_pretrained(folder)` (Python `transformers`; with only `tokenizers`
/// installed, `Tokenizer.from_file` and the config's special tokens) gives itera's ids for
/// story 0 of the valid file read as `utf-8-sig`, knows `<eos>`/`<pad>`, pads a batch and
/// decodes readably. Skips with the reason when neither package is installed.
#[test]
fn python_loads_the_tokenizer_folder_with_its_special_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let out = shipped_word_tokenizer(tmp.path());
    let meta: Meta = json(&out.join("meta.json"));
    let valid_ids = read_ids(&out.join("valid.bin"), meta.dtype);
    let story0 = split_at_eos(&valid_ids)[0].to_vec();
    let script = r#"
import json, sys
folder, valid, text = sys.argv[1], sys.argv[2], sys.argv[3]
story0 = open(valid, encoding="utf-8-sig").read().split("<|endoftext|>")[0].strip()
try:
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder)
    batch = tok(["the cat", "the"], padding=True)
    print(json.dumps({
        "with": "transformers",
        "specials": [tok.unk_token, tok.pad_token, tok.bos_token, tok.eos_token],
        "special_ids": [tok.unk_token_id, tok.pad_token_id, tok.bos_token_id, tok.eos_token_id],
        "padded": batch["input_ids"], "mask": batch["attention_mask"],
        "story0": tok.encode(story0, add_special_tokens=False),
        "decoded": tok.decode(tok.encode(text, add_special_tokens=False), skip_special_tokens=True),
    }))
    sys.exit(0)
except ImportError:
    pass
try:
    from tokenizers import Tokenizer
except ImportError as e:
    print("SKIP: neither transformers nor tokenizers: " + str(e)); sys.exit(0)
tok = Tokenizer.from_file(folder + "/tokenizer.json")
config = json.load(open(folder + "/tokenizer_config.json"))
specials = [config[k] for k in ["unk_token", "pad_token", "bos_token", "eos_token"]]
tok.enable_padding(pad_id=tok.token_to_id(config["pad_token"]), pad_token=config["pad_token"])
batch = tok.encode_batch(["the cat", "the"], add_special_tokens=False)
print(json.dumps({
    "with": "tokenizers",
    "specials": specials,
    "special_ids": [tok.token_to_id(s) for s in specials],
    "padded": [e.ids for e in batch], "mask": [e.attention_mask for e in batch],
    "story0": tok.encode(story0, add_special_tokens=False).ids,
    "decoded": tok.decode(tok.encode(text, add_special_tokens=False).ids),
}))
"#;
    let valid = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/tinystories/valid-sample.txt"
    ));
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&out)
        .arg(&valid)
        .arg(READABLE)
        .output();
    let Ok(output) = output else {
        println!("skipping the Python check: python3 is not installed");
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    if let Some(reason) = stdout.strip_prefix("SKIP: ") {
        println!("skipping the Python check: {}", reason.trim());
        return;
    }
    let got: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    println!("checked with Python {}", got["with"]);
    assert_eq!(
        got["specials"],
        serde_json::json!(["<unk>", "<pad>", "<bos>", "<eos>"])
    );
    assert_eq!(got["special_ids"], serde_json::json!([0, 1, 2, 3]));
    let padded = &got["padded"];
    assert_eq!(padded[1][1], 1, "padded with <pad>: {padded}");
    assert_eq!(got["mask"], serde_json::json!([[1, 1], [1, 0]]));
    assert_eq!(
        got["story0"],
        serde_json::json!(story0),
        "story 0 read as utf-8-sig"
    );
    assert_eq!(got["decoded"], READABLE);
}

/// docs/PHASE8.md documents the fetch and tokenize stages and every field of the
/// tokenize artifact's `meta.json` and `stats.json` (the token files' format is not only
/// inside an artifact).
#[test]
fn phase8_docs_describe_fetch_tokenize_and_the_token_files() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PHASE8.md")).unwrap();
    for needle in [
        "### `hf-fetch`",
        "### `tokenize`",
        "`train.bin` / `valid.bin` (`tokenize`)",
        "`provenance.json` (`hf-fetch`)",
        "utf-8-sig",
    ] {
        assert!(docs.contains(needle), "docs/PHASE8.md lacks {needle}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = shipped_word_tokenizer(tmp.path());
    for file in ["meta.json", "stats.json"] {
        let value: serde_json::Value = json(&out.join(file));
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        if let Some(split) = value.get("train").and_then(|t| t.as_object()) {
            keys.extend(split.keys().cloned());
        }
        for key in keys {
            assert!(
                docs.contains(&format!("`{key}`")),
                "docs/PHASE8.md does not describe `{key}` of {file}"
            );
        }
    }
}
