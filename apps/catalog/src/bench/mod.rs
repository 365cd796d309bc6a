//! Measurements that need servers of their own: the hot-GET benchmark and
//! the load report. Each starts its servers as child processes of the
//! `catalog` binary, so the load generator never shares a runtime with
//! what it measures.

pub mod baseline;
mod hot;
pub mod instance;
mod load_report;

pub use hot::{HotBench, run_hot_bench};
pub use instance::{Instance, InstanceError};
pub use load_report::{LoadReport, run_load_report};

/// A failed measurement.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Load(#[from] crate::load::LoadError),
    #[error(transparent)]
    Client(#[from] crate::load::ClientError),
    #[error("{0}")]
    Setup(String),
}
