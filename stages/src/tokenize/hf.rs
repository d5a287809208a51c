//! The Hugging Face `transformers` files beside `tokenizer.json`: `tokenizer_config.json`
//! (the tokenizer class and which tokens are bos/eos/unk/pad) and `special_tokens_map.json`,
//! so `AutoTokenizer.from_pretrained(folder)` gives a tokenizer that pads, knows `<eos>`
//! and decodes as itera does. Written by `tokenize` and by `train` (with the model's
//! context as `model_max_length`), copied by `half-convert`.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::vocab::SPECIALS;

pub use itera_model::artifact::{SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE};

/// The role of each special token, in id order (see [`SPECIALS`]).
const ROLES: [&str; 4] = ["unk_token", "pad_token", "bos_token", "eos_token"];

fn special_tokens_map() -> Map<String, Value> {
    ROLES
        .iter()
        .zip(SPECIALS)
        .map(|(role, token)| ((*role).to_owned(), json!(token)))
        .collect()
}

/// The `tokenizer_config.json` of an itera tokenizer; `model_max_length` is the model's
/// context when there is a model.
pub fn tokenizer_config(model_max_length: Option<usize>) -> Value {
    let added: Map<String, Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(id, token)| {
            (
                id.to_string(),
                json!({
                    "content": token,
                    "lstrip": false,
                    "rstrip": false,
                    "single_word": false,
                    // `<eos>` is matched after normalization (the corpus separator becomes it).
                    "normalized": *token == "<eos>",
                    "special": true,
                }),
            )
        })
        .collect();
    let mut config = special_tokens_map();
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    config.insert("added_tokens_decoder".into(), Value::Object(added));
    // Decoding is the tokenizer's own decoder's job; transformers' extra clean-up would
    // differ from itera's text.
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    // Stories are encoded without <bos>; `<eos>` ends each one (meta.json's layout).
    config.insert("add_bos_token".into(), json!(false));
    config.insert("add_eos_token".into(), json!(false));
    if let Some(n) = model_max_length {
        config.insert("model_max_length".into(), json!(n));
    }
    Value::Object(config)
}

/// Writes both files into `dir`.
pub fn write_files(dir: &Path, model_max_length: Option<usize>) -> std::io::Result<()> {
    let pretty = |v: &Value| serde_json::to_vec_pretty(v).expect("JSON values serialize");
    std::fs::write(
        dir.join(TOKENIZER_CONFIG_FILE),
        pretty(&tokenizer_config(model_max_length)),
    )?;
    std::fs::write(
        dir.join(SPECIAL_TOKENS_MAP_FILE),
        pretty(&Value::Object(special_tokens_map())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_match_the_special_token_ids() {
        let c = tokenizer_config(Some(64));
        assert_eq!(c["eos_token"], "<eos>");
        assert_eq!(c["pad_token"], "<pad>");
        assert_eq!(c["unk_token"], "<unk>");
        assert_eq!(c["bos_token"], "<bos>");
        assert_eq!(c["added_tokens_decoder"]["3"]["content"], "<eos>");
        assert_eq!(c["added_tokens_decoder"]["1"]["content"], "<pad>");
        assert_eq!(c["model_max_length"], 64);
        assert!(tokenizer_config(None).get("model_max_length").is_none());
    }
}
