//! itera-stages: the built-in stage kinds, one module each, and [`registry`] listing them.

use itera_engine::stage::Registry;

pub mod fetch;
pub mod files;
pub mod half;
pub mod records;
pub mod report;
pub mod shell;
pub mod tokenize;

/// Every built-in stage kind.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register::<fetch::HfFetch>();
    registry.register::<files::Files>();
    registry.register::<half::HalfConvert>();
    registry.register::<report::Report>();
    registry.register::<shell::Shell>();
    registry.register::<tokenize::Tokenize>();
    registry
}
