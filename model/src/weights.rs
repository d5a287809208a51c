//! Training-side model I/O: writing [`Params`] as a model folder (`model.safetensors` in
//! the layout of [`crate::params::layout`], written by [`crate::artifact`]'s deterministic
//! writer, and `config.json`) and loading one back as `E` (F32 or F64 as stored; F16 and
//! BF16 widened), checking every name and shape.

use crate::artifact::{self, ArtifactError, OutTensor};
use crate::config::ModelConfig;
use crate::params::{layout, Params};
use crate::real::Real;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use crate::artifact::{metadata, CONFIG_FILE, WEIGHTS_FILE};

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
    /// `config.json` cannot be read or is not a valid model config.
    #[error(transparent)]
    Config(#[from] ArtifactError),
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

/// Writes named tensors (name, shape, values) to a safetensors file, atomically
/// (temporary file + rename).
pub fn write_tensors<E: Real>(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[E])],
    meta: BTreeMap<String, String>,
) -> Result<(), WeightsError> {
    let mut out: Vec<OutTensor> = tensors
        .iter()
        .map(|(n, s, v)| OutTensor {
            name: n.clone(),
            dtype: E::SAFETENSORS_DTYPE,
            shape: s.clone(),
            data: E::to_le_bytes(v),
        })
        .collect();
    artifact::sort_like_safetensors(&mut out);
    let data = artifact::write_safetensors(&meta, &out);
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Tensors by name: shape and row-major values.
pub type NamedTensors<E> = HashMap<String, (Vec<usize>, Vec<E>)>;

/// Reads every tensor of a safetensors file as `E`, upcasting F16/BF16.
pub fn read_tensors<E: Real>(path: &Path) -> Result<NamedTensors<E>, WeightsError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|source| WeightsError::Format {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<E> =
            artifact::tensor_values(view.dtype(), data).ok_or_else(|| WeightsError::Dtype {
                path: path.to_path_buf(),
                name: name.clone(),
                dtype: view.dtype(),
            })?;
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
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
    Ok(artifact::read_config(&dir.join(CONFIG_FILE))?)
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
