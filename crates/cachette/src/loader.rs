//! Read-through: a namespace bound to its source.
//!
//! With cache-aside every call site passes its loader, and two call sites
//! can load the same key differently. Read-through binds one [`Loader`] to
//! the cache, so callers only say `get(key)` and the source is defined once.

use std::future::Future;
use std::sync::Arc;

use crate::cache::{Cache, Value};
use crate::codec::{Codec, Json};
use crate::{BoxError, Error};

/// Loads values from the source of truth by key.
///
/// ```
/// use cachette::Loader;
///
/// struct Squares;
///
/// impl Loader<u64> for Squares {
///     type Error = std::num::ParseIntError;
///     async fn load(&self, key: &str) -> Result<Option<u64>, Self::Error> {
///         let n: u64 = key.parse()?;
///         Ok(Some(n * n))
///     }
/// }
/// ```
pub trait Loader<V>: Send + Sync + 'static {
    /// The source's error.
    type Error: Into<BoxError> + Send + 'static;

    /// The value of `key`, or `None` when the source has no such key.
    fn load(&self, key: &str) -> impl Future<Output = Result<Option<V>, Self::Error>> + Send;
}

/// A cache bound to its [`Loader`]. Cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use cachette::{Cache, Loader, ReadThrough};
/// # struct Squares;
/// # impl Loader<u64> for Squares {
/// #     type Error = std::num::ParseIntError;
/// #     async fn load(&self, key: &str) -> Result<Option<u64>, Self::Error> {
/// #         Ok(Some(key.parse::<u64>()?.pow(2)))
/// #     }
/// # }
/// let squares = ReadThrough::new(Cache::builder("square").build()?, Squares);
/// assert_eq!(squares.get("12").await?, Some(144));
/// assert_eq!(squares.get("12").await?, Some(144)); // served from the cache
/// assert_eq!(squares.cache().stats().loads, 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ReadThrough<V, L, C = Json> {
    cache: Cache<V, C>,
    loader: Arc<L>,
}

impl<V, L, C> Clone for ReadThrough<V, L, C> {
    fn clone(&self) -> Self {
        ReadThrough {
            cache: self.cache.clone(),
            loader: Arc::clone(&self.loader),
        }
    }
}

impl<V: Value, L: Loader<V>, C: Codec> ReadThrough<V, L, C> {
    /// Binds `loader` to `cache`.
    pub fn new(cache: Cache<V, C>, loader: L) -> Self {
        ReadThrough {
            cache,
            loader: Arc::new(loader),
        }
    }

    /// The value of `key`: cached, or loaded once and cached. A source's
    /// "not found" is cached too when the cache has a negative TTL.
    ///
    /// # Errors
    /// As [`Cache::get_or_load`].
    pub async fn get(&self, key: &str) -> Result<Option<V>, Error> {
        let loader = Arc::clone(&self.loader);
        let owned = key.to_owned();
        self.cache
            .get_or_load_optional(key, move || async move { loader.load(&owned).await })
            .await
    }

    /// The cache underneath, for writes, deletes and stats.
    pub fn cache(&self) -> &Cache<V, C> {
        &self.cache
    }
}
