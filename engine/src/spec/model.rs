//! The resolved pipeline: what `spec::load` produces after `extends`, `--set`, defaults and
//! validation. Everything downstream (graph, store keys, executors, run records) reads this.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A stage's name in a pipeline (`[stages.NAME]`).
pub type StageName = String;

/// A fully resolved, validated pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pipeline {
    pub name: String,
    pub description: Option<String>,
    /// Seed handed to every stage (enters every cache key).
    pub seed: u64,
    /// `[pipeline.slurm]`: resource defaults for the SLURM executor.
    pub slurm: Resources,
    pub stages: BTreeMap<StageName, StageSpec>,
    /// The root pipeline file as given on the command line.
    pub source: PathBuf,
    /// Folder of the root file: relative paths in params are resolved against it.
    pub base_dir: PathBuf,
    /// `--set` overrides as typed, in order.
    pub overrides: Vec<String>,
    /// The merged document (after `extends` and `--set`) as TOML text: what is recorded and
    /// what `itera rerun` loads again.
    pub resolved_toml: String,
}

/// One resolved stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageSpec {
    pub name: StageName,
    pub kind: String,
    /// Input name -> upstream references, in declaration order (one unless the slot is `many`).
    pub inputs: BTreeMap<String, Vec<InputRef>>,
    pub resources: Resources,
    /// Canonical params (typed, defaults filled, keys sorted) as JSON.
    pub params: serde_json::Value,
}

/// A reference to an upstream stage's artifact (`"stage"`) or one of its outputs (`"stage.output"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InputRef {
    pub stage: StageName,
    pub output: Option<String>,
}

impl std::fmt::Display for InputRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.output {
            Some(o) => write!(f, "{}.{}", self.stage, o),
            None => write!(f, "{}", self.stage),
        }
    }
}

/// `[stages.NAME.resources]` and `[pipeline.slurm]`: what a stage needs from a batch
/// scheduler. Unset fields fall back to `[pipeline.slurm]`, then to the scheduler's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Wall-time limit, SLURM syntax (`"02:00:00"`, `"1-00:00:00"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// CPUs for the stage (`--cpus-per-task`); also the thread budget of a local run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory (`--mem`), e.g. `"32G"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// GPUs (`--gpus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// Generic resources (`--gres`), e.g. `"gpu:a100:1"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gres: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// Extra `sbatch` arguments, verbatim (e.g. `["--constraint=a100"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sbatch_args: Vec<String>,
    /// Shell lines put in the job script before the command (e.g. `module load cuda`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setup: Vec<String>,
    /// Run this stage on the submitting host instead of as a batch job (e.g. downloads
    /// where compute nodes have no internet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<bool>,
}

impl Resources {
    /// `self` with unset fields taken from `defaults`.
    pub fn or(&self, defaults: &Resources) -> Resources {
        Resources {
            time: self.time.clone().or_else(|| defaults.time.clone()),
            cpus: self.cpus.or(defaults.cpus),
            mem: self.mem.clone().or_else(|| defaults.mem.clone()),
            gpus: self.gpus.or(defaults.gpus),
            gres: self.gres.clone().or_else(|| defaults.gres.clone()),
            partition: self
                .partition
                .clone()
                .or_else(|| defaults.partition.clone()),
            account: self.account.clone().or_else(|| defaults.account.clone()),
            qos: self.qos.clone().or_else(|| defaults.qos.clone()),
            sbatch_args: if self.sbatch_args.is_empty() {
                defaults.sbatch_args.clone()
            } else {
                self.sbatch_args.clone()
            },
            setup: if self.setup.is_empty() {
                defaults.setup.clone()
            } else {
                self.setup.clone()
            },
            local: self.local.or(defaults.local),
        }
    }
}
