//! itera-model: the Itera-Lite SSM + mixture-of-experts language model on dfdx.

pub mod config;
