//! The outage report's traffic: the load generator's Zipf workload and
//! open-loop pacing against one catalog, while the database goes down and
//! comes back on schedule, each request tallied by phase and by whether
//! its product was seen before the outage.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::{Instant, sleep_until};

use super::super::BenchError;
use crate::db::Outage;
use crate::load::{
    HttpClient, LoadError, Mix, NamespaceCounters, Pace, ServerStats, Workload, new_histogram,
};

/// How long each part of a run lasts.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// Unmeasured, before `before` (connections, first misses).
    pub warmup: Duration,
    /// Measured with the database up.
    pub before: Duration,
    /// Measured with the database down.
    pub outage: Duration,
    /// Measured after it is back.
    pub after: Duration,
}

/// The measured phases, in order.
pub(super) const PHASES: usize = 3;
const BEFORE: usize = 0;
const DOWN: usize = 1;
const AFTER: usize = 2;

impl Phases {
    /// Each measured phase's length, in order.
    pub(super) fn lengths(&self) -> [Duration; PHASES] {
        [self.before, self.outage, self.after]
    }
}

/// The load, as the outage report runs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Traffic {
    pub(super) products: i64,
    /// Ids `1..=warmed` count as seen before the outage (the cached
    /// variants warm them at start).
    pub(super) warmed: i64,
    pub(super) zipf: f64,
    pub(super) concurrency: usize,
    /// Requests/s offered over all connections.
    pub(super) rate: f64,
    pub(super) seed: u64,
}

/// Requests of one kind of product, and how many of them failed (no 2xx).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Share {
    pub requests: u64,
    pub failures: u64,
}

impl Share {
    fn add(&mut self, other: Share) {
        self.requests += other.requests;
        self.failures += other.failures;
    }

    /// Failures in percent of requests (0 without requests).
    pub fn failure_percent(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.failures as f64 * 100.0 / self.requests as f64
        }
    }
}

/// What one measured phase saw.
#[derive(Debug, Clone)]
pub struct PhaseResult {
    pub length: Duration,
    pub requests: u64,
    /// 5xx responses.
    pub server_errors: u64,
    /// Other non-2xx responses (none expected: every id exists).
    pub other_errors: u64,
    /// Requests without a response (timeout, connection lost).
    pub no_response: u64,
    /// Microseconds from send to response, every answered request.
    pub latency: Histogram<u64>,
    /// Requests for products seen before the outage: warmed, or answered
    /// before it (a cache holds a value for them).
    pub seen: Share,
    /// Requests for every other product.
    pub new: Share,
    /// Database queries attempted (refused ones included).
    pub db_queries: u64,
    /// The product namespace's counters over the phase; `None` without a
    /// cache.
    pub counters: Option<NamespaceCounters>,
}

impl PhaseResult {
    pub fn db_queries_per_second(&self) -> f64 {
        self.db_queries as f64 / self.length.as_secs_f64().max(1e-9)
    }

    /// 5xx in percent of requests.
    pub fn server_error_percent(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.server_errors as f64 * 100.0 / self.requests as f64
        }
    }
}

/// One phase as one user saw it.
struct PhaseTally {
    requests: u64,
    server_errors: u64,
    other_errors: u64,
    no_response: u64,
    latency: Histogram<u64>,
    /// Per product id: requests and failures.
    by_id: HashMap<i64, Share>,
}

impl PhaseTally {
    fn new() -> Result<PhaseTally, LoadError> {
        Ok(PhaseTally {
            requests: 0,
            server_errors: 0,
            other_errors: 0,
            no_response: 0,
            latency: new_histogram()?,
            by_id: HashMap::new(),
        })
    }

    fn merge(&mut self, other: PhaseTally) {
        self.requests += other.requests;
        self.server_errors += other.server_errors;
        self.other_errors += other.other_errors;
        self.no_response += other.no_response;
        let _ = self.latency.add(&other.latency);
        for (id, share) in other.by_id {
            self.by_id.entry(id).or_default().add(share);
        }
    }
}

/// What one user saw.
struct UserTally {
    phases: [PhaseTally; PHASES],
    /// Ids answered 2xx to requests sent before the outage.
    answered_before: HashSet<i64>,
}

/// Runs the load against `target`, takes the database down through
/// `outage` after the warm-up and `before`, brings it back after `outage`,
/// and returns the three measured phases.
pub(super) async fn run(
    target: &str,
    traffic: Traffic,
    phases: Phases,
    outage: &Outage,
) -> Result<[PhaseResult; PHASES], BenchError> {
    let mix = Mix {
        products: traffic.products,
        categories: 1,
        zipf: traffic.zipf,
        write_ratio: 0.0,
        list_ratio: 0.0,
        hot: None,
    };
    let mut control = HttpClient::new(target).await?;
    let users = traffic.concurrency.max(1);
    let start = Instant::now();
    let measure_from = start + phases.warmup;
    let down_at = measure_from + phases.before;
    let up_at = down_at + phases.outage;
    let end = up_at + phases.after;
    // Requests count in the phase the switch is in when they are sent, not
    // in the one the clock says: the switch flips when the controller's
    // timer fires, up to a millisecond after the boundary. The phase moves
    // on just before the switch flips, and a request reaches the database
    // microseconds after it is sent, so its phase is the switch's state.
    let current = Arc::new(AtomicUsize::new(BEFORE));
    let mut workers = Vec::with_capacity(users);
    for user in 0..users {
        let mut workload =
            Workload::new(mix, traffic.seed.wrapping_add(user as u64)).map_err(LoadError::Spec)?;
        let mut pace = Pace::new(Some(traffic.rate), users, user, start)?;
        let mut client = HttpClient::new(target).await?;
        let mut tally = UserTally {
            phases: [PhaseTally::new()?, PhaseTally::new()?, PhaseTally::new()?],
            answered_before: HashSet::new(),
        };
        let current = Arc::clone(&current);
        workers.push(tokio::spawn(async move {
            loop {
                let id = workload.next_product_id();
                pace.wait().await;
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let phase = current.load(Ordering::SeqCst);
                let result = client.get(&format!("/products/{id}")).await;
                let ok = matches!(&result, Ok(r) if r.status.is_success());
                if ok && phase == BEFORE {
                    tally.answered_before.insert(id);
                }
                if sent < measure_from {
                    continue;
                }
                let phase = &mut tally.phases[phase];
                phase.requests += 1;
                match &result {
                    Ok(r) => {
                        let micros = sent.elapsed().as_micros() as u64;
                        let _ = phase.latency.record(micros.max(1));
                        if r.status.is_server_error() {
                            phase.server_errors += 1;
                        } else if !ok {
                            phase.other_errors += 1;
                        }
                    }
                    Err(_) => phase.no_response += 1,
                }
                let share = phase.by_id.entry(id).or_default();
                share.requests += 1;
                share.failures += u64::from(!ok);
            }
            tally
        }));
    }

    // The counters at each phase boundary; the switch flips just before
    // its boundary's snapshot.
    sleep_until(measure_from).await;
    let mut snapshots = vec![ServerStats::fetch(&mut control).await?];
    sleep_until(down_at).await;
    current.store(DOWN, Ordering::SeqCst);
    outage.take_down();
    snapshots.push(ServerStats::fetch(&mut control).await?);
    sleep_until(up_at).await;
    current.store(AFTER, Ordering::SeqCst);
    outage.bring_up();
    snapshots.push(ServerStats::fetch(&mut control).await?);
    sleep_until(end).await;
    snapshots.push(ServerStats::fetch(&mut control).await?);

    let mut merged = [PhaseTally::new()?, PhaseTally::new()?, PhaseTally::new()?];
    let mut answered_before: HashSet<i64> = HashSet::new();
    for worker in workers {
        let tally = worker
            .await
            .map_err(|e| BenchError::Setup(format!("a load worker failed: {e}")))?;
        answered_before.extend(tally.answered_before);
        for (into, phase) in merged.iter_mut().zip(tally.phases) {
            into.merge(phase);
        }
    }

    let seen_before = |id: i64| id <= traffic.warmed || answered_before.contains(&id);
    let lengths = phases.lengths();
    let mut results = Vec::with_capacity(PHASES);
    for (i, tally) in merged.into_iter().enumerate() {
        let (from, to) = (&snapshots[i], &snapshots[i + 1]);
        let (mut seen, mut new) = (Share::default(), Share::default());
        for (id, share) in &tally.by_id {
            if seen_before(*id) {
                seen.add(*share);
            } else {
                new.add(*share);
            }
        }
        results.push(PhaseResult {
            length: lengths[i],
            requests: tally.requests,
            server_errors: tally.server_errors,
            other_errors: tally.other_errors,
            no_response: tally.no_response,
            latency: tally.latency,
            seen,
            new,
            db_queries: to.database_queries.saturating_sub(from.database_queries),
            counters: to
                .product
                .zip(from.product)
                .map(|(to, from)| to.since(&from)),
        });
    }
    results
        .try_into()
        .map_err(|_| BenchError::Setup("a phase went missing".into()))
}
