//! The load generator: simulated users on keep-alive connections, a
//! seeded Zipf workload, latency histograms, and the server's own counters
//! read before and after so that hit rate and database queries/s come from
//! the service, not from guesses.

pub mod client;
mod pace;
mod report;
mod server_stats;
pub mod workload;

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::time::sleep_until;

pub use client::{ClientError, HttpClient, Response};
pub(crate) use pace::Pace;
pub(crate) use report::{millis, thousands};
pub use report::{print_comparison, print_one};
pub use server_stats::{NamespaceCounters, ServerStats};
pub use workload::{Mix, Op, Workload};

/// A load to run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Simulated users, each on its own connection.
    pub concurrency: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it (connections, first misses).
    pub warmup: Duration,
    pub zipf: f64,
    pub write_ratio: f64,
    pub list_ratio: f64,
    pub hot: Option<i64>,
    pub seed: u64,
    /// Offered load in requests/s over all connections (an open loop, the
    /// same request schedule for every target); `None`: each connection
    /// sends as fast as it gets answers (a closed loop, measures capacity).
    pub rate: Option<f64>,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub target: String,
    pub requests: u64,
    /// Requests without a 2xx response.
    pub errors: u64,
    pub elapsed: Duration,
    /// Microseconds.
    pub latency: Histogram<u64>,
    pub before: ServerStats,
    pub after: ServerStats,
}

impl LoadResult {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn db_queries_per_second(&self) -> f64 {
        self.after
            .database_queries
            .saturating_sub(self.before.database_queries) as f64
            / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The product namespace's hit rate over the measured time, if cached.
    pub fn hit_rate(&self) -> Option<f64> {
        let (before, after) = (self.before.product?, self.after.product?);
        let hits = after.hits.saturating_sub(before.hits);
        let misses = after.misses.saturating_sub(before.misses);
        (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64)
    }
}

/// A load failure (not a failed request: those are counted).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Spec(String),
    #[error("the target's /stats or /health is unreadable: {0}")]
    Stats(String),
}

struct Tally {
    requests: u64,
    errors: u64,
    latency: Histogram<u64>,
}

/// Drives `target` (`http://HOST:PORT`) with `spec`.
pub async fn run(target: &str, spec: &LoadSpec) -> Result<LoadResult, LoadError> {
    let mut control = HttpClient::new(target).await?;
    let health = server_stats::health(&mut control).await?;
    let mix = Mix {
        products: health.products,
        categories: health.categories,
        zipf: spec.zipf,
        write_ratio: spec.write_ratio,
        list_ratio: spec.list_ratio,
        hot: spec.hot,
    };
    let started = Instant::now();
    let measure_from = tokio::time::Instant::from_std(started + spec.warmup);
    let measure_until = measure_from + spec.duration;

    let users = spec.concurrency.max(1);
    let first_send = tokio::time::Instant::from_std(started);
    let mut workers = Vec::with_capacity(users);
    for user in 0..users {
        let mut workload =
            Workload::new(mix, spec.seed.wrapping_add(user as u64)).map_err(LoadError::Spec)?;
        let mut client = HttpClient::new(target).await?;
        let mut tally = Tally {
            requests: 0,
            errors: 0,
            latency: new_histogram()?,
        };
        let mut pace = Pace::new(spec.rate, users, user, first_send)?;
        workers.push(tokio::spawn(async move {
            loop {
                let op = workload.next_op();
                pace.wait().await;
                let sent = tokio::time::Instant::now();
                if sent >= measure_until {
                    break;
                }
                let result = match op {
                    Op::Get(path) | Op::List(path) => client.get(&path).await,
                    Op::Put(path, body) => client.put_json(&path, body).await,
                };
                if sent < measure_from {
                    continue;
                }
                tally.requests += 1;
                match result {
                    Ok(r) if r.status.is_success() => {
                        let micros = sent.elapsed().as_micros() as u64;
                        let _ = tally.latency.record(micros.max(1));
                    }
                    _ => tally.errors += 1,
                }
            }
            tally
        }));
    }

    sleep_until(measure_from).await;
    let before = ServerStats::fetch(&mut control).await?;
    sleep_until(measure_until).await;
    let after = ServerStats::fetch(&mut control).await?;
    let elapsed = spec.duration;

    let mut latency = new_histogram()?;
    let (mut requests, mut errors) = (0, 0);
    for worker in workers {
        if let Ok(tally) = worker.await {
            requests += tally.requests;
            errors += tally.errors;
            let _ = latency.add(&tally.latency);
        }
    }
    Ok(LoadResult {
        target: target.to_owned(),
        requests,
        errors,
        elapsed,
        latency,
        before,
        after,
    })
}

/// 1 µs to 60 s at 3 significant digits.
pub(crate) fn new_histogram() -> Result<Histogram<u64>, LoadError> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| LoadError::Spec(e.to_string()))
}
