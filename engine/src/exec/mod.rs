//! Executors: how the stages of a resolved pipeline get run.

pub mod slurm;
