//! itera-model: the Itera-Lite SSM + mixture-of-experts language model on dfdx.
//!
//! - [`config`]: the model's sizes ([`ModelConfig`]);
//! - [`params`]: parameters, names (= `model.safetensors` names), init;
//! - [`ops`]: the custom dfdx ops with hand-written, finite-difference-checked backward;
//! - [`model`]: the parallel forward pass and loss.

pub mod config;
pub mod model;
pub mod ops;
pub mod params;
pub mod real;

pub use config::ModelConfig;
pub use params::Params;
