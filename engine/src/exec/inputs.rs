//! From upstream results to a stage's cache key and input paths: [`Resolved`] is what a
//! finished stage offers downstream (its key, digest and artifact folder); [`key_parts`]
//! builds a stage's [`KeyParts`] from them (including the kind's fingerprint of outside
//! state); [`input_artifacts`] gives the running stage the paths of its inputs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::spec::{Pipeline, StageName, StageSpec};
use crate::stage::{FingerprintContext, InputArtifact, Registry, Stage};
use crate::store::key::KEY_FORMAT;
use crate::store::{CacheKey, Digest, Entry, InputDigest, KeyParts};

/// A finished stage's result as its consumers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub key: CacheKey,
    pub digest: Digest,
    /// The artifact root (`store/<key>/out`).
    pub out_dir: PathBuf,
}

impl Resolved {
    pub fn from_entry(entry: &Entry) -> Self {
        Self {
            key: entry.meta.key.clone(),
            digest: entry.meta.digest.clone(),
            out_dir: entry.out_dir(),
        }
    }
}

/// Why a stage's key cannot be computed (yet).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("stage `{stage}` has kind `{kind}`, which this build of itera does not know")]
    UnknownKind { stage: String, kind: String },
    /// An upstream result is not available.
    #[error("input `{input}` needs the result of stage `{upstream}`, which is not available")]
    UpstreamMissing { input: String, upstream: String },
    /// The kind could not fingerprint the outside state it reads.
    #[error("cannot fingerprint the outside state of stage `{stage}`: {message}")]
    Fingerprint { stage: String, message: String },
    #[error("the pipeline has no stage `{0}`")]
    UnknownStage(String),
}

/// The spec and the kind of `stage`.
pub fn stage_of<'a>(
    pipeline: &'a Pipeline,
    registry: &'a Registry,
    stage: &str,
) -> Result<(&'a StageSpec, &'a std::sync::Arc<dyn Stage>), KeyError> {
    let spec = pipeline
        .stages
        .get(stage)
        .ok_or_else(|| KeyError::UnknownStage(stage.to_owned()))?;
    let kind = registry
        .get(&spec.kind)
        .ok_or_else(|| KeyError::UnknownKind {
            stage: stage.to_owned(),
            kind: spec.kind.clone(),
        })?;
    Ok((spec, kind))
}

/// The result of upstream stage `stage` bound to `input`, or the error naming both.
fn upstream<'a>(
    resolved: &'a BTreeMap<StageName, Resolved>,
    input: &str,
    stage: &str,
) -> Result<&'a Resolved, KeyError> {
    resolved
        .get(stage)
        .ok_or_else(|| KeyError::UpstreamMissing {
            input: input.to_owned(),
            upstream: stage.to_owned(),
        })
}

/// The cache-key parts of `stage`, given its upstream stages' results. Computes the
/// kind's fingerprint, which may read outside state (a local folder, a remote revision).
pub fn key_parts(
    pipeline: &Pipeline,
    registry: &Registry,
    stage: &str,
    resolved: &BTreeMap<StageName, Resolved>,
) -> Result<KeyParts, KeyError> {
    let (spec, kind) = stage_of(pipeline, registry, stage)?;
    let mut inputs = BTreeMap::new();
    for (input, refs) in &spec.inputs {
        let mut digests = Vec::with_capacity(refs.len());
        for r in refs {
            let up = upstream(resolved, input, &r.stage)?;
            digests.push(InputDigest {
                output: r.output.clone(),
                digest: up.digest.clone(),
            });
        }
        inputs.insert(input.clone(), digests);
    }
    let fingerprint = kind
        .fingerprint(
            &spec.params,
            &FingerprintContext {
                stage: stage.to_owned(),
                base_dir: pipeline.base_dir.clone(),
            },
        )
        .map_err(|e| KeyError::Fingerprint {
            stage: stage.to_owned(),
            message: format!("{e:#}"),
        })?;
    Ok(KeyParts {
        format: KEY_FORMAT,
        kind: spec.kind.clone(),
        kind_version: kind.version(),
        params: spec.params.clone(),
        inputs,
        seed: pipeline.seed,
        fingerprint,
    })
}

/// The input artifacts handed to a running `stage`: each reference resolved to the
/// upstream artifact root, or to the named output's path inside it.
pub fn input_artifacts(
    pipeline: &Pipeline,
    registry: &Registry,
    stage: &str,
    resolved: &BTreeMap<StageName, Resolved>,
) -> Result<BTreeMap<String, Vec<InputArtifact>>, KeyError> {
    let (spec, _) = stage_of(pipeline, registry, stage)?;
    let mut out = BTreeMap::new();
    for (input, refs) in &spec.inputs {
        let mut list = Vec::with_capacity(refs.len());
        for r in refs {
            let up = upstream(resolved, input, &r.stage)?;
            let path = match &r.output {
                None => up.out_dir.clone(),
                Some(name) => {
                    let (up_spec, up_kind) = stage_of(pipeline, registry, &r.stage)?;
                    let decl = up_kind
                        .outputs(&up_spec.params)
                        .into_iter()
                        .find(|o| &o.name == name);
                    match decl {
                        Some(d) => up.out_dir.join(d.path),
                        // The loader checks output names; fall back to the name as a path.
                        None => up.out_dir.join(name),
                    }
                }
            };
            list.push(InputArtifact {
                stage: r.stage.clone(),
                output: r.output.clone(),
                path,
                digest: up.digest.clone(),
            });
        }
        out.insert(input.clone(), list);
    }
    Ok(out)
}
