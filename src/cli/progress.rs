//! Showing a run's progress: indicatif bars (one per running stage, fed by the stages'
//! progress reports) on a terminal, plain timestamped lines otherwise (batch logs, CI),
//! or nothing but failures. Everything goes to stderr.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use itera_engine::exec::{Event, EventSink};
use itera_engine::stage::ProgressEvent;

use super::ProgressMode;

/// How often a line-mode display repeats a stage's position or status message.
const LINE_INTERVAL: Duration = Duration::from_secs(10);

/// Renders executor events.
pub struct Display {
    mode: Resolved,
    state: Mutex<State>,
}

enum Resolved {
    Bars(MultiProgress),
    Lines,
    Quiet,
}

#[derive(Default)]
struct State {
    bars: HashMap<String, ProgressBar>,
    /// Line mode: last time a stage's position was printed, and its phase.
    phases: HashMap<String, (String, Option<u64>, String, Instant)>,
    /// Line mode: last time a stage's status message was printed.
    messages: HashMap<String, Instant>,
}

impl Display {
    pub fn new(mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => Resolved::Bars(bars()),
            ProgressMode::Auto | ProgressMode::Lines => Resolved::Lines,
            ProgressMode::Bars => Resolved::Bars(bars()),
            ProgressMode::Quiet => Resolved::Quiet,
        };
        Self {
            mode,
            state: Mutex::new(State::default()),
        }
    }

    /// Prints a line above the bars (or plainly).
    pub fn line(&self, text: &str) {
        match &self.mode {
            Resolved::Bars(m) => {
                let _ = m.println(text);
            }
            _ => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }

    fn stamped(&self, stage: &str, text: &str) {
        let now = itera_engine::host::timestamp(SystemTime::now());
        // `2026-11-26T13:45:01.123Z` -> `13:45:01`
        let clock = now.get(11..19).unwrap_or(&now);
        self.line(&format!("[{clock}] {stage}: {text}"));
    }

    fn quiet(&self) -> bool {
        matches!(self.mode, Resolved::Quiet)
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
            Event::Cached { stage, .. } => {
                if !self.quiet() {
                    self.stamped(&stage, "cached");
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
                    self.stamped(&stage, &format!("running ({reason}; {threads} {t})"));
                }
            }
            Event::Waiting { stage, holder } => {
                if !self.quiet() {
                    let who = holder
                        .map(|h| h.to_string())
                        .unwrap_or_else(|| "another process".to_owned());
                    self.stamped(&stage, &format!("waiting for {who} to finish this result"));
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
                    self.stamped(&stage, &format!("done in {}{check}", seconds(elapsed)));
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
                self.stamped(&stage, &text);
            }
            Event::Skipped { stage, reason } => {
                if !self.quiet() {
                    self.stamped(&stage, &format!("skipped ({reason})"));
                }
            }
            Event::Submitted { stage, job_id } => {
                if !self.quiet() {
                    self.stamped(&stage, &format!("submitted as job {job_id}"));
                }
            }
        }
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
            }
            return;
        }
        if self.quiet() {
            return;
        }
        match event {
            ProgressEvent::Start { phase, total, unit } => {
                let size = total.map(|t| format!(" ({t} {unit})")).unwrap_or_default();
                self.stamped(stage, &format!("{phase}{size}"));
                state
                    .phases
                    .insert(stage.to_owned(), (phase, total, unit, Instant::now()));
            }
            ProgressEvent::Position(p) => {
                if let Some((phase, total, unit, last)) = state.phases.get_mut(stage) {
                    if last.elapsed() >= LINE_INTERVAL || Some(p) == *total {
                        *last = Instant::now();
                        let of = total.map(|t| format!("/{t}")).unwrap_or_default();
                        let text = format!("{phase} {p}{of} {unit}");
                        self.stamped(stage, &text);
                    }
                }
            }
            ProgressEvent::Message(m) => {
                let due = state
                    .messages
                    .get(stage)
                    .is_none_or(|last| last.elapsed() >= LINE_INTERVAL);
                if due {
                    state.messages.insert(stage.to_owned(), Instant::now());
                    self.stamped(stage, &m);
                }
            }
        }
    }
}
