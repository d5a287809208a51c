//! The model artifact, in one place: its file names (`model.safetensors`, `config.json`,
//! `tokenizer.json`), the `__metadata__` every weights file carries, the one reader of
//! `config.json`, the one decoder of stored tensor values (F32, F64, and F16/BF16 through
//! the `half` crate), the one deterministic safetensors writer, and the check that a
//! folder holds a model. The tensor layout (names, shapes) is [`crate::params::layout`].
//! The trainer, the decoder, the `half-convert`, `train`, `evaluate` and `generate` stages
//! and `itera score` all go through here.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use safetensors::Dtype;

use crate::config::ModelConfig;
use crate::real::Real;

/// The weights of a model (or checkpoint) folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The model's sizes.
pub const CONFIG_FILE: &str = "config.json";
/// The tokenizer that produced the model's token ids (Hugging Face `tokenizers` JSON).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Hugging Face's tokenizer settings (special tokens, `model_max_length`).
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Hugging Face's map of special tokens.
pub const SPECIAL_TOKENS_MAP_FILE: &str = "special_tokens_map.json";
/// The files a converted or quantized model carries over from its input unchanged.
pub const COMPANION_FILES: [&str; 4] = [
    CONFIG_FILE,
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
    SPECIAL_TOKENS_MAP_FILE,
];

/// Copies the [`COMPANION_FILES`] that `input` has into `out`.
pub fn copy_companions(input: &Path, out: &Path) -> Result<(), ArtifactError> {
    for name in COMPANION_FILES {
        let from = input.join(name);
        if from.is_file() {
            let to = out.join(name);
            std::fs::copy(&from, &to).map_err(|source| ArtifactError::Copy { from, to, source })?;
        }
    }
    Ok(())
}

/// `__metadata__["format"]` of every weights file Itera writes.
pub const FORMAT_TAG: &str = "itera-lite";
/// `__metadata__["version"]`.
pub const FORMAT_VERSION: &str = "1";

/// The header metadata of a freshly written weights file.
pub fn metadata() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("format".to_owned(), FORMAT_TAG.to_owned()),
        ("version".to_owned(), FORMAT_VERSION.to_owned()),
    ])
}

/// Why a model folder or its `config.json` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A companion file could not be copied into the new model folder.
    #[error("cannot copy {from} to {to}: {source}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `config.json` is not a `ModelConfig`.
    #[error("{path} is not a valid model config: {message}")]
    ConfigSyntax { path: PathBuf, message: String },
    /// The config parses but its values are inconsistent.
    #[error("{path}: invalid model config: {}", .issues.join("; "))]
    ConfigInvalid { path: PathBuf, issues: Vec<String> },
    /// A folder given as a model lacks one of its files.
    #[error(
        "`{dir}` is not an Itera-Lite model folder: it has no `{missing}`; give the output \
         folder of a `train` or `half-convert` stage"
    )]
    NotAModel { dir: PathBuf, missing: &'static str },
}

/// Reads and validates a `config.json`.
pub fn read_config(path: &Path) -> Result<ModelConfig, ArtifactError> {
    let text = std::fs::read_to_string(path).map_err(|source| ArtifactError::Read {
        path: path.to_owned(),
        source,
    })?;
    let config: ModelConfig =
        serde_json::from_str(&text).map_err(|e| ArtifactError::ConfigSyntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    check_config(&config, path)?;
    Ok(config)
}

/// Whether `config`'s values are consistent (`path` labels the error).
pub fn check_config(config: &ModelConfig, path: &Path) -> Result<(), ArtifactError> {
    let issues = config.issues();
    if issues.is_empty() {
        Ok(())
    } else {
        Err(ArtifactError::ConfigInvalid {
            path: path.to_owned(),
            issues: issues.iter().map(ToString::to_string).collect(),
        })
    }
}

/// Checks that `dir` holds a model (weights and config) and returns its config.
pub fn check_dir(dir: &Path) -> Result<ModelConfig, ArtifactError> {
    for missing in [WEIGHTS_FILE, CONFIG_FILE] {
        if !dir.join(missing).is_file() {
            return Err(ArtifactError::NotAModel {
                dir: dir.to_owned(),
                missing,
            });
        }
    }
    read_config(&dir.join(CONFIG_FILE))
}

/// The values of a stored tensor as `E`: F32 and F64 exactly as stored (then rounded to
/// `E`), F16 and BF16 widened exactly. `None` for any other dtype.
pub fn tensor_values<E: Real>(dtype: Dtype, bytes: &[u8]) -> Option<Vec<E>> {
    Some(match dtype {
        Dtype::F32 => <f32 as Real>::from_le_bytes(bytes)
            .into_iter()
            .map(|x| E::of(f64::from(x)))
            .collect(),
        Dtype::F64 => <f64 as Real>::from_le_bytes(bytes)
            .into_iter()
            .map(E::of)
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| E::of(f64::from(half::f16::from_le_bytes([b[0], b[1]]).to_f32())))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| E::of(f64::from(half::bf16::from_le_bytes([b[0], b[1]]).to_f32())))
            .collect(),
        _ => return None,
    })
}

/// One tensor to write.
#[derive(Debug, Clone)]
pub struct OutTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Little-endian element bytes.
    pub data: Vec<u8>,
}

/// Serializes tensors as safetensors with a deterministic header: `__metadata__` first with
/// sorted keys, then the tensors in the given order, padded with spaces to 8 bytes, so the
/// same tensors always give the same bytes. (The `safetensors` crate keeps `__metadata__`
/// in a `HashMap`, whose order varies between runs.)
pub fn write_safetensors(meta: &BTreeMap<String, String>, tensors: &[OutTensor]) -> Vec<u8> {
    let mut header = String::from("{");
    header.push_str("\"__metadata__\":");
    header.push_str(&serde_json::to_string(meta).expect("a string map serializes"));
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + t.data.len();
        header.push(',');
        header.push_str(&serde_json::to_string(&t.name).expect("a string serializes"));
        header.push_str(&format!(
            ":{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
            dtype_name(t.dtype),
            serde_json::to_string(&t.shape).expect("a usize list serializes"),
        ));
        offset = end;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .expect("writing to a Vec cannot fail");
    out.extend_from_slice(header.as_bytes());
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    out
}

/// Orders tensors as the `safetensors` crate's own writer does (larger dtypes first, then
/// by name), so files written before and after this writer existed are byte-identical.
pub fn sort_like_safetensors(tensors: &mut [OutTensor]) {
    tensors.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
}

/// The dtype's name in a safetensors header.
pub fn dtype_name(dtype: Dtype) -> String {
    // The header spells dtypes as their variant names (F32, F16, BF16, I8, U8, ...).
    format!("{dtype:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_matches_the_safetensors_crate_apart_from_the_metadata_order() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.25).collect();
        let b: Vec<u16> = (0..8)
            .map(|i| half::f16::from_f32(i as f32).to_bits())
            .collect();
        let a_bytes: Vec<u8> = a.iter().flat_map(|x| x.to_le_bytes()).collect();
        let b_bytes: Vec<u8> = b.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut ours = vec![
            OutTensor {
                name: "z.half".into(),
                dtype: Dtype::F16,
                shape: vec![2, 4],
                data: b_bytes.clone(),
            },
            OutTensor {
                name: "a.full".into(),
                dtype: Dtype::F32,
                shape: vec![37],
                data: a_bytes.clone(),
            },
            OutTensor {
                name: "b.full".into(),
                dtype: Dtype::F32,
                shape: vec![1, 37],
                data: a_bytes.clone(),
            },
        ];
        sort_like_safetensors(&mut ours);
        // One metadata key: the crate's HashMap has a single order then.
        let meta = BTreeMap::from([("format".to_owned(), FORMAT_TAG.to_owned())]);
        let mine = write_safetensors(&meta, &ours);
        let views = ours.iter().map(|t| {
            (
                t.name.clone(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        });
        let theirs = safetensors::serialize(views, Some(meta.into_iter().collect())).unwrap();
        assert_eq!(mine, theirs);
        let back = safetensors::SafeTensors::deserialize(&mine).unwrap();
        let t = back.tensor("z.half").unwrap();
        assert_eq!(
            tensor_values::<f32>(t.dtype(), t.data()).unwrap(),
            (0..8).map(|i| i as f32).collect::<Vec<_>>()
        );
        assert!(tensor_values::<f32>(Dtype::I8, &[1]).is_none());
    }

    #[test]
    fn metadata_is_written_sorted() {
        let meta: BTreeMap<String, String> = [("z", "1"), ("a", "2"), ("m", "3")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let bytes = write_safetensors(&meta, &[]);
        let text = String::from_utf8_lossy(&bytes[8..]);
        assert!(
            text.starts_with(r#"{"__metadata__":{"a":"2","m":"3","z":"1"}}"#),
            "{text}"
        );
    }
}
