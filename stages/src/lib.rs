//! itera-stages: the built-in stage kinds, one module each, and [`registry`] listing them.

use itera_engine::stage::Registry;
/// The model crate, for callers of [`generate`] (the CLI) that need its types.
pub use itera_model;

pub mod evaluate;
pub mod fetch;
pub mod files;
pub mod generate;
pub mod half;
pub mod quantize;
pub mod records;
pub mod report;
pub mod scoring;
pub mod shell;
pub mod tokenize;
pub mod tokens;
pub mod train;

/// Every built-in stage kind.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register::<fetch::HfFetch>();
    registry.register::<tokenize::Tokenize>();
    registry.register::<train::Train>();
    registry.register::<half::HalfConvert>();
    registry.register::<quantize::Quantize>();
    registry.register::<evaluate::Evaluate>();
    registry.register::<report::Report>();
    registry.register::<files::Files>();
    registry.register::<shell::Shell>();
    registry
}
