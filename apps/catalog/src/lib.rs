//! `catalog`: the cachette reference service.
//!
//! A product API over SQLite (default) or PostgreSQL with cachette in
//! front: products by id through cache-aside with single flight and
//! negative caching, category listings cached with their category's tag
//! and invalidated by it on every update, write-through on `PUT`, the
//! hottest products warmed on start (in batches, a few queries at once).
//! With it, the load generator and the benchmarks that measure it.
//!
//! - [`db`]: the database, its schema, its deterministic seed.
//! - [`catalog`]: the operations, with and without the cache.
//! - [`read_policy`]: how reads ride out a slow or failing database
//!   (stale-while-revalidate, fail-safe, timeouts).
//! - [`http`]: the HTTP contract.
//! - [`server`]: startup (`catalog serve`).
//! - [`load`]: the load generator (`catalog loadgen`).
//! - [`bench`]: the hot-GET benchmark and the load report (servers in
//!   child processes), and the outage report (in process).

pub mod bench;
pub mod catalog;
pub mod db;
pub mod http;
pub mod load;
pub mod product;
pub mod read_policy;
pub mod server;
