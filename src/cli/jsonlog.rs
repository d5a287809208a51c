//! `--log-format json`: every line itera writes to stderr is one JSON object. This module
//! owns that format: [`emit`] writes one event, [`JsonLayer`] turns `tracing` records into
//! events, [`error`] reports a failed command (with a pipeline file's diagnostics as
//! structured records). Field names are stable and documented in README.md ("JSON logs"):
//! every line has `timestamp`, `level`, `event` and `message` (the text-mode line).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use serde_json::{json, Map, Value};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Switches every stderr line of this process to JSON.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether stderr lines are JSON.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Writes one event line: `timestamp`, `level`, `event`, `message`, then `fields` (an
/// object; other values are ignored).
pub fn emit(level: &str, event: &str, message: &str, fields: Value) {
    let mut line = Map::new();
    line.insert(
        "timestamp".into(),
        json!(itera_engine::host::timestamp(SystemTime::now())),
    );
    line.insert("level".into(), json!(level));
    line.insert("event".into(), json!(event));
    line.insert("message".into(), json!(message));
    if let Value::Object(extra) = fields {
        for (k, v) in extra {
            line.entry(k).or_insert(v);
        }
    }
    let mut text = Value::Object(line).to_string();
    text.push('\n');
    // One write per line, so lines from several threads never interleave.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// A failed command: `event` `error`, `code` (the exit code), the whole text-mode report
/// in `message`, and for an invalid pipeline file `diagnostics`: one record per problem
/// with `message`, `place` (`file:line:col`), `line`, `column` (1-based), `label`,
/// `help` and `notes`.
pub fn error(code: u8, text: &str, diagnostics: Option<&itera_engine::spec::Diagnostics>) {
    let mut fields = json!({ "code": code });
    if let Some(ds) = diagnostics {
        fields["file"] = json!(ds.file());
        fields["diagnostics"] = ds
            .iter()
            .map(|d| {
                let origin = d.origin.as_ref();
                let snippet = origin.and_then(|o| o.snippet.as_ref());
                json!({
                    "message": d.message,
                    "place": origin.map(|o| o.place.clone()),
                    "line": snippet.and_then(|s| s.line),
                    "column": snippet.map(|s| s.column + 1),
                    "label": d.label,
                    "help": d.help,
                    "notes": d.notes,
                })
            })
            .collect();
    }
    emit("error", "error", text.trim_end(), fields);
}

/// Formats `tracing` records as `event` `log` lines: `target` and the record's fields.
pub struct JsonLayer;

impl<S: tracing::Subscriber> Layer<S> for JsonLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let message = fields
            .0
            .remove("message")
            .and_then(|m| m.as_str().map(str::to_owned))
            .unwrap_or_default();
        let meta = event.metadata();
        emit(
            &meta.level().as_str().to_ascii_lowercase(),
            "log",
            &message,
            json!({ "target": meta.target(), "fields": fields.0 }),
        );
    }
}

struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), json!(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), json!(value));
    }
}

/// A line for stderr: JSON (`event` `note`, or the given event) or the text itself.
pub fn note(event: &str, text: &str, fields: Value) {
    if enabled() {
        emit("info", event, text, fields);
    } else {
        eprintln!("{text}");
    }
}
