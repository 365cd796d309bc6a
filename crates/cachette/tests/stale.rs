//! Serving past freshness: stale-while-revalidate, early refresh of a hot
//! key, fail-safe with its throttle, and the soft and hard load timeouts —
//! on both stores, and for the long runs on Redis with two instances.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachette::backplane::{Backplane, BackplaneConfig};
use cachette::store::{RedisConfig, RedisStore};
use cachette::{Cache, Error};
use cachette_test::{Fixture, RedisServer, for_each_store};

const WAIT: Duration = Duration::from_secs(20);

type Loaded = Result<u64, std::io::Error>;

fn down() -> std::io::Error {
    std::io::Error::other("source down")
}

/// Waits (bounded) until `cache.get(key)` is `want`.
async fn until_cached(cache: &Cache<u64>, key: &str, want: u64) {
    let deadline = Instant::now() + WAIT;
    while cache.get(key).await.unwrap() != Some(want) {
        assert!(Instant::now() < deadline, "{key} never became {want}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sleeps past `cache`'s freshness of `key` (the thing under test is what
/// happens after it), checking that the entry really went stale.
async fn until_stale(cache: &Cache<u64>, key: &str) {
    let deadline = Instant::now() + WAIT;
    while cache.get(key).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "{key} never went stale");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// After the TTL, 100 concurrent callers get the stale value at once (none
/// waits for a load) while exactly one refresh runs; then the new value.
async fn stale_values_are_served_at_once_while_one_refresh_runs(f: Fixture) {
    let cache: Cache<u64> = Cache::builder("swr")
        .ttl(Duration::from_millis(200))
        .stale_while_revalidate(Duration::from_secs(30))
        .early_refresh(0.0)
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    cache
        .get_or_load("k", || async { Loaded::Ok(1) })
        .await
        .unwrap();
    until_stale(&cache, "k").await;
    let loads = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let before = cache.stats();
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let (cache, loads, finished) = (cache.clone(), loads.clone(), finished.clone());
            tokio::spawn(async move {
                let flag = finished.clone();
                let served = cache
                    .get_or_load("k", move || async move {
                        loads.fetch_add(1, SeqCst);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        flag.store(true, SeqCst);
                        Loaded::Ok(2)
                    })
                    .await
                    .unwrap();
                (served, finished.load(SeqCst))
            })
        })
        .collect();
    for caller in callers {
        let (served, load_done) = caller.await.unwrap();
        assert_eq!(served, 1, "the stale value");
        assert!(!load_done, "served before the refresh finished");
    }
    until_cached(&cache, "k", 2).await;
    let after = cache.stats();
    assert_eq!(loads.load(SeqCst), 1, "one refresh");
    assert_eq!(after.stale_hits - before.stale_hits, 100);
    assert_eq!(after.refreshes - before.refreshes, 1);
    assert_eq!(after.load_waits, before.load_waits, "no caller waited");
}

/// The source fails: the caller gets the stale value (counted), and the
/// source is not asked again for the key until the throttle period ends.
async fn a_failed_load_serves_the_stale_value_and_throttles_retries(f: Fixture) {
    let throttle = Duration::from_millis(500);
    let cache: Cache<u64> = Cache::builder("failsafe")
        .ttl(Duration::from_millis(200))
        .fail_safe(Duration::from_secs(60))
        .fail_safe_throttle(throttle)
        .early_refresh(0.0)
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    cache
        .get_or_load("k", || async { Loaded::Ok(1) })
        .await
        .unwrap();
    until_stale(&cache, "k").await;
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let failing = |attempts: &Arc<Mutex<Vec<Instant>>>| {
        let attempts = attempts.clone();
        move || async move {
            attempts.lock().unwrap().push(Instant::now());
            Loaded::Err(down())
        }
    };
    let started = Instant::now();
    while started.elapsed() < throttle * 3 {
        assert_eq!(
            cache.get_or_load("k", failing(&attempts)).await.unwrap(),
            1,
            "fail-safe: the stale value, never an error"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let attempts = attempts.lock().unwrap().clone();
    assert!(
        (3..=4).contains(&attempts.len()),
        "one attempt per period: {}",
        attempts.len()
    );
    for pair in attempts.windows(2) {
        assert!(pair[1] - pair[0] >= throttle - Duration::from_millis(10));
    }
    assert!(cache.stats().fail_safe_hits >= 3);
    // Without a stale value the error reaches the caller.
    let err = cache
        .get_or_load("never-cached", failing(&Arc::default()))
        .await
        .unwrap_err();
    assert!(err.is_load_error());
}

/// With a stale value at hand the caller waits only the soft timeout; the
/// slow load finishes in the background and fills the cache.
async fn the_soft_timeout_serves_stale_and_the_load_fills_later(f: Fixture) {
    let cache: Cache<u64> = Cache::builder("soft")
        .ttl(Duration::from_millis(200))
        .fail_safe(Duration::from_secs(60))
        .soft_timeout(Duration::from_millis(100))
        .early_refresh(0.0)
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    cache
        .get_or_load("k", || async { Loaded::Ok(1) })
        .await
        .unwrap();
    until_stale(&cache, "k").await;
    let finished = Arc::new(AtomicBool::new(false));
    let flag = finished.clone();
    let served = cache
        .get_or_load("k", move || async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            flag.store(true, SeqCst);
            Loaded::Ok(2)
        })
        .await
        .unwrap();
    assert_eq!(served, 1);
    assert!(
        !finished.load(SeqCst),
        "the caller did not wait for the load"
    );
    until_cached(&cache, "k", 2).await;
    let s = cache.stats();
    assert_eq!((s.fail_safe_hits, s.load_timeouts), (1, 1));
}

/// Without a stale value, a load past the hard timeout is abandoned: an
/// error for its callers, the loader dropped, the lease released (the next
/// load does not wait for it).
async fn the_hard_timeout_ends_a_hung_load(f: Fixture) {
    let cache: Cache<u64> = Cache::builder("hard")
        .hard_timeout(Duration::from_millis(200))
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let guard = Dropped(dropped.clone());
    let err = cache
        .get_or_load("k", move || async move {
            let _guard = guard;
            std::future::pending::<Loaded>().await
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LoadTimeout { .. }), "{err}");
    let deadline = Instant::now() + WAIT;
    while !dropped.load(SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the hung loader was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let other: Cache<u64> = Cache::builder("hard")
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    assert_eq!(
        other
            .get_or_load("k", || async { Loaded::Ok(3) })
            .await
            .unwrap(),
        3
    );
    assert_eq!(other.stats().lease_waits, 0, "the lease was released");
}

/// Two instances serve a stale key while one holds the refresh lease: the
/// other starts one refresh, which waits for the holder's fill, instead of
/// one refresh per call that each find the lease held.
async fn a_refresh_that_finds_the_lease_held_waits_for_the_fill(f: Fixture) {
    let build = || -> Cache<u64> {
        Cache::builder("swr2")
            .ttl(Duration::from_millis(200))
            .stale_while_revalidate(Duration::from_secs(30))
            .early_refresh(0.0)
            .shared_store(f.store.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    a.get_or_load("k", || async { Loaded::Ok(1) })
        .await
        .unwrap();
    until_stale(&a, "k").await;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let served = a
        .get_or_load("k", move || async move {
            let _ = started_tx.send(());
            let _ = release_rx.await;
            Loaded::Ok(2)
        })
        .await
        .unwrap();
    assert_eq!(served, 1);
    tokio::time::timeout(WAIT, started_rx)
        .await
        .unwrap()
        .unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    for _ in 0..100 {
        let loads = loads.clone();
        let v = b
            .get_or_load("k", move || async move {
                loads.fetch_add(1, SeqCst);
                Loaded::Ok(3)
            })
            .await
            .unwrap();
        assert_eq!(v, 1, "stale while A refreshes");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        b.stats().refreshes,
        1,
        "one refresh in flight on B, waiting"
    );
    release_tx.send(()).unwrap();
    until_cached(&b, "k", 2).await;
    assert_eq!(
        loads.load(SeqCst),
        0,
        "B never loaded: A's fill answered it"
    );
}

for_each_store!(
    a_refresh_that_finds_the_lease_held_waits_for_the_fill,
    stale_values_are_served_at_once_while_one_refresh_runs,
    a_failed_load_serves_the_stale_value_and_throttles_retries,
    the_soft_timeout_serves_stale_and_the_load_fills_later,
    the_hard_timeout_ends_a_hung_load,
);

// ------------------------------------------------ long runs on Redis

fn secs(var: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// Two instances (own store connection, backplane and L1) over one Redis.
async fn instances(
    redis: &RedisServer,
    configure: impl Fn(
        cachette::CacheBuilder<u64, cachette::Json>,
    ) -> cachette::CacheBuilder<u64, cachette::Json>,
) -> Vec<Cache<u64>> {
    let mut out = Vec::new();
    for _ in 0..2 {
        let config = RedisConfig::from_url(&redis.url()).unwrap();
        let store = RedisStore::connect(config.clone()).await.unwrap();
        let backplane = Backplane::connect(BackplaneConfig::new(config))
            .await
            .unwrap();
        let builder = Cache::builder("hot")
            .store(store)
            .backplane(backplane)
            .l1(16 << 20);
        out.push(configure(builder).build().unwrap());
    }
    out
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// A hot key at 1,000 calls/s over two instances, a 200 ms loader, for 60 s
/// (`CACHETTE_HOT_KEY_SECS`): early refresh plus the lease reload it once
/// per cycle, in the background — no caller ever waits for a load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_is_refreshed_once_per_cycle_and_no_caller_waits() {
    let redis = RedisServer::spawn();
    let ttl = Duration::from_secs(2);
    let caches = instances(&redis, |b| {
        b.ttl(ttl).stale_while_revalidate(ttl).early_refresh(1.0)
    })
    .await;
    let version = Arc::new(AtomicU64::new(0));
    let active = Arc::new(AtomicUsize::new(0));
    let most_active = Arc::new(AtomicUsize::new(0));
    let loader = {
        let (version, active, most_active) = (version.clone(), active.clone(), most_active.clone());
        move || {
            let (version, active, most_active) =
                (version.clone(), active.clone(), most_active.clone());
            async move {
                let now = active.fetch_add(1, SeqCst) + 1;
                most_active.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                active.fetch_sub(1, SeqCst);
                Loaded::Ok(version.fetch_add(1, SeqCst) + 1)
            }
        }
    };
    // Warm: the one load anybody waits for.
    caches[0].get_or_load("hot", loader.clone()).await.unwrap();
    let before: Vec<_> = caches.iter().map(Cache::stats).collect();
    let loads_before = version.load(SeqCst);

    let duration = secs("CACHETTE_HOT_KEY_SECS", 60);
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(70_000)));
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut calls = Vec::new();
    let mut n = 0usize;
    while started.elapsed() < duration {
        tick.tick().await;
        let (cache, loader, latencies) = (caches[n % 2].clone(), loader.clone(), latencies.clone());
        n += 1;
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            cache.get_or_load("hot", loader).await.unwrap();
            latencies
                .lock()
                .unwrap()
                .push(t.elapsed().as_micros() as u64);
        }));
        if calls.len() >= 1_000 {
            for c in calls.drain(..) {
                c.await.unwrap();
            }
        }
    }
    for c in calls {
        c.await.unwrap();
    }
    let elapsed = started.elapsed();
    // Let a refresh that is running finish before counting.
    let deadline = Instant::now() + WAIT;
    while active.load(SeqCst) > 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after: Vec<_> = caches.iter().map(Cache::stats).collect();
    let delta = |f: fn(&cachette::Stats) -> u64| -> u64 {
        after.iter().zip(&before).map(|(a, b)| f(a) - f(b)).sum()
    };
    let loads = version.load(SeqCst) - loads_before;
    let waits = delta(|s| s.load_waits);
    let refused = delta(|s| s.fills_refused);
    let stale = delta(|s| s.stale_hits);
    let refreshes = delta(|s| s.refreshes);
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let rate = lat.len() as f64 / elapsed.as_secs_f64();
    println!(
        "hot key, {} calls in {:.1} s ({rate:.0}/s) over 2 instances, 200 ms loader, TTL {ttl:?}: {loads} loads, {refreshes} refreshes started, at most {} at once, {refused} fills refused, {waits} callers waited, {stale} stale serves; latency p50 {} µs p99 {} µs max {} µs",
        lat.len(),
        elapsed.as_secs_f64(),
        most_active.load(SeqCst),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().unwrap()
    );
    assert!(rate >= 900.0, "the driver kept up: {rate:.0} calls/s");
    assert!(
        loads >= duration.as_secs() / 2,
        "the key was reloaded every cycle: {loads}"
    );
    assert_eq!(
        most_active.load(SeqCst),
        1,
        "never two loads of the key at once"
    );
    assert_eq!(
        refused, 0,
        "every load's value was stored: one load per cycle"
    );
    assert_eq!(waits, 0, "no caller waited for a load");
    assert_eq!(
        stale, 0,
        "early refresh reloaded the key before it went stale"
    );
}

/// The source is down for 30 s (`CACHETTE_OUTAGE_SECS`) while two instances
/// serve 50 keys that all have stale values: no caller sees an error, and
/// each key's source is tried at most once per throttle period across the
/// fleet. Then the source is back and every key refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_outage_costs_callers_no_errors_and_the_source_one_try_per_period() {
    let redis = RedisServer::spawn();
    let throttle = Duration::from_secs(1);
    let caches = instances(&redis, |b| {
        b.ttl(Duration::from_millis(500))
            .fail_safe(Duration::from_secs(600))
            .fail_safe_throttle(throttle)
            .soft_timeout(Duration::from_millis(100))
    })
    .await;
    let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    let up = Arc::new(AtomicBool::new(true));
    let attempts: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
    let (switch, tries) = (up.clone(), attempts.clone());
    let loader = move |key: &str| {
        let (up, attempts, key) = (up.clone(), attempts.clone(), key.to_owned());
        move || async move {
            if up.load(SeqCst) {
                return Loaded::Ok(2);
            }
            attempts
                .lock()
                .unwrap()
                .entry(key)
                .or_default()
                .push(Instant::now());
            tokio::time::sleep(Duration::from_millis(20)).await;
            Loaded::Err(down())
        }
    };
    for key in &keys {
        caches[0].set(key, &1).await.unwrap();
    }
    switch.store(false, SeqCst);
    let outage = secs("CACHETTE_OUTAGE_SECS", 30);
    let errors = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (cache, keys, errors, calls) = (
                caches[w % 2].clone(),
                keys.clone(),
                errors.clone(),
                calls.clone(),
            );
            let loader = loader.clone();
            tokio::spawn(async move {
                let mut i = w;
                while started.elapsed() < outage {
                    let key = &keys[i % keys.len()];
                    i += 7;
                    match cache.get_or_load(key, loader(key)).await {
                        Ok(1) => {}
                        Ok(other) => panic!("{key} served {other} while the source was down"),
                        Err(_) => drop(errors.fetch_add(1, SeqCst)),
                    }
                    calls.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let attempts = tries.lock().unwrap().clone();
    let total: usize = attempts.values().map(Vec::len).sum();
    let mut closest = Duration::MAX;
    for times in attempts.values() {
        for pair in times.windows(2) {
            closest = closest.min(pair[1] - pair[0]);
        }
    }
    let periods = outage.as_secs_f64() / throttle.as_secs_f64();
    let fail_safe: u64 = caches.iter().map(|c| c.stats().fail_safe_hits).sum();
    println!(
        "source down {outage:?}: {} calls over 2 instances, {} errors, {fail_safe} fail-safe serves; {total} source attempts for {} keys ({:.2} per key per {throttle:?} throttle period; closest two attempts of one key {closest:?} apart)",
        calls.load(SeqCst),
        errors.load(SeqCst),
        keys.len(),
        total as f64 / keys.len() as f64 / periods,
    );
    assert_eq!(errors.load(SeqCst), 0, "no caller saw an error");
    assert!(
        closest >= throttle - Duration::from_millis(10),
        "{closest:?}"
    );
    assert!(total as f64 <= keys.len() as f64 * (periods + 1.0));

    // The source is back: every key refreshes once its throttle ends.
    switch.store(true, SeqCst);
    for key in &keys {
        let deadline = Instant::now() + WAIT;
        while caches[1].get_or_load(key, loader(key)).await.unwrap() != 2 {
            assert!(Instant::now() < deadline, "{key} never refreshed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
