//! Pipeline files: TOML -> a validated [`Pipeline`], with `extends`, `--set` overrides,
//! per-kind typed params, parameter sweeps (`matrix`, expanded into one stage per
//! combination), and diagnostics that point at file:line:col.
//!
//! Loading never stops at the first problem: every problem in the file, its `extends`
//! chain and the `--set` arguments is collected into one [`Diagnostics`] (a TOML syntax
//! error is the exception: the file's structure is unknown past it, so only syntax errors
//! are reported for a file that has them). See `docs/PIPELINE.md` for the format.

mod diagnostic;
mod document;
mod links;
mod matrix;
mod model;
mod overrides;
mod resources;
mod tree;
mod typed;
mod validate;

use std::path::{Path, PathBuf};

pub use diagnostic::{suggest, Diagnostic, Diagnostics, Location, Snippet};
pub use matrix::{base_name, MAX_VARIANTS, VARIANT_SEPARATOR};
pub use model::{InputRef, Pipeline, Resources, StageName, StageSpec};

use crate::stage::Registry;
use tree::{Node, Sources};
pub(crate) use validate::PipelineHeader;

/// Loads the pipeline file at `path` (as given by the user; messages print it so), applies
/// `extends`, then the `--set` `overrides` (each `KEY=VALUE`, without `--set`), and checks
/// everything against the kinds in `registry`.
pub fn load(
    path: &Path,
    overrides: &[String],
    registry: &Registry,
) -> Result<Pipeline, Diagnostics> {
    let mut sources = Sources::default();
    let mut diags = Vec::new();
    let file = path.display().to_string();
    let Some(mut root) = document::load_file(path, &mut sources, &mut diags) else {
        return Err(collect(file, diags));
    };
    overrides::apply(&mut root, overrides, &mut sources, &mut diags);
    matrix::narrow(&mut root);
    let base_dir = folder_of(path);
    finish(root, 0, &sources, registry, &file, diags, |p| Pipeline {
        source: path.to_owned(),
        base_dir,
        overrides: overrides.to_vec(),
        ..p
    })
}

/// Loads a resolved document (a recorded [`Pipeline::resolved_toml`]) again, for
/// `itera rerun`: no `extends`, no overrides. `source` and `base_dir` are the recorded
/// ones; messages name the document `SOURCE (resolved)`. The returned pipeline has no
/// `overrides` (they are already part of the document).
pub fn load_resolved(
    resolved_toml: &str,
    source: &Path,
    base_dir: &Path,
    registry: &Registry,
) -> Result<Pipeline, Diagnostics> {
    let mut sources = Sources::default();
    let mut diags = Vec::new();
    let name = format!("{} (resolved)", source.display());
    let Some((root, id)) = document::parse_text(
        name.clone(),
        resolved_toml.to_owned(),
        &mut sources,
        &mut diags,
    ) else {
        return Err(collect(name, diags));
    };
    finish(root, id, &sources, registry, &name, diags, |p| Pipeline {
        source: source.to_owned(),
        base_dir: base_dir.to_owned(),
        ..p
    })
}

/// Validates the merged document and builds the pipeline, or returns every problem.
fn finish(
    root: Node,
    root_source: usize,
    sources: &Sources,
    registry: &Registry,
    file: &str,
    mut diags: Vec<diagnostic::Diagnostic>,
    complete: impl FnOnce(Pipeline) -> Pipeline,
) -> Result<Pipeline, Diagnostics> {
    let validated = validate::validate(&root, root_source, sources, registry, &mut diags);
    let resolved_toml = toml::to_string(&tree::table_to_toml(
        root.as_table().expect("the document root is a table"),
    ));
    match (validated, resolved_toml) {
        (Some(v), Ok(resolved_toml)) if diags.is_empty() => Ok(complete(Pipeline {
            name: v.header.name,
            description: v.header.description,
            seed: v.header.seed,
            slurm: v.header.slurm,
            stages: v.stages,
            source: PathBuf::new(),
            base_dir: PathBuf::new(),
            overrides: Vec::new(),
            resolved_toml,
        })),
        (_, Err(e)) => {
            diags.push(Diagnostic::new(
                format!("the merged document cannot be written as TOML: {e}"),
                None,
            ));
            Err(collect(file.to_owned(), diags))
        }
        _ => Err(collect(file.to_owned(), diags)),
    }
}

fn collect(file: String, diags: Vec<Diagnostic>) -> Diagnostics {
    let mut all = Diagnostics::new(file);
    all.extend(diags);
    all.sort();
    all
}

/// The folder of a pipeline file, absolute (relative paths in params resolve against it).
fn folder_of(path: &Path) -> PathBuf {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::path::absolute(parent).unwrap_or_else(|_| parent.to_owned())
}
