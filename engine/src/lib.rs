//! itera-engine: the pipeline engine. It knows pipelines, DAGs, the content-addressed
//! store, executors and run records, and nothing about machine learning.

pub mod exec;
pub mod fs;
pub mod graph;
pub mod host;
pub mod live;
pub mod logcap;
pub mod record;
pub mod schema;
pub mod spec;
pub mod stage;
pub mod store;
pub mod supervise;
