//! What a run would do, without running anything (`itera status`, `run --dry-run`,
//! `explain`): for each stage, whether its result is stored, and if not, why it would
//! run, including which key part changed since the stage's last recorded run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::inputs::{key_parts, Resolved};
use super::planner::{Action, Planner};
use super::{Force, Mode};
use crate::record::{list_runs, RunId};
use crate::spec::{Pipeline, StageName};
use crate::stage::Registry;
use crate::store::{CacheKey, KeyParts, Lookup, Reuse, Store};

/// The predicted fate of one stage.
#[derive(Debug, Clone)]
pub enum Fate {
    /// Stored: would be reused.
    Cached {
        key: CacheKey,
        /// The run and stage that produced it.
        produced_by: String,
    },
    /// Would run.
    Runs {
        /// Known when every upstream result is stored.
        key: Option<CacheKey>,
        reason: String,
        /// Key parts that changed since the stage's last recorded run.
        changes: Vec<String>,
    },
    /// Not selected, and not stored: a run with this selection would fail.
    Unavailable { reason: String },
    /// The key cannot be computed (e.g. a `files` path is missing).
    Broken { error: String },
}

/// One stage's prediction.
#[derive(Debug, Clone)]
pub struct StagePreview {
    pub stage: StageName,
    pub kind: String,
    pub selected: bool,
    pub fate: Fate,
    pub parts: Option<KeyParts>,
}

/// The key parts each stage had in its most recent recorded run (newest run first).
pub fn last_recorded_parts(runs_dir: &Path) -> BTreeMap<StageName, (RunId, KeyParts)> {
    let mut out = BTreeMap::new();
    for run in list_runs(runs_dir).into_iter().rev() {
        let Ok(record) = run.load() else { continue };
        for (name, stage) in record.stages {
            if let Some(parts) = stage.parts {
                out.entry(name)
                    .or_insert_with(|| (record.id.clone(), parts));
            }
        }
    }
    out
}

/// Predicts a run of `selected` (plus the upstream stages it needs), in dependency order.
pub fn preview(
    pipeline: &Pipeline,
    registry: &Registry,
    store: &Store,
    selected: &BTreeSet<StageName>,
    force: &Force,
) -> Vec<StagePreview> {
    let history = last_recorded_parts(store.runs_dir());
    // A loaded pipeline is acyclic; a broken one previews as nothing.
    let Ok(planner) = Planner::new(pipeline, selected, force, &Mode::Run) else {
        return Vec::new();
    };
    let mut resolved: BTreeMap<StageName, Resolved> = BTreeMap::new();
    let mut out = Vec::new();
    for name in planner.stages() {
        let p = predict(
            pipeline, registry, store, &planner, &history, &resolved, name,
        );
        if let Fate::Cached { key, .. } = &p.fate {
            if let Lookup::Hit(entry) = store.lookup(key) {
                resolved.insert(name.clone(), Resolved::from_entry(&entry));
            }
        }
        out.push(p);
    }
    out
}

fn predict(
    pipeline: &Pipeline,
    registry: &Registry,
    store: &Store,
    planner: &Planner,
    history: &BTreeMap<StageName, (RunId, KeyParts)>,
    resolved: &BTreeMap<StageName, Resolved>,
    name: &str,
) -> StagePreview {
    let kind = pipeline.stages[name].kind.clone();
    let action = planner.action(name);
    let is_selected = action != Action::LookUp;
    let mut preview = StagePreview {
        stage: name.to_owned(),
        kind,
        selected: is_selected,
        fate: Fate::Broken {
            error: String::new(),
        },
        parts: None,
    };
    let pending_up: Vec<StageName> = planner
        .upstream(name)
        .into_iter()
        .filter(|u| !resolved.contains_key(u))
        .collect();
    if !pending_up.is_empty() {
        let list = pending_up
            .iter()
            .map(|u| format!("`{u}`"))
            .collect::<Vec<_>>()
            .join(", ");
        preview.fate = if is_selected {
            Fate::Runs {
                key: None,
                reason: format!("waits for upstream {list}; runs if that result changes"),
                changes: Vec::new(),
            }
        } else {
            Fate::Unavailable {
                reason: format!("not selected, and upstream {list} has no stored result"),
            }
        };
        return preview;
    }
    let parts = match key_parts(pipeline, registry, name, resolved) {
        Ok(p) => p,
        Err(e) => {
            preview.fate = Fate::Broken {
                error: e.to_string(),
            };
            return preview;
        }
    };
    let key = parts.key();
    let changes = history
        .get(name)
        .map(|(_, old)| parts.changes_since(old))
        .unwrap_or_default();
    preview.parts = Some(parts);
    let lookup = store.lookup(&key);
    preview.fate = match lookup {
        Lookup::Hit(entry) if action.reuse() == Reuse::Allow => Fate::Cached {
            key,
            produced_by: match &entry.meta.run {
                Some(r) => format!("run {r}, stage `{}`", entry.meta.stage),
                None => format!("stage `{}`", entry.meta.stage),
            },
        },
        _ if !is_selected => Fate::Unavailable {
            reason: "not selected, and its result is not stored".to_owned(),
        },
        Lookup::Hit(_) => Fate::Runs {
            key: Some(key),
            reason: "forced".to_owned(),
            changes: Vec::new(),
        },
        Lookup::Damaged(problem) => Fate::Runs {
            key: Some(key),
            reason: format!("its store entry is damaged ({problem})"),
            changes: Vec::new(),
        },
        Lookup::Miss => {
            let reason = match history.get(name) {
                None => "never run before".to_owned(),
                Some((run, _)) if changes.is_empty() => {
                    format!("no stored result (same key as in run {run}; the entry was removed)")
                }
                Some((run, _)) => format!("changed since run {run}"),
            };
            Fate::Runs {
                key: Some(key),
                reason,
                changes,
            }
        }
    };
    preview
}
