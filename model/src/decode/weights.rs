//! Model weights as plain f32 arrays keyed by their `model.safetensors` names
//! (docs/MODEL.md): loading from a safetensors file (F32, F16 or BF16 tensors) and
//! `config.json`, building from an in-memory map, validating every name and shape against
//! the config, and seeded random weights for tests and benchmarks.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors};

use crate::artifact::{self, ArtifactError, OutTensor};
use crate::config::ModelConfig;
use crate::params;
use crate::quant::{self, QuantMetadata, Quantized};

/// Why weights or a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The model folder, a file of it, or its `config.json` cannot be used.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config's values are inconsistent.
    #[error("invalid model config{}: {}", origin(.path), .issues.join("; "))]
    ConfigInvalid {
        path: Option<PathBuf>,
        issues: Vec<String>,
    },
    /// The safetensors header or layout is broken.
    #[error("{path} is not a readable safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    /// A tensor the config requires is absent.
    #[error(
        "tensor `{name}` (shape {expected:?}) is missing{}; check that config.json matches the \
         weights (num_layers, moe_layers, tie_embeddings)",
        origin(.path)
    )]
    MissingTensor {
        name: String,
        expected: Vec<usize>,
        path: Option<PathBuf>,
    },
    /// A tensor has a different shape than the config implies.
    #[error(
        "tensor `{name}` has shape {found:?} but the config implies {expected:?}{}; check \
         that config.json matches the weights",
        origin(.path)
    )]
    WrongShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
        path: Option<PathBuf>,
    },
    /// A tensor's element count does not match its shape.
    #[error("tensor `{name}` has {found} values but its shape {shape:?} needs {expected}")]
    WrongLength {
        name: String,
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    /// A tensor is stored in a dtype the decoder cannot read.
    #[error(
        "tensor `{name}` is stored as {dtype}{}; only F32, F16 and BF16 are supported",
        origin(.path)
    )]
    UnsupportedDtype {
        name: String,
        dtype: String,
        path: Option<PathBuf>,
    },
    /// A tensor the config does not use is present (usually a config/weights mismatch).
    #[error(
        "tensor `{name}` is not part of a model with this config{}; check num_layers, \
         moe_layers and tie_embeddings in config.json",
        origin(.path)
    )]
    UnexpectedTensor { name: String, path: Option<PathBuf> },
    /// A quantized matrix is stored inconsistently.
    #[error("{message}{}", origin(.path))]
    Quantization {
        message: String,
        path: Option<PathBuf>,
    },
    /// A weight holds NaN or infinity.
    #[error("tensor `{name}` holds a non-finite value at flat index {index}")]
    NonFinite { name: String, index: usize },
}

fn origin(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" in {}", p.display()),
        None => String::new(),
    }
}

/// One weight: its shape and row-major f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// All weights of one model, checked against its config. Matrices of a quantized file stay
/// quantized ([`Weights::quantized`]); the decoder computes with them as they are.
#[derive(Debug, Clone)]
pub struct Weights {
    config: ModelConfig,
    tensors: BTreeMap<String, Tensor>,
    quantized: BTreeMap<String, Quantized>,
    /// Whether every unquantized matrix was stored as F16 (a mixed int8/f16 file).
    f16_matrices: bool,
}

/// Every tensor name a model with `config` has, with its shape, in the order of
/// [`params::layout`] (the one table of names and shapes).
pub fn expected_tensors(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    params::layout(config)
        .into_iter()
        .map(|spec| (spec.name, spec.shape))
        .collect()
}

/// Reads and validates `config.json`.
pub fn load_config(path: &Path) -> Result<ModelConfig, WeightsError> {
    Ok(artifact::read_config(path)?)
}

fn check_config(config: &ModelConfig, path: Option<&Path>) -> Result<(), WeightsError> {
    let issues = config.issues();
    if issues.is_empty() {
        Ok(())
    } else {
        Err(WeightsError::ConfigInvalid {
            path: path.map(Path::to_owned),
            issues: issues.iter().map(ToString::to_string).collect(),
        })
    }
}

impl Weights {
    /// Builds weights from `name -> (shape, values)`; every tensor the config needs must be
    /// present with its exact shape, and nothing else.
    pub fn from_tensors(
        config: ModelConfig,
        tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    ) -> Result<Self, WeightsError> {
        let tensors = tensors
            .into_iter()
            .map(|(name, (shape, data))| (name, Tensor { shape, data }))
            .collect();
        Self::checked(config, tensors, BTreeMap::new(), None)
    }

    /// Loads `config.json` and `model.safetensors` from a model directory.
    pub fn load_dir(dir: &Path) -> Result<Self, WeightsError> {
        let config = load_config(&dir.join(artifact::CONFIG_FILE))?;
        Self::load_safetensors(config, &dir.join(artifact::WEIGHTS_FILE))
    }

    /// Loads the weights of a model with `config` from a safetensors file whose tensors are
    /// F32, F16 or BF16 (converted to f32).
    pub fn load_safetensors(config: ModelConfig, path: &Path) -> Result<Self, WeightsError> {
        let bytes = std::fs::read(path).map_err(|source| WeightsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_safetensors_bytes(config, &bytes, Some(path))
    }

    /// Like [`Weights::load_safetensors`] over the bytes of a file; `path` only labels errors.
    pub fn from_safetensors_bytes(
        config: ModelConfig,
        bytes: &[u8],
        path: Option<&Path>,
    ) -> Result<Self, WeightsError> {
        let label = path.map(Path::to_owned);
        let st = SafeTensors::deserialize(bytes).map_err(|e| WeightsError::Safetensors {
            path: label.clone().unwrap_or_else(|| PathBuf::from("<memory>")),
            message: e.to_string(),
        })?;
        let quant = quant_metadata(bytes, label.as_deref())?;
        let mut tensors = BTreeMap::new();
        let mut quantized = BTreeMap::new();
        let mut f16_matrices = true;
        for (name, view) in st.iter() {
            if let Some(meta) = &quant {
                if let Some(&format) = meta.tensors.get(name) {
                    let scale_name = format!("{name}{}", quant::SCALE_SUFFIX);
                    let scales =
                        st.tensor(&scale_name)
                            .map_err(|_| WeightsError::MissingTensor {
                                name: scale_name.clone(),
                                expected: Vec::new(),
                                path: label.clone(),
                            })?;
                    let q = Quantized::from_stored(
                        name,
                        format,
                        meta.group_size,
                        (view.dtype(), view.shape(), view.data()),
                        (scales.dtype(), scales.shape(), scales.data()),
                    )
                    .map_err(|e| WeightsError::Quantization {
                        message: e.to_string(),
                        path: label.clone(),
                    })?;
                    quantized.insert(name.to_owned(), q);
                    continue;
                }
                if name
                    .strip_suffix(quant::SCALE_SUFFIX)
                    .is_some_and(|base| meta.tensors.contains_key(base))
                {
                    continue;
                }
            }
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 | Dtype::F16 | Dtype::BF16 => {
                    artifact::tensor_values(view.dtype(), view.data())
                        .expect("F32, F16 and BF16 are decodable")
                }
                other => {
                    return Err(WeightsError::UnsupportedDtype {
                        name: name.to_owned(),
                        dtype: format!("{other:?}"),
                        path: label,
                    })
                }
            };
            let shape = view.shape().to_vec();
            if shape.len() == 2 && view.dtype() != Dtype::F16 {
                f16_matrices = false;
            }
            tensors.insert(name.to_owned(), Tensor { shape, data });
        }
        let mut w = Self::checked(config, tensors, quantized, label)?;
        w.f16_matrices = f16_matrices;
        Ok(w)
    }

    fn checked(
        config: ModelConfig,
        tensors: BTreeMap<String, Tensor>,
        quantized: BTreeMap<String, Quantized>,
        path: Option<PathBuf>,
    ) -> Result<Self, WeightsError> {
        check_config(&config, path.as_deref())?;
        let expected = expected_tensors(&config);
        for (name, shape) in &expected {
            if let Some(q) = quantized.get(name) {
                if shape.as_slice() != [q.rows, q.cols] {
                    return Err(WeightsError::WrongShape {
                        name: name.clone(),
                        expected: shape.clone(),
                        found: vec![q.rows, q.cols],
                        path,
                    });
                }
                continue;
            }
            let Some(t) = tensors.get(name) else {
                return Err(WeightsError::MissingTensor {
                    name: name.clone(),
                    expected: shape.clone(),
                    path,
                });
            };
            if &t.shape != shape {
                return Err(WeightsError::WrongShape {
                    name: name.clone(),
                    expected: shape.clone(),
                    found: t.shape.clone(),
                    path,
                });
            }
            let n: usize = shape.iter().product();
            if t.data.len() != n {
                return Err(WeightsError::WrongLength {
                    name: name.clone(),
                    shape: shape.clone(),
                    expected: n,
                    found: t.data.len(),
                });
            }
            if let Some(index) = t.data.iter().position(|x| !x.is_finite()) {
                return Err(WeightsError::NonFinite {
                    name: name.clone(),
                    index,
                });
            }
        }
        if tensors.len() + quantized.len() != expected.len() {
            let known: std::collections::HashSet<&str> =
                expected.iter().map(|(n, _)| n.as_str()).collect();
            let extra = tensors
                .keys()
                .chain(quantized.keys())
                .find(|k| !known.contains(k.as_str()))
                .cloned()
                .expect("more tensors than expected names, all expected present: one is extra");
            return Err(WeightsError::UnexpectedTensor { name: extra, path });
        }
        Ok(Self {
            config,
            tensors,
            quantized,
            f16_matrices: false,
        })
    }

    /// Seeded random weights at a scale that keeps activations of order one: linear
    /// weights uniform in ±1/sqrt(fan_in), non-trivial norms and biases, S4D-like A_log.
    pub fn random(config: &ModelConfig, seed: u64) -> Result<Self, WeightsError> {
        check_config(config, None)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for (name, shape) in expected_tensors(config) {
            let n: usize = shape.iter().product();
            let mut uniform = |scale: f32, offset: f32| -> Vec<f32> {
                (0..n)
                    .map(|_| offset + scale * rng.gen_range(-1.0f32..1.0))
                    .collect()
            };
            let data = if name.ends_with("norm.weight") {
                uniform(0.2, 1.0)
            } else if name.ends_with(".bias") {
                uniform(0.1, 0.0)
            } else if name.ends_with("A_log") {
                let noise = uniform(0.1, 0.0);
                (0..n).map(|i| ((i + 1) as f32).ln() + noise[i]).collect()
            } else if name.ends_with("ssm.D") {
                uniform(0.5, 1.0)
            } else if name == "embed.weight" || name == "lm_head.weight" {
                uniform(1.0, 0.0)
            } else if name == "pos_embed.weight" {
                uniform(0.3, 0.0)
            } else if name.ends_with("conv.weight") {
                uniform(1.0 / (shape[1] as f32).sqrt(), 0.0)
            } else {
                // [out, in] matrices, B [N, Di] and C [Di, N].
                uniform(1.0 / (shape[1] as f32).sqrt(), 0.0)
            };
            tensors.insert(name, (shape, data));
        }
        Self::from_tensors(config.clone(), tensors)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The tensor `name`, if the model stores it unquantized (see [`expected_tensors`]).
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// The matrix `name`, if the model stores it quantized.
    pub fn quantized(&self, name: &str) -> Option<&Quantized> {
        self.quantized.get(name)
    }

    /// Every quantized matrix by name.
    pub fn quantized_tensors(&self) -> &BTreeMap<String, Quantized> {
        &self.quantized
    }

    /// The values of tensor `name` as f32, dequantized when it is stored quantized (a copy
    /// then); `None` when the model has no such tensor.
    pub fn values(&self, name: &str) -> Option<std::borrow::Cow<'_, [f32]>> {
        if let Some(t) = self.tensors.get(name) {
            return Some(std::borrow::Cow::Borrowed(&t.data));
        }
        self.quantized
            .get(name)
            .map(|q| std::borrow::Cow::Owned(q.dequantize()))
    }

    /// Whether every unquantized matrix was read from F16 values (then
    /// [`Precision::F16`](super::Precision::F16) decodes them exactly, from half the bytes).
    pub fn f16_matrices(&self) -> bool {
        self.f16_matrices
    }

    /// Number of scalar weights (quantized ones counted once each).
    pub fn parameters(&self) -> u64 {
        let dense: usize = self.tensors.values().map(|t| t.data.len()).sum();
        let quant: usize = self.quantized.values().map(|q| q.rows * q.cols).sum();
        (dense + quant) as u64
    }

    /// The values of a tensor the config requires; construction checked they all exist.
    pub(crate) fn get(&self, name: &str) -> &[f32] {
        &self.required(name).data
    }

    pub(crate) fn required(&self, name: &str) -> &Tensor {
        self.tensors.get(name).unwrap_or_else(|| {
            panic!(
                "`{name}` is not a tensor of this config (weights are validated on construction)"
            )
        })
    }

    /// The output head `[V, D]`: the embedding when tied.
    pub fn head(&self) -> &[f32] {
        if self.config.tie_embeddings {
            self.get("embed.weight")
        } else {
            self.get("lm_head.weight")
        }
    }

    /// All tensors by name.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// Writes the weights as a safetensors file of F32, F16 or BF16 tensors with the
    /// `itera-lite` metadata (used by tests of the loader and by benchmarks).
    pub fn to_safetensors_bytes(&self, dtype: StoreDtype) -> Vec<u8> {
        let mut tensors: Vec<OutTensor> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let (dtype, data): (Dtype, Vec<u8>) = match dtype {
                    StoreDtype::F32 => (
                        Dtype::F32,
                        t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    ),
                    StoreDtype::F16 => (
                        Dtype::F16,
                        t.data
                            .iter()
                            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                            .collect(),
                    ),
                    StoreDtype::BF16 => (
                        Dtype::BF16,
                        t.data
                            .iter()
                            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                            .collect(),
                    ),
                };
                OutTensor {
                    name: name.clone(),
                    dtype,
                    shape: t.shape.clone(),
                    data,
                }
            })
            .collect();
        artifact::sort_like_safetensors(&mut tensors);
        artifact::write_safetensors(&artifact::metadata(), &tensors)
    }
}

/// Element type of a written safetensors file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDtype {
    F32,
    F16,
    BF16,
}

/// `__metadata__["quantization"]` of a safetensors file, if it has one.
fn quant_metadata(
    bytes: &[u8],
    path: Option<&Path>,
) -> Result<Option<QuantMetadata>, WeightsError> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| WeightsError::Safetensors {
        path: path
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("<memory>")),
        message: e.to_string(),
    })?;
    let Some(text) = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(quant::METADATA_KEY))
    else {
        return Ok(None);
    };
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| WeightsError::Quantization {
            message: format!("__metadata__.{} is not valid: {e}", quant::METADATA_KEY),
            path: path.map(Path::to_owned),
        })
}
