//! itera-model: the Itera-Lite SSM + mixture-of-experts language model on dfdx.
//!
//! - [`config`]: the model's sizes ([`ModelConfig`]); [`train_config`]: optimisation
//!   settings ([`TrainConfig`]);
//! - [`params`]: parameters, names (= `model.safetensors` names), init;
//! - [`ops`]: the custom dfdx ops with hand-written, finite-difference-checked backward;
//! - [`model`]: the parallel forward pass and loss;
//! - [`optim`]: AdamW and gradient clipping; [`trainer`]: steps, checkpoints, resume;
//! - [`sampler`]: seeded, resumable batches; [`score`]: NLL of a token stream;
//! - [`artifact`]: the model folder's files, `config.json` reader, tensor decoding and the
//!   deterministic safetensors writer; [`weights`]: training-side model I/O;
//! - [`quant`]: int8/int4 weight quantization and its file format; [`quantize`]: which
//!   tensor gets which format (schemes, rules) and the quantized weights file;
//! - [`decode`]: the recurrent decoder over plain slices (f32/f16/int8/int4 weights), sampling;
//! - [`isa`]: instruction-set detection and dispatch of the training/scoring kernels;
//!   [`parallel`]: micro-batches and batches shared out to groups of threads.

pub mod artifact;
pub mod config;
pub mod decode;
pub mod isa;
pub mod model;
pub mod ops;
pub mod optim;
pub mod parallel;
pub mod params;
pub mod quant;
pub mod quantize;
pub mod real;
pub mod sampler;
pub mod score;
pub mod train_config;
pub mod trainer;
pub mod weights;

pub use config::ModelConfig;
pub use params::Params;
pub use sampler::{BatchSampler, SamplerState};
pub use score::score;
pub use train_config::{OptimizerConfig, ScheduleConfig, TrainConfig};
pub use trainer::{StepStats, TrainError, Trainer};
pub use weights::{export, load_model};
