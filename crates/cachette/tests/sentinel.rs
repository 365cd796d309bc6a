//! Redis Sentinel: the store finds the master through the sentinels and
//! follows it through failovers under load, a forced one (`SENTINEL
//! FAILOVER`: the old master is demoted, its clients are killed, writes to
//! it answer `READONLY`) and a crash (SIGKILL: nothing answers until the
//! sentinels promote the replica). Each reports the errors callers saw, by
//! operation, and the time until the first write that landed on the new
//! master (run with `--nocapture`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cachette::backplane::{Backplane, BackplaneConfig};
use cachette::store::{RedisConfig, RedisStore, Store};
use cachette::{Cache, Ttl};
use cachette_test::{Fixture, SentinelGroup};
use rand::{Rng, SeedableRng};

const KEYS: usize = 100;
const TASKS: usize = 4;
const BOUND: Duration = Duration::from_secs(30);
/// Load kept up after the new master is in place.
const AFTER: Duration = Duration::from_millis(500);

fn value_of(key: &str) -> String {
    format!("value of {key}")
}

/// The store as an application would configure it: the default command
/// timeout (500 ms) and retries (2).
async fn connect(group: &SentinelGroup) -> RedisStore {
    let config = RedisConfig::from_url(&Fixture::sentinel_url(group))
        .unwrap()
        .connect_timeout(Duration::from_millis(500));
    RedisStore::connect(config).await.unwrap()
}

/// Operations and the errors they returned to their callers.
#[derive(Default)]
struct Tally {
    ops: [AtomicU64; 3],
    errors: [AtomicU64; 3],
    wrong: AtomicU64,
    first_errors: Mutex<Vec<String>>,
    /// When the last error reached a caller: errors belong to the window
    /// without a master if they stop once the new one is in place.
    last_error: Mutex<Option<Instant>>,
}

const OPS: [&str; 3] = ["get_or_load", "set", "get"];

impl Tally {
    fn record<T>(&self, op: usize, result: Result<T, cachette::Error>) -> Option<T> {
        self.ops[op].fetch_add(1, SeqCst);
        match result {
            Ok(v) => Some(v),
            Err(err) => {
                self.errors[op].fetch_add(1, SeqCst);
                *self.last_error.lock().unwrap() = Some(Instant::now());
                let mut first = self.first_errors.lock().unwrap();
                if first.len() < 5 {
                    first.push(format!("{}: {err}", OPS[op]));
                }
                None
            }
        }
    }

    fn summary(&self) -> String {
        OPS.iter()
            .enumerate()
            .map(|(i, name)| {
                format!(
                    "{name} {} calls / {} errors",
                    self.ops[i].load(SeqCst),
                    self.errors[i].load(SeqCst)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn load(cache: Cache<String>, tally: Arc<Tally>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(SeqCst) {
        let key = format!("k{}", rng.random_range(0..KEYS));
        match rng.random_range(0..10) {
            0..5 => {
                let value = value_of(&key);
                let loaded = cache
                    .get_or_load(&key, move || async move { Ok::<_, std::io::Error>(value) })
                    .await;
                if tally.record(0, loaded).is_some_and(|v| v != value_of(&key)) {
                    tally.wrong.fetch_add(1, SeqCst);
                }
            }
            5..8 => {
                tally.record(1, cache.set(&key, &value_of(&key)).await);
            }
            _ => {
                let got = tally.record(2, cache.get(&key).await).flatten();
                if got.is_some_and(|v| v != value_of(&key)) {
                    tally.wrong.fetch_add(1, SeqCst);
                }
            }
        }
        // Keep the 2 cores free for the servers and the sentinels.
        tokio::task::yield_now().await;
    }
}

/// Writes a fresh key every 2 ms and notes when each write succeeded and
/// on which server port the store's connection was right after it.
/// (Shared as it goes: the test waits for the first write on the new
/// master.)
type Written = Arc<Mutex<Vec<(String, Instant, u16)>>>;

async fn probe(store: RedisStore, stop: Arc<AtomicBool>, written: Written) {
    let ttl = Ttl::new(Duration::from_secs(600)).unwrap();
    for i in 0.. {
        if stop.load(SeqCst) {
            break;
        }
        let key = format!("probe:{{{i}}}");
        if store.set(&key, Bytes::from_static(b"p"), ttl).await.is_ok() {
            let at = Instant::now();
            let mut conn = store.connection();
            let port: Option<(String, u16)> = tokio::time::timeout(
                Duration::from_millis(200),
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("port")
                    .query_async(&mut conn),
            )
            .await
            .ok()
            .and_then(Result::ok);
            written
                .lock()
                .unwrap()
                .push((key, at, port.map_or(0, |(_, p)| p)));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[derive(Clone, Copy)]
enum Failover {
    /// `SENTINEL FAILOVER`.
    Forced,
    /// SIGKILL of the master, then the sentinels' promotion.
    Crash,
}

async fn failover_under_load(how: Failover) {
    let group = SentinelGroup::spawn();
    let store = connect(&group).await;
    let cache: Cache<String> = Cache::builder("fo")
        .store(store.clone())
        .ttl(Duration::from_secs(600))
        .build()
        .unwrap();
    let new_master = group.replica().port();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| tokio::spawn(load(cache.clone(), tally.clone(), stop.clone(), t as u64)))
        .collect();
    let written: Written = Arc::default();
    let prober = tokio::spawn(probe(store.clone(), stop.clone(), written.clone()));
    // Warm up: the load runs against the first master.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let group = tokio::task::spawn_blocking(move || {
        let mut group = group;
        let promoted = match how {
            Failover::Forced => group.failover(),
            Failover::Crash => {
                let old = group.kill_master();
                group.wait_for_new_master(old, BOUND)
            }
        };
        assert_eq!(promoted.port(), new_master);
        group
    });
    let group = tokio::time::timeout(BOUND + BOUND, group)
        .await
        .expect("the failover finished in time")
        .unwrap();
    let promoted_after = started.elapsed();
    // Load goes on until a write lands on the new master (bounded), then a
    // little longer.
    let on_new = |w: &Written| {
        w.lock()
            .unwrap()
            .iter()
            .any(|(_, at, port)| *at >= started && *port == new_master)
    };
    let deadline = Instant::now() + BOUND;
    while !on_new(&written) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(AFTER).await;
    stop.store(true, SeqCst);
    for task in tasks {
        tokio::time::timeout(BOUND, task).await.unwrap().unwrap();
    }
    tokio::time::timeout(BOUND, prober).await.unwrap().unwrap();
    let written = std::mem::take(&mut *written.lock().unwrap());

    // The first write after the failover started that went to the new
    // master, and the writes the old master took that the new one lacks
    // (accepted between the promotion and the demotion: Redis replication
    // is asynchronous, so Sentinel loses them).
    let first_on_new = written
        .iter()
        .find(|(_, at, port)| *at >= started && *port == new_master)
        .map(|(_, at, _)| at.duration_since(started));
    let mut raw = group.master().connection().await;
    let mut lost = 0;
    for (key, _, _) in &written {
        let there: bool = redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut raw)
            .await
            .unwrap();
        lost += usize::from(!there);
    }
    let label = match how {
        Failover::Forced => "SENTINEL FAILOVER",
        Failover::Crash => "master SIGKILLed",
    };
    println!(
        "{label}: sentinels named the new master after {:.2} s; first write on the new master \
         {} after the failover started; errors reaching callers: {} (last one {}); wrong values: {}; probe \
         writes: {} acknowledged, {} lost with the old master; first errors: {:?}",
        promoted_after.as_secs_f64(),
        first_on_new.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        tally.summary(),
        tally
            .last_error
            .lock()
            .unwrap()
            .map_or("none".into(), |at| format!(
                "{:.2} s after the failover started",
                at.saturating_duration_since(started).as_secs_f64()
            )),
        tally.wrong.load(SeqCst),
        written.len(),
        lost,
        tally.first_errors.lock().unwrap(),
    );
    assert!(first_on_new.is_some(), "no write reached the new master");
    assert_eq!(
        tally.errors[0].load(SeqCst),
        0,
        "get_or_load failed: it has the loader to fall back on"
    );
    assert_eq!(tally.wrong.load(SeqCst), 0, "a wrong value was read");
    // Everything works on the new master.
    cache.set("after", &"v".into()).await.unwrap();
    assert_eq!(cache.get("after").await.unwrap().as_deref(), Some("v"));
}

/// `SENTINEL FAILOVER` under load: the store moves to the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_under_load_moves_the_store_to_the_new_master() {
    failover_under_load(Failover::Forced).await;
}

/// The master is SIGKILLed under load: the store finds the promoted replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_master_under_load_is_replaced_by_the_promoted_replica() {
    failover_under_load(Failover::Crash).await;
}

/// The conformance essentials and the backplane through Sentinel: the store
/// and the backplane both find the master by its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_and_the_backplane_work_through_the_sentinels() {
    let f = Fixture::sentinel().await;
    cachette_test::conformance::one_lease_per_key_and_only_its_holder_fills(&f).await;
    cachette_test::conformance::get_many_keeps_order_and_gaps(&f).await;
    cachette_test::conformance::delete_matching_follows_glob_rules_and_ends_leases(&f).await;
    let group = f.sentinel.as_ref().unwrap();
    let config = RedisConfig::from_url(&Fixture::sentinel_url(group)).unwrap();
    let (a_bp, a) = instance(&config).await;
    let (b_bp, b) = instance(&config).await;
    until("the instances know each other", || {
        a_bp.stats().members == 1 && b_bp.stats().members == 1
    })
    .await;
    a.set("k", &"v1".into()).await.unwrap();
    assert_eq!(b.get("k").await.unwrap().as_deref(), Some("v1"));
    let start = Instant::now();
    a.set("k", &"v2".into()).await.unwrap();
    while b.get("k").await.unwrap().as_deref() != Some("v2") {
        assert!(start.elapsed() < Duration::from_secs(2), "B kept its copy");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(b.stats().invalidations_received >= 1);
}

/// Two instances with L1 and a backplane through Sentinel stay coherent
/// across a failover: both sides find the new master (the subscriber when
/// Sentinel closes its connection to the demoted one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backplane_follows_a_failover() {
    let group = SentinelGroup::spawn();
    let config = RedisConfig::from_url(&Fixture::sentinel_url(&group)).unwrap();
    let (a_bp, a) = instance(&config).await;
    let (b_bp, b) = instance(&config).await;
    until("the instances know each other", || {
        a_bp.stats().members == 1 && b_bp.stats().members == 1
    })
    .await;
    a.set("k", &"v1".into()).await.unwrap();
    assert_eq!(b.get("k").await.unwrap().as_deref(), Some("v1"));

    let group = tokio::task::spawn_blocking(move || {
        let mut group = group;
        group.failover();
        group
    })
    .await
    .unwrap();
    until("both backplanes healthy on the new master", || {
        a_bp.is_healthy()
            && b_bp.is_healthy()
            && a_bp.stats().members == 1
            && b_bp.stats().members == 1
    })
    .await;
    // B caches v1 again, then a write through A must drop it.
    let start = Instant::now();
    loop {
        match a.set("k", &"v2".into()).await {
            Ok(()) => break,
            Err(err) => assert!(start.elapsed() < BOUND, "A cannot write: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until_value(&b, "k", "v2").await;
    a.set("k", &"v3".into()).await.unwrap();
    until_value(&b, "k", "v3").await;
    let stats = b_bp.stats();
    assert!(stats.subscriptions >= 2, "B resubscribed: {stats:?}");
    drop(group);
}

type Instance = (Backplane, Cache<String>);

async fn instance(config: &RedisConfig) -> Instance {
    let backplane = Backplane::connect(
        BackplaneConfig::new(config.clone())
            .heartbeat(Duration::from_millis(50))
            .lease(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let cache: Cache<String> = Cache::builder("doc")
        .store(RedisStore::connect(config.clone()).await.unwrap())
        .l1(1 << 20)
        .backplane(backplane.clone())
        .build()
        .unwrap();
    (backplane, cache)
}

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < BOUND, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads `key` on `cache` until it is `want`, within 2 s: far below the L1
/// TTL, so only an invalidation can have dropped the old copy.
async fn until_value(cache: &Cache<String>, key: &str, want: &str) {
    let start = Instant::now();
    while cache.get(key).await.ok().flatten().as_deref() != Some(want) {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{key} never read {want}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A URL naming a master the sentinels do not know fails to connect with
/// a clear error, without hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_master_name_is_an_error() {
    let group = SentinelGroup::spawn();
    let url = Fixture::sentinel_url(&group).replace(group.master_name(), "nosuchmaster");
    let started = Instant::now();
    let err = RedisStore::connect(RedisConfig::from_url(&url).unwrap())
        .await
        .unwrap_err();
    let chain = format!("{err} / {:?}", std::error::Error::source(&err));
    assert!(chain.contains("nosuchmaster"), "{chain}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
