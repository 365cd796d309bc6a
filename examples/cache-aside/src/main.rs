//! Cache-aside in front of a deliberately slow source, measured.
//!
//! This example puts a [`cachette::Cache`] in front of a simulated product
//! database whose every lookup takes a fixed time (20 ms by default), then:
//!
//! 1. **Workload.** Many concurrent tasks request products through
//!    [`Cache::get_or_load`], with product ids drawn from a skewed (Zipf,
//!    s ≈ 1) distribution, the way real traffic concentrates on a few hot
//!    items. The report shows how many calls were served from the cache, how
//!    many waited on another call's load, how many went to the source, and
//!    the latency of each kind, next to the cache's own [`Cache::stats`].
//! 2. **Single flight.** The hottest product is deleted from the cache and
//!    1,000 tasks ask for it at once: the source is called exactly once
//!    (`loader calls: 1`), and the run fails if it is not.
//!
//! # Running it
//!
//! With the embedded in-process store (the default; needs nothing):
//!
//! ```text
//! cargo run --release -p example-cache-aside
//! cargo run --release -p example-cache-aside -- --help   # all options
//! ```
//!
//! With Redis: set `REDIS_URL` (or pass `--redis`, which reads `REDIS_HOST`,
//! `REDIS_PORT`, … with defaults of 127.0.0.1:6379):
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release -p example-cache-aside
//! ```
//!
//! Each Redis run uses a fresh key prefix, so it starts cold even when an
//! earlier run's entries are still there (they expire after the 60 s TTL).
//! If Redis cannot be reached the example says so and exits non-zero.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cachette::Cache;
use cachette::store::{EmbeddedStore, RedisConfig, RedisStore};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

/// Cache-aside against a slow simulated database: hits, misses, loader
/// calls and latencies, then a single-flight demonstration.
#[derive(Debug, Parser)]
#[command(name = "example-cache-aside")]
struct Args {
    /// Total cache-aside requests in the workload.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    requests: u64,

    /// Concurrent tasks issuing the requests.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4_096))]
    concurrency: u64,

    /// Products in the database (the keyspace the workload draws from).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    keys: u64,

    /// Time every database lookup takes, in milliseconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=1_000))]
    source_latency_ms: u64,

    /// Skew of the key distribution (Zipf exponent; 0 is uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,

    /// Seed of the request sequence, so runs are comparable.
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// Concurrent callers in the single-flight phase.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    flight_callers: u64,

    /// Use Redis even without REDIS_URL (then REDIS_HOST, REDIS_PORT, … apply).
    #[arg(long)]
    redis: bool,
}

/// The cached value. Small and serde-friendly, like a row projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: u64,
}

/// The source of truth: an in-memory map behind an artificial delay, so a
/// trip to it costs what a database query would, and every trip is counted.
#[derive(Debug)]
struct Database {
    products: std::collections::HashMap<u64, Product>,
    latency: Duration,
    /// Every lookup, the number the cache exists to keep small.
    calls: AtomicU64,
    /// Finished lookups per product id. Lets a caller tell, after the fact,
    /// whether a load of its key completed while it was waiting (see
    /// `Outcome`).
    finished: Vec<AtomicU64>,
}

#[derive(Debug)]
struct NoSuchProduct(u64);

impl fmt::Display for NoSuchProduct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no product with id {}", self.0)
    }
}

impl Error for NoSuchProduct {}

impl Database {
    fn new(count: u64, latency: Duration) -> Database {
        const ADJECTIVES: [&str; 8] = [
            "brass", "oak", "linen", "steel", "wool", "glass", "cedar", "slate",
        ];
        const NOUNS: [&str; 8] = [
            "lamp", "chair", "kettle", "shelf", "rug", "vase", "desk", "clock",
        ];
        let products = (0..count)
            .map(|id| {
                let adjective = ADJECTIVES[(id % 8) as usize];
                let noun = NOUNS[(id / 8 % 8) as usize];
                let product = Product {
                    id,
                    name: format!("{adjective} {noun} #{id}"),
                    // Any deterministic spread of prices will do.
                    price_cents: 499 + (id * 7_919) % 20_000,
                };
                (id, product)
            })
            .collect();
        Database {
            products,
            latency,
            calls: AtomicU64::new(0),
            finished: (0..count).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// One slow query.
    async fn lookup(&self, id: u64) -> Result<Product, NoSuchProduct> {
        self.calls.fetch_add(1, Relaxed);
        tokio::time::sleep(self.latency).await;
        let found = self.products.get(&id).cloned().ok_or(NoSuchProduct(id));
        if let Some(finished) = self.slot(id) {
            finished.fetch_add(1, Relaxed);
        }
        found
    }

    fn calls(&self) -> u64 {
        self.calls.load(Relaxed)
    }

    fn finished(&self, id: u64) -> u64 {
        self.slot(id).map_or(0, |n| n.load(Relaxed))
    }

    /// Products looked up at least once.
    fn distinct_loaded(&self) -> u64 {
        self.finished.iter().filter(|n| n.load(Relaxed) > 0).count() as u64
    }

    fn slot(&self, id: u64) -> Option<&AtomicU64> {
        usize::try_from(id).ok().and_then(|i| self.finished.get(i))
    }
}

/// Zipf sampling over ranks `0..n` (rank 0 is the most popular): a
/// precomputed cumulative distribution and a binary search, so each draw is
/// O(log n) with no rejection loop.
#[derive(Debug)]
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: u64, s: f64) -> Zipf {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(s);
                total
            })
            .collect();
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random(); // uniform in [0, 1)
        let rank = self.cdf.partition_point(|&c| c <= u);
        // Rounding can leave the last cumulative value a hair under 1.0.
        rank.min(self.cdf.len().saturating_sub(1)) as u64
    }
}

/// How one `get_or_load` call was answered.
///
/// The loader is wrapped so it raises a per-call flag when it runs: that
/// tells "went to the source" apart exactly. A call whose loader did not run
/// was either served from the cache or joined a load another call had
/// started (single flight); those two are told apart by whether a lookup of
/// the same product finished while the call was in progress. That split is
/// exact except for a call that overlaps the instant between a lookup
/// returning and its value landing in the store — rare enough not to move
/// the figures. (Classifying by latency, or by diffing the shared hit/miss
/// counters around a call, would be wrong under concurrency.)
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Cached,
    Joined,
    Loaded,
}

#[derive(Debug, Default)]
struct Samples {
    cached: Vec<Duration>,
    joined: Vec<Duration>,
    loaded: Vec<Duration>,
    /// Answers that were not the product asked for (should stay 0).
    wrong: u64,
}

impl Samples {
    fn record(&mut self, outcome: Outcome, took: Duration) {
        match outcome {
            Outcome::Cached => self.cached.push(took),
            Outcome::Joined => self.joined.push(took),
            Outcome::Loaded => self.loaded.push(took),
        }
    }

    fn merge(&mut self, other: Samples) {
        self.cached.extend(other.cached);
        self.joined.extend(other.joined);
        self.loaded.extend(other.loaded);
        self.wrong += other.wrong;
    }
}

/// A fatal error whose `Debug` is its readable cause chain: `main` returning
/// `Err` prints the error with `Debug` and exits with status 1, and a derived
/// `Debug` dump is no message for a person.
struct Fatal(String);

impl fmt::Debug for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for Fatal {}

/// "outer: middle: inner", so the root cause (e.g. "Connection refused") shows.
fn cause_chain(err: &dyn Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

const NAMESPACE: &str = "product";
const SCHEMA_VERSION: u32 = 1;
const TTL: Duration = Duration::from_secs(60);
const EMBEDDED_BUDGET: u64 = 64 * 1024 * 1024;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    run(args)
        .await
        .map_err(|err| Box::new(Fatal(cause_chain(&*err))) as Box<dyn Error>)
}

async fn run(args: Args) -> Result<(), Box<dyn Error>> {
    if !(args.zipf_s.is_finite() && (0.0..=10.0).contains(&args.zipf_s)) {
        return Err(format!("--zipf-s must be within 0.0–10.0, got {}", args.zipf_s).into());
    }
    let latency = Duration::from_millis(args.source_latency_ms);
    let db = Arc::new(Database::new(args.keys, latency));

    // The store is chosen at run time; everything after `build()` is the
    // same code whichever it is, which is the point of the `Store` trait.
    let use_redis = args.redis || std::env::var_os("REDIS_URL").is_some_and(|url| !url.is_empty());
    let builder = Cache::<Product>::builder(NAMESPACE)
        .schema_version(SCHEMA_VERSION)
        .ttl(TTL);
    let (builder, store_line) = if use_redis {
        // The config's Debug redacts any password, so it is safe to print.
        let config = RedisConfig::from_env()?;
        let store = RedisStore::connect(config.clone()).await.map_err(|err| {
            format!(
                "cannot use Redis: {} (config: {config:?}). Is Redis running? \
                 Unset REDIS_URL and drop --redis to use the embedded store",
                cause_chain(&err)
            )
        })?;
        // A prefix unique to this run, so it starts cold even if an earlier
        // run's entries (or another process's) are still in Redis.
        let prefix = format!("cachette-example-{}-{}", std::process::id(), unix_millis());
        let line = format!("{config:?}, key prefix `{prefix}`");
        (builder.prefix(prefix).store(store), line)
    } else {
        let line = format!("{} MiB budget", EMBEDDED_BUDGET / (1024 * 1024));
        (builder.store(EmbeddedStore::new(EMBEDDED_BUDGET)), line)
    };
    let cache = builder.build()?;

    println!("cachette cache-aside example");
    println!("  store      {} ({store_line})", cache.store().kind());
    println!(
        "  source     {} products, {} ms per lookup",
        thousands(args.keys),
        args.source_latency_ms
    );
    println!(
        "  cache      namespace `{NAMESPACE}`, schema v{SCHEMA_VERSION}, TTL {} s",
        TTL.as_secs()
    );
    println!(
        "  workload   {} requests from {} concurrent tasks, Zipf s={:?} over {} keys, seed {}",
        thousands(args.requests),
        args.concurrency,
        args.zipf_s,
        thousands(args.keys),
        args.seed
    );
    println!();

    workload(&args, &cache, &db).await?;
    single_flight(&args, &cache, &db).await
}

/// Phase 1: the cache-aside workload.
async fn workload(
    args: &Args,
    cache: &Cache<Product>,
    db: &Arc<Database>,
) -> Result<(), Box<dyn Error>> {
    // Draw the whole request sequence up front from one seeded generator:
    // the same seed gives the same requests whatever the task scheduling.
    let zipf = Zipf::new(args.keys, args.zipf_s);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let plan: Arc<[u64]> = (0..args.requests).map(|_| zipf.sample(&mut rng)).collect();

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..args.concurrency {
        let (cache, db, plan, next) = (
            cache.clone(),
            Arc::clone(db),
            Arc::clone(&plan),
            Arc::clone(&next),
        );
        tasks.spawn(async move {
            let mut samples = Samples::default();
            // Bounded: each iteration takes the next unclaimed request and
            // the loop ends when the plan runs out.
            while let Some(&id) = plan.get(next.fetch_add(1, Relaxed)) {
                let (outcome, took, product) = fetch(&cache, &db, id).await?;
                samples.record(outcome, took);
                if product.id != id {
                    samples.wrong += 1;
                }
            }
            Ok::<_, cachette::Error>(samples)
        });
    }
    let mut samples = Samples::default();
    while let Some(joined) = tasks.join_next().await {
        samples.merge(joined??);
    }
    let elapsed = started.elapsed();
    // Snapshot now, before phase 2 adds to the counters.
    let stats = cache.stats();
    let source_calls = db.calls();

    let requests = args.requests;
    let cached = samples.cached.len() as u64;
    let joined = samples.joined.len() as u64;
    let loaded = samples.loaded.len() as u64;
    let mut all: Vec<Duration> = [&samples.cached, &samples.joined, &samples.loaded]
        .into_iter()
        .flatten()
        .copied()
        .collect();

    println!("Phase 1: cache-aside workload");
    println!(
        "  finished in {:.2} s ({} requests/s)",
        elapsed.as_secs_f64(),
        thousands((requests as f64 / elapsed.as_secs_f64().max(1e-9)) as u64)
    );
    println!();
    kv("requests", thousands(requests));
    kv("hits (served from cache)", thousands(cached));
    kv("misses (waited on a load)", thousands(joined + loaded));
    kv("  joined another call's load", thousands(joined));
    kv("  ran the loader", thousands(loaded));
    kv("hit rate", percent(cached, requests));
    kv("loader calls (source calls)", thousands(source_calls));
    // Equal to the line above when no product was loaded twice: single
    // flight plus a TTL longer than the run.
    kv(
        "  distinct products loaded",
        thousands(db.distinct_loaded()),
    );
    println!();
    println!(
        "  {:<30}{:>9}{:>12}{:>12}{:>12}",
        "latency per call", "calls", "p50", "p99", "max"
    );
    latency_row("served from cache", &mut samples.cached);
    latency_row("joined another call's load", &mut samples.joined);
    latency_row("ran the loader", &mut samples.loaded);
    latency_row("all requests", &mut all);
    println!();
    println!("  cache.stats() from the library:");
    kv("  hits", thousands(stats.hits));
    kv("  misses", thousands(stats.misses));
    kv("  loads", thousands(stats.loads));
    kv("  load errors", thousands(stats.load_errors));
    kv("  store errors", thousands(stats.store_errors));
    kv("  hit rate", format!("{:.1}%", stats.hit_rate() * 100.0));
    println!();

    if samples.wrong > 0 {
        return Err(format!(
            "{} requests were answered with the wrong product",
            samples.wrong
        )
        .into());
    }
    Ok(())
}

/// One cache-aside call, timed and classified (see [`Outcome`]).
async fn fetch(
    cache: &Cache<Product>,
    db: &Arc<Database>,
    id: u64,
) -> Result<(Outcome, Duration, Product), cachette::Error> {
    let key = id.to_string();
    let ran = Arc::new(AtomicBool::new(false));
    let loader = {
        let (db, ran) = (Arc::clone(db), Arc::clone(&ran));
        // The loader runs as its own task inside the cache (so a caller that
        // gives up does not cancel it for the others), hence the owned
        // captures.
        move || async move {
            ran.store(true, Relaxed);
            db.lookup(id).await
        }
    };
    let finished_before = db.finished(id);
    let started = Instant::now();
    let product = cache.get_or_load(&key, loader).await?;
    let took = started.elapsed();
    let outcome = if ran.load(Relaxed) {
        Outcome::Loaded
    } else if db.finished(id) != finished_before {
        Outcome::Joined
    } else {
        Outcome::Cached
    };
    Ok((outcome, took, product))
}

/// Phase 2: a thundering herd on one cold key.
async fn single_flight(
    args: &Args,
    cache: &Cache<Product>,
    db: &Arc<Database>,
) -> Result<(), Box<dyn Error>> {
    // Product 0 is the hottest key; deleting it is what an invalidation (or
    // an expiry) of a popular entry looks like in production.
    let id = 0;
    let key = id.to_string();
    cache.delete(&key).await?;
    let callers = args.flight_callers;
    let calls_before = db.calls();
    let loads_before = cache.stats().loads;

    // The barrier releases every caller at once, so they genuinely overlap
    // the one slow lookup instead of trickling in after it.
    let barrier = Arc::new(Barrier::new(usize::try_from(callers)?));
    let mut tasks = JoinSet::new();
    for _ in 0..callers {
        let (cache, db, barrier) = (cache.clone(), Arc::clone(db), Arc::clone(&barrier));
        tasks.spawn(async move {
            barrier.wait().await;
            fetch(&cache, &db, id).await
        });
    }
    let mut latencies = Vec::new();
    let mut wrong = 0u64;
    while let Some(joined) = tasks.join_next().await {
        let (_, took, product) = joined??;
        latencies.push(took);
        if product.id != id {
            wrong += 1;
        }
    }
    let loader_calls = db.calls() - calls_before;
    let loads = cache.stats().loads - loads_before;

    println!("Phase 2: single flight");
    println!(
        "  deleted product {id} (the hottest key), then {} concurrent get_or_load calls for it",
        thousands(callers)
    );
    println!("  loader calls: {loader_calls}");
    kv("cache.stats() loads", thousands(loads));
    kv("callers answered correctly", thousands(callers - wrong));
    println!(
        "  {:<30}{:>9}{:>12}{:>12}{:>12}",
        "latency per call", "calls", "p50", "p99", "max"
    );
    latency_row("all callers", &mut latencies);

    if loader_calls != 1 || wrong > 0 {
        return Err(format!(
            "single flight failed: {loader_calls} loader calls (expected 1), {wrong} wrong answers"
        )
        .into());
    }
    Ok(())
}

fn kv(label: &str, value: impl fmt::Display) {
    println!("  {label:<30}{value:>9}");
}

/// One aligned row: count and nearest-rank percentiles. Sorts in place.
fn latency_row(label: &str, samples: &mut [Duration]) {
    samples.sort_unstable();
    let cell = |p: f64| percentile(samples, p).map_or_else(|| "-".to_owned(), format_duration);
    println!(
        "  {label:<30}{:>9}{:>12}{:>12}{:>12}",
        thousands(samples.len() as u64),
        cell(0.50),
        cell(0.99),
        cell(1.0)
    );
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

fn format_duration(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1_000.0 {
        format!("{micros:.1} µs")
    } else {
        format!("{:.2} ms", micros / 1_000.0)
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// 20000 → "20,000".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
