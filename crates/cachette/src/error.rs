//! Errors returned by cachette.
//!
//! One enum for calls on a [`Cache`](crate::Cache) ([`Error`]), one for the
//! stores underneath ([`StoreError`](crate::store::StoreError)) and one for
//! configuration mistakes caught by `build()` ([`BuildError`]). Callers branch
//! on the predicates (`is_store_unavailable`, `is_load_error`) rather than on
//! variants, so new variants do not break them.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use crate::store::StoreError;

/// A boxed error from a loader, a codec or a backend.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The error of a cache call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key cannot be stored (it is empty).
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// Why the key was refused.
        reason: &'static str,
    },
    /// A tag cannot be stored (empty, over 128 bytes, or more than 32 on
    /// one entry).
    #[error("invalid tag: {reason}")]
    InvalidTag {
        /// Why the tag was refused.
        reason: &'static str,
    },
    /// A key pattern cannot be used (empty).
    #[error("invalid pattern: {reason}")]
    InvalidPattern {
        /// Why the pattern was refused.
        reason: &'static str,
    },
    /// A TTL outside what a store can honour (zero, under a millisecond, or
    /// over [`Ttl::MAX`](crate::Ttl::MAX)).
    #[error("invalid TTL {ttl:?}: {reason}")]
    InvalidTtl {
        /// The TTL that was asked for.
        ttl: Duration,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The encoded entry is larger than the namespace allows; nothing was written.
    #[error(
        "value for namespace `{namespace}` is {size} bytes encoded, over the limit of {max} bytes; nothing was written"
    )]
    ValueTooLarge {
        /// The namespace of the cache.
        namespace: String,
        /// The size of the encoded entry (before compression).
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The value could not be serialized; nothing was written.
    #[error("could not serialize a value for namespace `{namespace}`; nothing was written")]
    Serialize {
        /// The namespace of the cache.
        namespace: String,
        /// The codec's error.
        #[source]
        source: BoxError,
    },
    /// The store failed or timed out.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The loader returned an error. It is shared by every caller that waited
    /// on the same load, and it was not cached.
    #[error("loader failed for namespace `{namespace}`")]
    Load {
        /// The namespace of the cache.
        namespace: String,
        /// The loader's error, shared by all waiters of the load.
        #[source]
        source: Arc<dyn StdError + Send + Sync + 'static>,
    },
    /// The loader panicked. Every caller waiting on that load gets this error.
    #[error("loader panicked for namespace `{namespace}`: {message}")]
    LoaderPanicked {
        /// The namespace of the cache.
        namespace: String,
        /// The panic payload, when it was a string.
        message: String,
    },
    /// The load passed the hard timeout
    /// ([`CacheBuilder::hard_timeout`](crate::CacheBuilder::hard_timeout))
    /// and was abandoned; no stale value was at hand.
    #[error("load for namespace `{namespace}` passed its hard timeout of {after:?}")]
    LoadTimeout {
        /// The namespace of the cache.
        namespace: String,
        /// The hard timeout.
        after: Duration,
    },
    /// The load task was dropped before it finished (its runtime shut down).
    #[error("load for namespace `{namespace}` was abandoned before it finished")]
    LoadAbandoned {
        /// The namespace of the cache.
        namespace: String,
    },
    /// A read-your-writes write is stored, but the backplane could not
    /// confirm that other instances dropped their copies (see
    /// [`Backplane`](crate::backplane::Backplane)).
    #[error("backplane: {reason}")]
    Backplane {
        /// What could not be confirmed.
        reason: String,
    },
    /// Settings out of range (from a builder or a connect call).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The source of truth refused a write-through; the cache was not touched.
    #[error("write to the source failed for namespace `{namespace}`; the cache was not touched")]
    Write {
        /// The namespace of the cache.
        namespace: String,
        /// The source's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// True when the store could not be reached or did not answer in time.
    pub fn is_store_unavailable(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_unavailable())
    }

    /// True when a loader failed or panicked.
    pub fn is_load_error(&self) -> bool {
        matches!(
            self,
            Error::Load { .. }
                | Error::LoaderPanicked { .. }
                | Error::LoadAbandoned { .. }
                | Error::LoadTimeout { .. }
        )
    }

    /// The loader's own error, when it was of type `E`.
    ///
    /// ```
    /// # use cachette::Error;
    /// # fn f(err: Error) {
    /// if let Some(io) = err.loader_error::<std::io::Error>() {
    ///     eprintln!("source I/O failed: {io}");
    /// }
    /// # }
    /// ```
    pub fn loader_error<E: StdError + 'static>(&self) -> Option<&E> {
        match self {
            Error::Load { source, .. } => source.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// The source's own error of a failed [`Cache::write_through`](crate::Cache::write_through),
    /// when it was of type `E`.
    pub fn write_error<E: StdError + 'static>(&self) -> Option<&E> {
        match self {
            Error::Write { source, .. } => source.downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// A configuration mistake found by a builder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A namespace, prefix or other name has characters that would break the
    /// key layout (`:`, `{`, `}`, `#`, whitespace) or is empty.
    #[error("invalid {what} `{value}`: use 1 to 64 characters from A-Z a-z 0-9 _ - .")]
    InvalidName {
        /// Which setting.
        what: &'static str,
        /// The rejected value.
        value: String,
    },
    /// A TTL the stores cannot honour.
    #[error("invalid {what} {ttl:?}: {reason}")]
    InvalidTtl {
        /// Which setting.
        what: &'static str,
        /// The rejected value.
        ttl: Duration,
        /// Why.
        reason: &'static str,
    },
    /// An out-of-range number.
    #[error("invalid {what}: {reason}")]
    OutOfRange {
        /// Which setting.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Redis connection settings that do not parse (bad URL, port or db).
    #[error("invalid Redis configuration: {reason}")]
    Redis {
        /// What is wrong, never including a password.
        reason: String,
    },
}
