//! `model.safetensors` + `config.json`: writing a model (names and shapes of
//! `docs/MODEL.md`, `__metadata__ = {"format": "itera-lite", "version": "1"}`) and loading
//! one back (F32 or F64 as stored; F16 and BF16 upcast to f32).

use crate::config::ModelConfig;
use crate::params::{layout, Params};
use crate::real::Real;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// File name of the weights in a model or checkpoint folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the model config in a model or checkpoint folder.
pub const CONFIG_FILE: &str = "config.json";

/// Why weights could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid safetensors.
    #[error("{path}: not a valid safetensors file: {source}")]
    Format {
        path: PathBuf,
        source: safetensors::SafeTensorError,
    },
    /// `config.json` is not a valid model config.
    #[error("{path}: invalid model config: {source}")]
    Config {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The config has invalid values.
    #[error("{path}: invalid model config: {issues}")]
    ConfigValues { path: PathBuf, issues: String },
    /// A tensor the config requires is missing.
    #[error("{path}: tensor `{name}` is missing (is config.json the one these weights were trained with?)")]
    Missing { path: PathBuf, name: String },
    /// A tensor has a shape other than the config implies.
    #[error("{path}: tensor `{name}` has shape {found:?}, the config implies {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor has a dtype this loader does not read.
    #[error("{path}: tensor `{name}` has dtype {dtype:?}; supported: F32, F64, F16, BF16")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: Dtype,
    },
    /// A tensor the config does not know about.
    #[error("{path}: unexpected tensor `{name}` (not part of this model config)")]
    Unexpected { path: PathBuf, name: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The header metadata of every file written here.
pub fn metadata() -> HashMap<String, String> {
    HashMap::from([
        ("format".to_string(), "itera-lite".to_string()),
        ("version".to_string(), "1".to_string()),
    ])
}

/// Writes named tensors (name, shape, values) to a safetensors file, atomically
/// (temporary file + rename).
pub fn write_tensors<E: Real>(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[E])],
    meta: HashMap<String, String>,
) -> Result<(), WeightsError> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), E::to_le_bytes(v)))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            // Invariant: the byte length is numel * size of E by construction.
            let view = safetensors::tensor::TensorView::new(E::SAFETENSORS_DTYPE, s.clone(), b)
                .expect("consistent tensor view");
            (n.clone(), view)
        })
        .collect();
    let data =
        safetensors::serialize(views, Some(meta)).map_err(|source| WeightsError::Format {
            path: path.to_path_buf(),
            source,
        })?;
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Reads every tensor of a safetensors file as `E`, upcasting F16/BF16.
pub fn read_tensors<E: Real>(
    path: &Path,
) -> Result<HashMap<String, (Vec<usize>, Vec<E>)>, WeightsError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|source| WeightsError::Format {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<E> = match view.dtype() {
            Dtype::F32 => <f32 as Real>::from_le_bytes(data)
                .into_iter()
                .map(|x| E::of(x as f64))
                .collect(),
            Dtype::F64 => <f64 as Real>::from_le_bytes(data)
                .into_iter()
                .map(E::of)
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| E::of(f16_to_f32(u16::from_le_bytes([c[0], c[1]])) as f64))
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| {
                    E::of(f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as f64)
                })
                .collect(),
            dtype => {
                return Err(WeightsError::Dtype {
                    path: path.to_path_buf(),
                    name,
                    dtype,
                })
            }
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

/// IEEE half -> single precision (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise.
            let shift = m.leading_zeros() - 21;
            let m = (m << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (m << 13)
        }
        (0x1f, m) => sign | (0xff << 23) | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Writes `params` to `path` as `model.safetensors` content.
pub fn save_params<E: Real>(params: &Params<E>, path: &Path) -> Result<(), WeightsError> {
    let tensors: Vec<(String, Vec<usize>, &[E])> = params
        .specs
        .iter()
        .zip(&params.values)
        .map(|(s, v)| (s.name.clone(), s.shape.clone(), v.data()))
        .collect();
    write_tensors(path, &tensors, metadata())
}

/// Reads parameters for `cfg` from a safetensors file, checking names and shapes.
pub fn load_params<E: Real>(cfg: &ModelConfig, path: &Path) -> Result<Params<E>, WeightsError> {
    let mut tensors = read_tensors::<E>(path)?;
    let mut values = Vec::new();
    for spec in layout(cfg) {
        let (shape, v) = tensors
            .remove(&spec.name)
            .ok_or_else(|| WeightsError::Missing {
                path: path.to_path_buf(),
                name: spec.name.clone(),
            })?;
        if shape != spec.shape {
            return Err(WeightsError::Shape {
                path: path.to_path_buf(),
                name: spec.name,
                expected: spec.shape,
                found: shape,
            });
        }
        values.push(v);
    }
    if let Some(name) = tensors.keys().min() {
        return Err(WeightsError::Unexpected {
            path: path.to_path_buf(),
            name: name.clone(),
        });
    }
    Ok(Params::from_values(cfg, values))
}

/// Writes `config.json` into `dir`.
pub fn save_config(cfg: &ModelConfig, dir: &Path) -> Result<(), WeightsError> {
    let path = dir.join(CONFIG_FILE);
    // Invariant: ModelConfig always serialises.
    let json = serde_json::to_string_pretty(cfg).expect("config serialises");
    std::fs::write(&path, json + "\n").map_err(io(&path))
}

/// Reads and validates `config.json` from `dir`.
pub fn load_config(dir: &Path) -> Result<ModelConfig, WeightsError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let cfg: ModelConfig = serde_json::from_str(&text).map_err(|source| WeightsError::Config {
        path: path.clone(),
        source,
    })?;
    let issues = cfg.issues();
    if !issues.is_empty() {
        let issues = issues
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(WeightsError::ConfigValues { path, issues });
    }
    Ok(cfg)
}

/// Writes a model folder: `model.safetensors` and `config.json` (creating `dir`).
pub fn export<E: Real>(params: &Params<E>, dir: &Path) -> Result<(), WeightsError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    save_params(params, &dir.join(WEIGHTS_FILE))?;
    save_config(&params.config, dir)
}

/// Loads a model folder written by [`export`] (or a checkpoint folder) as f32.
pub fn load_model(dir: &Path) -> Result<(ModelConfig, Params<f32>), WeightsError> {
    let cfg = load_config(dir)?;
    let params = load_params(&cfg, &dir.join(WEIGHTS_FILE))?;
    Ok((cfg, params))
}
