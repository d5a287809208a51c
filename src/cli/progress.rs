//! Showing a run's progress: indicatif bars (one per running stage, fed by the stages'
//! progress reports) on a terminal, plain timestamped lines otherwise (batch logs, CI),
//! or nothing but failures; with `--log-format json`, one JSON event per line instead
//! (throttled like the lines; see `jsonlog`). Everything goes to stderr.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use itera_engine::exec::{Event, EventSink};
use itera_engine::record::RunDir;
use itera_engine::stage::ProgressEvent;
use serde_json::{json, Value};

use super::{jsonlog, ProgressMode};

/// How often a line-mode display repeats a stage's position or status message.
const LINE_INTERVAL: Duration = Duration::from_secs(10);

/// Renders executor events.
pub struct Display {
    mode: Resolved,
    state: Mutex<State>,
    /// The run, for the stages' keys in JSON events.
    run: Option<RunDir>,
}

enum Resolved {
    Bars(MultiProgress),
    Lines,
    Quiet,
    /// `--log-format json`: events as JSON lines (no bars, whatever `--progress` says,
    /// except that `quiet` still hides progress).
    Json {
        quiet: bool,
    },
}

#[derive(Default)]
struct State {
    bars: HashMap<String, ProgressBar>,
    /// Line mode: a stage's phase (name, total, unit, start) and when its position was
    /// last printed.
    phases: HashMap<String, (Phase, Instant)>,
    /// Line mode: last time a stage's status message was printed.
    messages: HashMap<String, Instant>,
}

impl Display {
    pub fn new(mode: ProgressMode) -> Self {
        let mode = match mode {
            _ if jsonlog::enabled() => Resolved::Json {
                quiet: mode == ProgressMode::Quiet,
            },
            ProgressMode::Auto if std::io::stderr().is_terminal() => Resolved::Bars(bars()),
            ProgressMode::Auto | ProgressMode::Lines => Resolved::Lines,
            ProgressMode::Bars => Resolved::Bars(bars()),
            ProgressMode::Quiet => Resolved::Quiet,
        };
        Self {
            mode,
            state: Mutex::new(State::default()),
            run: None,
        }
    }

    /// The run whose events these are (JSON events then carry the stages' keys).
    pub fn for_run(mut self, run: &RunDir) -> Self {
        self.run = Some(run.clone());
        self
    }

    /// Prints a line above the bars (or plainly); in JSON, an `event` line at `level`
    /// with `fields`.
    pub fn say(&self, level: &str, event: &str, text: &str, fields: Value) {
        match &self.mode {
            Resolved::Json { .. } => jsonlog::emit(level, event, text, fields),
            Resolved::Bars(m) => {
                let _ = m.println(text);
            }
            _ => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }

    /// A stage's line: `[HH:MM:SS] stage: text`, or a JSON `event` with `stage` and `fields`.
    fn stamped(&self, stage: &str, text: &str, event: &str, fields: Value) {
        if let Resolved::Json { .. } = self.mode {
            let mut fields = fields;
            if let Value::Object(map) = &mut fields {
                map.insert("stage".into(), json!(stage));
            }
            let level = match event {
                "stage.failed" => "error",
                _ => "info",
            };
            jsonlog::emit(level, event, &format!("{stage}: {text}"), fields);
            return;
        }
        let now = itera_engine::host::timestamp(SystemTime::now());
        // `2026-11-26T13:45:01.123Z` -> `13:45:01`
        let clock = now.get(11..19).unwrap_or(&now);
        self.say("info", event, &format!("[{clock}] {stage}: {text}"), fields);
    }

    fn quiet(&self) -> bool {
        matches!(self.mode, Resolved::Quiet | Resolved::Json { quiet: true })
    }

    /// The stage's cache key, from its status file (written before it starts).
    fn key_of(&self, stage: &str) -> Option<String> {
        let rec = self.run.as_ref()?.read_stage(stage).ok()??;
        rec.key.map(|k| k.to_string())
    }
}

fn bars() -> MultiProgress {
    MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10))
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix:.bold} {elapsed:>4} {msg}")
        .expect("valid template")
}

fn bar_style(unit: &str) -> ProgressStyle {
    let template = format!(
        "{{spinner}} {{prefix:.bold}} {{elapsed:>4}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{eta}}) {{msg}}"
    );
    ProgressStyle::with_template(&template)
        .expect("valid template")
        .progress_chars("=> ")
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl EventSink for Display {
    fn event(&self, event: Event) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Cached { stage, key } => {
                if !self.quiet() {
                    self.stamped(
                        &stage,
                        "cached",
                        "stage.cached",
                        json!({ "status": "cached", "key": key }),
                    );
                }
            }
            Event::Started {
                stage,
                reason,
                threads,
            } => {
                if let Resolved::Bars(m) = &self.mode {
                    let bar = m.add(ProgressBar::new_spinner());
                    bar.set_style(spinner_style());
                    bar.set_prefix(stage.clone());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    state.bars.insert(stage.clone(), bar);
                }
                if !self.quiet() {
                    let t = if threads == 1 { "thread" } else { "threads" };
                    let key = self.key_of(&stage);
                    self.stamped(
                        &stage,
                        &format!("running ({reason}; {threads} {t})"),
                        "stage.started",
                        json!({ "status": "running", "key": key, "reason": reason, "threads": threads }),
                    );
                }
            }
            Event::Waiting { stage, holder } => {
                if !self.quiet() {
                    let who = holder
                        .map(|h| h.to_string())
                        .unwrap_or_else(|| "another process".to_owned());
                    self.stamped(
                        &stage,
                        &format!("waiting for {who} to finish this result"),
                        "stage.waiting",
                        json!({ "holder": who }),
                    );
                }
            }
            Event::Progress { stage, event } => self.progress(&mut state, &stage, event),
            Event::Finished {
                stage,
                elapsed,
                verified,
            } => {
                if let Some(bar) = state.bars.remove(&stage) {
                    bar.finish_and_clear();
                }
                state.phases.remove(&stage);
                state.messages.remove(&stage);
                if !self.quiet() {
                    let check = match verified {
                        Some(true) => ", reproduced the recorded digest",
                        Some(false) => ", DIFFERS from the recorded digest",
                        None => "",
                    };
                    let key = self.key_of(&stage);
                    self.stamped(
                        &stage,
                        &format!("done in {}{check}", seconds(elapsed)),
                        "stage.finished",
                        json!({
                            "status": "ran",
                            "key": key,
                            "duration_s": elapsed.as_secs_f64(),
                            "verified": verified,
                        }),
                    );
                }
            }
            Event::Failed {
                stage,
                error,
                log_tail,
                log,
            } => {
                if let Some(bar) = state.bars.remove(&stage) {
                    bar.finish_and_clear();
                }
                let fields = json!({
                    "status": "failed",
                    "key": self.key_of(&stage),
                    "error": error,
                    "log": log,
                    "log_tail": log_tail,
                });
                if let Resolved::Json { .. } = self.mode {
                    self.stamped(&stage, &format!("FAILED: {error}"), "stage.failed", fields);
                    return;
                }
                let mut text = format!("FAILED: {error}");
                if let Some(log) = log {
                    text.push_str(&format!("\n    log: {log}"));
                    if !log_tail.is_empty() {
                        text.push_str(&format!(" (last {} lines)", log_tail.len()));
                    }
                }
                for l in &log_tail {
                    text.push_str(&format!("\n    | {l}"));
                }
                self.stamped(&stage, &text, "stage.failed", fields);
            }
            Event::Skipped { stage, reason } => {
                if !self.quiet() {
                    self.stamped(
                        &stage,
                        &format!("skipped ({reason})"),
                        "stage.skipped",
                        json!({ "status": "skipped", "reason": reason }),
                    );
                }
            }
            Event::Submitted { stage, job_id } => {
                if !self.quiet() {
                    self.stamped(
                        &stage,
                        &format!("submitted as job {job_id}"),
                        "stage.submitted",
                        json!({ "job_id": job_id }),
                    );
                }
            }
        }
    }
}

/// A running stage's current phase.
struct Phase {
    name: String,
    total: Option<u64>,
    unit: String,
    started: Instant,
}

impl Phase {
    /// Seconds left at position `p`, from the rate since the phase started.
    fn eta_s(&self, p: u64) -> Option<f64> {
        let total = self.total?;
        if p == 0 || p > total {
            return None;
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        Some(elapsed * (total - p) as f64 / p as f64)
    }
}

impl Display {
    fn progress(&self, state: &mut State, stage: &str, event: ProgressEvent) {
        if let Some(bar) = state.bars.get(stage) {
            match event {
                ProgressEvent::Start { phase, total, unit } => {
                    match total {
                        Some(t) => {
                            bar.set_style(bar_style(&unit));
                            bar.set_length(t);
                        }
                        None => bar.set_style(spinner_style()),
                    }
                    bar.set_position(0);
                    bar.set_message(phase);
                }
                ProgressEvent::Position(p) => {
                    // A stage resuming half-way jumps from 0: the steps before the jump
                    // took no time here, so they must not enter the bar's rate.
                    let jump = bar.position() == 0 && p > 1;
                    bar.set_position(p);
                    if jump {
                        bar.reset_eta();
                    }
                }
                ProgressEvent::Message(m) => bar.set_message(m),
                ProgressEvent::Metrics { text, .. } => bar.set_message(text),
            }
            return;
        }
        if self.quiet() {
            return;
        }
        match event {
            ProgressEvent::Start { phase, total, unit } => {
                let size = total.map(|t| format!(" ({t} {unit})")).unwrap_or_default();
                self.stamped(
                    stage,
                    &format!("{phase}{size}"),
                    "stage.progress",
                    json!({ "phase": phase, "position": 0, "total": total, "unit": unit, "eta_s": null }),
                );
                let now = Instant::now();
                let phase = Phase {
                    name: phase,
                    total,
                    unit,
                    started: now,
                };
                state.phases.insert(stage.to_owned(), (phase, now));
            }
            ProgressEvent::Position(p) => {
                if let Some((phase, last)) = state.phases.get_mut(stage) {
                    if last.elapsed() >= LINE_INTERVAL || Some(p) == phase.total {
                        *last = Instant::now();
                        let of = phase.total.map(|t| format!("/{t}")).unwrap_or_default();
                        let eta = phase.eta_s(p);
                        let left = eta
                            .filter(|_| Some(p) != phase.total)
                            .map(|e| format!(" (ETA {})", seconds(Duration::from_secs_f64(e))))
                            .unwrap_or_default();
                        let text = format!("{} {p}{of} {}{left}", phase.name, phase.unit);
                        let fields = json!({
                            "phase": phase.name,
                            "position": p,
                            "total": phase.total,
                            "unit": phase.unit,
                            "eta_s": eta,
                        });
                        self.stamped(stage, &text, "stage.progress", fields);
                    }
                }
            }
            // JSON: every metrics line (a stage sends them at its own pace, e.g. the train
            // stage every `log_every` steps); lines: throttled like any status text.
            ProgressEvent::Metrics { text, values }
                if matches!(self.mode, Resolved::Json { .. }) =>
            {
                let metrics: serde_json::Map<String, Value> =
                    values.into_iter().map(|(k, v)| (k, json!(v))).collect();
                self.stamped(
                    stage,
                    &text,
                    "stage.metrics",
                    json!({ "text": text, "metrics": metrics }),
                );
            }
            ProgressEvent::Metrics { text, .. } => {
                self.progress(state, stage, ProgressEvent::Message(text))
            }
            ProgressEvent::Message(m) => {
                let due = state
                    .messages
                    .get(stage)
                    .is_none_or(|last| last.elapsed() >= LINE_INTERVAL);
                if due {
                    state.messages.insert(stage.to_owned(), Instant::now());
                    self.stamped(stage, &m, "stage.message", json!({ "text": m }));
                }
            }
        }
    }
}
