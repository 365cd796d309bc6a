//! A hook that runs before every database query.
//!
//! The catalog uses it to make its source slower on purpose (`--db-latency`,
//! to show what the cache saves when the database is far away) or to take
//! it down ([`Outage`](super::Outage), for the outage report and its tests),
//! and tests use it to hold queries at a gate so that many requests are
//! provably waiting at once. Production runs without one.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::DbError;

/// Runs before each query; the query waits for the returned future, and
/// fails with its error instead of running if it returns one.
pub trait QueryHook: Send + Sync + 'static {
    /// `query` names the statement (`product`, `category_page`, ...).
    fn before(&self, query: &'static str) -> BoxFuture<'static, Result<(), DbError>>;
}

/// Adds the same latency to every query.
#[derive(Debug, Clone, Copy)]
pub struct FixedLatency(pub Duration);

impl QueryHook for FixedLatency {
    fn before(&self, _query: &'static str) -> BoxFuture<'static, Result<(), DbError>> {
        let latency = self.0;
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            Ok(())
        })
    }
}
