//! End-to-end tests of the `itera` binary: each test writes a pipeline into a temporary
//! folder and runs the real binary there (see `test.rs` for the `Test` builder).

mod test;

/// `exec-stage` (what batch jobs run) and Ctrl-C.
mod batch;
/// First run, cached rerun, param/file changes, renames.
mod caching;
/// `validate`, `dag`, `status`, `explain`, `show`, `runs` output.
mod commands;
/// Two runs at once; a run killed with SIGKILL mid-stage.
mod concurrency;
/// Failing stages and invalid pipelines: exit codes, reports, nothing half-written.
mod failures;
/// Fault trials: gc against live runs, corruption, kill -9, double Ctrl-C, full disk,
/// `--force` under readers, broken records, links leaving an artifact.
mod faults;
/// `--log-format json`: every stderr line a JSON event.
mod json_logs;
/// `gc` and `verify`.
mod maintenance;
/// `rerun` and `rerun --verify`.
mod rerun;
/// The pipeline schema under a third-party validator.
mod schema_files;
/// `score`: a model's loss on text, against the evaluate stage.
mod score;
/// `--executor slurm` against a real SLURM.
mod slurm;
/// Parameter sweeps (`matrix`): names, caching, follow and gather, selection.
mod sweeps;
