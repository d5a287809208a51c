//! The SLURM executor's parts: batch scripts ([`script`]), submission with retries
//! ([`sbatch`]), job states from exit-code files and the scheduler ([`state`]),
//! cancellation ([`cancel`]) and the run's record of its jobs ([`jobs`]).
//!
//! Every stage that is not cached becomes one batch job that runs
//! `itera exec-stage --run RUN_DIR --stage NAME`; jobs depend on their upstream jobs with
//! `afterok` and `--kill-on-invalid-dep=yes`, so the whole DAG is queued at once.

pub mod cancel;
pub mod command;
pub mod executor;
pub mod follow;
pub mod jobs;
pub mod plan;
pub mod sbatch;
pub mod script;
pub mod shared_fs;
pub mod state;
pub mod status;

pub use sbatch::JobId;
