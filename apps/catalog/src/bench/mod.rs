//! Measurements that need servers of their own: the hot-GET benchmark and
//! the load report start theirs as child processes of the `catalog`
//! binary, so the load generator never shares a runtime with what it
//! measures; the outage report runs its catalogs in process, because it
//! flips their database's outage switch (it measures errors, and latency
//! only as a bound).

pub mod baseline;
mod hot;
pub mod instance;
mod load_report;
mod outage;

pub use hot::{HotBench, run_hot_bench};
pub use instance::{Instance, InstanceError};
pub use load_report::{LoadReport, run_load_report};
pub use outage::{
    OutageReport, PhaseResult, Phases, Share, Variant, VariantResult, run_outage_report,
};

/// A failed measurement.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Load(#[from] crate::load::LoadError),
    #[error(transparent)]
    Client(#[from] crate::load::ClientError),
    #[error(transparent)]
    Start(#[from] crate::server::StartError),
    #[error("{0}")]
    Setup(String),
}
