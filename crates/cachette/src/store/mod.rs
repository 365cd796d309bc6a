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
//!   connection, for caches shared by many processes: one server, a Redis
//!   Cluster, or a master found through Sentinel (see [`RedisConfig`] for
//!   the URL forms).
//!
//! Every store also keeps the fill leases of its entries ([`lease`]
//! module): claim, fill with the token, extend, release — each one atomic
//! in the store, and every write or delete of an entry ends its lease. That
//! is what lets the cache load a cold key once across processes and never
//! store a value read before a write.
//!
//! Values are opaque bytes here: the store never looks inside the envelope.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{BoxError, Ttl};

mod breaker;
mod embedded;
pub mod lease;
mod redis;

pub(crate) use self::breaker::{Breaker, Deferred, Probe};
pub use self::breaker::{BreakerConfig, CircuitState};
pub use self::embedded::EmbeddedStore;
pub use self::lease::{Claim, Lease, LeaseToken};
pub(crate) use self::redis::{Connection, classify, ensure_crypto_provider, pubsub_nodes};
pub use self::redis::{RedisConfig, RedisConnection, RedisStore};
pub use crate::marks::Mark;

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

/// The circuit breaker's view of a store, for stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Circuit {
    /// Closed, open or half-open.
    pub state: CircuitState,
    /// How often the circuit opened.
    pub opened: u64,
    /// Calls refused at once because it was open.
    pub refused: u64,
}

impl Default for Circuit {
    fn default() -> Circuit {
        Circuit {
            state: CircuitState::Closed,
            opened: 0,
            refused: 0,
        }
    }
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
    /// The circuit breaker around the store is open: the call was not sent
    /// (see [`BreakerConfig`]).
    #[error("{store} store skipped: circuit open after repeated failures")]
    CircuitOpen {
        /// Which store.
        store: StoreKind,
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
    /// True when the store could not be reached, timed out, or was skipped
    /// by an open circuit.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. }
                | StoreError::Timeout { .. }
                | StoreError::CircuitOpen { .. }
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

    /// The state of the circuit breaker around the store, with how often it
    /// opened and how many calls it refused. A store without one is always
    /// closed.
    fn circuit(&self) -> Circuit {
        Circuit::default()
    }

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

    /// Claims the fill lease of `key` for `token`, for `ttl`, unless the
    /// entry changed since the caller read it. `seen` is the start of the
    /// entry the caller read (`None` if it found none): a present entry
    /// that does not start with it is returned as [`Lease::Changed`]
    /// instead.
    /// One atomic round trip. On Redis Cluster `key` must carry a hash tag
    /// (`{…}`, as every key the cache makes does), so that its lease is in
    /// the same slot; [`Store::fill`] likewise.
    async fn claim(
        &self,
        key: &str,
        seen: Option<&[u8]>,
        token: &LeaseToken,
        ttl: Ttl,
    ) -> Result<Claim, StoreError>;

    /// Stores `value` under `key` for `ttl` only if `token` still holds the
    /// key's lease, and ends the lease; true if stored. [`Store::set`],
    /// [`Store::set_many`] and [`Store::delete`] end a key's lease, so a
    /// fill that lost a race with a write is refused.
    async fn fill(
        &self,
        key: &str,
        token: &LeaseToken,
        value: Bytes,
        ttl: Ttl,
    ) -> Result<bool, StoreError>;

    /// Extends the lease of `key` to `ttl` from now if `token` holds it.
    async fn extend_lease(
        &self,
        key: &str,
        token: &LeaseToken,
        ttl: Ttl,
    ) -> Result<bool, StoreError>;

    /// Ends the lease of `key` if `token` holds it (never someone else's).
    async fn release_lease(&self, key: &str, token: &LeaseToken) -> Result<bool, StoreError>;

    /// Raises the invalidation mark under `key` to at least `mark` (each
    /// time to the later of the two: a mark never goes back), kept for
    /// `ttl`; returns the mark now stored. One atomic round trip. See
    /// `marks` for what marks are.
    async fn raise_mark(&self, key: &str, mark: Mark, ttl: Ttl) -> Result<Mark, StoreError>;

    /// Deletes every entry whose key matches the glob `pattern` (Redis
    /// rules), with its lease, walking the keyspace in batches of about
    /// `batch` keys: `SCAN` and `UNLINK` on Redis, never `KEYS`, so the
    /// server keeps answering other clients in between. Returns how many
    /// keys matched and were deleted.
    async fn delete_matching(&self, pattern: &str, batch: usize) -> Result<u64, StoreError>;

    /// Deletes entries matching `pattern` that were created before
    /// `created_before_ms` (unix ms, from the envelope), in batches like
    /// [`Store::delete_matching`]; newer entries and other values stay.
    /// Physical cleanup after a namespace clear.
    async fn sweep(
        &self,
        pattern: &str,
        created_before_ms: u64,
        batch: usize,
    ) -> Result<u64, StoreError>;
}

/// Rounds of a keyspace walk at most: a backstop against a store whose
/// cursor never comes back to 0, far above any real keyspace / batch.
pub(crate) const MAX_SCAN_ROUNDS: usize = 10_000_000;

/// The creation time (unix ms) of an encoded entry, from its header;
/// `None` for anything that is not an entry.
pub(crate) fn created_ms(value: &[u8]) -> Option<u64> {
    if value.get(..2)? != crate::envelope::MAGIC {
        return None;
    }
    Some(u64::from_le_bytes(value.get(4..12)?.try_into().ok()?))
}
