//! Batch loads: many keys, one store read, one loader call.
//!
//! `get_or_load_many` reads every key in one `MGET` (after L1), then for the
//! misses:
//!
//! * a key already loading in this process joins that flight (the same
//!   single flight as `get_or_load`, both ways: a `get_or_load` arriving
//!   during the batch joins the batch's flight for its key);
//! * every other missing key gets a flight and its fill lease is claimed
//!   (the claims go out together on the multiplexed connection);
//! * the keys whose lease was granted go to the batch loader in one call;
//!   each value is filled under its lease, so a write during the load
//!   still wins (no stale set), exactly as for a single load;
//! * a key whose lease another caller holds, or whose entry turned out to
//!   be present, is left to the ordinary single-key path, which waits for
//!   that fill (and loads it alone only if the holder fails).
//!
//! The loader may return fewer keys than asked: those are "not found"
//! (cached as such with a negative TTL).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;

use crate::cache::{Cache, Found, StaleCopy, Tagged, Value};
use crate::codec::Codec;
use crate::envelope;
use crate::flight::{Flight, Role, Settle};
use crate::load::{Job, Loaded, Standing};
use crate::policy::Age;
use crate::store::{Claim, Lease, LeaseToken};
use crate::{BoxError, Error, Ttl};

/// A batch loader's error, shared by every key of the batch.
#[derive(Debug, Clone)]
struct Shared(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl std::fmt::Display for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// What a batch did with each key, for warming's summary.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct BatchReport {
    /// Fresh in L1 or the store already.
    pub(crate) hits: usize,
    /// Loaded by this call's loader and found (and cached, unless the
    /// store failed).
    pub(crate) loaded: usize,
    /// Loaded by this batch, and the source had no such key.
    pub(crate) not_found: usize,
    /// Answered by another load (in flight here, or another instance's).
    pub(crate) joined: usize,
    /// The load failed.
    pub(crate) failed: usize,
}

/// What a batch load ended with.
pub(crate) struct BatchOutcome<V> {
    pub(crate) found: HashMap<String, V>,
    pub(crate) report: BatchReport,
    /// The first failure, if a key failed.
    pub(crate) error: Option<Error>,
}

/// A batch loader, shareable by the single-key hand-offs.
pub(crate) type BatchFn<V> = Arc<
    dyn Fn(
            Vec<String>,
        )
            -> futures_util::future::BoxFuture<'static, Result<HashMap<String, V>, BoxError>>
        + Send
        + Sync,
>;

/// A key the caller waits for: its flight, and its fallback if any.
type Wait<V> = (String, Arc<Flight<Arc<V>>>, Option<StaleCopy<V>>);

/// One key's part in a batch.
struct Missing<V> {
    key: String,
    skey: String,
    flight: Arc<Flight<Arc<V>>>,
    settle: Settle<Arc<V>>,
    stale: Option<StaleCopy<V>>,
    ticket: Option<crate::l1::Ticket>,
}

impl<V: Value, C: Codec> Cache<V, C> {
    /// Cache-aside for many keys at once: the values of `keys` that exist,
    /// from L1, then one store read (`MGET`) for the rest, then **one**
    /// call of `loader` with the keys still missing. The loader returns the
    /// values it found, by key; keys it leaves out are "not found" and
    /// absent from the result.
    ///
    /// Shares single flight and fill leases with [`Cache::get_or_load`]
    /// (see the module docs of `batch`): a key loading elsewhere is waited
    /// for, not loaded twice.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Load`] (or
    /// [`Error::LoaderPanicked`], [`Error::LoadTimeout`]) when the loader
    /// failed for a key without a fail-safe fallback. Values loaded for
    /// the other keys are cached all the same.
    pub async fn get_or_load_many<K, F, Fut, E>(
        &self,
        keys: &[K],
        loader: F,
    ) -> Result<HashMap<String, V>, Error>
    where
        K: AsRef<str>,
        F: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HashMap<String, V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let batch: BatchFn<V> = Arc::new(move |keys| {
            let load = loader(keys);
            Box::pin(async move { load.await.map_err(Into::into) })
        });
        let outcome = self.load_many(keys, batch).await?;
        match outcome.error {
            Some(e) => Err(e),
            None => Ok(outcome.found),
        }
    }

    /// The body of [`Cache::get_or_load_many`] and of warming.
    pub(crate) async fn load_many<K: AsRef<str>>(
        &self,
        keys: &[K],
        loader: BatchFn<V>,
    ) -> Result<BatchOutcome<V>, Error> {
        let mut report = BatchReport::default();
        let mut seen = HashSet::with_capacity(keys.len());
        let mut wanted: Vec<(String, String)> = Vec::with_capacity(keys.len());
        for key in keys {
            let key = key.as_ref();
            let skey = self.inner.keys.store_key(key)?;
            if seen.insert(key) {
                wanted.push((key.to_owned(), skey));
            }
        }
        let mut found: HashMap<String, V> = HashMap::with_capacity(wanted.len());
        // L1 first.
        let mut rest = Vec::with_capacity(wanted.len());
        for (key, skey) in wanted {
            match self.l1_lookup(&key, true)? {
                Some((Found::Value(v), _)) => {
                    report.hits += 1;
                    found.insert(key, Arc::unwrap_or_clone(v));
                }
                Some((_, _)) => report.hits += 1,
                None => rest.push((key, skey)),
            }
        }
        if rest.is_empty() {
            return Ok(BatchOutcome {
                found,
                report,
                error: None,
            });
        }
        // One store read for everything L1 did not have.
        let tickets: Vec<_> = rest
            .iter()
            .map(|(_, skey)| self.inner.l1.as_ref().map(|l1| l1.ticket(skey)))
            .collect();
        let skeys: Vec<String> = rest.iter().map(|(_, s)| s.clone()).collect();
        let raw = match self.observe(self.inner.store.get_many(&skeys).await) {
            Ok(raw) => raw,
            // Counted and logged: fail open, load them all.
            Err(_) => vec![None; skeys.len()],
        };
        let read = self.read_many(&skeys, &raw, &tickets).await;
        let mut waits: Vec<Wait<V>> = Vec::new();
        let mut missing: Vec<Missing<V>> = Vec::new();
        for (((key, skey), ticket), (hit, stale)) in rest.into_iter().zip(tickets).zip(read) {
            match hit {
                Some(Found::Value(v)) => {
                    report.hits += 1;
                    found.insert(key, Arc::unwrap_or_clone(v));
                    continue;
                }
                Some(_) => {
                    report.hits += 1;
                    continue;
                }
                None => {}
            }
            match self.inner.flights.join(&skey) {
                Role::Follower(flight) => waits.push((key, flight, stale)),
                Role::Leader(flight, settle) => {
                    waits.push((key.clone(), Arc::clone(&flight), stale.clone()));
                    missing.push(Missing {
                        key,
                        skey,
                        flight,
                        settle,
                        stale,
                        ticket,
                    });
                }
            }
        }
        // The keys this call's loader answered: found, or not.
        let mut loaded: HashMap<String, bool> = HashMap::new();
        if !missing.is_empty() {
            self.inner.stats.load_wait();
            let task = self.clone().load_batch(missing, loader);
            loaded = match tokio::runtime::Handle::try_current() {
                Ok(runtime) => runtime.spawn(task).await.unwrap_or_default(),
                Err(_) => task.await,
            };
        }
        let mut first_error = None;
        for (key, flight, stale) in waits {
            match self.await_flight(&flight, stale).await {
                Ok(value) => {
                    match loaded.get(&key) {
                        Some(true) => report.loaded += 1,
                        Some(false) => report.not_found += 1,
                        None => report.joined += 1,
                    }
                    if let Some(v) = value {
                        found.insert(key, Arc::unwrap_or_clone(v));
                    }
                }
                Err(e) => {
                    report.failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        Ok(BatchOutcome {
            found,
            report,
            error: first_error,
        })
    }

    /// Decodes a batch read: per key, a fresh hit (copied to L1), or a miss
    /// with its stale copy if one is usable.
    async fn read_many(
        &self,
        skeys: &[String],
        raw: &[Option<bytes::Bytes>],
        tickets: &[Option<crate::l1::Ticket>],
    ) -> Vec<(Option<Found<V>>, Option<StaleCopy<V>>)> {
        let screened = self.screen_many(raw).await;
        let now = envelope::now_ms();
        let mut out = Vec::with_capacity(raw.len());
        for (i, d) in screened.into_iter().enumerate() {
            let Some(d) = d else {
                self.inner.stats.miss();
                out.push((None, None));
                continue;
            };
            let age = self.inner.policy.age(d.stamp, now);
            match (age, d.found) {
                (Age::Fresh, found) => {
                    let copy = match &found {
                        Found::Value(v) => Some(Some(Arc::clone(v))),
                        Found::Absent => Some(None),
                        Found::Nothing => None,
                    };
                    if let Some(copy) = copy {
                        self.copy_to_l1(&skeys[i], tickets[i], copy, d.stamp, d.size, d.tags);
                    }
                    self.inner.stats.hit();
                    out.push((Some(found), None));
                }
                (Age::Stale | Age::Fallback, Found::Value(value)) => {
                    self.inner.stats.miss();
                    let bytes = raw[i].clone().unwrap_or_default();
                    out.push((
                        None,
                        Some(StaleCopy {
                            value,
                            bytes,
                            stamp: d.stamp,
                            age,
                        }),
                    ));
                }
                _ => {
                    self.inner.stats.miss();
                    out.push((None, None));
                }
            }
        }
        out
    }

    /// Claims the missing keys' leases, loads the granted ones in one call
    /// and fills them; hands the rest to the single-key path. Runs as its
    /// own task: the flights it settles have other waiters.
    async fn load_batch(
        self,
        missing: Vec<Missing<V>>,
        loader: BatchFn<V>,
    ) -> HashMap<String, bool> {
        let mut answered = HashMap::new();
        let policy = &self.inner.policy;
        let ttl = self.inner.ttl;
        let token = LeaseToken::random();
        let claims = join_all(missing.iter().map(|m| {
            let seen = m.stale.as_ref().map(|s| crate::load::identity(&s.bytes));
            let store = Arc::clone(&self.inner.store);
            let skey = m.skey.clone();
            let token = token.clone();
            let lease_ttl = policy.lease_ttl;
            async move { store.claim(&skey, seen.as_deref(), &token, lease_ttl).await }
        }))
        .await;
        let mut granted: Vec<(Missing<V>, Standing)> = Vec::new();
        for (m, claim) in missing.into_iter().zip(claims) {
            match self.observe(claim) {
                Ok(Claim {
                    lease: Lease::Granted,
                    ..
                }) => granted.push((m, Standing::Leased(token.clone()))),
                // The store is down: load without a lease, store nothing.
                Err(_) => granted.push((m, Standing::Unfenced)),
                // Present after all, or someone else is loading it: the
                // single-key path reads it or waits for that fill.
                Ok(_) => self.hand_off(m, Arc::clone(&loader), ttl),
            }
        }
        if granted.is_empty() {
            return answered;
        }
        let keys: Vec<String> = granted.iter().map(|(m, _)| m.key.clone()).collect();
        let started = Instant::now();
        let as_of_us = envelope::now_us();
        let hard_deadline = self.inner.policy.hard_timeout.map(|t| started + t);
        let leases = granted
            .iter()
            .filter_map(|(m, standing)| match standing {
                Standing::Leased(token) => Some((m.skey.as_str(), token)),
                Standing::Unfenced => None,
            })
            .collect();
        let result = self.run_guarded(leases, hard_deadline, loader(keys)).await;
        let took = started.elapsed();
        self.inner.stats.load(took);
        match result {
            Ok(mut values) => {
                let fills = granted.into_iter().map(|(m, standing)| {
                    let value = values.remove(&m.key).map(Arc::new);
                    answered.insert(m.key.clone(), value.is_some());
                    let this = &self;
                    async move {
                        if let Standing::Leased(token) = &standing {
                            let loaded = Loaded {
                                value: value.clone(),
                                tags: Vec::new(),
                                took,
                                as_of_us,
                            };
                            this.store_loaded(&m.skey, token, m.ticket, ttl, true, loaded)
                                .await;
                        }
                        this.inner.flights.finish(&m.skey, &m.flight);
                        m.settle.settle(Ok(value));
                    }
                });
                join_all(fills).await;
            }
            Err(failure) => {
                self.inner.stats.load_error();
                join_all(granted.into_iter().map(|(m, standing)| {
                    let failure = failure.clone();
                    let this = &self;
                    async move {
                        this.after_failure(&m.skey, &standing, m.ticket, m.stale)
                            .await;
                        this.inner.flights.finish(&m.skey, &m.flight);
                        m.settle.settle(Err(failure));
                    }
                }))
                .await;
            }
        }
        answered
    }

    /// Leaves one key of a batch to the single-key path (its flight is
    /// already registered), loading it alone if it comes to that.
    fn hand_off(&self, m: Missing<V>, loader: BatchFn<V>, ttl: Ttl) {
        let key = m.key.clone();
        let single = move || async move {
            let mut values = loader(vec![key.clone()]).await.map_err(Shared::from_box)?;
            Ok::<_, Shared>(Tagged::new(values.remove(&key)))
        };
        let job = Job::Load { stale: m.stale };
        let task = self
            .clone()
            .fly(m.skey, m.flight, m.settle, ttl, true, single, job);
        // Without a runtime the task is dropped and its waiters hear the
        // load was abandoned (an async caller always has one).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn(task));
        }
    }
}

impl Shared {
    fn from_box(err: BoxError) -> Shared {
        Shared(Arc::from(err))
    }
}
