//! itera-stages: the built-in stage kinds, one module each, and [`registry`] listing them.

use itera_engine::stage::Registry;

/// Every built-in stage kind.
pub fn registry() -> Registry {
    Registry::new()
}
