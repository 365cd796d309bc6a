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
//!
//! Beyond a single plain server, the same process machinery (free ports,
//! temp dirs, bounded readiness waits, kill on drop, and the check that no
//! server ever ran `KEYS`) gives every Redis deployment shape cachette has
//! to cope with:
//!
//! * [`RedisServer::builder`] (or [`RedisServer::spawn_with_acl`] and
//!   [`RedisServer::spawn_tls`]): a server whose only account is an ACL
//!   user with a password (the `default` user is off), and/or one that
//!   speaks only TLS, with a certificate from a throwaway CA generated at
//!   test time ([`RedisServer::ca_cert_pem`], `rediss://` URLs,
//!   [`RedisServer::authenticated_url`]).
//! * [`RedisCluster`]: three cluster masters with the slots split in three,
//!   for a `redis::cluster_async` client; slots can be migrated with the
//!   real protocol, step by step ([`RedisCluster::begin_migration`],
//!   [`RedisCluster::move_keys`], [`RedisCluster::finish_migration`]), so
//!   tests can run load through `ASK` and `MOVED` redirections. Comes up in
//!   about 2 s (Redis holds a new cluster down for 2 s).
//! * [`SentinelGroup`]: a master, a replica and three sentinels; tests can
//!   force a failover ([`SentinelGroup::failover`], about 0.6 s) or SIGKILL
//!   the master and wait for the promotion
//!   ([`SentinelGroup::wait_for_new_master`], about 3 s).
//!
//! Their waiting helpers are blocking and bounded: each polls for its
//! condition with backoff and panics with what it last saw when its deadline
//! passes.

// Panicking is the correct failure mode for test support; the workspace-wide
// warnings on `unwrap`/`expect` exist for the library crates, not for this one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster;
mod fixture;
mod postgres;
mod sentinel;
mod server;
mod tls;

pub mod conformance;
pub mod node;

pub use cluster::{RedisCluster, SLOTS};
pub use fixture::{Fixture, connect};
pub use postgres::PostgresServer;
pub use sentinel::SentinelGroup;
pub use server::{RedisServer, RedisServerBuilder};
