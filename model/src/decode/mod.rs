//! Batch-1 text generation over plain slices: weights loaded from `model.safetensors`
//! ([`weights`]), a recurrent decoder with O(1) state per layer and f32 or f16 weights
//! ([`decoder`], [`kernels`]), sampling ([`sampling`]) and the naive f64 full-sequence
//! forward that everything is checked against ([`reference`]).
//!
//! ```no_run
//! use itera_model::decode::{generate, Decoder, Precision, SamplingConfig, Weights};
//! let weights = Weights::load_dir(std::path::Path::new("model-dir"))?;
//! let decoder = Decoder::new(&weights, Precision::F16);
//! let config = SamplingConfig { temperature: 0.8, top_k: Some(40), top_p: None, seed: 1 };
//! let new_tokens = generate(&decoder, &[1, 2, 3], 50, &config, |_| true, None)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod decoder;
mod fastmath;
pub mod kernels;
mod qkernels;
pub mod reference;
pub mod sampling;
pub mod weights;

pub use decoder::{DecodeError, Decoder, Precision, State};
pub use kernels::Isa;
pub use sampling::{argmax, generate, Sampler, SamplingConfig};
pub use weights::{expected_tensors, load_config, StoreDtype, Tensor, Weights, WeightsError};
