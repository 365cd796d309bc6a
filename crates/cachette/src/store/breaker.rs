//! The circuit breaker around a networked store.
//!
//! When Redis dies or hangs, every cache call would otherwise pay a failed
//! connect or a full command timeout before falling back to its loader, and
//! every write would queue behind it. The breaker counts consecutive
//! failures (unreachable, timed out); at the threshold it *opens*: store
//! calls are refused at once ([`StoreError::CircuitOpen`]) and the cache
//! serves from L1 and the loaders. A background task probes the store every
//! `probe_every` (*half-open*); the first probe that succeeds *closes* the
//! circuit again. User calls never pay for a probe.
//!
//! Writes refused while the circuit is open would leave the store's copies
//! of those keys older than the source once it answers again (a hung server
//! keeps its data). So the breaker remembers the keys and marks it had to
//! skip, and the probe deletes those keys and raises those marks before it
//! closes the circuit: no read can find such a copy afterwards. The list is
//! bounded; past it the breaker says so in the log, once.
//!
//! Transitions are logged once each (not once per request) and exported:
//! `cachette_circuit_state{store}` (0 closed, 1 open, 2 half-open) and
//! `cachette_circuit_transitions_total{store, to}`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{Mark, StoreError, StoreKind};
use crate::Ttl;

/// When the circuit opens and how often it probes.
///
/// ```
/// use std::time::Duration;
/// use cachette::store::BreakerConfig;
///
/// let breaker = BreakerConfig::default()
///     .failures(3)
///     .probe_every(Duration::from_millis(200));
/// ```
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    failures: u32,
    probe_every: Duration,
    max_deferred: usize,
    enabled: bool,
}

impl Default for BreakerConfig {
    /// Opens after 5 consecutive failures; probes every 250 ms; remembers up
    /// to 100,000 skipped writes.
    fn default() -> BreakerConfig {
        BreakerConfig {
            failures: 5,
            probe_every: Duration::from_millis(250),
            max_deferred: 100_000,
            enabled: true,
        }
    }
}

impl BreakerConfig {
    /// Consecutive failed or timed-out calls that open the circuit (at
    /// least 1). By default, 5.
    #[must_use]
    pub fn failures(mut self, failures: u32) -> BreakerConfig {
        self.failures = failures.max(1);
        self
    }

    /// How often an open circuit probes the store. By default, 250 ms.
    #[must_use]
    pub fn probe_every(mut self, every: Duration) -> BreakerConfig {
        self.probe_every = every.max(Duration::from_millis(1));
        self
    }

    /// How many skipped writes (keys and marks) an open circuit remembers
    /// to undo before it closes. By default, 100,000.
    #[must_use]
    pub fn max_deferred(mut self, max: usize) -> BreakerConfig {
        self.max_deferred = max;
        self
    }

    /// No breaker: every call goes to the store and waits for its own
    /// deadline.
    #[must_use]
    pub fn disabled() -> BreakerConfig {
        BreakerConfig {
            enabled: false,
            ..BreakerConfig::default()
        }
    }
}

/// The state of the circuit around a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CircuitState {
    /// Calls go to the store.
    Closed,
    /// Calls are refused at once; a probe runs every `probe_every`.
    Open,
    /// A probe is in flight; calls are still refused.
    HalfOpen,
}

impl CircuitState {
    fn from_u8(v: u8) -> CircuitState {
        match v {
            OPEN => CircuitState::Open,
            HALF_OPEN | CLOSING => CircuitState::HalfOpen,
            _ => CircuitState::Closed,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the state changed, for the log line.
#[derive(Debug, Clone, Copy)]
enum Transition {
    Opened { failures: u32 },
    Probing,
    ProbeFailed,
    Closed { after: Duration },
}

/// Rounds of undoing late skipped writes before a probe gives up closing.
const MAX_CLOSING_ROUNDS: usize = 8;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;
/// The probe succeeded and is undoing the last skipped writes: writes are
/// admitted again (so no new ones are skipped), reads not yet. Reported
/// as half-open.
const CLOSING: u8 = 3;

/// Writes the store skipped while the circuit was open, to undo before it
/// closes.
#[derive(Debug, Default)]
pub(crate) struct Deferred {
    /// Entries to delete (with their leases).
    pub(crate) keys: HashSet<String>,
    /// Marks to raise, with how long to keep them.
    pub(crate) marks: HashMap<String, (Mark, Ttl)>,
}

impl Deferred {
    fn len(&self) -> usize {
        self.keys.len() + self.marks.len()
    }
}

/// What the breaker needs from its store: a health check that also
/// replays the skipped writes. True when the store answered and every
/// deferred write landed.
pub(crate) type Probe =
    Arc<dyn Fn(Arc<Deferred>) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// The breaker. Shared by every clone of its store.
pub(crate) struct Breaker {
    config: BreakerConfig,
    store: StoreKind,
    state: AtomicU8,
    failures: AtomicU32,
    opened: AtomicU64,
    refused: AtomicU64,
    deferred: Mutex<DeferredState>,
    probe: Probe,
    metrics: BreakerMetrics,
}

/// Registered once, when the store connects: install the application's
/// recorder before that.
struct BreakerMetrics {
    state: metrics::Gauge,
    to_open: metrics::Counter,
    to_half_open: metrics::Counter,
    to_closed: metrics::Counter,
}

impl BreakerMetrics {
    fn new(store: StoreKind) -> BreakerMetrics {
        let store = store.to_string();
        let to = |to: &'static str| metrics::counter!("cachette_circuit_transitions_total", "store" => store.clone(), "to" => to);
        BreakerMetrics {
            state: metrics::gauge!("cachette_circuit_state", "store" => store.clone()),
            to_open: to("open"),
            to_half_open: to("half_open"),
            to_closed: to("closed"),
        }
    }
}

#[derive(Debug, Default)]
struct DeferredState {
    pending: Deferred,
    /// Set when a skipped write did not fit; logged once per outage.
    overflowed: bool,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("config", &self.config)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig, store: StoreKind, probe: Probe) -> Breaker {
        let metrics = BreakerMetrics::new(store);
        metrics.state.set(0.0);
        Breaker {
            config,
            store,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            opened: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            deferred: Mutex::new(DeferredState::default()),
            probe,
            metrics,
        }
    }

    pub(crate) fn state(&self) -> CircuitState {
        CircuitState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// How often the circuit opened, and how many calls it refused.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.opened.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    /// Lets a call through, or refuses it at once while the circuit is not
    /// closed. One atomic load on the way through. A `write` (one that
    /// replaces or removes entries, or raises a mark) also goes through
    /// while the circuit is closing: see `probe_until_closed`.
    pub(crate) fn admit(&self, write: bool) -> Result<(), StoreError> {
        let state = self.state.load(Ordering::Acquire);
        if state == CLOSED || (write && state == CLOSING) || !self.config.enabled {
            return Ok(());
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(StoreError::CircuitOpen { store: self.store })
    }

    /// Records an admitted call's outcome. Only an unreachable or silent
    /// store counts against it: a refused command means the store answered.
    pub(crate) fn record<T>(self: &Arc<Self>, result: &Result<T, StoreError>) {
        match result {
            Err(StoreError::Unavailable { .. } | StoreError::Timeout { .. }) => self.failed(),
            Err(StoreError::CircuitOpen { .. }) => {}
            _ => {
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                }
            }
        }
    }

    /// Remembers a write the store did not take, to undo before closing.
    pub(crate) fn defer_delete(self: &Arc<Self>, key: &str) {
        self.defer(|d| {
            d.keys.insert(key.to_owned());
        });
    }

    /// Remembers a mark the store did not take, to raise before closing.
    pub(crate) fn defer_mark(self: &Arc<Self>, key: &str, mark: Mark, ttl: Ttl) {
        self.defer(|d| add_mark(d, key, mark, ttl));
    }

    /// Records a skipped write. While the circuit is open the probe undoes
    /// it before closing. A write that failed while the circuit is closed
    /// (a failure below the threshold, or a call refused just before the
    /// probe closed the circuit) is undone at once instead: the circuit
    /// closes only with the list empty, under the same lock, so no write
    /// is left behind in it.
    fn defer(self: &Arc<Self>, add: impl FnOnce(&mut Deferred)) {
        if !self.config.enabled {
            return;
        }
        let Ok(mut deferred) = self.deferred.lock() else {
            return;
        };
        if self.state() == CircuitState::Closed {
            drop(deferred);
            let mut now = Deferred::default();
            add(&mut now);
            self.undo_now(now);
            return;
        }
        keep(&mut deferred, &self.config, self.store, add);
    }

    /// Undoes `skipped` in the background; what does not land waits for
    /// the next probe.
    fn undo_now(self: &Arc<Self>, skipped: Deferred) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.restore_deferred(skipped);
            return;
        };
        let breaker = Arc::downgrade(self);
        let probe = Arc::clone(&self.probe);
        runtime.spawn(async move {
            let skipped = Arc::new(skipped);
            if !probe(Arc::clone(&skipped)).await
                && let Some(b) = breaker.upgrade()
            {
                b.restore_deferred(Arc::try_unwrap(skipped).unwrap_or_default());
            }
        });
    }

    fn failed(self: &Arc<Self>) {
        if !self.config.enabled {
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < self.config.failures {
            return;
        }
        if self
            .state
            .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        // No runtime, no probe task: stay closed rather than open for good.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.state.store(CLOSED, Ordering::Release);
            return;
        };
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.transition(CircuitState::Open, Transition::Opened { failures });
        runtime.spawn(probe_until_closed(Arc::downgrade(self)));
    }

    /// Exports and logs a transition: the only place either happens, so
    /// an outage logs once when it starts and once when it ends, however
    /// many calls it refuses.
    fn transition(&self, to: CircuitState, detail: Transition) {
        let m = &self.metrics;
        match to {
            CircuitState::Closed => {
                m.state.set(0.0);
                m.to_closed.increment(1);
            }
            CircuitState::Open => {
                m.state.set(1.0);
                m.to_open.increment(1);
            }
            CircuitState::HalfOpen => {
                m.state.set(2.0);
                m.to_half_open.increment(1);
            }
        }
        match detail {
            Transition::Opened { failures } => tracing::warn!(
                store = %self.store,
                failures,
                "circuit opened: store calls are skipped; reads fall back to L1 and loaders"
            ),
            Transition::Probing => {
                tracing::trace!(store = %self.store, "circuit half-open: probing")
            }
            Transition::ProbeFailed => {
                tracing::debug!(store = %self.store, "circuit probe failed; still open");
            }
            Transition::Closed { after } => tracing::info!(
                store = %self.store,
                ?after,
                "circuit closed: the store answers again"
            ),
        }
    }

    /// Takes what must be undone before closing, leaving an empty list.
    fn take_deferred(&self) -> Deferred {
        match self.deferred.lock() {
            Ok(mut d) => {
                d.overflowed = false;
                std::mem::take(&mut d.pending)
            }
            Err(_) => Deferred::default(),
        }
    }

    /// Puts back what a probe could not undo (merged with what was
    /// skipped meanwhile), for the next probe.
    fn restore_deferred(&self, undone: Deferred) {
        let Ok(mut deferred) = self.deferred.lock() else {
            return;
        };
        for key in undone.keys {
            keep(&mut deferred, &self.config, self.store, |d| {
                d.keys.insert(key);
            });
        }
        for (key, (mark, ttl)) in undone.marks {
            keep(&mut deferred, &self.config, self.store, |d| {
                add_mark(d, &key, mark, ttl);
            });
        }
    }

    /// Closes the circuit if nothing is left to undo; otherwise hands back
    /// what is. Under the list's lock, so a write skipped meanwhile is
    /// either in the list or sees the circuit closed (see `defer`).
    fn close_if_undone(&self, opened_at: Instant) -> Result<(), Deferred> {
        let Ok(mut deferred) = self.deferred.lock() else {
            return Err(Deferred::default());
        };
        if deferred.pending.len() != 0 {
            deferred.overflowed = false;
            return Err(std::mem::take(&mut deferred.pending));
        }
        self.state.store(CLOSED, Ordering::Release);
        drop(deferred);
        let after = opened_at.elapsed();
        self.transition(CircuitState::Closed, Transition::Closed { after });
        Ok(())
    }
}

fn add_mark(d: &mut Deferred, key: &str, mark: Mark, ttl: Ttl) {
    let entry = d.marks.entry(key.to_owned()).or_insert((mark, ttl));
    entry.0 = Mark {
        removed_us: entry.0.removed_us.max(mark.removed_us),
        expired_us: entry.0.expired_us.max(mark.expired_us),
    };
    entry.1 = entry.1.max(ttl);
}

/// Adds to the list within its bound; past it, logs once per outage.
fn keep(
    deferred: &mut DeferredState,
    config: &BreakerConfig,
    store: StoreKind,
    add: impl FnOnce(&mut Deferred),
) {
    if deferred.pending.len() < config.max_deferred {
        add(&mut deferred.pending);
    } else if !deferred.overflowed {
        deferred.overflowed = true;
        tracing::error!(
            store = %store,
            max = config.max_deferred,
            "too many writes skipped during the store outage to undo them all; \
             entries written meanwhile may be served from the store until their TTL"
        );
    }
}

/// The probe task of one open period: ends when the circuit closes or the
/// store is dropped, so nothing outlives an outage.
async fn probe_until_closed(breaker: Weak<Breaker>) {
    let opened_at = Instant::now();
    loop {
        let Some(every) = breaker.upgrade().map(|b| b.config.probe_every) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(b) = breaker.upgrade() else {
            return;
        };
        b.state.store(HALF_OPEN, Ordering::Release);
        b.transition(CircuitState::HalfOpen, Transition::Probing);
        let deferred = Arc::new(b.take_deferred());
        let healthy = (b.probe)(Arc::clone(&deferred)).await;
        if healthy {
            b.failures.store(0, Ordering::Relaxed);
            // Writes skipped while the probe ran are undone too before
            // closing. From here writes go to the store again, so under a
            // steady write load the list drains instead of refilling; the
            // rounds are bounded all the same.
            b.state.store(CLOSING, Ordering::Release);
            for _ in 0..MAX_CLOSING_ROUNDS {
                match b.close_if_undone(opened_at) {
                    Ok(()) => return,
                    Err(late) => {
                        let late = Arc::new(late);
                        if !(b.probe)(Arc::clone(&late)).await {
                            b.restore_deferred(Arc::try_unwrap(late).unwrap_or_default());
                            break;
                        }
                    }
                }
            }
        } else {
            let undone = Arc::try_unwrap(deferred).unwrap_or_default();
            b.restore_deferred(undone);
        }
        b.state.store(OPEN, Ordering::Release);
        b.transition(CircuitState::Open, Transition::ProbeFailed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    fn unavailable() -> Result<(), StoreError> {
        Err(StoreError::Unavailable {
            store: StoreKind::Redis,
            source: "down".into(),
        })
    }

    fn breaker(healthy: Arc<AtomicBool>, seen: Arc<Mutex<Vec<String>>>) -> Arc<Breaker> {
        let probe: Probe = Arc::new(move |deferred: Arc<Deferred>| {
            let healthy = Arc::clone(&healthy);
            let seen = Arc::clone(&seen);
            Box::pin(async move {
                // A round trip: other tasks run meanwhile.
                tokio::time::sleep(Duration::from_millis(1)).await;
                let ok = healthy.load(Ordering::SeqCst);
                if ok {
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    seen.extend(deferred.keys.iter().cloned());
                }
                ok
            })
        });
        let config = BreakerConfig::default()
            .failures(3)
            .probe_every(Duration::from_millis(10));
        Arc::new(Breaker::new(config, StoreKind::Redis, probe))
    }

    /// Lets the probe task run (paused time, bounded) until it closes.
    async fn until_closed(b: &Breaker) {
        for _ in 0..100 {
            if b.state() == CircuitState::Closed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_the_threshold_probes_and_closes_after_undoing_skipped_writes() {
        let healthy = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let b = breaker(Arc::clone(&healthy), Arc::clone(&seen));
        b.record(&unavailable());
        b.record(&unavailable());
        assert_eq!(b.state(), CircuitState::Closed);
        // A success in between resets the count: failures must be consecutive.
        b.record(&Ok(()));
        b.record(&unavailable());
        b.record(&unavailable());
        assert!(b.admit(false).is_ok());
        b.record(&unavailable());
        assert_eq!(b.state(), CircuitState::Open);
        assert!(matches!(
            b.admit(false),
            Err(StoreError::CircuitOpen { .. })
        ));
        b.defer_delete("k");
        // Probes fail while the store is down.
        tokio::time::sleep(Duration::from_millis(55)).await;
        assert_ne!(b.state(), CircuitState::Closed);
        healthy.store(true, Ordering::SeqCst);
        until_closed(&b).await;
        assert!(b.admit(false).is_ok());
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(
            seen,
            vec!["k".to_owned()],
            "skipped writes are undone first"
        );
        assert_eq!(b.counts().0, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_refused_just_before_the_circuit_closed_is_still_undone() {
        let healthy = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let b = breaker(Arc::clone(&healthy), Arc::clone(&seen));
        for _ in 0..3 {
            b.record(&unavailable());
        }
        // A call refused while the circuit is open...
        assert!(b.admit(false).is_err());
        healthy.store(true, Ordering::SeqCst);
        until_closed(&b).await;
        // ...records its key only after the probe closed the circuit: the
        // list is not read again, so the key is undone at once instead.
        b.defer_delete("late");
        for _ in 0..100 {
            if seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&"late".to_owned())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(seen, vec!["late".to_owned()]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_circuit_closes_under_a_steady_write_load() {
        let healthy = Arc::new(AtomicBool::new(false));
        let b = breaker(Arc::clone(&healthy), Arc::new(Mutex::new(Vec::new())));
        for _ in 0..3 {
            b.record(&unavailable());
        }
        healthy.store(true, Ordering::SeqCst);
        // A writer that never pauses: each refused write is skipped, so the
        // list refills while the probe drains it, unless a closing circuit
        // lets writes through again.
        let writer = {
            let b = Arc::clone(&b);
            tokio::spawn(async move {
                for i in 0..20_000u32 {
                    if b.state() == CircuitState::Closed {
                        return;
                    }
                    if b.admit(true).is_err() {
                        b.defer_delete(&format!("k{i}"));
                    }
                    // Ten writes per probe round trip.
                    tokio::time::sleep(Duration::from_micros(100)).await;
                }
            })
        };
        until_closed(&b).await;
        writer.await.unwrap_or_else(|e| panic!("{e}"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_command_does_not_count_as_a_failure() {
        let b = breaker(
            Arc::new(AtomicBool::new(true)),
            Arc::new(Mutex::new(Vec::new())),
        );
        for _ in 0..10 {
            b.record::<()>(&Err(StoreError::Refused {
                store: StoreKind::Redis,
                source: "WRONGTYPE".into(),
            }));
        }
        assert_eq!(b.state(), CircuitState::Closed);
    }
}
