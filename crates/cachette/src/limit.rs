//! The cap on concurrent loads.
//!
//! A cache absorbs the source's traffic only while it answers. When the
//! store is down (the circuit open), every read becomes a load; single
//! flight keeps that to one load per key per process, but a process serving
//! many keys would still send the source as many queries at once as it has
//! distinct misses. A [`LoadLimit`] bounds that: every loader run (single
//! key, batch, warming) takes a permit first, and waits for one when all
//! are taken. So a Redis outage slows the source down instead of taking it
//! down.
//!
//! Every cache built without [`CacheBuilder::load_limit`] shares one
//! process-wide limit of [`DEFAULT_LOAD_LIMIT`] loads.
//!
//! [`CacheBuilder::load_limit`]: crate::CacheBuilder::load_limit

use std::sync::{Arc, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Concurrent loads the process-wide default limit allows.
pub const DEFAULT_LOAD_LIMIT: usize = 128;

/// A cap on concurrent loader runs, shared by every cache given a clone.
///
/// ```
/// use cachette::LoadLimit;
///
/// // The database pool has 16 connections: never run more loaders at once.
/// let limit = LoadLimit::new(16);
/// assert_eq!(limit.max(), 16);
/// ```
///
/// A loader that itself loads through a cache sharing the limit holds one
/// permit while waiting for another: keep such nesting shallow, or give the
/// inner cache its own limit.
#[derive(Debug, Clone)]
pub struct LoadLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

impl LoadLimit {
    /// At most `max` loads at once (at least 1).
    pub fn new(max: usize) -> LoadLimit {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        LoadLimit {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// The process-wide limit caches share by default.
    pub fn process_wide() -> LoadLimit {
        static SHARED: OnceLock<LoadLimit> = OnceLock::new();
        SHARED
            .get_or_init(|| LoadLimit::new(DEFAULT_LOAD_LIMIT))
            .clone()
    }

    /// How many loads may run at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How many loads are running now.
    pub fn in_use(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }

    /// A permit if one is free now.
    pub(crate) fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }

    /// A permit, waiting for one. `None` only if the limit was closed,
    /// which it never is.
    pub(crate) async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).acquire_owned().await.ok()
    }
}
