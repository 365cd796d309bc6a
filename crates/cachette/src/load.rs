//! The load path: L1, then the store, then one load per key per fleet.
//!
//! * In this process, concurrent misses of a key share one *flight* (see
//!   `flight.rs`): one task loads, the callers wait for its outcome.
//! * Across processes, the flight first claims the key's fill lease in the
//!   store (`store::lease`). The holder loads and fills with its token;
//!   everyone else waits for the fill's signal (the backplane's
//!   announcement, or this process's own wake) and reads what it stored.
//!   A write or delete ends the lease, so a load that read the source
//!   before a write cannot store its value after it.
//! * The wait is bounded: past the lease wait a flight loads itself and
//!   returns the value without storing it (it holds no lease). If the
//!   holder dies, its lease runs out and the next claim wins.
//! * Entries past freshness follow the windows of `policy.rs`: served at
//!   once while one background refresh runs (stale-while-revalidate), or
//!   kept as the fallback when a load fails or is slow (fail-safe). Early
//!   refresh reloads hot keys before they go stale.

use bytes::Bytes;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use crate::backplane::Change;
use crate::cache::{Cache, Decoded, Found, Origin, Read, StaleCopy, Tagged, Value, panic_message};
use crate::codec::Codec;
use crate::compress;
use crate::envelope::{self, IDENTITY_BYTES, Tags};
use crate::flight::{Failure, Flight, Outcome, Role, Settle};
use crate::l1::Ticket;
use crate::policy::{Age, Stamp};
use crate::signal;
use crate::store::{Claim, Lease, LeaseToken, StoreKind};
use crate::{BoxError, Error, Ttl};

/// What a flight is for.
pub(crate) enum Job<V> {
    /// Callers wait for this load; `stale` is their fallback, if any.
    Load { stale: Option<StaleCopy<V>> },
    /// Nobody waits: reload the entry created at `created_ms` (stale, or
    /// due for early refresh) and leave the current value served meanwhile.
    Refresh { created_ms: u64 },
}

/// A load's result, with what its entry records.
pub(crate) struct Loaded<V> {
    pub(crate) value: Option<Arc<V>>,
    pub(crate) tags: Vec<String>,
    pub(crate) took: Duration,
    /// When the load started (unix µs).
    pub(crate) as_of_us: u64,
}

/// Whether the flight holds the lease.
pub(crate) enum Standing {
    Leased(LeaseToken),
    /// Loading without a lease (the store is down, or the holder is too
    /// slow): the value is returned but not stored.
    Unfenced,
}

/// Claim rounds of one flight at most: each is a store round trip that
/// found the entry changed or the lease held, so this is a backstop against
/// a pathological store, not a limit ever met in practice.
const MAX_CLAIMS: usize = 64;

impl<V: Value, C: Codec> Cache<V, C> {
    /// The shared path of every load.
    pub(crate) async fn load<F, Fut, E>(
        &self,
        key: &str,
        ttl: Ttl,
        optional: bool,
        loader: F,
    ) -> Result<Option<Arc<V>>, Error>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Tagged<Option<V>>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let skey = self.inner.keys.store_key(key)?;
        let read = match self.l1_lookup_fetching(key, optional).await? {
            Some((found, stamp)) => Ok(Read {
                found,
                stamp: Some(stamp),
                stale: None,
            }),
            None => self.read(&skey, optional, true).await,
        };
        let stale = match read {
            Ok(Read {
                found: Found::Value(v),
                stamp,
                ..
            }) => {
                if let Some(stamp) = stamp {
                    self.refresh_early(&skey, stamp, ttl, optional, loader);
                }
                return Ok(Some(v));
            }
            Ok(Read {
                found: Found::Absent,
                ..
            }) if optional => return Ok(None),
            Ok(Read {
                stale: Some(stale), ..
            }) if stale.age == Age::Stale => {
                self.inner.stats.stale_hit();
                self.refresh(&skey, stale.stamp.created_ms, ttl, optional, loader);
                return Ok(Some(stale.value));
            }
            Ok(read) => read.stale,
            // A store outage is already counted and logged: fail open.
            Err(_) => None,
        };
        let flight = match self.inner.flights.join(&skey) {
            Role::Follower(flight) => flight,
            Role::Leader(flight, settle) => {
                let job = Job::Load {
                    stale: stale.clone(),
                };
                let task = self.clone().fly(
                    skey,
                    Arc::clone(&flight),
                    settle,
                    ttl,
                    optional,
                    loader,
                    job,
                );
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => drop(runtime.spawn(task)),
                    // Outside a Tokio runtime the load cannot outlive its
                    // caller; run it here rather than fail.
                    Err(_) => task.await,
                }
                flight
            }
        };
        self.inner.stats.load_wait();
        self.await_flight(&flight, stale).await
    }

    /// Waits for a flight's outcome: at most the soft timeout when a stale
    /// fallback is at hand, and the stale value instead of a failure. (The
    /// hard timeout is the flight's: it bounds the whole load, lease wait
    /// included, and releases the lease before its callers hear of it.)
    pub(crate) async fn await_flight(
        &self,
        flight: &Flight<Arc<V>>,
        stale: Option<StaleCopy<V>>,
    ) -> Result<Option<Arc<V>>, Error> {
        let policy = &self.inner.policy;
        let outcome = match (&stale, policy.soft_timeout) {
            (Some(stale), Some(soft)) => {
                match tokio::time::timeout(soft, flight.outcome()).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        // The load goes on and fills the cache when it ends.
                        self.inner.stats.soft_timeout();
                        self.inner.stats.fail_safe_hit();
                        return Ok(Some(Arc::clone(&stale.value)));
                    }
                }
            }
            _ => flight.outcome().await,
        };
        let failure = match outcome {
            Some(Ok(value)) => return Ok(value),
            Some(Err(failure)) => Some(failure),
            None => None,
        };
        if let Some(stale) = stale {
            self.inner.stats.fail_safe_hit();
            return Ok(Some(stale.value));
        }
        let namespace = self.inner.namespace.clone();
        Err(match failure {
            Some(Failure::Loader(source)) => Error::Load { namespace, source },
            Some(Failure::Panicked(message)) => Error::LoaderPanicked { namespace, message },
            Some(Failure::TimedOut(after)) => {
                self.inner.stats.hard_timeout();
                Error::LoadTimeout { namespace, after }
            }
            None => Error::LoadAbandoned { namespace },
        })
    }

    /// XFetch on a fresh read: maybe start one background refresh.
    fn refresh_early<F, Fut, E>(
        &self,
        skey: &str,
        stamp: Stamp,
        ttl: Ttl,
        optional: bool,
        loader: F,
    ) where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Tagged<Option<V>>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        if self
            .inner
            .policy
            .refresh_early(stamp, envelope::now_ms, rand::random::<f64>)
        {
            self.refresh(skey, stamp.created_ms, ttl, optional, loader);
        }
    }

    /// Starts a background refresh of the entry created at `created_ms`,
    /// unless a load of the key is already in flight here.
    fn refresh<F, Fut, E>(&self, skey: &str, created_ms: u64, ttl: Ttl, optional: bool, loader: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Tagged<Option<V>>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        // Without a runtime there is nothing to run it on; the value served
        // is still good.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Role::Leader(flight, settle) = self.inner.flights.join(skey) {
            self.inner.stats.refresh();
            let job = Job::Refresh { created_ms };
            let task =
                self.clone()
                    .fly(skey.to_owned(), flight, settle, ttl, optional, loader, job);
            drop(runtime.spawn(task));
        }
    }

    /// The body of a flight: runs detached from any caller.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn fly<F, Fut, E>(
        self,
        skey: String,
        flight: Arc<Flight<Arc<V>>>,
        settle: Settle<Arc<V>>,
        ttl: Ttl,
        optional: bool,
        loader: F,
        job: Job<V>,
    ) where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Tagged<Option<V>>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let outcome = self.run_flight(&skey, ttl, optional, loader, job).await;
        // Leave the map before waking the waiters: a caller arriving after
        // this either finds the filled entry or starts a new flight.
        self.inner.flights.finish(&skey, &flight);
        settle.settle(outcome);
    }

    async fn run_flight<F, Fut, E>(
        &self,
        skey: &str,
        ttl: Ttl,
        optional: bool,
        loader: F,
        job: Job<V>,
    ) -> Outcome<Arc<V>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Tagged<Option<V>>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        // Taken before anything is read: an invalidation of the key from
        // here on keeps this flight's value out of L1.
        let ticket = self.inner.l1.as_ref().map(|l1| l1.ticket(skey));
        let hard_deadline = self.inner.policy.hard_timeout.map(|t| Instant::now() + t);
        let refresh = matches!(job, Job::Refresh { .. });
        let mut fallback = match job {
            Job::Load { stale } => stale,
            Job::Refresh { created_ms } => match self.current(skey, created_ms, ticket).await {
                Current::Replaced(value) => return Ok(value),
                Current::Same(stale) => stale,
            },
        };
        let standing = match self
            .claim(
                skey,
                ticket,
                optional,
                refresh,
                hard_deadline,
                &mut fallback,
            )
            .await
        {
            Claimed::Done(outcome) => return outcome,
            Claimed::Load(standing) => standing,
        };
        let started = Instant::now();
        // The source as of the load's start: an invalidation from here on
        // voids this value (see `marks`).
        let as_of_us = envelope::now_us();
        let leases = match &standing {
            Standing::Leased(token) => vec![(skey, token)],
            Standing::Unfenced => Vec::new(),
        };
        // The loader's error (which need not be `Send`) is converted before
        // anything else is awaited.
        let load = async move { loader().await.map_err(Into::into) };
        let result = self.run_guarded(leases, hard_deadline, load).await;
        let took = started.elapsed();
        self.inner.stats.load(took);
        let (value, tags) = match result {
            Ok(Tagged { value, tags }) => (value.map(Arc::new), tags),
            Err(failure) => {
                self.inner.stats.load_error();
                self.after_failure(skey, &standing, ticket, fallback).await;
                return Err(failure);
            }
        };
        let loaded = Loaded {
            value: value.clone(),
            tags,
            took,
            as_of_us,
        };
        match standing {
            Standing::Leased(token) => {
                self.store_loaded(skey, &token, ticket, ttl, optional, loaded)
                    .await;
            }
            // Not fenced, so not written to the store; L1 keeps it (a local
            // write since the ticket was taken keeps it out), so that while
            // the store is down each key costs the source one load per L1
            // TTL, not one per read.
            Standing::Unfenced => {
                if let Some(Ok((bytes, _))) = self.encode_loaded(ttl, optional, &loaded) {
                    self.copy_encoded_to_l1(skey, ticket, loaded.value, &bytes);
                }
            }
        }
        Ok(value)
    }

    /// Stores a loaded value under the lease `token` holds (or ends the
    /// lease if there is nothing to store), copies it to L1 and tells the
    /// waiters. A refused fill (a write came first) is counted.
    pub(crate) async fn store_loaded(
        &self,
        skey: &str,
        token: &LeaseToken,
        ticket: Option<Ticket>,
        ttl: Ttl,
        optional: bool,
        loaded: Loaded<V>,
    ) {
        let Some(encoded) = self.encode_loaded(ttl, optional, &loaded) else {
            self.end_lease(skey, token).await;
            return;
        };
        match encoded {
            Ok((bytes, kept_for)) => {
                let filled = self
                    .inner
                    .store
                    .fill(skey, token, bytes.clone(), kept_for)
                    .await;
                match self.observe(filled) {
                    Ok(true) => {
                        self.copy_encoded_to_l1(skey, ticket, loaded.value, &bytes);
                        // Wakes waiters elsewhere, and drops copies other
                        // instances may hold from before the entry left the
                        // store; never waited for.
                        let _ = self.announce(Change::Key(skey), false).await;
                    }
                    Ok(false) => {
                        self.inner.stats.fill_refused();
                        tracing::debug!(namespace = %self.inner.namespace, "a write ended the lease during the load; not cached");
                    }
                    // The store went away during the load: as for an
                    // unfenced load, L1 keeps the value.
                    Err(e) if e.is_store_unavailable() => {
                        self.copy_encoded_to_l1(skey, ticket, loaded.value, &bytes);
                    }
                    // Counted and logged; the value is served anyway.
                    Err(_) => {}
                }
                signal::wake(skey);
            }
            Err(err) => {
                self.end_lease(skey, token).await;
                tracing::warn!(namespace = %self.inner.namespace, error = %err, "loaded value not cached");
            }
        }
    }

    /// A loaded value encoded as its entry, with how long the store keeps
    /// it; `None` when there is nothing to cache (not found, without
    /// negative caching).
    fn encode_loaded(
        &self,
        ttl: Ttl,
        optional: bool,
        loaded: &Loaded<V>,
    ) -> Option<Result<(Bytes, Ttl), Error>> {
        let fill_ttl = match (&loaded.value, self.inner.negative_ttl) {
            (Some(_), _) => ttl.jittered(self.inner.ttl_jitter),
            (None, Some(negative)) if optional => negative,
            (None, _) => return None,
        };
        let load_us = u32::try_from(loaded.took.as_micros())
            .unwrap_or(u32::MAX)
            .max(1);
        Some(
            envelope::check_tags(&loaded.tags)
                .map_err(|reason| Error::InvalidTag { reason })
                .and_then(|tags| {
                    let origin = Origin {
                        load_us,
                        as_of_us: Some(loaded.as_of_us),
                        tags: &tags,
                    };
                    self.encode(loaded.value.as_deref(), fill_ttl, origin)
                }),
        )
    }

    /// Copies a loaded value to L1 with the stamp and tags of its entry.
    fn copy_encoded_to_l1(
        &self,
        skey: &str,
        ticket: Option<Ticket>,
        value: Option<Arc<V>>,
        bytes: &Bytes,
    ) {
        // L1 holds the decoded value: weigh it at its uncompressed size.
        let (stamp, tags, size) = envelope::decode(bytes)
            .map(|e| {
                let size = compress::raw_entry_len(&e, bytes.len());
                (Stamp::from(e.meta), e.tags(), size)
            })
            .unwrap_or((Stamp::default(), None, bytes.len()));
        self.copy_to_l1(skey, ticket, value, stamp, size, tags);
    }

    /// A refresh first looks at what the store holds now: if the entry was
    /// replaced since the refresh was decided, there is nothing to do.
    async fn current(&self, skey: &str, created_ms: u64, ticket: Option<Ticket>) -> Current<V> {
        let Ok(Some(bytes)) = self.inner.store.get(skey).await else {
            return Current::Same(None);
        };
        let Ok(decoded) = self.decode_quiet(&bytes) else {
            return Current::Same(None);
        };
        let Some(decoded) = self.screen(decoded).await else {
            return Current::Same(None);
        };
        let age = self.inner.policy.age(decoded.stamp, envelope::now_ms());
        if decoded.stamp.created_ms != created_ms && age == Age::Fresh {
            if let Found::Value(value) = &decoded.found {
                let copy = Some(Arc::clone(value));
                let tags = decoded.tags.clone();
                self.copy_to_l1(skey, ticket, copy, decoded.stamp, decoded.size, tags);
            }
            return Current::Replaced(match decoded.found {
                Found::Value(value) => Some(value),
                _ => None,
            });
        }
        Current::Same(match decoded.found {
            Found::Value(value) if age != Age::Gone => Some(StaleCopy {
                value,
                bytes,
                stamp: decoded.stamp,
                age,
            }),
            _ => None,
        })
    }

    /// Claims the lease, waiting for another holder's fill if need be.
    async fn claim(
        &self,
        skey: &str,
        ticket: Option<Ticket>,
        optional: bool,
        refresh: bool,
        hard_deadline: Option<Instant>,
        fallback: &mut Option<StaleCopy<V>>,
    ) -> Claimed<V> {
        let policy = &self.inner.policy;
        let token = LeaseToken::random();
        let lease_deadline = Instant::now() + policy.lease_wait;
        let deadline = hard_deadline.map_or(lease_deadline, |hard| hard.min(lease_deadline));
        let signalled =
            self.inner.coherence.is_some() || self.inner.store.kind() == StoreKind::Embedded;
        let mut backoff = Duration::from_millis(2);
        let mut waited = false;
        let mut seen: Option<Vec<u8>> = fallback.as_ref().map(|s| identity(&s.bytes));
        for _ in 0..MAX_CLAIMS {
            // Listening before the claim: a fill that lands between the
            // store's answer and the wait still wakes us.
            let notify = signal::listen(skey);
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let claim = self
                .inner
                .store
                .claim(skey, seen.as_deref(), &token, policy.lease_ttl)
                .await;
            let Claim { value, lease } = match self.observe(claim) {
                Ok(claim) => claim,
                Err(_) => return Claimed::Load(Standing::Unfenced),
            };
            match lease {
                Lease::Granted => return Claimed::Load(Standing::Leased(token)),
                Lease::Changed => {
                    let bytes = value.unwrap_or_default();
                    seen = Some(identity(&bytes));
                    let Ok(decoded) = self.decode_quiet(&bytes) else {
                        continue;
                    };
                    // Voided by a mark: as good as absent, so claim it
                    // (`seen` already names it).
                    let Some(decoded) = self.screen(decoded).await else {
                        continue;
                    };
                    let age = policy.age(decoded.stamp, envelope::now_ms());
                    let Decoded {
                        found,
                        stamp,
                        tags,
                        size,
                    } = decoded;
                    match (age, found) {
                        (Age::Fresh, Found::Value(value)) => {
                            let copy = Some(Arc::clone(&value));
                            self.copy_to_l1(skey, ticket, copy, stamp, size, tags);
                            return Claimed::Done(Ok(Some(value)));
                        }
                        (Age::Fresh, Found::Absent) if optional => {
                            self.copy_to_l1(skey, ticket, None, stamp, size, tags);
                            return Claimed::Done(Ok(None));
                        }
                        (Age::Stale | Age::Fallback, Found::Value(value)) => {
                            *fallback = Some(StaleCopy {
                                value,
                                bytes,
                                stamp,
                                age,
                            });
                        }
                        _ => {}
                    }
                }
                Lease::Held { expires_in } => {
                    let now = Instant::now();
                    // A refresh leaves the work to the holder, but stays in
                    // flight until its fill lands (or the wait runs out):
                    // callers keep getting the stale value meanwhile, and
                    // no second refresh of the key starts here.
                    if refresh
                        && now >= deadline
                        && let Some(stale) = fallback
                    {
                        return Claimed::Done(Ok(Some(Arc::clone(&stale.value))));
                    }
                    if hard_deadline.is_some_and(|hard| now >= hard) {
                        let after = policy.hard_timeout.unwrap_or_default();
                        return Claimed::Done(Err(Failure::TimedOut(after)));
                    }
                    if now >= deadline {
                        tracing::debug!(namespace = %self.inner.namespace, "lease wait ran out; loading without storing");
                        return Claimed::Load(Standing::Unfenced);
                    }
                    if !waited {
                        waited = true;
                        self.inner.stats.lease_wait();
                    }
                    // With signals, sleep until the holder's lease would run
                    // out; without (Redis and no backplane), back off.
                    let mut nap = expires_in + Duration::from_millis(2);
                    if !signalled {
                        nap = nap.min(backoff);
                        backoff = (backoff * 2).min(Duration::from_millis(100));
                    }
                    let nap = nap.min(deadline - now);
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep(nap) => {}
                    }
                }
            }
        }
        Claimed::Load(Standing::Unfenced)
    }

    /// Runs `load` (one key's loader, or a batch's): panics caught, the
    /// `leases` extended every third of their TTL while it runs (one a
    /// write ended is dropped: its fill will be refused, the value is still
    /// served), abandoned at the hard deadline.
    pub(crate) async fn run_guarded<T>(
        &self,
        mut leases: Vec<(&str, &LeaseToken)>,
        hard_deadline: Option<Instant>,
        load: impl Future<Output = Result<T, BoxError>>,
    ) -> Result<T, Failure> {
        // The permit is taken inside the guarded future: leases are kept
        // alive and the hard deadline counts while a load waits for one.
        let limit = &self.inner.load_limit;
        let stats = &self.inner.stats;
        let load = async move {
            let _permit = match limit.try_acquire() {
                Some(permit) => Some(permit),
                None => {
                    stats.load_permit_wait();
                    limit.acquire().await
                }
            };
            load.await
        };
        let load = AssertUnwindSafe(load).catch_unwind();
        tokio::pin!(load);
        let policy = &self.inner.policy;
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let deadline = tokio::time::sleep_until(hard_deadline.unwrap_or(far).into());
        tokio::pin!(deadline);
        let every = policy.lease_ttl.get() / 3;
        let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                result = &mut load => return match result {
                    Ok(Ok(value)) => Ok(value),
                    Ok(Err(err)) => Err(Failure::Loader(Arc::from(err))),
                    Err(panic) => Err(Failure::Panicked(panic_message(panic.as_ref()))),
                },
                () = &mut deadline, if hard_deadline.is_some() => {
                    return Err(Failure::TimedOut(policy.hard_timeout.unwrap_or_default()));
                }
                _ = keepalive.tick(), if !leases.is_empty() => {
                    let store = &self.inner.store;
                    let extended = futures_util::future::join_all(
                        leases
                            .iter()
                            .map(|(skey, token)| store.extend_lease(skey, token, policy.lease_ttl)),
                    )
                    .await;
                    let mut lost = extended.iter().map(|e| matches!(e, Ok(false)));
                    leases.retain(|_| !lost.next().unwrap_or(false));
                }
            }
        }
    }

    /// After a failed load: with a fallback, the fail-safe serves it as
    /// fresh for the throttle period (so the source sees one attempt per
    /// key per period); otherwise the lease is released so waiters retry.
    pub(crate) async fn after_failure(
        &self,
        skey: &str,
        standing: &Standing,
        ticket: Option<Ticket>,
        fallback: Option<StaleCopy<V>>,
    ) {
        let Standing::Leased(token) = standing else {
            return;
        };
        let throttled = match (fallback, self.inner.policy.fail_safe) {
            (Some(stale), Some(fail_safe)) => {
                self.throttle(skey, token, ticket, stale, fail_safe.throttle)
                    .await
            }
            _ => false,
        };
        if !throttled {
            self.end_lease(skey, token).await;
        }
    }

    /// Writes `stale` back as fresh until now + `period` (never past its
    /// own end), under the lease; true if stored.
    async fn throttle(
        &self,
        skey: &str,
        token: &LeaseToken,
        ticket: Option<Ticket>,
        stale: StaleCopy<V>,
        period: Duration,
    ) -> bool {
        let now = envelope::now_ms();
        let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        let until = now
            .saturating_add(period_ms)
            .min(stale.stamp.stale_until_ms);
        let left = Duration::from_millis(stale.stamp.stale_until_ms.saturating_sub(now));
        let (Some(bytes), Ok(kept_for)) = (
            envelope::refreshed_until(&stale.bytes, until),
            Ttl::new(left),
        ) else {
            return false;
        };
        let parsed = envelope::decode(&stale.bytes).ok();
        let tags = parsed.as_ref().and_then(|e| e.tags());
        let size = parsed.map_or(bytes.len(), |e| {
            compress::raw_entry_len(&e, stale.bytes.len())
        });
        let stored = self
            .inner
            .store
            .fill(skey, token, bytes.into(), kept_for)
            .await;
        if !matches!(self.observe(stored), Ok(true)) {
            return false;
        }
        let stamp = Stamp {
            fresh_until_ms: until,
            ..stale.stamp
        };
        self.copy_to_l1(skey, ticket, Some(stale.value), stamp, size, tags);
        let _ = self.announce(Change::Key(skey), false).await;
        signal::wake(skey);
        true
    }

    /// Releases the lease and tells waiters (here and elsewhere) to look
    /// again.
    pub(crate) async fn end_lease(&self, skey: &str, token: &LeaseToken) {
        let released = self.inner.store.release_lease(skey, token).await;
        if matches!(self.observe(released), Ok(true)) {
            let _ = self.announce(Change::Key(skey), false).await;
        }
        signal::wake(skey);
    }

    /// Copies a fresh entry into L1 under `ticket`.
    pub(crate) fn copy_to_l1(
        &self,
        skey: &str,
        ticket: Option<Ticket>,
        value: Option<Arc<V>>,
        stamp: Stamp,
        size: usize,
        tags: Option<Tags>,
    ) {
        if let (Some(l1), Some(ticket)) = (&self.inner.l1, ticket) {
            let fresh_for =
                Duration::from_millis(stamp.fresh_until_ms.saturating_sub(envelope::now_ms()));
            l1.fill(
                skey,
                ticket,
                value,
                size,
                self.l1_fresh_for(fresh_for),
                stamp,
                tags,
            );
        }
    }
}

/// What a refresh found in the store.
enum Current<V> {
    /// Someone replaced the entry since: this is the new value.
    Replaced(Option<Arc<V>>),
    /// Still the entry to refresh (its stale copy, if usable).
    Same(Option<StaleCopy<V>>),
}

/// How a claim ended.
enum Claimed<V> {
    /// Someone else's fill answered the flight.
    Done(Outcome<Arc<V>>),
    /// Load, with or without the lease.
    Load(Standing),
}

/// The bytes a claim compares to tell whether the entry changed.
pub(crate) fn identity(bytes: &[u8]) -> Vec<u8> {
    bytes[..bytes.len().min(IDENTITY_BYTES)].to_vec()
}
