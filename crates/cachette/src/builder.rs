//! `CacheBuilder`: every option of a namespace, checked once at `build()`.

use std::marker::PhantomData;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::backplane::{Backplane, Listener};
use crate::cache::{Cache, Coherence, Inner, Value};
use crate::codec::Codec;
use crate::flight::Flights;
use crate::key::{DEFAULT_MAX_KEY_BYTES, KeySpace};
use crate::l1::{L1, L1Config};
use crate::limit::LoadLimit;
use crate::marks::Marks;
use crate::policy::{FailSafe, LoadPolicy};
use crate::stats::Recorder;
use crate::store::{EmbeddedStore, Store};
use crate::{BuildError, Ttl};

/// The largest encoded entry, by default: 1 MiB. Larger values waste memory
/// in every store and time on every read; cache a smaller projection.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// How long a fill lease lasts unless its holder extends it, by default.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(2);
/// How long a load waits for another caller's lease at most, by default.
pub const DEFAULT_LEASE_WAIT: Duration = Duration::from_secs(5);
/// The fail-safe throttle period, by default.
pub const DEFAULT_FAIL_SAFE_THROTTLE: Duration = Duration::from_secs(10);

/// The default L1 TTL cap.
pub const DEFAULT_L1_TTL: Duration = Duration::from_secs(60);
/// The default size above which values stay out of L1 (encoded bytes).
pub const DEFAULT_L1_MAX_ENTRY_BYTES: usize = 64 * 1024;

/// Options of one cache namespace. Made by [`Cache::builder`].
#[must_use]
#[derive(Debug)]
pub struct CacheBuilder<V, C> {
    namespace: String,
    prefix: Option<String>,
    schema_version: u32,
    ttl: Duration,
    ttl_jitter: f64,
    negative_ttl: Option<Duration>,
    max_value_bytes: usize,
    compress_above: Option<usize>,
    max_key_bytes: usize,
    store: Option<Arc<dyn Store>>,
    load_limit: Option<LoadLimit>,
    l1_max_bytes: Option<u64>,
    l1_ttl: Duration,
    l1_max_entry_bytes: usize,
    backplane: Option<Backplane>,
    read_your_writes: bool,
    stale_while_revalidate: Duration,
    fail_safe: Option<Duration>,
    fail_safe_throttle: Duration,
    early_refresh_beta: f64,
    lease_ttl: Duration,
    lease_wait: Duration,
    soft_timeout: Option<Duration>,
    hard_timeout: Option<Duration>,
    mark_poll: Duration,
    mark_ttl: Duration,
    codec: C,
    _value: PhantomData<fn() -> V>,
}

impl<V: Value, C: Codec + Default> CacheBuilder<V, C> {
    pub(crate) fn new(namespace: String) -> Self {
        CacheBuilder {
            namespace,
            prefix: None,
            schema_version: 1,
            ttl: Duration::from_secs(300),
            ttl_jitter: 0.0,
            negative_ttl: None,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            compress_above: Some(crate::compress::DEFAULT_COMPRESS_ABOVE),
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            store: None,
            load_limit: None,
            l1_max_bytes: None,
            l1_ttl: DEFAULT_L1_TTL,
            l1_max_entry_bytes: DEFAULT_L1_MAX_ENTRY_BYTES,
            backplane: None,
            read_your_writes: false,
            stale_while_revalidate: Duration::ZERO,
            fail_safe: None,
            fail_safe_throttle: DEFAULT_FAIL_SAFE_THROTTLE,
            early_refresh_beta: 1.0,
            lease_ttl: DEFAULT_LEASE_TTL,
            lease_wait: DEFAULT_LEASE_WAIT,
            soft_timeout: None,
            hard_timeout: None,
            mark_poll: crate::invalidate::DEFAULT_MARK_POLL,
            mark_ttl: Ttl::MAX,
            codec: C::default(),
            _value: PhantomData,
        }
    }
}

impl<V: Value, C: Codec> CacheBuilder<V, C> {
    /// An application prefix before the namespace (`shop` in
    /// `shop:user:v2:{42}`), for a Redis shared with other applications.
    /// By default, none.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The schema version of the value type (`2` in `user:v2:`). Bump it
    /// when the value's shape changes, so new code never reads old entries.
    /// By default, 1.
    pub fn schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// How long entries live. There is no way to store without a TTL.
    /// By default, 5 minutes.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Shortens each entry's TTL by a random fraction of at most `jitter`
    /// (0.0–1.0), so entries written together do not expire together.
    /// By default, 0.0 (no jitter); 0.1 is a good start.
    pub fn ttl_jitter(mut self, jitter: f64) -> Self {
        self.ttl_jitter = jitter;
        self
    }

    /// Caches a loader's "not found" for `ttl` (see
    /// [`Cache::get_or_load_optional`]). Keep it short: a created record
    /// stays invisible to readers until it ends or the key is written.
    /// By default, "not found" is not cached.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// The largest encoded entry (envelope included, before compression)
    /// a write accepts; larger ones are refused with
    /// [`Error::ValueTooLarge`](crate::Error::ValueTooLarge) and nothing is
    /// written. Reads refuse a compressed entry that claims to expand past
    /// it. By default, 1 MiB.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// Payloads (serialized values, envelope not included) longer than
    /// `bytes` are stored LZ4-compressed, when that saves at least an
    /// eighth; `None` turns compression off for writes. Reads decompress
    /// any entry flagged compressed, whatever this says, so instances with
    /// different settings share a store. Size limits
    /// ([`CacheBuilder::max_value_bytes`], L1's) count the uncompressed
    /// entry. By default, [`DEFAULT_COMPRESS_ABOVE`](crate::DEFAULT_COMPRESS_ABOVE)
    /// (1 KiB, from `benches/benches/compression.rs`).
    ///
    /// ```
    /// # fn main() -> Result<(), cachette::BuildError> {
    /// use cachette::Cache;
    ///
    /// let pages: Cache<Vec<String>> = Cache::builder("page")
    ///     .compress_above(Some(4 * 1024))
    ///     .build()?;
    /// let tiny: Cache<u64> = Cache::builder("count").compress_above(None).build()?;
    /// # let _ = (pages, tiny);
    /// # Ok(()) }
    /// ```
    pub fn compress_above(mut self, bytes: Option<usize>) -> Self {
        self.compress_above = bytes;
        self
    }

    /// Keys longer than this many bytes are stored under their SHA-256
    /// instead. By default, 200.
    pub fn max_key_bytes(mut self, bytes: usize) -> Self {
        self.max_key_bytes = bytes;
        self
    }

    /// An in-process first tier (L1) of at most `max_bytes`, in front of
    /// the store (L2). L1 keeps decoded values, so its hits do no store
    /// call and no deserialization. A copy never outlives its entry's
    /// freshness in the store, nor the L1 TTL cap ([`CacheBuilder::l1_ttl`],
    /// default 60 s); values over [`CacheBuilder::l1_max_entry_bytes`]
    /// (default 64 KiB encoded) stay in the store only. Off by default.
    ///
    /// Over a store shared by several processes (Redis), another process's
    /// write reaches this process's L1 through the backplane; without one,
    /// the TTL cap is the bound on how long a copy can be stale.
    pub fn l1(mut self, max_bytes: u64) -> Self {
        self.l1_max_bytes = Some(max_bytes);
        self
    }

    /// The L1 TTL cap (see [`CacheBuilder::l1`]).
    pub fn l1_ttl(mut self, cap: Duration) -> Self {
        self.l1_ttl = cap;
        self
    }

    /// Encoded values larger than this stay out of L1 (see
    /// [`CacheBuilder::l1`]).
    pub fn l1_max_entry_bytes(mut self, bytes: usize) -> Self {
        self.l1_max_entry_bytes = bytes;
        self
    }

    /// Keeps L1 tiers coherent across instances: this cache announces its
    /// writes on `backplane`, and drops its L1 copies when other instances
    /// announce theirs. Give it to every instance's cache of a namespace
    /// over a shared Redis, including caches without L1 (their writes must
    /// reach the others' copies). See [`Backplane`].
    pub fn backplane(mut self, backplane: Backplane) -> Self {
        self.backplane = Some(backplane);
        self
    }

    /// Read-your-writes across instances (needs a backplane): a write,
    /// delete or clear returns only once every live instance has dropped
    /// its copy, or a silent one's lease has run out; and L1 serves only
    /// while this instance hears the backplane. Once a write returns, no
    /// instance serves the value it replaced. Costs one Pub/Sub round trip
    /// per write (up to one lease while an instance is silent). By default
    /// off: writes reach other instances about one round trip later.
    pub fn read_your_writes(mut self) -> Self {
        self.read_your_writes = true;
        self
    }

    /// Stale-while-revalidate: for `window` after an entry stops being
    /// fresh, `get_or_load` serves it at once and starts one background
    /// refresh (one per fleet, under the fill lease), so no caller waits
    /// for the reload. Plain `get` serves fresh entries only. By default,
    /// no window.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = window;
        self
    }

    /// Fail-safe: entries are kept `max_stale` past their freshness, and
    /// when a load fails (or passes the soft timeout) its callers get the
    /// kept value instead of an error. The value is then served as fresh
    /// for the throttle period ([`CacheBuilder::fail_safe_throttle`]), so
    /// a down source sees at most one attempt per key per period. Counted
    /// in [`Stats::fail_safe_hits`](crate::Stats::fail_safe_hits). By
    /// default, off.
    pub fn fail_safe(mut self, max_stale: Duration) -> Self {
        self.fail_safe = Some(max_stale);
        self
    }

    /// See [`CacheBuilder::fail_safe`]. By default, 10 s.
    pub fn fail_safe_throttle(mut self, period: Duration) -> Self {
        self.fail_safe_throttle = period;
        self
    }

    /// Early refresh (XFetch): a read of a fresh entry starts a background
    /// refresh with a probability that rises as expiry nears, scaled by
    /// the last load's duration times `beta`, so hot keys are reloaded
    /// before they expire and no caller meets the miss. Larger `beta`
    /// refreshes earlier; 0 turns it off. By default, 1.0.
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.early_refresh_beta = beta;
        self
    }

    /// How long a fill lease lasts unless its holder, still loading,
    /// extends it (it does, every third of this). If the holder dies, the
    /// others load after at most this long. By default, 2 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// How long a load waits at most for another caller's lease (another
    /// process's load of the same key) before loading itself — without
    /// storing the result, since it holds no lease. By default, 5 s.
    pub fn lease_wait(mut self, wait: Duration) -> Self {
        self.lease_wait = wait;
        self
    }

    /// With a stale value at hand (fail-safe), callers wait at most this
    /// long for a load and then get the stale value; the load goes on in
    /// the background and fills the cache when it finishes. By default,
    /// none.
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// A load running this long is abandoned and its callers get
    /// [`Error::LoadTimeout`](crate::Error::LoadTimeout) (or a stale value,
    /// with fail-safe). By default, none.
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = Some(timeout);
        self
    }

    /// How long this process trusts a tag or namespace mark it fetched
    /// before reading it again (see [`Cache::invalidate_tag`]). Without a
    /// backplane this is how late another instance's invalidation may be
    /// seen here; with one, invalidations are announced and seen at once,
    /// and this only bounds a missed announcement. `Duration::ZERO` checks
    /// the store on every read of an entry. By default, 1 s.
    pub fn mark_poll(mut self, period: Duration) -> Self {
        self.mark_poll = period;
        self
    }

    /// How long a tag or namespace mark is kept in the store, and so the
    /// longest any entry of this cache is kept (a mark must outlive every
    /// entry it can void). Lower it to your longest TTL so marks of
    /// one-off tags do not pile up. By default, [`Ttl::MAX`].
    pub fn mark_ttl(mut self, ttl: Duration) -> Self {
        self.mark_ttl = ttl;
        self
    }

    /// The store. Stores are cheap handles: pass clones of one store to
    /// every namespace that should share it. By default, a private
    /// [`EmbeddedStore`] of 64 MiB.
    pub fn store(self, store: impl Store) -> Self {
        self.shared_store(Arc::new(store))
    }

    /// The cap on concurrent loader runs this cache shares with every cache
    /// given a clone of `limit` (see [`LoadLimit`]). By default, one
    /// process-wide limit of [`DEFAULT_LOAD_LIMIT`](crate::DEFAULT_LOAD_LIMIT)
    /// loads shared by all caches.
    pub fn load_limit(mut self, limit: LoadLimit) -> Self {
        self.load_limit = Some(limit);
        self
    }

    /// The store, already shared (for a store chosen at run time).
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The codec of values. By default, [`Json`](crate::Json).
    pub fn codec<C2: Codec>(self, codec: C2) -> CacheBuilder<V, C2> {
        CacheBuilder {
            namespace: self.namespace,
            prefix: self.prefix,
            schema_version: self.schema_version,
            ttl: self.ttl,
            ttl_jitter: self.ttl_jitter,
            negative_ttl: self.negative_ttl,
            max_value_bytes: self.max_value_bytes,
            compress_above: self.compress_above,
            max_key_bytes: self.max_key_bytes,
            store: self.store,
            load_limit: self.load_limit,
            l1_max_bytes: self.l1_max_bytes,
            l1_ttl: self.l1_ttl,
            l1_max_entry_bytes: self.l1_max_entry_bytes,
            backplane: self.backplane,
            read_your_writes: self.read_your_writes,
            stale_while_revalidate: self.stale_while_revalidate,
            fail_safe: self.fail_safe,
            fail_safe_throttle: self.fail_safe_throttle,
            early_refresh_beta: self.early_refresh_beta,
            lease_ttl: self.lease_ttl,
            lease_wait: self.lease_wait,
            soft_timeout: self.soft_timeout,
            hard_timeout: self.hard_timeout,
            mark_poll: self.mark_poll,
            mark_ttl: self.mark_ttl,
            codec,
            _value: PhantomData,
        }
    }

    /// The load policy, checked.
    fn policy(&self) -> Result<LoadPolicy, BuildError> {
        let out_of_range =
            |what: &'static str, reason: String| BuildError::OutOfRange { what, reason };
        let lease_ttl = Ttl::checked(self.lease_ttl)
            .ok()
            .filter(|t| t.get() >= Duration::from_millis(10))
            .ok_or_else(|| {
                out_of_range(
                    "lease_ttl",
                    format!("{:?} is not within 10 ms–365 days", self.lease_ttl),
                )
            })?;
        if !(self.early_refresh_beta.is_finite() && self.early_refresh_beta >= 0.0) {
            return Err(out_of_range(
                "early_refresh",
                format!(
                    "beta {} must be a finite number ≥ 0",
                    self.early_refresh_beta
                ),
            ));
        }
        let fail_safe = match self.fail_safe {
            None => None,
            Some(max_stale) => {
                if self.fail_safe_throttle < Ttl::MIN {
                    return Err(out_of_range(
                        "fail_safe_throttle",
                        "must be at least 1 ms".into(),
                    ));
                }
                Some(FailSafe {
                    max_stale,
                    throttle: self.fail_safe_throttle,
                })
            }
        };
        for (what, window) in [
            ("stale_while_revalidate", Some(self.stale_while_revalidate)),
            ("fail_safe", self.fail_safe),
        ] {
            if window.is_some_and(|w| w > Ttl::MAX) {
                return Err(out_of_range(what, "must be at most 365 days".into()));
            }
        }
        if let (Some(soft), Some(hard)) = (self.soft_timeout, self.hard_timeout)
            && soft >= hard
        {
            return Err(out_of_range(
                "soft_timeout",
                format!("{soft:?} must be shorter than the hard timeout {hard:?}"),
            ));
        }
        if self.soft_timeout.is_some_and(|t| t.is_zero())
            || self.hard_timeout.is_some_and(|t| t.is_zero())
        {
            return Err(out_of_range(
                "timeout",
                "a load timeout must be above zero".into(),
            ));
        }
        Ok(LoadPolicy {
            stale_while_revalidate: self.stale_while_revalidate,
            fail_safe,
            early_refresh_beta: self.early_refresh_beta,
            lease_ttl,
            lease_wait: self.lease_wait,
            soft_timeout: self.soft_timeout,
            hard_timeout: self.hard_timeout,
        })
    }

    /// Checks the options and builds the cache.
    ///
    /// # Errors
    /// [`BuildError`] for a bad namespace or prefix, a TTL out of range, a
    /// jitter outside 0.0–1.0, or size limits too small to hold an entry.
    pub fn build(self) -> Result<Cache<V, C>, BuildError> {
        let keys = KeySpace::new(
            self.prefix.as_deref(),
            &self.namespace,
            self.schema_version,
            self.max_key_bytes,
        )?;
        let policy = self.policy()?;
        let valid_ttl = |what: &'static str, d: Duration| {
            Ttl::checked(d).map_err(|reason| BuildError::InvalidTtl {
                what,
                ttl: d,
                reason,
            })
        };
        let ttl = valid_ttl("ttl", self.ttl)?;
        let mark_ttl = valid_ttl("mark_ttl", self.mark_ttl)?;
        let marks = Marks::new(
            self.prefix.as_deref(),
            &self.namespace,
            Some(self.mark_poll),
        );
        let negative_ttl = self
            .negative_ttl
            .map(|d| valid_ttl("negative_ttl", d))
            .transpose()?;
        if !(0.0..=1.0).contains(&self.ttl_jitter) {
            return Err(BuildError::OutOfRange {
                what: "ttl_jitter",
                reason: format!("{} is not within 0.0–1.0", self.ttl_jitter),
            });
        }
        if self.max_value_bytes <= crate::envelope::HEADER_BYTES {
            return Err(BuildError::OutOfRange {
                what: "max_value_bytes",
                reason: format!(
                    "{} bytes cannot hold the {}-byte entry header",
                    self.max_value_bytes,
                    crate::envelope::HEADER_BYTES
                ),
            });
        }
        if self.max_key_bytes == 0 {
            return Err(BuildError::OutOfRange {
                what: "max_key_bytes",
                reason: "must be at least 1".into(),
            });
        }
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(EmbeddedStore::default()));
        let l1 = match self.l1_max_bytes {
            None => None,
            Some(0) => {
                return Err(BuildError::OutOfRange {
                    what: "l1",
                    reason: "an L1 of 0 bytes holds nothing; leave it out instead".into(),
                });
            }
            Some(max_bytes) => {
                let ttl_cap = valid_ttl("l1_ttl", self.l1_ttl)?.get();
                Some(L1::new(L1Config {
                    max_bytes,
                    ttl_cap,
                    max_entry_bytes: self.l1_max_entry_bytes,
                }))
            }
        };
        if self.read_your_writes && self.backplane.is_none() {
            return Err(BuildError::OutOfRange {
                what: "read_your_writes",
                reason: "needs a backplane to reach the other instances".into(),
            });
        }
        let (backplane, read_your_writes) = (self.backplane, self.read_your_writes);
        let inner = Arc::new_cyclic(|me: &Weak<Inner<V, C>>| {
            let coherence = backplane.map(|backplane| {
                let me: Weak<dyn Listener> = me.clone();
                // Every cache listens: with L1 to drop copies, and in any
                // case to wake its loads waiting on another's fill lease.
                let id = backplane.register(keys.head(), me);
                Coherence {
                    backplane,
                    id,
                    read_your_writes,
                }
            });
            Inner {
                stats: Recorder::new(&self.namespace),
                namespace: self.namespace,
                keys,
                store,
                codec: self.codec,
                ttl,
                ttl_jitter: self.ttl_jitter,
                negative_ttl,
                max_value_bytes: self.max_value_bytes,
                compression: crate::compress::Compression {
                    above: self.compress_above,
                },
                flights: Flights::default(),
                policy,
                l1,
                coherence,
                marks,
                mark_ttl,
                load_limit: self.load_limit.unwrap_or_else(LoadLimit::process_wide),
                _value: PhantomData,
            }
        });
        Ok(Cache::from_inner(inner))
    }
}
