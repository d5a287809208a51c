//! itera-stages: the built-in stage kinds, one module each, and [`registry`] listing them.

pub mod fetch;
pub mod tokenize;

use itera_engine::stage::Registry;

/// Every built-in stage kind.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register::<fetch::HfFetch>();
    registry.register::<tokenize::Tokenize>();
    registry
}
