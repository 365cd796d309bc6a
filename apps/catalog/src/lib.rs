//! `catalog`: the cachette reference service.
//!
//! A product API over SQLite (default) or PostgreSQL with cachette in
//! front: products by id through cache-aside with single flight and
//! negative caching, category listings cached and orphaned by a
//! per-category generation on every update, write-through on `PUT`, the
//! hottest products warmed on start. With it, the load generator and the
//! benchmarks that measure it.
//!
//! - [`db`]: the database, its schema, its deterministic seed.
//! - [`catalog`]: the operations, with and without the cache.
//! - [`http`]: the HTTP contract.
//! - [`server`]: startup (`catalog serve`).
//! - [`load`]: the load generator (`catalog loadgen`).
//! - [`bench`]: servers in child processes, the hot-GET benchmark and the
//!   load report.

pub mod bench;
pub mod catalog;
pub mod db;
pub mod http;
pub mod load;
pub mod product;
pub mod server;
