//! Test support for cachette.
//!
//! This crate is only ever used from tests and benches, so it favours loud,
//! descriptive panics over error plumbing: a test that cannot start its Redis
//! should fail immediately and say why.
//!
//! The main item is [`RedisServer`], a real `redis-server` process on a free
//! loopback port that lives exactly as long as the value does; [`Fixture`]
//! pairs a store with what it needs; [`conformance`] is the suite every
//! store must pass; [`node`] runs instances as separate processes.
//! [`PostgresServer`] does for PostgreSQL what
//! [`RedisServer`] does for Redis, for the catalog service's tests.

// Panicking is the correct failure mode for test support; the workspace-wide
// warnings on `unwrap`/`expect` exist for the library crates, not for this one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixture;
mod postgres;
mod server;

pub mod conformance;
pub mod node;

pub use fixture::{Fixture, connect};
pub use postgres::PostgresServer;
pub use server::RedisServer;
