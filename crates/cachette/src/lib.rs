//! cachette: typed cache-aside for Rust services, over an embedded
//! in-process store or Redis, without the classic caching bugs.
//!
//! # A tour
//!
//! * [`Cache`] is one namespace of one value type, made by
//!   [`Cache::builder`]. It reads and writes typed values through serde
//!   ([`Json`] by default) and always with a TTL: there is no way to store
//!   an entry that never expires ([`Ttl`]).
//! * [`Cache::get_or_load`] is cache-aside. Concurrent misses of one key run
//!   the loader once ([`flight`](crate#single-flight)); the load belongs to
//!   the flight, not to the first caller, so a caller that gives up does not
//!   cancel it for the others; a panicking loader is an error for every
//!   waiter; loader errors are returned and never cached. "Not found" can be
//!   cached for a short negative TTL ([`Cache::get_or_load_optional`]).
//! * [`ReadThrough`] binds a [`Loader`] to a cache so callers only say
//!   `get(key)`; [`Cache::write_through`] persists to the source first and
//!   then updates the cache.
//! * Stores sit behind the small [`Store`](store::Store) trait:
//!   [`EmbeddedStore`](store::EmbeddedStore) (the default, bounded by bytes)
//!   and [`RedisStore`](store::RedisStore) (one server, a Redis Cluster,
//!   or a master found through Sentinel, by URL:
//!   [`RedisConfig`](store::RedisConfig)). One conformance suite runs
//!   against each.
//! * Every entry is wrapped in a small versioned [`envelope`], so a cached
//!   `""`, `0`, `false` or `null` is a hit, and another application's value,
//!   a truncated one or a future format reads as a counted miss, never as
//!   an error or a panic. Payloads over 1 KiB are stored LZ4-compressed
//!   when that saves an eighth or more ([`CacheBuilder::compress_above`]).
//! * [`Cache::stats`] gives hits, misses, loads, load errors and the hit
//!   rate per namespace; the same events go to the `metrics` facade.
//!
//! # Key layout
//!
//! `[prefix:]namespace:v<schema>:{key}` — the schema version lets a deploy
//! that changes a value's shape start on fresh keys; the key sits in a
//! Redis Cluster hash tag so all keys of one entry share a slot. Keys over
//! [`CacheBuilder::max_key_bytes`] (200 by default), or starting with `#`,
//! are stored as `{#<sha256 hex>}`.
//!
//! # Single flight and fill leases
//!
//! See the `flight` and `load` module docs in the source: one task per
//! loading key in a process, waiters subscribe to its outcome; across
//! processes the task claims the key's fill lease in the store
//! ([`store::lease`]) and the others wait for its fill. Every write or
//! delete ends the lease, so a load that read the source before the write
//! cannot store its value after it.
//!
//! # Past freshness
//!
//! [`CacheBuilder::stale_while_revalidate`], [`CacheBuilder::early_refresh`]
//! and [`CacheBuilder::fail_safe`] (with soft and hard load timeouts) decide
//! what a read serves once an entry ages; see the `policy` module docs.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use cachette::{Cache, store::EmbeddedStore};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Product { id: u64, name: String }
//!
//! let store = EmbeddedStore::new(256 * 1024 * 1024);
//! let products: Cache<Product> = Cache::builder("product")
//!     .schema_version(1)
//!     .ttl(Duration::from_secs(600))
//!     .ttl_jitter(0.1)
//!     .store(store.clone())
//!     .build()?;
//!
//! let p = products
//!     .get_or_load("7", || async {
//!         // the database query goes here
//!         Ok::<_, std::io::Error>(Product { id: 7, name: "lamp".into() })
//!     })
//!     .await?;
//! assert_eq!(p.name, "lamp");
//! # Ok(()) }
//! ```

pub mod backplane;
mod batch;
mod builder;
mod cache;
mod codec;
mod compress;
mod error;
mod flight;
mod glob;
mod invalidate;
mod key;
mod l1;
mod limit;
mod load;
mod loader;
mod marks;
mod policy;
mod signal;
mod stats;
mod ttl;
mod warm;

pub mod envelope;
pub mod store;

pub use crate::backplane::{Backplane, BackplaneConfig, BackplaneStats};
pub use crate::builder::{
    CacheBuilder, DEFAULT_FAIL_SAFE_THROTTLE, DEFAULT_L1_MAX_ENTRY_BYTES, DEFAULT_L1_TTL,
    DEFAULT_LEASE_TTL, DEFAULT_LEASE_WAIT, DEFAULT_MAX_VALUE_BYTES,
};
pub use crate::cache::{Cache, NotFound, Tagged, Value};
pub use crate::codec::{Codec, Json};
pub use crate::compress::DEFAULT_COMPRESS_ABOVE;
pub use crate::error::{BoxError, BuildError, Error};
pub use crate::glob::escape_glob;
pub use crate::invalidate::{DEFAULT_MARK_POLL, SCAN_BATCH, Sweep};
pub use crate::key::DEFAULT_MAX_KEY_BYTES;
pub use crate::l1::L1Usage;
pub use crate::limit::{DEFAULT_LOAD_LIMIT, LoadLimit};
pub use crate::loader::{Loader, ReadThrough};
pub use crate::stats::Stats;
pub use crate::ttl::Ttl;
pub use crate::warm::{WarmOptions, WarmReport};
