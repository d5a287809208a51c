//! Optional per-op timing of forward and backward passes (off by default; one relaxed
//! atomic load per op when off). Used by the training benchmark to find hot spots.
//! Times are CPU seconds of the calling thread (so other load on the machine does not
//! inflate them); profile with one thread for complete numbers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Seconds and calls per (op, pass).
type Totals = BTreeMap<(&'static str, Pass), (f64, u64)>;
static TOTALS: Mutex<Totals> = Mutex::new(BTreeMap::new());

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

/// CPU seconds used by the calling thread so far.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant of the platform.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

pub(crate) fn start() -> Option<f64> {
    ENABLED.load(Ordering::Relaxed).then(thread_cpu_seconds)
}

pub(crate) fn stop(start: Option<f64>, name: &'static str, pass: Pass) {
    if let Some(t) = start {
        let dt = thread_cpu_seconds() - t;
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
