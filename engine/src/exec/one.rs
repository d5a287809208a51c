//! Executing one stage: compute its key, reuse a checked store entry, or take the key's
//! lock, run the stage into a private staging folder, check its declared outputs, and
//! publish. Writes the stage's status file into the run folder at each step. Shared by
//! the local executor and by `itera exec-stage` (one stage per batch job).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::inputs::{input_artifacts, key_parts, stage_of, KeyError, Resolved};
use super::{log_tail, Event, ProgressEvents, RunJob};
use crate::host;
use crate::record::{StageRecord, StageStatus, VerifyCheck};
use crate::spec::StageName;
use crate::stage::{Progress, StageContext, StageLog};
use crate::store::{
    Claim, Claimed, Digest, KeyParts, LockHolder, Lookup, PublishInfo, PublishMode, Reuse,
    StoreError,
};

/// Lines of a failed stage's log shown with the error.
pub const LOG_TAIL_LINES: usize = 20;

/// Why a stage has no result.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Its key or inputs could not be computed (e.g. a `files` path is gone).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The store refused to hand out the key (its lock, a leftover attempt).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The result could not be published.
    #[error("cannot publish the result: {0}")]
    Publish(StoreError),
    /// A file operation of the run (lease, status file, work folder) failed.
    #[error("{0}")]
    Io(String),
    /// The stage's own code failed, or was interrupted.
    #[error("{0}")]
    Run(String),
    /// The stage did not create an output it declares.
    #[error("stage `{stage}` declares output `{output}` at `{path}` but did not create it")]
    MissingOutput {
        stage: String,
        output: String,
        path: String,
    },
}

/// What to do with one stage.
#[derive(Debug, Clone)]
pub struct StageRequest {
    pub stage: StageName,
    /// `Recompute` for `--force` and `rerun --verify`.
    pub reuse: Reuse,
    /// `rerun --verify`: the digest recorded for this stage.
    pub verify_against: Option<Digest>,
    pub threads: usize,
}

/// Executes one stage whose upstream results are in `resolved`. Never panics on a stage's
/// failure: the returned record says what happened, and is also written to the run folder.
/// Returns the stage's result for its consumers when it succeeded.
pub fn execute_stage(
    job: &RunJob,
    req: &StageRequest,
    resolved: &BTreeMap<StageName, Resolved>,
) -> (StageRecord, Option<Resolved>) {
    let name = req.stage.as_str();
    let kind_name = job
        .pipeline
        .stages
        .get(name)
        .map(|s| s.kind.clone())
        .unwrap_or_default();
    let mut rec = StageRecord::pending(&kind_name);
    rec.threads = Some(req.threads);
    let outcome = attempt(job, req, resolved, &mut rec);
    if let Err(error) = &outcome {
        let error = error.to_string();
        rec.status = if job.cancel.is_cancelled() {
            StageStatus::Interrupted
        } else {
            StageStatus::Failed
        };
        rec.error = Some(error.clone());
        let log = rec.log.as_ref().map(|l| job.run.path().join(l));
        let tail = log
            .as_deref()
            .map(|p| log_tail(p, LOG_TAIL_LINES))
            .unwrap_or_default();
        job.events.event(Event::Failed {
            stage: name.to_owned(),
            error,
            log_tail: tail,
            log: log.map(|p| p.display().to_string()),
        });
    }
    if let Err(e) = job.run.write_stage(name, &rec) {
        tracing::error!(stage = name, error = %e, "cannot record the stage's status");
    }
    (rec, outcome.ok().flatten())
}

fn attempt(
    job: &RunJob,
    req: &StageRequest,
    resolved: &BTreeMap<StageName, Resolved>,
    rec: &mut StageRecord,
) -> Result<Option<Resolved>, StageError> {
    let name = req.stage.as_str();
    let parts = key_parts(&job.pipeline, &job.registry, name, resolved)?;
    let key = parts.key();
    rec.key = Some(key.clone());
    rec.parts = Some(parts.clone());

    let mut reason = match (&req.verify_against, req.reuse) {
        (Some(_), _) => "verifying reproducibility".to_owned(),
        (None, Reuse::Recompute) => "forced".to_owned(),
        (None, Reuse::Allow) => "no cache entry".to_owned(),
    };
    // Registered before the lookup, so `gc` cannot remove the entry between the two.
    job.store
        .lease(&key)
        .map_err(|e| StageError::Io(format!("cannot register the key with the store: {e}")))?;
    if req.reuse == Reuse::Allow {
        match job.store.lookup(&key) {
            Lookup::Hit(entry) => return Ok(Some(cached(job, name, rec, &entry, None))),
            Lookup::Damaged(problem) => reason = format!("store entry is damaged ({problem})"),
            Lookup::Miss => {}
        }
    }

    let me = LockHolder::me(Some(job.run.id().as_str()), name);
    let events = job.events.clone();
    let claim = job
        .store
        .claim(&key, &me, req.reuse, &job.cancel, &mut |holder| {
            events.event(Event::Waiting {
                stage: name.to_owned(),
                holder,
            })
        })?;
    let claimed = match claim {
        Claim::Hit(entry) => {
            let why = "computed by another run while this one waited";
            return Ok(Some(cached(job, name, rec, &entry, Some(why))));
        }
        Claim::Miss(c) => c,
    };
    run_claimed(job, req, resolved, rec, parts, claimed, reason)
}

fn cached(
    job: &RunJob,
    name: &str,
    rec: &mut StageRecord,
    entry: &crate::store::Entry,
    why: Option<&str>,
) -> Resolved {
    rec.status = StageStatus::Cached;
    rec.digest = Some(entry.meta.digest.clone());
    rec.reason = Some(match why {
        Some(w) => w.to_owned(),
        None => match &entry.meta.run {
            Some(run) => format!("produced by run {run} (stage `{}`)", entry.meta.stage),
            None => format!("produced by stage `{}`", entry.meta.stage),
        },
    });
    job.events.event(Event::Cached {
        stage: name.to_owned(),
        key: entry.meta.key.to_string(),
    });
    Resolved::from_entry(entry)
}

#[allow(clippy::too_many_arguments)]
fn run_claimed(
    job: &RunJob,
    req: &StageRequest,
    resolved: &BTreeMap<StageName, Resolved>,
    rec: &mut StageRecord,
    parts: KeyParts,
    claimed: Claimed,
    reason: String,
) -> Result<Option<Resolved>, StageError> {
    let name = req.stage.as_str();
    let (spec, kind) = stage_of(&job.pipeline, &job.registry, name)?;
    let started = SystemTime::now();
    let clock = Instant::now();
    rec.status = StageStatus::Running;
    rec.reason = Some(reason.clone());
    rec.started = Some(host::timestamp(started));
    rec.host = Some(host::hostname());
    rec.log = Some(job.run.log_rel(name));
    job.run
        .write_stage(name, rec)
        .map_err(|e| StageError::Io(e.to_string()))?;

    let log_path = job.run.log_path(name);
    let log = StageLog::open(&log_path).map_err(|e| {
        StageError::Io(format!(
            "cannot open the stage log `{}`: {e}",
            log_path.display()
        ))
    })?;
    log.line(format!(
        "# itera: stage `{name}` (kind `{}` v{}), key {}, {} thread(s), {reason}",
        spec.kind,
        kind.version(),
        claimed.key(),
        req.threads
    ));
    let ctx = StageContext {
        stage: name.to_owned(),
        inputs: input_artifacts(&job.pipeline, &job.registry, name, resolved)?,
        out_dir: claimed.out_dir(),
        work_dir: claimed
            .work_dir()
            .map_err(|e| StageError::Io(e.to_string()))?,
        base_dir: job.pipeline.base_dir.clone(),
        seed: job.pipeline.seed,
        threads: req.threads,
        progress: Progress::new(name, Arc::new(ProgressEvents(job.events.clone()))),
        log: log.clone(),
        cancel: job.cancel.clone(),
    };
    job.events.event(Event::Started {
        stage: name.to_owned(),
        reason,
        threads: req.threads,
    });

    let result = std::panic::catch_unwind(AssertUnwindSafe(|| kind.run(&spec.params, &ctx)))
        .unwrap_or_else(|panic| {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(anyhow::anyhow!("the stage panicked: {msg}"))
        });
    log.finish();
    let finished = SystemTime::now();
    rec.finished = Some(host::timestamp(finished));
    rec.duration_ms = Some(clock.elapsed().as_millis() as u64);
    if let Err(e) = result {
        let msg = if job.cancel.is_cancelled() {
            format!("interrupted: {}", crate::fs::error_text(&e))
        } else {
            crate::fs::error_text(&e)
        };
        log.line(format!("# itera: stage failed: {msg}"));
        return Err(StageError::Run(msg));
    }
    for decl in kind.outputs(&spec.params) {
        if !ctx.out_dir.join(&decl.path).exists() {
            let error = StageError::MissingOutput {
                stage: name.to_owned(),
                output: decl.name.clone(),
                path: decl.path.clone(),
            };
            log.line(format!("# itera: {error}"));
            return Err(error);
        }
    }

    // `rerun --verify` keeps the stored result when one exists (its digest is what the
    // record says) and only compares; otherwise the fresh result is published.
    let existing = match job.store.lookup(claimed.key()) {
        Lookup::Hit(e) => Some(*e),
        _ => None,
    };
    let mode = match (&req.verify_against, &existing) {
        (Some(_), Some(_)) => PublishMode::Discard,
        _ => PublishMode::Publish,
    };
    let environment = kind.environment(&spec.params);
    let info = PublishInfo {
        parts,
        stage: name.to_owned(),
        run: Some(job.run.id().to_string()),
        started,
        finished,
        environment: environment.clone(),
    };
    let published = claimed.publish(info, mode).map_err(StageError::Publish)?;
    rec.status = StageStatus::Ran;
    rec.digest = Some(published.digest.clone());
    let verified = req.verify_against.as_ref().map(|recorded| {
        let mut matches = recorded == &published.digest;
        let measured = kind.measurements(&spec.params);
        if !matches && !measured.is_empty() {
            // Declared measurements (timings, speeds) may differ; everything else must not.
            if let Some(old) = existing.as_ref().filter(|e| &e.meta.digest == recorded) {
                matches = old.meta.manifest.without(&measured).root()
                    == published.manifest.without(&measured).root();
                if matches {
                    log.line(format!(
                        "# itera: reproduced apart from its declared measurements ({})",
                        measured.join(", ")
                    ));
                }
            }
        }
        let note = existing
            .as_ref()
            .filter(|e| !matches && e.meta.environment != environment)
            .map(|e| environment_note(&e.meta.environment, &environment));
        if !matches {
            log.line(format!(
                "# itera: NOT REPRODUCED: digest {} differs from the recorded {recorded}",
                published.digest
            ));
            if let Some(note) = &note {
                log.line(format!("# itera: {note}"));
            }
        }
        rec.verify = Some(VerifyCheck {
            recorded: recorded.clone(),
            matches,
            note,
        });
        matches
    });
    log.line(format!(
        "# itera: published {} in {:.1}s",
        published.digest,
        clock.elapsed().as_secs_f64()
    ));
    job.events.event(Event::Finished {
        stage: name.to_owned(),
        elapsed: clock.elapsed(),
        verified,
    });
    let entry = published.entry.or(existing).ok_or_else(|| {
        StageError::Io(
            "internal error: a verified result has no store entry to hand downstream".to_owned(),
        )
    })?;
    Ok(Some(Resolved::from_entry(&entry)))
}

/// Says how the recorded environment differs from this one, e.g. "recorded with
/// kernels=x86_64/avx512, recomputed with kernels=x86_64/portable: ...".
fn environment_note(
    recorded: &std::collections::BTreeMap<String, String>,
    now: &std::collections::BTreeMap<String, String>,
) -> String {
    let keys: std::collections::BTreeSet<&String> = recorded.keys().chain(now.keys()).collect();
    let show = |m: &std::collections::BTreeMap<String, String>, k: &str| {
        m.get(k).map_or("(not recorded)", String::as_str).to_owned()
    };
    let diffs: Vec<(String, String)> = keys
        .into_iter()
        .filter(|k| recorded.get(*k) != now.get(*k))
        .map(|k| {
            (
                format!("{k}={}", show(recorded, k)),
                format!("{k}={}", show(now, k)),
            )
        })
        .collect();
    format!(
        "recorded with {}, recomputed with {}: results computed on different kernels or \
         platforms can differ in rounding; verify on a machine with the recorded environment \
         (or set it, e.g. ITERA_KERNELS=portable) to compare bit for bit",
        diffs
            .iter()
            .map(|d| d.0.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        diffs
            .iter()
            .map(|d| d.1.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
