//! `Cache`: typed cache-aside over a [`Store`].
//!
//! One `Cache` is one namespace holding one value type. Reads decode the
//! envelope and the payload; anything unreadable is a counted miss. Writes
//! encode, check the size limit, and only then touch the store, so a bad
//! value never leaves a half-written state. Loads go through the flight map
//! so each key is loaded at most once at a time in this process.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backplane::{Backplane, Change, Listener};
use crate::builder::CacheBuilder;
use crate::codec::{Codec, Json};
use crate::compress::{self, Compression, Outcome};
use crate::envelope::{self, InvalidEntry, Meta, Tags, flags};
use crate::flight::Flights;
use crate::key::KeySpace;
use crate::l1::{L1, L1Usage};
use crate::limit::LoadLimit;
use crate::marks::{Fetched, Marks, Verdict};
use crate::policy::{Age, LoadPolicy, Stamp};
use crate::signal;
use crate::stats::{Recorder, Stats};
use crate::store::{Store, StoreEntry, StoreError};
use crate::{BoxError, Error, Ttl};

/// What a cache may hold: serde both ways, cloned out to each waiter of a load.
pub trait Value: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> Value for T {}

/// A typed cache for one namespace. Cheap to clone: clones share everything.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use cachette::Cache;
///
/// let users: Cache<String> = Cache::builder("user")
///     .schema_version(2)
///     .ttl(Duration::from_secs(600))
///     .build()?; // embedded store by default
///
/// let name = users
///     .get_or_load("42", || async { Ok::<_, std::io::Error>("Ada".to_string()) })
///     .await?;
/// assert_eq!(name, "Ada");
/// assert_eq!(users.get("42").await?, Some("Ada".to_string()));
/// assert_eq!(users.stats().loads, 1);
/// # Ok(()) }
/// ```
pub struct Cache<V, C = Json> {
    pub(crate) inner: Arc<Inner<V, C>>,
}

pub(crate) struct Inner<V, C> {
    pub(crate) namespace: String,
    pub(crate) keys: KeySpace,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) codec: C,
    pub(crate) ttl: Ttl,
    pub(crate) ttl_jitter: f64,
    pub(crate) negative_ttl: Option<Ttl>,
    pub(crate) max_value_bytes: usize,
    /// Which payloads writes compress (reads decompress whatever it says).
    pub(crate) compression: Compression,
    pub(crate) stats: Recorder,
    pub(crate) flights: Flights<Arc<V>>,
    /// Freshness windows, early refresh, leases and timeouts.
    pub(crate) policy: LoadPolicy,
    /// The in-process tier, when configured.
    pub(crate) l1: Option<L1<V>>,
    /// The backplane, when configured.
    pub(crate) coherence: Option<Coherence>,
    /// Tag and namespace invalidation marks, as this process knows them.
    pub(crate) marks: Marks,
    /// How long marks are kept, and so the longest any entry is kept.
    pub(crate) mark_ttl: Ttl,
    /// The cap on concurrent loads this cache shares.
    pub(crate) load_limit: LoadLimit,
    pub(crate) _value: PhantomData<fn() -> V>,
}

/// How a cache takes part in the backplane.
#[derive(Debug)]
pub(crate) struct Coherence {
    pub(crate) backplane: Backplane,
    /// This cache's id in the backplane's registry.
    pub(crate) id: u64,
    /// Writes wait for every instance; L1 serves only under the lease.
    pub(crate) read_your_writes: bool,
}

impl<V: Value, C: Codec> Listener for Inner<V, C> {
    fn drop_key(&self, store_key: &str) {
        if let Some(l1) = &self.l1 {
            l1.invalidate(store_key);
            self.stats.invalidation_received();
        }
        // A fill, write or released lease elsewhere: loads here waiting on
        // that key's lease look again.
        signal::wake(store_key);
    }

    fn drop_namespace(&self) {
        if let Some(l1) = &self.l1 {
            l1.invalidate_all();
        }
        self.stats.invalidation_received();
    }

    fn drop_mark(&self, mark_key: &str) {
        if self.marks.forget(mark_key) {
            self.stats.invalidation_received();
        }
        if self.marks.is_namespace_key(mark_key)
            && let Some(l1) = &self.l1
        {
            l1.invalidate_all();
        }
    }

    fn flush(&self) {
        if let Some(l1) = &self.l1 {
            l1.invalidate_all();
        }
        self.marks.forget_all();
    }
}

impl<V, C> Clone for Cache<V, C> {
    fn clone(&self) -> Self {
        Cache {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V, C: fmt::Debug> fmt::Debug for Cache<V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("Cache")
            .field("namespace", &i.namespace)
            .field("key_prefix", &i.keys.head())
            .field("store", &i.store)
            .field("codec", &i.codec)
            .field("ttl", &i.ttl)
            .field("ttl_jitter", &i.ttl_jitter)
            .field("negative_ttl", &i.negative_ttl)
            .field("max_value_bytes", &i.max_value_bytes)
            .field("compress_above", &i.compression.above)
            .field("l1", &i.l1.is_some())
            .field("coherence", &i.coherence)
            .field("policy", &i.policy)
            .finish()
    }
}

thread_local! {
    /// The L1 hit path's store-key buffer, reused across calls.
    static KEY_BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// What a read found.
pub(crate) enum Found<V> {
    Value(Arc<V>),
    /// A cached "not found".
    Absent,
    Nothing,
}

/// A decoded store entry, with what L1 needs to copy it.
pub(crate) struct Decoded<V> {
    pub(crate) found: Found<V>,
    pub(crate) stamp: Stamp,
    pub(crate) tags: Option<Tags>,
    /// Its encoded size.
    pub(crate) size: usize,
}

/// What an entry's envelope records besides the value.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Origin<'a> {
    /// The load's duration (0: written, not loaded).
    pub(crate) load_us: u32,
    /// When the load started (`None`: now).
    pub(crate) as_of_us: Option<u64>,
    /// Checked tags.
    pub(crate) tags: &'a [&'a str],
}

/// A value with the tags its entry carries: what a tagged loader returns.
///
/// ```
/// let page = cachette::Tagged::new(vec![1, 2, 3]).tag("category:7");
/// assert_eq!(page.tags, ["category:7"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged<T> {
    /// The value.
    pub value: T,
    /// Its tags: 1–128 bytes each, at most 32.
    pub tags: Vec<String>,
}

impl<T> Tagged<T> {
    /// `value` with no tags yet.
    pub fn new(value: T) -> Tagged<T> {
        Tagged {
            value,
            tags: Vec::new(),
        }
    }

    /// Adds a tag.
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Tagged<T> {
        self.tags.push(tag.into());
        self
    }

    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Tagged<U> {
        Tagged {
            value: f(self.value),
            tags: self.tags,
        }
    }
}

/// A stored entry past its freshness but still kept: served at once while
/// it is in the stale-while-revalidate window, else only as a fail-safe
/// fallback.
pub(crate) struct StaleCopy<V> {
    pub(crate) value: Arc<V>,
    /// The entry as stored: what a lease claim compares, and what the
    /// fail-safe writes back for the throttle period.
    pub(crate) bytes: Bytes,
    pub(crate) stamp: Stamp,
    pub(crate) age: Age,
}

impl<V> Clone for StaleCopy<V> {
    fn clone(&self) -> Self {
        StaleCopy {
            value: Arc::clone(&self.value),
            bytes: self.bytes.clone(),
            stamp: self.stamp,
            age: self.age,
        }
    }
}

/// What L1 holds for a key, as far as this process can tell now.
pub(crate) enum L1Probe<V> {
    Hit(Found<V>, Stamp),
    Miss,
    /// A copy whose marks (the namespace's, its tags') are not known here
    /// yet.
    Unsure(Option<Tags>),
}

/// What a store read found: a fresh entry (with its times), or a stale
/// copy the load path may use.
pub(crate) struct Read<V> {
    pub(crate) found: Found<V>,
    pub(crate) stamp: Option<Stamp>,
    pub(crate) stale: Option<StaleCopy<V>>,
}

impl<V: Value> Cache<V, Json> {
    /// A builder for a cache of namespace `namespace` (1–64 characters from
    /// `A-Z a-z 0-9 _ - .`).
    pub fn builder(namespace: impl Into<String>) -> CacheBuilder<V, Json> {
        CacheBuilder::new(namespace.into())
    }
}

impl<V: Value, C: Codec> Cache<V, C> {
    pub(crate) fn from_inner(inner: Arc<Inner<V, C>>) -> Self {
        Cache { inner }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The store under this cache.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The key this cache uses in the store for `key` (see the key layout in
    /// the crate docs), for tools that inspect the store directly.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for an empty key.
    pub fn store_key(&self, key: &str) -> Result<String, Error> {
        self.inner.keys.store_key(key)
    }

    /// A snapshot of this namespace's counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot(self.inner.store.circuit())
    }

    /// The cached value of `key`. A cached "not found" reads as `None`.
    ///
    /// A stored empty string, `0`, `false` or `null` is a hit: the envelope
    /// tells an empty value from a missing key.
    ///
    /// # Errors
    /// [`Error::Store`] when the store fails: a plain read cannot tell a miss
    /// from an outage on its own, so it says so. (Loads fail open instead.)
    pub async fn get(&self, key: &str) -> Result<Option<V>, Error> {
        let found = match self.l1_lookup_fetching(key, true).await? {
            Some((found, _)) => found,
            None => {
                let skey = self.inner.keys.store_key(key)?;
                self.read(&skey, true, false).await?.found
            }
        };
        Ok(match found {
            Found::Value(v) => Some(Arc::unwrap_or_clone(v)),
            Found::Absent | Found::Nothing => None,
        })
    }

    /// [`Cache::get`] without the copy: the value as the L1 tier holds it.
    /// An L1 hit is a lookup and a reference-count increment.
    ///
    /// # Errors
    /// As [`Cache::get`].
    ///
    /// The L1 lookup runs when this is called; the returned future only
    /// awaits the store on an L1 miss. (An L1 hit is then a ready future of
    /// a few words instead of the whole read path's state machine, which
    /// measurably matters at this speed.)
    pub fn get_shared<'a>(
        &'a self,
        key: &'a str,
    ) -> impl Future<Output = Result<Option<Arc<V>>, Error>> + Send + 'a {
        let found = |found: Found<V>| match found {
            Found::Value(v) => Some(v),
            Found::Absent | Found::Nothing => None,
        };
        match self.l1_lookup(key, true) {
            Ok(Some((hit, _))) => Either::Left(std::future::ready(Ok(found(hit)))),
            Err(e) => Either::Left(std::future::ready(Err(e))),
            Ok(None) => Either::Right(Box::pin(async move {
                if let Some((hit, _)) = self.l1_lookup_fetching(key, true).await? {
                    return Ok(found(hit));
                }
                let skey = self.inner.keys.store_key(key)?;
                Ok(found(self.read(&skey, true, false).await?.found))
            })),
        }
    }

    /// The cached values of `keys`, in order: one store round trip (MGET).
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for an empty key; [`Error::Store`].
    pub async fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<V>>, Error> {
        let skeys = keys
            .iter()
            .map(|k| self.inner.keys.store_key(k.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let raw = self.observe(self.inner.store.get_many(&skeys).await)?;
        let decoded = self.decode_many(&raw).await;
        Ok(decoded
            .into_iter()
            .map(|found| match found {
                Found::Value(v) => Some(Arc::unwrap_or_clone(v)),
                Found::Absent | Found::Nothing => None,
            })
            .collect())
    }

    /// Decodes a batch read (fresh entries only); counts hits and misses.
    pub(crate) async fn decode_many(&self, raw: &[Option<Bytes>]) -> Vec<Found<V>> {
        let now = envelope::now_ms();
        self.screen_many(raw)
            .await
            .into_iter()
            .map(|decoded| {
                let found = match decoded {
                    Some(d) if self.inner.policy.age(d.stamp, now) == Age::Fresh => d.found,
                    _ => Found::Nothing,
                };
                match found {
                    Found::Value(_) | Found::Absent => self.inner.stats.hit(),
                    Found::Nothing => self.inner.stats.miss(),
                }
                found
            })
            .collect()
    }

    /// Decodes a batch read and applies the invalidation marks, fetching
    /// those of every entry's tags in one round trip: `None` for a key
    /// with no readable, unvoided entry. Counts unreadable entries only.
    pub(crate) async fn screen_many(&self, raw: &[Option<Bytes>]) -> Vec<Option<Decoded<V>>> {
        let decoded: Vec<Option<Decoded<V>>> = raw
            .iter()
            .map(
                |bytes| match bytes.as_deref().map(|b| self.decode_quiet(b)) {
                    Some(Ok(decoded)) => Some(decoded),
                    Some(Err(why)) => {
                        self.inner.stats.invalid_entry(&why);
                        None
                    }
                    None => None,
                },
            )
            .collect();
        let tags = decoded.iter().flatten().filter_map(|d| d.tags.as_ref());
        let fetched = match self
            .inner
            .marks
            .prefetch(self.inner.store.as_ref(), tags)
            .await
        {
            Ok(fetched) => fetched,
            Err(e) => {
                self.inner.stats.store_error(&e);
                Fetched::new()
            }
        };
        decoded
            .into_iter()
            .map(|d| d.and_then(|d| self.screen_fetched(&fetched, d)))
            .collect()
    }

    /// Stores `value` under `key` for the namespace's TTL (with jitter).
    ///
    /// # Errors
    /// [`Error::Serialize`] or [`Error::ValueTooLarge`], and nothing is
    /// written; [`Error::Store`].
    pub async fn set(&self, key: &str, value: &V) -> Result<(), Error> {
        self.set_for(key, value, self.inner.ttl.get()).await
    }

    /// Stores `value` under `key` for `ttl` (with jitter).
    ///
    /// # Errors
    /// As [`Cache::set`], plus [`Error::InvalidTtl`].
    pub async fn set_for(
        &self,
        key: &str,
        value: &V,
        ttl: std::time::Duration,
    ) -> Result<(), Error> {
        let ttl = Ttl::new(ttl)?.jittered(self.inner.ttl_jitter);
        let skey = self.inner.keys.store_key(key)?;
        let (bytes, kept_for) = self.encode(Some(value), ttl, Origin::default())?;
        self.write_value(&skey, value, bytes, ttl, kept_for).await
    }

    /// Stores `value` under `key` for the namespace's TTL, carrying `tags`:
    /// [`Cache::invalidate_tag`] of any of them voids it.
    ///
    /// # Errors
    /// [`Error::InvalidTag`] (more than 32 tags, or one empty or over 128
    /// bytes) and nothing is written; otherwise as [`Cache::set`].
    pub async fn set_tagged<S: AsRef<str>>(
        &self,
        key: &str,
        value: &V,
        tags: &[S],
    ) -> Result<(), Error> {
        let tags = envelope::check_tags(tags).map_err(|reason| Error::InvalidTag { reason })?;
        let ttl = self.inner.ttl.jittered(self.inner.ttl_jitter);
        let skey = self.inner.keys.store_key(key)?;
        let origin = Origin {
            tags: &tags,
            ..Origin::default()
        };
        let (bytes, kept_for) = self.encode(Some(value), ttl, origin)?;
        self.write_value(&skey, value, bytes, ttl, kept_for).await
    }

    /// Stores every `(key, value)` pair for the namespace's TTL: one store
    /// round trip (a pipeline). Every value is encoded and checked first; if
    /// any is refused, nothing is written.
    ///
    /// # Errors
    /// As [`Cache::set`].
    pub async fn set_many<K: AsRef<str>>(&self, entries: &[(K, V)]) -> Result<(), Error> {
        let mut batch = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let ttl = self.inner.ttl.jittered(self.inner.ttl_jitter);
            let (bytes, kept_for) = self.encode(Some(value), ttl, Origin::default())?;
            batch.push(StoreEntry {
                key: self.inner.keys.store_key(key.as_ref())?,
                value: bytes,
                ttl: kept_for,
            });
        }
        let written = self.observe(self.inner.store.set_many(&batch).await);
        for entry in &batch {
            if let Some(l1) = &self.inner.l1 {
                l1.invalidate(&entry.key);
            }
            signal::wake(&entry.key);
        }
        // Acknowledgements are cumulative: confirming the last covers all.
        let last = batch.len().saturating_sub(1);
        for (i, entry) in batch.iter().enumerate() {
            let announced = self.announce(Change::Key(&entry.key), i == last).await;
            if written.is_ok() {
                announced?;
            }
        }
        written
    }

    /// Removes `key`; true if an entry was there. A load of `key` in flight
    /// in this process will not fill the cache afterwards.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn delete(&self, key: &str) -> Result<bool, Error> {
        let skey = self.inner.keys.store_key(key)?;
        let deleted = self.observe(self.inner.store.delete(&skey).await);
        if let Some(l1) = &self.inner.l1 {
            l1.invalidate(&skey);
        }
        signal::wake(&skey);
        let announced = self.announce(Change::Key(&skey), true).await;
        let deleted = deleted?;
        announced.map(|()| deleted)
    }

    /// Cache-aside: the cached value of `key`, or the loader's, which is then
    /// cached for the namespace's TTL.
    ///
    /// Concurrent misses of one key in this process run the loader once; the
    /// load runs as its own task (so `loader` is `'static`), and cancelling
    /// the caller that started it does not cancel it or fail the others.
    ///
    /// Loads fail open: if the store is down the loader still runs and its
    /// value is returned; a value that cannot be cached (store down, too
    /// large, unserializable) is returned all the same and counted.
    ///
    /// # Errors
    /// [`Error::Load`] with the loader's error (not cached; every waiter of
    /// the load gets it), [`Error::LoaderPanicked`], [`Error::InvalidKey`].
    pub async fn get_or_load<F, Fut, E>(&self, key: &str, loader: F) -> Result<V, Error>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.get_or_load_for(key, self.inner.ttl.get(), loader)
            .await
    }

    /// [`Cache::get_or_load`] with its own TTL for the loaded value.
    ///
    /// # Errors
    /// As [`Cache::get_or_load`], plus [`Error::InvalidTtl`].
    pub async fn get_or_load_for<F, Fut, E>(
        &self,
        key: &str,
        ttl: std::time::Duration,
        loader: F,
    ) -> Result<V, Error>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let ttl = Ttl::new(ttl)?;
        self.load_required(key, ttl, loader)
            .await
            .map(Arc::unwrap_or_clone)
    }

    /// [`Cache::get_or_load`] without the copy: the value as the L1 tier
    /// holds it.
    ///
    /// # Errors
    /// As [`Cache::get_or_load`].
    pub async fn get_or_load_shared<F, Fut, E>(&self, key: &str, loader: F) -> Result<Arc<V>, Error>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.load_required(key, self.inner.ttl, loader).await
    }

    async fn load_required<F, Fut, E>(
        &self,
        key: &str,
        ttl: Ttl,
        loader: F,
    ) -> Result<Arc<V>, Error>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let loaded = self
            .load(key, ttl, false, move || async move {
                loader().await.map(|v| Tagged::new(Some(v)))
            })
            .await?;
        loaded.ok_or_else(|| Error::Load {
            namespace: self.inner.namespace.clone(),
            source: Arc::new(NotFound),
        })
    }

    /// Cache-aside for values that may not exist: the loader answers
    /// `Ok(None)` for "not found". With a negative TTL configured
    /// ([`CacheBuilder::negative_ttl`]) that answer is cached too, so a
    /// flood of requests for a missing id does not reach the source.
    ///
    /// # Errors
    /// As [`Cache::get_or_load`].
    pub async fn get_or_load_optional<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
    ) -> Result<Option<V>, Error>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let loader = move || async move { loader().await.map(Tagged::new) };
        Ok(self
            .load(key, self.inner.ttl, true, loader)
            .await?
            .map(Arc::unwrap_or_clone))
    }

    /// [`Cache::get_or_load_optional`] without the copy.
    ///
    /// # Errors
    /// As [`Cache::get_or_load`].
    pub async fn get_or_load_optional_shared<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
    ) -> Result<Option<Arc<V>>, Error>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let loader = move || async move { loader().await.map(Tagged::new) };
        self.load(key, self.inner.ttl, true, loader).await
    }

    /// [`Cache::get_or_load`] whose loader decides the entry's tags (say,
    /// the categories a listing page shows), returned with the value as a
    /// [`Tagged`]. Invalid tags are logged and the value is returned
    /// uncached.
    ///
    /// # Errors
    /// As [`Cache::get_or_load`].
    pub async fn get_or_load_tagged<F, Fut, E>(&self, key: &str, loader: F) -> Result<V, Error>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Tagged<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let loader = move || async move { loader().await.map(|t| t.map(Some)) };
        let loaded = self.load(key, self.inner.ttl, false, loader).await?;
        loaded.map(Arc::unwrap_or_clone).ok_or_else(|| Error::Load {
            namespace: self.inner.namespace.clone(),
            source: Arc::new(NotFound),
        })
    }

    /// Write-through: persists to the source first, then puts the value it
    /// returns in the cache.
    ///
    /// Source first, because the source is the truth: if the cache were
    /// written first and the source then refused the write, readers would be
    /// served a value that never existed. If the cache update fails after
    /// the source accepted the write, the entry is deleted instead, so the
    /// old value is not served; if that fails too, it is logged and the old
    /// value can live until its TTL. A load of the key in flight (in any
    /// process) cannot land the pre-write value afterwards: the write ends
    /// its fill lease.
    ///
    /// # Errors
    /// [`Error::Write`] when `persist` fails; the cache is not touched.
    pub async fn write_through<Fut, E>(&self, key: &str, persist: Fut) -> Result<V, Error>
    where
        Fut: Future<Output = Result<V, E>>,
        E: Into<BoxError>,
    {
        let skey = self.inner.keys.store_key(key)?;
        let value = persist.await.map_err(|e| Error::Write {
            namespace: self.inner.namespace.clone(),
            source: e.into(),
        })?;
        let ttl = self.inner.ttl.jittered(self.inner.ttl_jitter);
        let written = match self.encode(Some(&value), ttl, Origin::default()) {
            Ok((bytes, kept_for)) => self.write_value(&skey, &value, bytes, ttl, kept_for).await,
            Err(e) => Err(e),
        };
        if let Err(err) = written {
            if let Some(l1) = &self.inner.l1 {
                l1.invalidate(&skey);
            }
            tracing::warn!(namespace = %self.inner.namespace, error = %err, "write-through could not update the cache; deleting the entry");
            if let Err(e) = self.inner.store.delete(&skey).await {
                self.inner.stats.store_error(&e);
                tracing::error!(namespace = %self.inner.namespace, error = %e, "could not delete the entry either; the old value may be served until its TTL");
            }
            // Other instances may have copied the old value back from the
            // store before the delete.
            self.announce(Change::Key(&skey), true).await?;
        }
        Ok(value)
    }

    async fn write(&self, skey: &str, bytes: Bytes, ttl: Ttl) -> Result<(), Error> {
        let written = self.observe(self.inner.store.set(skey, bytes, ttl).await);
        signal::wake(skey);
        written
    }

    /// Counts a store call's outcome (errors are logged once per outage).
    pub(crate) fn observe<T>(&self, result: Result<T, StoreError>) -> Result<T, Error> {
        match result {
            Ok(value) => {
                self.inner.stats.store_ok();
                Ok(value)
            }
            Err(e) => {
                self.inner.stats.store_error(&e);
                Err(e.into())
            }
        }
    }

    /// The L1 copy of `key`, counted; `None` without L1 or a copy. The
    /// store key is built in a per-thread buffer: an L1 hit allocates
    /// nothing.
    pub(crate) fn l1_lookup(
        &self,
        key: &str,
        absent_is_hit: bool,
    ) -> Result<Option<(Found<V>, Stamp)>, Error> {
        Ok(match self.l1_probe(key, absent_is_hit)? {
            L1Probe::Hit(found, stamp) => Some((found, stamp)),
            L1Probe::Miss | L1Probe::Unsure(_) => None,
        })
    }

    /// [`Cache::l1_lookup`] that, when the copy's marks are not known here
    /// yet, fetches them (one round trip, not a read of the entry) and
    /// looks again.
    pub(crate) async fn l1_lookup_fetching(
        &self,
        key: &str,
        absent_is_hit: bool,
    ) -> Result<Option<(Found<V>, Stamp)>, Error> {
        match self.l1_probe(key, absent_is_hit)? {
            L1Probe::Hit(found, stamp) => Ok(Some((found, stamp))),
            L1Probe::Miss => Ok(None),
            L1Probe::Unsure(tags) => {
                let fetched = self
                    .inner
                    .marks
                    .prefetch(self.inner.store.as_ref(), tags.iter())
                    .await;
                if let Err(e) = fetched {
                    self.inner.stats.store_error(&e);
                    return Ok(None);
                }
                self.l1_lookup(key, absent_is_hit)
            }
        }
    }

    fn l1_probe(&self, key: &str, absent_is_hit: bool) -> Result<L1Probe<V>, Error> {
        let Some(l1) = &self.inner.l1 else {
            return Ok(L1Probe::Miss);
        };
        if self.inner.coherence.is_some() && !self.l1_readable() {
            return Ok(L1Probe::Miss);
        }
        let slot = KEY_BUF.with_borrow_mut(|buf| {
            buf.clear();
            self.inner
                .keys
                .write_store_key(key, buf)
                .map(|()| l1.get(buf))
        })?;
        let Some(slot) = slot else {
            return Ok(L1Probe::Miss);
        };
        // A tag mark that voids the copy: the store path decides what is
        // left (an expired entry may still be a fail-safe fallback there).
        // Namespace clears drop L1 copies instead (`drop_mark`, `clear`).
        if let Some(tags) = &slot.tags {
            match self
                .inner
                .marks
                .judge_tags_cached(slot.stamp.as_of_us, tags)
            {
                Some(Verdict::Valid) => {}
                Some(_) => return Ok(L1Probe::Miss),
                None => return Ok(L1Probe::Unsure(slot.tags)),
            }
        }
        let found = match slot.value {
            Some(value) => {
                self.inner.stats.l1_hit();
                Found::Value(value)
            }
            None if absent_is_hit => {
                self.inner.stats.l1_hit();
                Found::Absent
            }
            None => {
                self.inner.stats.miss();
                Found::Absent
            }
        };
        Ok(L1Probe::Hit(found, slot.stamp))
    }

    /// Reads the store and decodes, counting the hit or miss; a cached "not
    /// found" counts as a hit only when `absent_is_hit`. With L1, a fresh
    /// entry is copied into it (callers look in L1 first). An entry past
    /// its freshness but still kept is returned as a stale copy when
    /// `stale_ok` (uncounted: the load path counts what it serves), and is
    /// a miss otherwise.
    pub(crate) async fn read(
        &self,
        skey: &str,
        absent_is_hit: bool,
        stale_ok: bool,
    ) -> Result<Read<V>, Error> {
        let ticket = self.inner.l1.as_ref().map(|l1| l1.ticket(skey));
        let bytes = self
            .observe(self.inner.store.get(skey).await)
            .inspect_err(|_| self.inner.stats.miss())?;
        let nothing = Read {
            found: Found::Nothing,
            stamp: None,
            stale: None,
        };
        let Some(bytes) = bytes else {
            self.inner.stats.miss();
            return Ok(nothing);
        };
        let decoded = match self.decode_quiet(&bytes) {
            Ok(decoded) => decoded,
            Err(why) => {
                self.inner.stats.invalid_entry(&why);
                self.inner.stats.miss();
                return Ok(nothing);
            }
        };
        let Some(decoded) = self.screen(decoded).await else {
            self.inner.stats.miss();
            return Ok(nothing);
        };
        let now = envelope::now_ms();
        match self.inner.policy.age(decoded.stamp, now) {
            Age::Fresh => {}
            age @ (Age::Stale | Age::Fallback) if stale_ok => {
                if let Found::Value(value) = decoded.found {
                    return Ok(Read {
                        found: Found::Nothing,
                        stamp: None,
                        stale: Some(StaleCopy {
                            value,
                            bytes,
                            stamp: decoded.stamp,
                            age,
                        }),
                    });
                }
                self.inner.stats.miss();
                return Ok(nothing);
            }
            _ => {
                self.inner.stats.miss();
                return Ok(nothing);
            }
        }
        let copy = match &decoded.found {
            Found::Value(v) => Some(Some(Arc::clone(v))),
            Found::Absent => Some(None),
            Found::Nothing => None,
        };
        if let Some(copy) = copy {
            let tags = decoded.tags.clone();
            self.copy_to_l1(skey, ticket, copy, decoded.stamp, decoded.size, tags);
        }
        match decoded.found {
            Found::Value(_) => self.inner.stats.hit(),
            Found::Absent if absent_is_hit => self.inner.stats.hit(),
            Found::Absent | Found::Nothing => self.inner.stats.miss(),
        }
        Ok(Read {
            found: decoded.found,
            stamp: Some(decoded.stamp),
            stale: None,
        })
    }

    pub(crate) fn decode_quiet(&self, bytes: &[u8]) -> Result<Decoded<V>, InvalidEntry> {
        let entry = envelope::decode(bytes)?;
        let found = if entry.meta.is_negative() {
            Found::Absent
        } else {
            let payload = compress::payload(&entry, self.inner.max_value_bytes)?;
            self.inner
                .codec
                .decode(&payload)
                .map(|v| Found::Value(Arc::new(v)))
                .map_err(|_| InvalidEntry::Undecodable)?
        };
        Ok(Decoded {
            found,
            stamp: Stamp::from(entry.meta),
            tags: entry.tags(),
            size: compress::raw_entry_len(&entry, bytes.len()),
        })
    }

    /// Applies the invalidation marks to a decoded entry: `None` if a mark
    /// removed it (or the marks could not be read: a miss is safe); an
    /// expired entry comes back past its freshness, usable only as a
    /// fail-safe fallback.
    pub(crate) async fn screen(&self, decoded: Decoded<V>) -> Option<Decoded<V>> {
        let verdict = self
            .inner
            .marks
            .judge(
                self.inner.store.as_ref(),
                decoded.stamp.as_of_us,
                decoded.tags.as_ref(),
            )
            .await;
        match verdict {
            Ok(verdict) => expire(decoded, verdict),
            Err(e) => {
                self.inner.stats.store_error(&e);
                None
            }
        }
    }

    /// [`Cache::screen`] with the marks already fetched (or cached); an
    /// unknown mark is a miss.
    pub(crate) fn screen_fetched(
        &self,
        fetched: &Fetched,
        decoded: Decoded<V>,
    ) -> Option<Decoded<V>> {
        let verdict =
            self.inner
                .marks
                .judge_with(fetched, decoded.stamp.as_of_us, decoded.tags.as_ref())?;
        expire(decoded, verdict)
    }

    /// Writes `value` (already encoded as `bytes`) to the store; the L1
    /// copy becomes the written value, or is dropped if the write failed.
    async fn write_value(
        &self,
        skey: &str,
        value: &V,
        bytes: Bytes,
        ttl: Ttl,
        kept_for: Ttl,
    ) -> Result<(), Error> {
        let (stamp, tags, size) = envelope::decode(&bytes)
            .map(|e| {
                let size = compress::raw_entry_len(&e, bytes.len());
                (Stamp::from(e.meta), e.tags(), size)
            })
            .unwrap_or((Stamp::default(), None, bytes.len()));
        let ticket = self.inner.l1.as_ref().map(|l1| l1.ticket(skey));
        let written = self.write(skey, bytes, kept_for).await;
        if let (Some(l1), Some(ticket)) = (&self.inner.l1, ticket) {
            match &written {
                Ok(()) => {
                    let fresh_for = self.l1_fresh_for(ttl.get());
                    l1.put(
                        skey,
                        ticket,
                        Some(Arc::new(value.clone())),
                        size,
                        fresh_for,
                        stamp,
                        tags,
                    );
                }
                Err(_) => l1.invalidate(skey),
            }
        }
        // Announced even after a failed write: the store may have taken it.
        let announced = self.announce(Change::Key(skey), true).await;
        written?;
        announced
    }

    /// False in read-your-writes mode while this instance does not hear
    /// the backplane: a copy here may have missed an invalidation whose
    /// writer has already returned.
    #[inline(never)]
    fn l1_readable(&self) -> bool {
        match &self.inner.coherence {
            Some(c) if c.read_your_writes => c.backplane.health().lease_valid(),
            _ => true,
        }
    }

    /// How long an L1 copy of an entry fresh for `fresh_for` may live: while
    /// the backplane is down, at most one lease (it could miss an
    /// invalidation).
    pub(crate) fn l1_fresh_for(&self, fresh_for: Duration) -> Duration {
        match &self.inner.coherence {
            Some(c) if !c.backplane.health().is_healthy() => {
                fresh_for.min(c.backplane.health().lease)
            }
            _ => fresh_for,
        }
    }

    /// Tells the other instances (and other caches of this namespace in
    /// this process) to drop their copies. In read-your-writes mode, and
    /// when `wait` is set, returns only once they have (see
    /// [`Backplane`]).
    pub(crate) async fn announce(&self, change: Change<'_>, wait: bool) -> Result<(), Error> {
        let Some(c) = &self.inner.coherence else {
            return Ok(());
        };
        self.inner.stats.invalidation_sent();
        match c
            .backplane
            .announce(change, c.id, wait && c.read_your_writes)
        {
            Some(pending) => c.backplane.confirm(pending, &self.inner.namespace).await,
            None => Ok(()),
        }
    }

    /// Encodes an entry fresh for `ttl`, produced by a load of `load_us`
    /// (0: not loaded). Returns the bytes and how long the store must keep
    /// them: the TTL plus the stale windows (values only; a cached "not
    /// found" is never served stale). The size limit applies to the entry
    /// uncompressed; a payload over the compression threshold is then
    /// compressed (see `compress`).
    pub(crate) fn encode(
        &self,
        value: Option<&V>,
        ttl: Ttl,
        origin: Origin<'_>,
    ) -> Result<(Bytes, Ttl), Error> {
        let (flags, kept) = match value {
            Some(_) => (0, self.inner.policy.retention()),
            None => (flags::NEGATIVE, Duration::ZERO),
        };
        let mut meta = Meta::with_stale(flags, ttl.get(), kept, origin.load_us);
        if let Some(as_of_us) = origin.as_of_us {
            meta = meta.as_of(as_of_us);
        }
        let bytes = envelope::encode(meta, origin.tags, |out| match value {
            Some(v) => self.inner.codec.encode(v, out),
            None => Ok(()),
        })
        .map_err(|source| Error::Serialize {
            namespace: self.inner.namespace.clone(),
            source,
        })?;
        if bytes.len() > self.inner.max_value_bytes {
            return Err(Error::ValueTooLarge {
                namespace: self.inner.namespace.clone(),
                size: bytes.len(),
                max: self.inner.max_value_bytes,
            });
        }
        let (bytes, outcome) = self.inner.compression.apply(bytes);
        if let Outcome::Compressed { saved } = outcome {
            self.inner.stats.compressed(saved);
        }
        // No entry outlives the marks that may void it.
        let kept_for = ttl.saturating_add(kept).min(self.inner.mark_ttl);
        Ok((Bytes::from(bytes), kept_for))
    }

    /// How full the L1 tier is (`None` without one).
    pub fn l1_usage(&self) -> Option<L1Usage> {
        self.inner.l1.as_ref().map(L1::usage)
    }

    /// Drops every L1 copy of this namespace (the store is untouched): in
    /// this process, and with a backplane in every instance. Fills in
    /// progress are kept out too.
    ///
    /// # Errors
    /// [`Error::Backplane`] in read-your-writes mode when the clear could
    /// not be confirmed.
    pub async fn clear_l1(&self) -> Result<(), Error> {
        if let Some(l1) = &self.inner.l1 {
            l1.invalidate_all();
        }
        self.announce(Change::Namespace(self.inner.keys.head()), true)
            .await
    }

    /// What this process's L1 tier holds for `key`, without counting a
    /// read or touching the store: `Some(None)` is a cached "not found".
    /// For diagnostics and audits.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for an empty key.
    pub fn l1_peek(&self, key: &str) -> Result<Option<Option<Arc<V>>>, Error> {
        let Some(l1) = &self.inner.l1 else {
            return Ok(None);
        };
        let skey = self.inner.keys.store_key(key)?;
        Ok(l1.get(&skey).map(|slot| slot.value))
    }

    /// Loads in flight in this process now.
    pub fn loads_in_flight(&self) -> usize {
        self.inner.flights.len()
    }
}

/// An entry as a mark's verdict leaves it.
fn expire<V>(mut decoded: Decoded<V>, verdict: Verdict) -> Option<Decoded<V>> {
    match verdict {
        Verdict::Valid => Some(decoded),
        Verdict::Removed => None,
        Verdict::Expired => {
            // Past its freshness and its stale-while-revalidate window:
            // what is left is the fail-safe fallback, if configured.
            decoded.stamp.fresh_until_ms = 0;
            Some(decoded)
        }
    }
}

pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// The error a `get_or_load` caller gets when it joined a
/// `get_or_load_optional` load of the same key whose loader found nothing.
#[derive(Debug, thiserror::Error)]
#[error("the loader reported the key absent")]
pub struct NotFound;
