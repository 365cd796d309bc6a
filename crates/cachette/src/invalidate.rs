//! Invalidating many entries at once: by tag, the whole namespace, or a key
//! pattern.
//!
//! Tags and namespace clears cost one store write however many entries
//! they cover (see `marks`). Pattern invalidation walks the keyspace with
//! `SCAN` in batches and deletes with `UNLINK`: never `KEYS`, which stops
//! the server for every client while it walks the whole keyspace.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::Error;
use crate::backplane::Change;
use crate::cache::{Cache, Value};
use crate::codec::Codec;
use crate::envelope;
use crate::marks::Mark;

/// Keys handed to the store per batch when walking the keyspace.
pub const SCAN_BATCH: usize = 1_000;

/// The physical cleanup a [`Cache::clear`] started in the background.
#[derive(Debug)]
pub struct Sweep(Swept);

#[derive(Debug)]
enum Swept {
    Running(JoinHandle<Result<u64, Error>>),
    /// Without a Tokio runtime the sweep ran before `clear` returned.
    Done(Option<Result<u64, Error>>),
}

impl Sweep {
    /// Waits for the cleanup; how many orphaned entries it deleted.
    ///
    /// # Errors
    /// [`Error::Store`] when the store failed during the walk (the entries
    /// left are invisible all the same, and expire with their TTL).
    pub async fn finished(self) -> Result<u64, Error> {
        match self.0 {
            Swept::Running(task) => match task.await {
                Ok(result) => result,
                Err(e) => Err(Error::Store(crate::store::StoreError::Unavailable {
                    store: crate::store::StoreKind::Embedded,
                    source: Box::new(e),
                })),
            },
            Swept::Done(result) => result.unwrap_or(Ok(0)),
        }
    }
}

impl<V: Value, C: Codec> Cache<V, C> {
    /// Removes every entry carrying `tag`, in O(1): one small mark is
    /// written, whatever the number of entries. None of them is served
    /// again, by any instance, from the store or from L1; a load that read
    /// the source before this call cannot bring one back.
    ///
    /// Other instances see it at once with a backplane (in read-your-writes
    /// mode this returns once they have acknowledged), otherwise within the
    /// mark poll period ([`CacheBuilder::mark_poll`](crate::CacheBuilder::mark_poll)).
    ///
    /// # Errors
    /// [`Error::InvalidTag`]; [`Error::Store`] (nothing was invalidated);
    /// [`Error::Backplane`] as for writes.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), Error> {
        self.raise_tag(tag, true).await
    }

    /// Expires every entry carrying `tag`, in O(1): they are no longer
    /// served fresh or stale-while-revalidate, but stay usable as the
    /// fail-safe fallback if reloading them fails.
    ///
    /// # Errors
    /// As [`Cache::invalidate_tag`].
    pub async fn expire_tag(&self, tag: &str) -> Result<(), Error> {
        self.raise_tag(tag, false).await
    }

    async fn raise_tag(&self, tag: &str, remove: bool) -> Result<(), Error> {
        envelope::check_tags(&[tag]).map_err(|reason| Error::InvalidTag { reason })?;
        let key = self.inner.marks.tag_key(tag);
        self.raise(&key, remove).await.map(|_| ())
    }

    /// Clears the whole namespace in O(1): one mark voids every entry
    /// written before it (any schema version). The orphaned entries are
    /// then deleted by a background walk (`SCAN`, batches of
    /// [`SCAN_BATCH`]); the returned [`Sweep`] says when it is done, and
    /// may be dropped.
    ///
    /// # Errors
    /// [`Error::Store`] (nothing was cleared); [`Error::Backplane`] as for
    /// writes.
    pub async fn clear(&self) -> Result<Sweep, Error> {
        let key = self.inner.marks.namespace_key().to_owned();
        let mark = self.raise(&key, true).await?;
        if let Some(l1) = &self.inner.l1 {
            l1.invalidate_all();
        }
        let store = std::sync::Arc::clone(&self.inner.store);
        // Every schema version's entries: `[prefix:]ns:v*`. Marks live
        // under `[prefix:]ns:tag:` and `…:cleared`, leases are not entries.
        let pattern = format!("{}v*", self.inner.marks.head());
        // Entries created in the mark's millisecond may be newer than it:
        // they stay (and expire on their own if void).
        let before_ms = mark.removed_us / 1000;
        let namespace = self.inner.namespace.clone();
        let sweep = async move {
            let swept = store.sweep(&pattern, before_ms, SCAN_BATCH).await;
            match &swept {
                Ok(n) => {
                    tracing::debug!(%namespace, deleted = n, "namespace clear: orphans deleted")
                }
                Err(e) => {
                    tracing::warn!(%namespace, error = %e, "namespace clear: cleanup stopped; the orphans are invisible and expire with their TTL")
                }
            }
            Ok(swept?)
        };
        Ok(Sweep(match tokio::runtime::Handle::try_current() {
            Ok(runtime) => Swept::Running(runtime.spawn(sweep)),
            Err(_) => Swept::Done(Some(sweep.await)),
        }))
    }

    /// Deletes every entry of this namespace whose key matches `pattern`, a
    /// Redis glob over the cache's keys (`user:*`, `order:[0-9]*`); returns
    /// how many were deleted. Put user input in a pattern only through
    /// [`escape_glob`](crate::escape_glob). Keys hashed for length are not
    /// matched.
    ///
    /// The store is walked with `SCAN` in batches of [`SCAN_BATCH`] and
    /// each batch deleted with `UNLINK` (leases included, so no load in
    /// flight puts an old value back); L1 copies of this namespace are
    /// dropped here and, with a backplane, everywhere.
    ///
    /// This costs a walk of the keyspace: prefer tags
    /// ([`Cache::invalidate_tag`]) for anything frequent.
    ///
    /// # Errors
    /// [`Error::InvalidPattern`] for an empty pattern; [`Error::Store`]
    /// (some entries may already be deleted).
    pub async fn invalidate_matching(&self, pattern: &str) -> Result<u64, Error> {
        if pattern.is_empty() {
            return Err(Error::InvalidPattern {
                reason: "a pattern must not be empty",
            });
        }
        let full = format!("{}{{{pattern}}}", self.inner.keys.head());
        let deleted = self.observe(self.inner.store.delete_matching(&full, SCAN_BATCH).await);
        if let Some(l1) = &self.inner.l1 {
            l1.invalidate_all();
        }
        let announced = self
            .announce(Change::Namespace(self.inner.keys.head()), true)
            .await;
        let deleted = deleted?;
        announced.map(|()| deleted)
    }

    /// Raises a mark to now and tells the other instances.
    async fn raise(&self, key: &str, remove: bool) -> Result<Mark, Error> {
        let now = envelope::now_us();
        let mark = if remove {
            Mark {
                removed_us: now,
                expired_us: 0,
            }
        } else {
            Mark {
                removed_us: 0,
                expired_us: now,
            }
        };
        let raised = self.observe(
            self.inner
                .store
                .raise_mark(key, mark, self.inner.mark_ttl)
                .await,
        )?;
        self.inner.marks.learn(key, raised);
        self.announce(Change::Mark(key), true).await?;
        Ok(raised)
    }
}

/// How long a fetched mark is trusted without a backplane, by default.
pub const DEFAULT_MARK_POLL: Duration = Duration::from_secs(1);
