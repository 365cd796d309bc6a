//! Per-namespace counters, readable in process and exported through the
//! `metrics` facade.
//!
//! The hit rate per namespace is the first number to look at when a cache
//! misbehaves (too-specific keys, TTLs too short), so every cache counts its
//! own. The counters are plain atomics for [`Cache::stats`](crate::Cache::stats);
//! the same events go to the `metrics` facade so any exporter the
//! application installs (Prometheus, OpenTelemetry) sees them:
//!
//! | metric | labels |
//! |---|---|
//! | `cachette_requests_total` | `namespace`, `result` = `hit` (with `tier` = `l1` / `l2`) / `miss` |
//! | `cachette_invalidations_total` | `namespace`, `direction` = `sent` / `received` (backplane) |
//! | `cachette_stale_served_total` | `namespace`, `reason` = `revalidating` / `fail_safe` |
//! | `cachette_refreshes_total` | `namespace` (background refreshes started: stale or early) |
//! | `cachette_load_waits_total` | `namespace` (callers that waited for a load) |
//! | `cachette_lease_waits_total` | `namespace` (loads that waited for another caller's lease) |
//! | `cachette_fills_refused_total` | `namespace` (fills refused: a write ended their lease) |
//! | `cachette_load_timeouts_total` | `namespace`, `kind` = `soft` / `hard` |
//! | `cachette_loads_total` | `namespace` |
//! | `cachette_load_errors_total` | `namespace` |
//! | `cachette_invalid_entries_total` | `namespace` |
//! | `cachette_store_errors_total` | `namespace` (failed or timed out; calls an open circuit skipped are not counted) |
//! | `cachette_store_skipped_total` | `namespace` (store calls an open circuit skipped) |
//! | `cachette_load_permit_waits_total` | `namespace` (loads that waited for the concurrent-load cap) |
//! | `cachette_circuit_state` (gauge) | `store` (0 closed, 1 open, 2 half-open) |
//! | `cachette_circuit_transitions_total` | `store`, `to` |
//! | `cachette_compressed_writes_total` | `namespace` (entries encoded compressed) |
//! | `cachette_compression_saved_bytes_total` | `namespace` (bytes compression took off them) |
//! | `cachette_load_duration_seconds` (histogram) | `namespace` |
//!
//! Metric handles are registered when the cache is built, so install the
//! application's recorder before building caches.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use metrics::{Counter, Histogram};

use crate::store::StoreError;

/// A snapshot of one namespace's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The namespace these counters belong to.
    pub namespace: String,
    /// Reads that found an entry (a cached "not found" included), in either tier.
    pub hits: u64,
    /// Of `hits`, those served by the in-process L1 tier (no store call, no
    /// decoding). `hits - l1_hits` were served by the store (L2).
    pub l1_hits: u64,
    /// Reads that found nothing usable.
    pub misses: u64,
    /// Loader runs.
    pub loads: u64,
    /// Loader runs that failed or panicked.
    pub load_errors: u64,
    /// Stored bytes that were not a readable entry (foreign, truncated,
    /// future format, or not decodable as the value type); read as misses.
    pub invalid_entries: u64,
    /// Store calls that failed or timed out.
    pub store_errors: u64,
    /// Store calls not sent because the circuit breaker was open.
    pub store_skipped: u64,
    /// Loads that waited for a permit of the concurrent-load cap.
    pub load_permit_waits: u64,
    /// The circuit breaker around the store, as of the snapshot.
    pub circuit: crate::store::Circuit,
    /// Changes announced to other instances' L1 tiers (writes, deletes,
    /// fills, clears), with a backplane.
    pub invalidations_sent: u64,
    /// Announcements from other instances (or other caches of this
    /// namespace in this process) that dropped L1 copies here.
    pub invalidations_received: u64,
    /// Reads served a stale value at once while one refresh ran
    /// (stale-while-revalidate). Not counted in `hits`.
    pub stale_hits: u64,
    /// Callers served a stale value because their load failed or passed
    /// the soft timeout (fail-safe). Not counted in `hits`.
    pub fail_safe_hits: u64,
    /// Background refreshes started (a stale read, or early refresh).
    pub refreshes: u64,
    /// Callers that waited for a load (theirs or another caller's).
    pub load_waits: u64,
    /// Loads that waited for another caller's lease (another process, or
    /// another cache on the same store) instead of loading.
    pub lease_waits: u64,
    /// Loaded values not stored because a write or delete of the key ended
    /// their lease meanwhile (the value may predate the write).
    pub fills_refused: u64,
    /// Callers that stopped waiting at the soft timeout (and got a stale
    /// value) or the hard timeout (and got an error).
    pub load_timeouts: u64,
    /// Entries encoded compressed for a write or fill (payload over the
    /// threshold and shrunk by at least an eighth; see
    /// [`CacheBuilder::compress_above`](crate::CacheBuilder::compress_above)).
    pub compressed_writes: u64,
    /// Bytes compression took off those entries, in total.
    pub compression_saved_bytes: u64,
}

impl Stats {
    /// hits / (hits + misses), or 0 before the first read.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

#[derive(Debug)]
struct Event {
    count: AtomicU64,
    metric: Counter,
}

impl Event {
    fn new(name: &'static str, namespace: &str, result: Option<&'static str>) -> Event {
        let metric = match result {
            Some(result) => {
                metrics::counter!(name, "namespace" => namespace.to_owned(), "result" => result)
            }
            None => metrics::counter!(name, "namespace" => namespace.to_owned()),
        };
        Event {
            count: AtomicU64::new(0),
            metric,
        }
    }
    /// `cachette_invalidations_total{namespace, direction}`.
    fn invalidations(namespace: &str, direction: &'static str) -> Event {
        Event::labelled(
            "cachette_invalidations_total",
            namespace,
            "direction",
            direction,
        )
    }
    /// `name{namespace, label=value}`.
    fn labelled(
        name: &'static str,
        namespace: &str,
        label: &'static str,
        value: &'static str,
    ) -> Event {
        Event {
            count: AtomicU64::new(0),
            metric: metrics::counter!(name, "namespace" => namespace.to_owned(), label => value),
        }
    }
    /// `cachette_requests_total{namespace, result="hit", tier}`.
    fn tiered(namespace: &str, tier: &'static str) -> Event {
        Event {
            count: AtomicU64::new(0),
            metric: metrics::counter!("cachette_requests_total", "namespace" => namespace.to_owned(), "result" => "hit", "tier" => tier),
        }
    }

    fn add(&self, n: u64) {
        self.count.fetch_add(n, Relaxed);
        self.metric.increment(n);
    }
    fn get(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

/// The live counters of one cache.
#[derive(Debug)]
pub(crate) struct Recorder {
    namespace: String,
    hits: Event,
    l1_hits: Event,
    misses: Event,
    loads: Event,
    load_errors: Event,
    invalid_entries: Event,
    store_errors: Event,
    store_skipped: Event,
    load_permit_waits: Event,
    invalidations_sent: Event,
    invalidations_received: Event,
    stale_hits: Event,
    fail_safe_hits: Event,
    refreshes: Event,
    load_waits: Event,
    lease_waits: Event,
    fills_refused: Event,
    soft_timeouts: Event,
    hard_timeouts: Event,
    compressed_writes: Event,
    compression_saved_bytes: Event,
    load_duration: Histogram,
    /// False after a store error until the next success, so an outage is
    /// logged once when it starts and once when it ends, not per call.
    store_healthy: AtomicBool,
}

impl Recorder {
    pub(crate) fn new(namespace: &str) -> Recorder {
        Recorder {
            namespace: namespace.to_owned(),
            hits: Event::tiered(namespace, "l2"),
            l1_hits: Event::tiered(namespace, "l1"),
            misses: Event::new("cachette_requests_total", namespace, Some("miss")),
            loads: Event::new("cachette_loads_total", namespace, None),
            load_errors: Event::new("cachette_load_errors_total", namespace, None),
            invalid_entries: Event::new("cachette_invalid_entries_total", namespace, None),
            store_errors: Event::new("cachette_store_errors_total", namespace, None),
            store_skipped: Event::new("cachette_store_skipped_total", namespace, None),
            load_permit_waits: Event::new("cachette_load_permit_waits_total", namespace, None),
            invalidations_sent: Event::invalidations(namespace, "sent"),
            invalidations_received: Event::invalidations(namespace, "received"),
            stale_hits: Event::labelled(
                "cachette_stale_served_total",
                namespace,
                "reason",
                "revalidating",
            ),
            fail_safe_hits: Event::labelled(
                "cachette_stale_served_total",
                namespace,
                "reason",
                "fail_safe",
            ),
            refreshes: Event::new("cachette_refreshes_total", namespace, None),
            load_waits: Event::new("cachette_load_waits_total", namespace, None),
            lease_waits: Event::new("cachette_lease_waits_total", namespace, None),
            fills_refused: Event::new("cachette_fills_refused_total", namespace, None),
            soft_timeouts: Event::labelled(
                "cachette_load_timeouts_total",
                namespace,
                "kind",
                "soft",
            ),
            hard_timeouts: Event::labelled(
                "cachette_load_timeouts_total",
                namespace,
                "kind",
                "hard",
            ),
            compressed_writes: Event::new("cachette_compressed_writes_total", namespace, None),
            compression_saved_bytes: Event::new(
                "cachette_compression_saved_bytes_total",
                namespace,
                None,
            ),
            load_duration: metrics::histogram!("cachette_load_duration_seconds", "namespace" => namespace.to_owned()),
            store_healthy: AtomicBool::new(true),
        }
    }

    pub(crate) fn hit(&self) {
        self.hits.add(1);
    }
    pub(crate) fn l1_hit(&self) {
        self.l1_hits.add(1);
    }
    pub(crate) fn miss(&self) {
        self.misses.add(1);
    }
    pub(crate) fn load(&self, took: Duration) {
        self.loads.add(1);
        self.load_duration.record(took.as_secs_f64());
    }
    pub(crate) fn invalidation_sent(&self) {
        self.invalidations_sent.add(1);
    }
    pub(crate) fn invalidation_received(&self) {
        self.invalidations_received.add(1);
    }
    pub(crate) fn stale_hit(&self) {
        self.stale_hits.add(1);
    }
    pub(crate) fn fail_safe_hit(&self) {
        self.fail_safe_hits.add(1);
    }
    pub(crate) fn refresh(&self) {
        self.refreshes.add(1);
    }
    pub(crate) fn load_wait(&self) {
        self.load_waits.add(1);
    }
    pub(crate) fn lease_wait(&self) {
        self.lease_waits.add(1);
    }
    pub(crate) fn fill_refused(&self) {
        self.fills_refused.add(1);
    }
    pub(crate) fn soft_timeout(&self) {
        self.soft_timeouts.add(1);
    }
    pub(crate) fn hard_timeout(&self) {
        self.hard_timeouts.add(1);
    }
    pub(crate) fn load_error(&self) {
        self.load_errors.add(1);
    }
    pub(crate) fn compressed(&self, saved: usize) {
        self.compressed_writes.add(1);
        self.compression_saved_bytes
            .add(u64::try_from(saved).unwrap_or(u64::MAX));
    }
    pub(crate) fn invalid_entry(&self, why: &crate::envelope::InvalidEntry) {
        self.invalid_entries.add(1);
        tracing::debug!(namespace = %self.namespace, reason = %why, "unreadable entry read as a miss");
    }

    pub(crate) fn store_error(&self, err: &StoreError) {
        if matches!(err, StoreError::CircuitOpen { .. }) {
            // The breaker logs its own transitions.
            self.store_skipped.add(1);
            self.store_healthy.store(false, Relaxed);
            return;
        }
        self.store_errors.add(1);
        if self.store_healthy.swap(false, Relaxed) {
            tracing::warn!(namespace = %self.namespace, error = %err, "cache store failing; reads fall back to loaders");
        }
    }
    pub(crate) fn store_ok(&self) {
        if !self.store_healthy.load(Relaxed) && !self.store_healthy.swap(true, Relaxed) {
            tracing::info!(namespace = %self.namespace, "cache store answering again");
        }
    }

    pub(crate) fn load_permit_wait(&self) {
        self.load_permit_waits.add(1);
    }

    pub(crate) fn snapshot(&self, circuit: crate::store::Circuit) -> Stats {
        Stats {
            namespace: self.namespace.clone(),
            hits: self.hits.get() + self.l1_hits.get(),
            l1_hits: self.l1_hits.get(),
            misses: self.misses.get(),
            loads: self.loads.get(),
            load_errors: self.load_errors.get(),
            invalid_entries: self.invalid_entries.get(),
            store_errors: self.store_errors.get(),
            store_skipped: self.store_skipped.get(),
            load_permit_waits: self.load_permit_waits.get(),
            circuit,
            invalidations_sent: self.invalidations_sent.get(),
            invalidations_received: self.invalidations_received.get(),
            stale_hits: self.stale_hits.get(),
            fail_safe_hits: self.fail_safe_hits.get(),
            refreshes: self.refreshes.get(),
            load_waits: self.load_waits.get(),
            lease_waits: self.lease_waits.get(),
            fills_refused: self.fills_refused.get(),
            load_timeouts: self.soft_timeouts.get() + self.hard_timeouts.get(),
            compressed_writes: self.compressed_writes.get(),
            compression_saved_bytes: self.compression_saved_bytes.get(),
        }
    }
}
