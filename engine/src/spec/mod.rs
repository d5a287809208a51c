//! Pipeline files: TOML -> a validated [`Pipeline`], with `extends`, `--set` overrides,
//! per-kind typed params, and diagnostics that point at file:line:col.

mod model;

pub use model::{InputRef, Pipeline, Resources, StageName, StageSpec};
