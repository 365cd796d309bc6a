//! Stores: where encoded entries live.
//!
//! A [`Store`] is deliberately small — get, set with a TTL, delete, and their
//! batched forms — because every capability above it (single flight,
//! negative caching, stats) is the cache's job and must behave the same on
//! every store. Two ship here:
//!
//! * [`EmbeddedStore`]: in process, bounded by total bytes, the default. It
//!   needs nothing and is a product feature, not a test double: it passes the
//!   same conformance suite as Redis.
//! * [`RedisStore`]: Redis through one multiplexed, self-reconnecting
//!   connection, for caches shared by many processes.
//!
//! Capabilities that only some stores have (atomic scripts for leases,
//! a Pub/Sub backplane, keyspace scans) will be added as trait methods with
//! default implementations that answer "not supported", so adding one is not
//! a breaking change and a store opts in by overriding it.
//!
//! Values are opaque bytes here: the store never looks inside the envelope.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{BoxError, Ttl};

mod embedded;
mod redis;

pub use self::embedded::EmbeddedStore;
pub(crate) use self::redis::classify;
pub use self::redis::{RedisConfig, RedisStore};

/// One entry of a batched write.
#[derive(Debug, Clone)]
pub struct StoreEntry {
    /// The store key.
    pub key: String,
    /// The encoded entry.
    pub value: Bytes,
    /// Its time to live.
    pub ttl: Ttl,
}

/// Which store answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreKind {
    /// The in-process [`EmbeddedStore`].
    Embedded,
    /// A [`RedisStore`].
    Redis,
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreKind::Embedded => "embedded",
            StoreKind::Redis => "redis",
        })
    }
}

/// A failure of a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached (connection refused or dropped).
    #[error("{store} store unavailable")]
    Unavailable {
        /// Which store.
        store: StoreKind,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// The store did not answer within its deadline.
    #[error("{store} store did not answer within {after:?}")]
    Timeout {
        /// Which store.
        store: StoreKind,
        /// The deadline that passed.
        after: Duration,
    },
    /// The store answered with an error (a bad command, a read-only replica,
    /// an authentication failure).
    #[error("{store} store refused the command")]
    Refused {
        /// Which store.
        store: StoreKind,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// True when the store could not be reached or timed out.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Timeout { .. }
        )
    }
}

/// Where encoded entries live. See the [module docs](self).
///
/// Every method is one round trip at most: batched forms must not loop over
/// single calls on a networked store.
#[async_trait]
pub trait Store: fmt::Debug + Send + Sync + 'static {
    /// Which store this is, for errors and stats.
    fn kind(&self) -> StoreKind;

    /// The entry under `key`, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;

    /// The entries under `keys`, in order: one round trip.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError>;

    /// Stores `value` under `key` for `ttl`, replacing any entry.
    async fn set(&self, key: &str, value: Bytes, ttl: Ttl) -> Result<(), StoreError>;

    /// Stores every entry: one round trip. Not atomic: after an error some
    /// entries may have been written.
    async fn set_many(&self, entries: &[StoreEntry]) -> Result<(), StoreError>;

    /// Removes `key`; true if an unexpired entry was there.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;
}
