//! The `itera` command line: flags (clap derive), one module per subcommand, logging
//! setup, and the mapping from outcomes to the documented [`exit`] codes.

mod dag;
mod exec_stage;
mod explain;
mod gc;
mod generate;
mod hub;
mod interrupt;
mod jsonlog;
mod load;
mod model_dir;
mod path;
mod progress;
mod rerun;
mod run;
mod runs;
mod schema;
mod score;
mod show;
mod slurm;
mod status;
mod validate;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit codes of `itera`.
pub mod exit {
    /// Everything succeeded.
    pub const OK: u8 = 0;
    /// A stage failed (or was skipped because one failed), a `rerun --verify` found a
    /// stage that did not reproduce, `verify` found a damaged entry, `schema --check`
    /// found drift, or any operational error (a full disk, an unwritable file): every
    /// error that is not invalid input.
    pub const FAILED: u8 = 1;
    /// Invalid input: a bad pipeline file, flag or run id. Nothing was executed and
    /// nothing was written under the runs folder.
    pub const INVALID: u8 = 2;
    /// Interrupted (Ctrl-C).
    pub const INTERRUPTED: u8 = 130;
}

/// Declarative, reproducible pipeline runner for small language-model studies.
#[derive(Debug, Parser)]
#[command(name = "itera", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Folder holding the store and the run records.
    #[arg(long, global = true, env = "ITERA_RUNS_DIR", default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Format of everything on stderr: `json` makes every line one JSON object (progress,
    /// run header and summary, errors with their diagnostics, logs; see README.md).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// How to show progress: bars on a terminal, timestamped lines otherwise.
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// More logging (-v: info, -vv: debug, -vvv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// Bars when stderr is a terminal, lines otherwise.
    Auto,
    Bars,
    Lines,
    /// Only the summary.
    Quiet,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline, reusing stored results.
    Run(run::RunArgs),
    /// Show what `run` would do and why, without running anything.
    Status(status::StatusArgs),
    /// Print the stage graph.
    Dag(dag::DagArgs),
    /// Explain a stage's cache key and what changed since its last run.
    Explain(explain::ExplainArgs),
    /// Check a pipeline file without running it.
    Validate(validate::ValidateArgs),
    /// Write (or check) the JSON schema of pipeline files.
    Schema(schema::SchemaArgs),
    /// List recorded runs.
    Runs(runs::RunsArgs),
    /// Show one recorded run.
    Show(show::ShowArgs),
    /// Print the path of a recorded stage's result, or of one of its outputs.
    Path(path::PathArgs),
    /// Cancel the pending and running SLURM jobs of a run.
    Cancel(slurm::CancelArgs),
    /// Re-execute a recorded run from its resolved pipeline.
    Rerun(rerun::RerunArgs),
    /// Remove store entries no recent run refers to.
    Gc(gc::GcArgs),
    /// Re-hash every store entry and report those that changed on disk.
    Verify(verify::VerifyArgs),
    /// Sample text from a trained model (a model folder, or a run's train stage).
    Generate(generate::GenerateArgs),
    /// A model's loss, perplexity and bits per byte on text files.
    Score(score::ScoreArgs),
    /// Work with the Hugging Face cache (import local files for offline runs).
    Hub(hub::HubArgs),
    /// Execute one stage of a recorded run (used by batch jobs).
    #[command(hide = true)]
    ExecStage(exec_stage::ExecStageArgs),
}

/// An error already shown to the user in full (e.g. rendered diagnostics), with its exit code.
#[derive(Debug)]
pub struct Reported {
    pub code: u8,
    pub text: String,
}

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}
impl std::error::Error for Reported {}

/// An invalid-input error (exit code 2) with a message.
pub fn invalid(text: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Reported {
        code: exit::INVALID,
        text: format!("error: {}", text.into()),
    })
}

/// An operational error (exit code 1) with a message.
pub fn failed(text: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Reported {
        code: exit::FAILED,
        text: format!("error: {}", text.into()),
    })
}

pub use itera_engine::fs::error_text;

/// Parses the command line, runs the subcommand and returns its exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() && json_requested() => {
            jsonlog::error(exit::INVALID, &e.render().to_string(), None);
            return ExitCode::from(exit::INVALID);
        }
        Err(e) => e.exit(),
    };
    init_logging(&cli.global);
    raise_open_file_limit();
    let g = &cli.global;
    let result = match cli.command {
        Command::Run(a) => run::main(g, a),
        Command::Status(a) => status::main(g, a),
        Command::Dag(a) => dag::main(g, a),
        Command::Explain(a) => explain::main(g, a),
        Command::Validate(a) => validate::main(g, a),
        Command::Schema(a) => schema::main(g, a),
        Command::Runs(a) => runs::main(g, a),
        Command::Show(a) => show::main(g, a),
        Command::Path(a) => path::main(g, a),
        Command::Cancel(a) => slurm::cancel_main(g, a),
        Command::Rerun(a) => rerun::main(g, a),
        Command::Gc(a) => gc::main(g, a),
        Command::Verify(a) => verify::main(g, a),
        Command::Generate(a) => generate::main(g, a),
        Command::Score(a) => score::main(g, a),
        Command::Hub(a) => hub::main(g, a),
        Command::ExecStage(a) => exec_stage::main(g, a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            if let Some(r) = err.downcast_ref::<Reported>() {
                if jsonlog::enabled() {
                    jsonlog::error(r.code, &r.text, err.downcast_ref());
                } else {
                    eprintln!("{}", r.text.trim_end());
                }
                return ExitCode::from(r.code);
            }
            if is_broken_pipe(&err) {
                return ExitCode::from(exit::OK);
            }
            if jsonlog::enabled() {
                jsonlog::error(exit::FAILED, &format!("error: {}", error_text(&err)), None);
            } else {
                eprintln!("error: {}", error_text(&err));
            }
            ExitCode::from(exit::FAILED)
        }
    }
}

/// A run holds one open lease file per key it reads (`store::lease`), so a pipeline of
/// thousands of stages needs more than the usual soft limit of 1,024 descriptors: raise
/// the soft limit to the hard one (allowed without privileges).
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct for this process.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging(g: &Global) {
    use tracing_subscriber::EnvFilter;
    let default = match g.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    match g.log_format {
        LogFormat::Text => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .try_init();
        }
        LogFormat::Json => {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            jsonlog::enable();
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(jsonlog::JsonLayer)
                .try_init();
        }
    }
}

/// Whether the command line asks for JSON logs (for errors found while parsing it).
fn json_requested() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .any(|w| w[0] == "--log-format" && w[1] == "json")
        || args.iter().any(|a| a == "--log-format=json")
}

/// Writes to stdout; a closed pipe ends quietly.
pub fn out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
