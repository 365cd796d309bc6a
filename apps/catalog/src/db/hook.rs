//! A hook that runs before every database query.
//!
//! The catalog uses it to make its source slower on purpose (`--db-latency`,
//! to show what the cache saves when the database is far away), and tests
//! use it to hold queries at a gate so that many requests are provably
//! waiting at once. Production runs without one.

use std::time::Duration;

use futures_util::future::BoxFuture;

/// Runs before each query; the query waits for the returned future.
pub trait QueryHook: Send + Sync + 'static {
    /// `query` names the statement (`product`, `category_page`, ...).
    fn before(&self, query: &'static str) -> BoxFuture<'static, ()>;
}

/// Adds the same latency to every query.
#[derive(Debug, Clone, Copy)]
pub struct FixedLatency(pub Duration);

impl QueryHook for FixedLatency {
    fn before(&self, _query: &'static str) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(self.0))
    }
}
