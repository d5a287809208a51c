//! The `half-convert` stage kind: turns an Itera-Lite model artifact with F32 weights into
//! one with F16 (default) or BF16 weights.
//!
//! Every F32 tensor is rounded to nearest-even, so the tensor bytes are exactly half; the
//! header's `__metadata__` is kept (with `dtype` and `converted_from` added), `config.json`
//! and `tokenizer.json` are copied alongside, and `conversion.json` records the sizes
//! before and after. The output is written by the model artifact's deterministic writer
//! (sorted metadata, tensors in the input's order), so the same input always gives the
//! same bytes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use itera_engine::stage::{InputSlot, InputSlots, OutputDecl, StageContext, StageKind};
use itera_model::artifact::{
    self, OutTensor, CONFIG_FILE, FORMAT_TAG, TOKENIZER_FILE, WEIGHTS_FILE,
};
use safetensors::tensor::{Dtype, Metadata, SafeTensors};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What `half-convert` writes about the conversion.
pub const CONVERSION_FILE: &str = "conversion.json";

/// The 16-bit format to convert to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HalfDtype {
    /// IEEE 754 binary16: 10 mantissa bits, range ±65504.
    #[default]
    F16,
    /// bfloat16: 7 mantissa bits, the f32 range.
    Bf16,
}

impl HalfDtype {
    fn safetensors_dtype(self) -> Dtype {
        match self {
            HalfDtype::F16 => Dtype::F16,
            HalfDtype::Bf16 => Dtype::BF16,
        }
    }

    fn safetensors_name(self) -> String {
        artifact::dtype_name(self.safetensors_dtype())
    }
}

/// Params of `kind = "half-convert"`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HalfConvertParams {
    /// Target format of every F32 tensor: `"f16"` (default) or `"bf16"`.
    #[serde(default)]
    pub dtype: HalfDtype,
}

/// `conversion.json`: what the conversion did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversionRecord {
    /// `"f16"` or `"bf16"`.
    pub dtype: HalfDtype,
    /// Number of tensors converted.
    pub tensors: usize,
    /// Number of scalar weights converted.
    pub parameters: u64,
    /// Size of `model.safetensors` before and after, header included.
    pub file_bytes_before: u64,
    pub file_bytes_after: u64,
    /// Tensor data only (no header): after is exactly half of before.
    pub tensor_bytes_before: u64,
    pub tensor_bytes_after: u64,
    /// `file_bytes_after / file_bytes_before`.
    pub file_ratio: f64,
    /// Largest absolute rounding error over all weights.
    pub max_abs_error: f64,
    /// Largest error relative to the weight's magnitude, over weights with |w| >= 1e-3.
    pub max_rel_error: f64,
    /// Non-zero weights that became zero (below the format's smallest subnormal).
    pub flushed_to_zero: u64,
}

/// Why an input cannot be converted.
#[derive(Debug, thiserror::Error)]
pub enum HalfConvertError {
    #[error("`{path}` is not a safetensors file: {reason}")]
    NotSafetensors { path: PathBuf, reason: String },
    #[error("`{path}` is not an Itera-Lite weights file: its header's __metadata__ has format {found:?}, expected \"itera-lite\"")]
    WrongFormat {
        path: PathBuf,
        found: Option<String>,
    },
    #[error("tensor `{name}` in `{path}` is {dtype:?}, not F32: the model is already converted (half-convert reads the F32 model a `train` stage writes)")]
    NotF32 {
        path: PathBuf,
        name: String,
        dtype: Dtype,
    },
    #[error("tensor `{name}` has a weight of magnitude {value:e}, beyond the largest F16 value (65504): use dtype = \"bf16\", which keeps the f32 range")]
    OutOfRange { name: String, value: f32 },
    #[error(
        "tensor `{name}` holds a non-finite weight ({value}): the model is broken, retrain it"
    )]
    NonFinite { name: String, value: f32 },
}

/// The `half-convert` kind.
pub struct HalfConvert;

impl StageKind for HalfConvert {
    type Params = HalfConvertParams;
    const KIND: &'static str = "half-convert";
    /// 2: copies tokenizer_config.json and special_tokens_map.json.
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str =
        "Converts a model's F32 weights to F16 or BF16 (round to nearest even), halving the weights file";

    fn inputs(_params: &Self::Params) -> InputSlots {
        InputSlots::Named(vec![InputSlot::required(
            "model",
            "a model artifact (a `train` stage): model.safetensors, config.json, tokenizer.json",
        )])
    }

    fn outputs(_params: &Self::Params) -> Vec<OutputDecl> {
        vec![
            OutputDecl::new("weights", WEIGHTS_FILE),
            OutputDecl::new("config", CONFIG_FILE),
            OutputDecl::new("tokenizer", TOKENIZER_FILE),
            OutputDecl::new("conversion", CONVERSION_FILE),
        ]
    }

    fn run(params: &Self::Params, ctx: &StageContext) -> anyhow::Result<()> {
        let input = ctx.input("model")?;
        ctx.progress.start("convert", None, "tensors");
        let record = convert_model_dir(&input.path, &ctx.out_dir, params.dtype)?;
        let line = format!(
            "{} tensors ({} weights) to {}: {} -> {} bytes ({:.3}x), max abs error {:.2e}",
            record.tensors,
            record.parameters,
            params.dtype.safetensors_name(),
            record.file_bytes_before,
            record.file_bytes_after,
            record.file_ratio,
            record.max_abs_error
        );
        ctx.log.line(&line);
        ctx.progress.message(line);
        Ok(())
    }
}

/// Converts the model in `input` into `out` (which must exist) and writes `conversion.json`.
pub fn convert_model_dir(
    input: &Path,
    out: &Path,
    dtype: HalfDtype,
) -> anyhow::Result<ConversionRecord> {
    artifact::check_dir(input)?;
    let weights_path = input.join(WEIGHTS_FILE);
    let bytes = fs::read(&weights_path)
        .with_context(|| format!("cannot read `{}`", weights_path.display()))?;
    let (out_bytes, mut record) = convert_safetensors(&bytes, &weights_path, dtype)?;
    let out_weights = out.join(WEIGHTS_FILE);
    fs::write(&out_weights, &out_bytes)
        .with_context(|| format!("cannot write `{}`", out_weights.display()))?;
    record.file_bytes_before = bytes.len() as u64;
    record.file_bytes_after = out_bytes.len() as u64;
    record.file_ratio = record.file_bytes_after as f64 / record.file_bytes_before as f64;

    artifact::copy_companions(input, out)?;
    let json = serde_json::to_string_pretty(&record)?;
    fs::write(out.join(CONVERSION_FILE), json + "\n").context("cannot write conversion.json")?;
    Ok(record)
}

/// Converts the bytes of an Itera-Lite F32 safetensors file; the returned record has the
/// tensor-level fields filled (file sizes are the caller's).
pub fn convert_safetensors(
    bytes: &[u8],
    path: &Path,
    dtype: HalfDtype,
) -> Result<(Vec<u8>, ConversionRecord), HalfConvertError> {
    let not_st = |e: safetensors::SafeTensorError| HalfConvertError::NotSafetensors {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(not_st)?;
    let tensors = SafeTensors::deserialize(bytes).map_err(not_st)?;
    let mut meta: BTreeMap<String, String> = metadata
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let format = meta.get("format").cloned();
    if format.as_deref() != Some(FORMAT_TAG) {
        return Err(HalfConvertError::WrongFormat {
            path: path.to_owned(),
            found: format,
        });
    }
    meta.insert("dtype".into(), dtype.safetensors_name());
    meta.insert("converted_from".into(), "F32".into());

    let mut record = ConversionRecord {
        dtype,
        tensors: 0,
        parameters: 0,
        file_bytes_before: 0,
        file_bytes_after: 0,
        tensor_bytes_before: 0,
        tensor_bytes_after: 0,
        file_ratio: 0.0,
        max_abs_error: 0.0,
        max_rel_error: 0.0,
        flushed_to_zero: 0,
    };
    let mut converted: Vec<OutTensor> = Vec::new();
    for name in offset_order(&metadata) {
        let view = tensors.tensor(&name).map_err(not_st)?;
        if view.dtype() != Dtype::F32 {
            return Err(HalfConvertError::NotF32 {
                path: path.to_owned(),
                name,
                dtype: view.dtype(),
            });
        }
        let data = view.data();
        let mut out = Vec::with_capacity(data.len() / 2);
        for chunk in data.chunks_exact(4) {
            let w = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if !w.is_finite() {
                return Err(HalfConvertError::NonFinite { name, value: w });
            }
            let (bits, back) = match dtype {
                HalfDtype::F16 => {
                    let h = half::f16::from_f32(w);
                    (h.to_bits(), h.to_f32())
                }
                HalfDtype::Bf16 => {
                    let h = half::bf16::from_f32(w);
                    (h.to_bits(), h.to_f32())
                }
            };
            if !back.is_finite() {
                return Err(HalfConvertError::OutOfRange { name, value: w });
            }
            let err = f64::from((back - w).abs());
            record.max_abs_error = record.max_abs_error.max(err);
            if w.abs() >= 1e-3 {
                record.max_rel_error = record.max_rel_error.max(err / f64::from(w.abs()));
            }
            if w != 0.0 && back == 0.0 {
                record.flushed_to_zero += 1;
            }
            out.extend_from_slice(&bits.to_le_bytes());
        }
        record.tensors += 1;
        record.parameters += (data.len() / 4) as u64;
        record.tensor_bytes_before += data.len() as u64;
        record.tensor_bytes_after += out.len() as u64;
        converted.push(OutTensor {
            name,
            dtype: dtype.safetensors_dtype(),
            shape: view.shape().to_vec(),
            data: out,
        });
    }
    Ok((artifact::write_safetensors(&meta, &converted), record))
}

/// Tensor names in the order of their data in the file.
fn offset_order(metadata: &Metadata) -> Vec<String> {
    let mut names: Vec<(usize, String)> = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| (info.data_offsets.0, name))
        .collect();
    names.sort();
    names.into_iter().map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use itera_model::artifact::write_safetensors;
    use itera_model::config::ModelConfig;

    fn f32_tensor(name: &str, shape: &[usize], values: &[f32]) -> OutTensor {
        OutTensor {
            name: name.into(),
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn itera_meta() -> BTreeMap<String, String> {
        [("format", FORMAT_TAG), ("version", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn sample_tensors() -> Vec<OutTensor> {
        let big: Vec<f32> = (0..4096).map(|i| ((i as f32) * 0.37).sin() * 0.2).collect();
        vec![
            f32_tensor("embed.weight", &[64, 64], &big),
            f32_tensor("final_norm.bias", &[3], &[0.1, -2.5, 1.0e-9]),
        ]
    }

    fn write_model_dir(dir: &Path, meta: &BTreeMap<String, String>, tensors: &[OutTensor]) {
        fs::write(dir.join(WEIGHTS_FILE), write_safetensors(meta, tensors)).unwrap();
        let config = ModelConfig {
            vocab_size: 64,
            hidden_size: 64,
            ..ModelConfig::tiny()
        };
        fs::write(
            dir.join(CONFIG_FILE),
            serde_json::to_string(&config).unwrap(),
        )
        .unwrap();
        fs::write(dir.join(TOKENIZER_FILE), "{\"model\":{}}").unwrap();
    }

    #[test]
    fn f16_conversion_halves_tensor_bytes_and_rounds_to_nearest_even() {
        let dir = tempfile::tempdir().unwrap();
        let (src, out) = (dir.path().join("in"), dir.path().join("out"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&out).unwrap();
        write_model_dir(&src, &itera_meta(), &sample_tensors());
        let record = convert_model_dir(&src, &out, HalfDtype::F16).unwrap();
        assert_eq!(record.tensors, 2);
        assert_eq!(record.parameters, 4099);
        assert_eq!(record.tensor_bytes_after * 2, record.tensor_bytes_before);
        assert!(record.file_ratio < 0.51, "ratio {}", record.file_ratio);
        assert_eq!(
            record.flushed_to_zero, 1,
            "1e-9 is below the f16 subnormal range"
        );
        // f16 has 11 significant bits: relative error at most 2^-11 for normal values.
        assert!(
            record.max_rel_error <= 2f64.powi(-11),
            "{}",
            record.max_rel_error
        );

        // Read it back with the reference safetensors parser.
        let bytes = fs::read(out.join(WEIGHTS_FILE)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("final_norm.bias").unwrap();
        assert_eq!(t.dtype(), Dtype::F16);
        assert_eq!(t.shape(), &[3]);
        let vals: Vec<f32> = t
            .data()
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect();
        assert_eq!(vals, [half::f16::from_f32(0.1).to_f32(), -2.5, 0.0]);
        // 1 + 2^-11 lies exactly between two f16 values: ties go to the even one (1.0).
        let tie = half::f16::from_f32(1.0 + 2f32.powi(-11));
        assert_eq!(tie.to_f32(), 1.0);
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta["format"], FORMAT_TAG);
        assert_eq!(meta["version"], "1");
        assert_eq!(meta["dtype"], "F16");
        assert!(out.join(CONFIG_FILE).is_file() && out.join(TOKENIZER_FILE).is_file());
        let on_disk: ConversionRecord =
            serde_json::from_str(&fs::read_to_string(out.join(CONVERSION_FILE)).unwrap()).unwrap();
        assert_eq!(
            (
                on_disk.parameters,
                on_disk.file_bytes_after,
                on_disk.flushed_to_zero
            ),
            (
                record.parameters,
                record.file_bytes_after,
                record.flushed_to_zero
            )
        );
        assert!((on_disk.max_rel_error - record.max_rel_error).abs() < 1e-12);
    }

    #[test]
    fn conversion_is_byte_for_byte_deterministic() {
        let bytes = write_safetensors(&itera_meta(), &sample_tensors());
        let p = Path::new("m.safetensors");
        let (a, _) = convert_safetensors(&bytes, p, HalfDtype::Bf16).unwrap();
        let (b, _) = convert_safetensors(&bytes, p, HalfDtype::Bf16).unwrap();
        assert_eq!(a, b);
        let st = SafeTensors::deserialize(&a).unwrap();
        assert_eq!(st.tensor("embed.weight").unwrap().dtype(), Dtype::BF16);
    }

    #[test]
    fn rejects_what_is_not_an_f32_itera_model() {
        let dir = tempfile::tempdir().unwrap();
        let err = convert_model_dir(dir.path(), dir.path(), HalfDtype::F16).unwrap_err();
        assert!(
            err.to_string().contains("has no `model.safetensors`"),
            "{err}"
        );

        let p = Path::new("m.safetensors");
        let err = convert_safetensors(b"not a safetensors file", p, HalfDtype::F16).unwrap_err();
        assert!(
            matches!(err, HalfConvertError::NotSafetensors { .. }),
            "{err}"
        );

        let foreign = write_safetensors(&BTreeMap::new(), &sample_tensors());
        let err = convert_safetensors(&foreign, p, HalfDtype::F16).unwrap_err();
        assert!(
            err.to_string().contains("not an Itera-Lite weights file"),
            "{err}"
        );

        let bytes = write_safetensors(&itera_meta(), &sample_tensors());
        let (halved, _) = convert_safetensors(&bytes, p, HalfDtype::F16).unwrap();
        let err = convert_safetensors(&halved, p, HalfDtype::F16).unwrap_err();
        assert!(err.to_string().contains("already converted"), "{err}");

        let huge = [f32_tensor("x", &[1], &[1.0e6])];
        let err = convert_safetensors(&write_safetensors(&itera_meta(), &huge), p, HalfDtype::F16)
            .unwrap_err();
        assert!(err.to_string().contains("bf16"), "{err}");
        assert!(
            convert_safetensors(&write_safetensors(&itera_meta(), &huge), p, HalfDtype::Bf16)
                .is_ok()
        );
    }
}
