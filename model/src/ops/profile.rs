//! Optional per-op timing of forward and backward passes (off by default; one relaxed
//! atomic load per op when off). Used by the training benchmark to find hot spots.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<(&'static str, Pass), (f64, u64)>> = Mutex::new(BTreeMap::new());

/// Which pass a time belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pass {
    Forward,
    Backward,
}

/// Starts (or stops) collecting op timings.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub(crate) fn start() -> Option<Instant> {
    ENABLED.load(Ordering::Relaxed).then(Instant::now)
}

pub(crate) fn stop(start: Option<Instant>, name: &'static str, pass: Pass) {
    if let Some(t) = start {
        let dt = t.elapsed().as_secs_f64();
        let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        let e = totals.entry((name, pass)).or_insert((0.0, 0));
        e.0 += dt;
        e.1 += 1;
    }
}

/// Collected `(op, pass, seconds, calls)`, slowest first; clears the totals.
pub fn take() -> Vec<(&'static str, Pass, f64, u64)> {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<_> = std::mem::take(&mut *totals)
        .into_iter()
        .map(|((n, p), (s, c))| (n, p, s, c))
        .collect();
    v.sort_by(|a, b| b.2.total_cmp(&a.2));
    v
}
