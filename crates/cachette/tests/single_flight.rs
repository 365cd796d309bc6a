//! Single flight: concurrent misses of one key run the loader once, the load
//! belongs to the flight (not to its first caller), a panic is an error for
//! every waiter, errors are not cached, and a write ends an in-flight load's
//! lease, so its value is not stored.
//!
//! Each test holds the loader on a gate until every caller has been counted
//! as a miss, so the callers really are concurrent: without single flight
//! each of them would run its own load.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cachette::{Cache, Error};
use cachette_test::{Fixture, for_each_store};
use tokio::sync::{Notify, Semaphore};

fn cache(f: &Fixture) -> Cache<String> {
    Cache::builder("flight")
        .ttl(Duration::from_secs(60))
        .shared_store(f.store.clone())
        .build()
        .unwrap()
}

/// Waits until `cond` holds, checking every millisecond, for at most 10 s.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A loader gate: loaders count themselves and wait for `open`.
#[derive(Clone)]
struct Gate {
    calls: Arc<AtomicUsize>,
    open: Arc<Semaphore>,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            calls: Arc::default(),
            open: Arc::new(Semaphore::new(0)),
        }
    }
    async fn pass(&self) {
        self.calls.fetch_add(1, SeqCst);
        // Each load waits for one permit; `open` hands out plenty.
        self.open.acquire().await.unwrap().forget();
    }
    fn open(&self) {
        self.open.add_permits(1 << 20);
    }
    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }
}

/// Spawns a `get_or_load` of `key` whose loader passes `gate`, then returns `value`.
fn spawn_gated(
    cache: &Cache<String>,
    key: &'static str,
    gate: &Gate,
    value: &'static str,
) -> tokio::task::JoinHandle<Result<String, Error>> {
    let (cache, gate) = (cache.clone(), gate.clone());
    tokio::spawn(async move {
        cache
            .get_or_load(key, move || async move {
                gate.pass().await;
                Ok::<_, std::io::Error>(value.to_string())
            })
            .await
    })
}

for_each_store!(
    cluster:
    concurrent_misses_call_loader_once,
    dropping_the_first_caller_does_not_fail_the_others,
    a_panicking_loader_is_an_error_for_every_waiter,
    loader_errors_reach_callers_and_are_not_cached,
    a_delete_during_a_load_keeps_the_loaded_value_out,
    a_set_during_a_load_wins_over_the_loaded_value,
);

async fn concurrent_misses_call_loader_once(f: Fixture) {
    let cache = cache(&f);
    let gate = Gate::new();
    let callers: Vec<_> = (0..1000)
        .map(|_| spawn_gated(&cache, "cold", &gate, "value"))
        .collect();
    until("1,000 misses", || cache.stats().misses == 1000).await;
    gate.open();
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), "value");
    }
    assert_eq!(gate.calls(), 1, "the loader ran more than once");
    assert_eq!(cache.stats().loads, 1);
    assert_eq!(cache.get("cold").await.unwrap().as_deref(), Some("value"));
}

async fn dropping_the_first_caller_does_not_fail_the_others(f: Fixture) {
    let cache = cache(&f);
    let gate = Gate::new();
    let started = Arc::new(Notify::new());
    let leader = {
        let (cache, gate, started) = (cache.clone(), gate.clone(), started.clone());
        tokio::spawn(async move {
            cache
                .get_or_load("k", move || async move {
                    started.notify_one();
                    gate.pass().await;
                    Ok::<_, std::io::Error>("loaded".to_string())
                })
                .await
        })
    };
    started.notified().await;
    let followers: Vec<_> = (0..20)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load("k", || async {
                        Ok::<_, std::io::Error>("other".to_string())
                    })
                    .await
            })
        })
        .collect();
    until("21 misses", || cache.stats().misses == 21).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    gate.open();
    for follower in followers {
        assert_eq!(follower.await.unwrap().unwrap(), "loaded");
    }
    assert_eq!(gate.calls(), 1);
    assert_eq!(cache.stats().loads, 1);
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some("loaded"));
}

async fn a_panicking_loader_is_an_error_for_every_waiter(f: Fixture) {
    let cache = cache(&f);
    let gate = Gate::new();
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let (cache, gate) = (cache.clone(), gate.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load("k", move || async move {
                        gate.pass().await;
                        if gate.calls() > 0 {
                            panic!("source exploded");
                        }
                        Ok::<_, std::io::Error>(String::new())
                    })
                    .await
            })
        })
        .collect();
    until("50 misses", || cache.stats().misses == 50).await;
    gate.open();
    for caller in callers {
        let result = tokio::time::timeout(Duration::from_secs(10), caller)
            .await
            .expect("a waiter hung after the loader panicked")
            .unwrap();
        match result {
            Err(Error::LoaderPanicked { message, .. }) => assert_eq!(message, "source exploded"),
            other => panic!("expected LoaderPanicked, got {other:?}"),
        }
    }
    assert_eq!(gate.calls(), 1);
    assert_eq!(cache.stats().load_errors, 1);
    // Nothing was cached: the next call loads again.
    let v = cache
        .get_or_load("k", || async {
            Ok::<_, std::io::Error>("fine".to_string())
        })
        .await
        .unwrap();
    assert_eq!(v, "fine");
    assert_eq!(cache.loads_in_flight(), 0);
}

async fn loader_errors_reach_callers_and_are_not_cached(f: Fixture) {
    let cache = cache(&f);
    let err = cache
        .get_or_load("k", || async {
            Err::<String, _>(std::io::Error::other("database down"))
        })
        .await
        .unwrap_err();
    assert!(err.is_load_error());
    assert_eq!(
        err.loader_error::<std::io::Error>().unwrap().to_string(),
        "database down"
    );
    assert_eq!(cache.get("k").await.unwrap(), None, "an error was cached");
    let v = cache
        .get_or_load("k", || async {
            Ok::<_, std::io::Error>("back".to_string())
        })
        .await
        .unwrap();
    assert_eq!(v, "back");
    assert_eq!(cache.stats().loads, 2);
    assert_eq!(cache.stats().load_errors, 1);
}

/// The in-process stale set: a load reads the source, a writer changes the
/// source and deletes the key, then the load fills. Without voiding, the
/// value read before the write would be cached after it.
async fn a_delete_during_a_load_keeps_the_loaded_value_out(f: Fixture) {
    let cache = cache(&f);
    let gate = Gate::new();
    // The loader has read "old" from the source when it reaches the gate.
    let loading = spawn_gated(&cache, "k", &gate, "old");
    until("the load to start", || gate.calls() == 1).await;
    cache.delete("k").await.unwrap();
    gate.open();
    // The caller that asked before the write still gets its value...
    assert_eq!(loading.await.unwrap().unwrap(), "old");
    // ...but it is not cached after the delete.
    assert_eq!(cache.get("k").await.unwrap(), None);
}

async fn a_set_during_a_load_wins_over_the_loaded_value(f: Fixture) {
    let cache = cache(&f);
    let gate = Gate::new();
    let loading = spawn_gated(&cache, "k", &gate, "old");
    until("the load to start", || gate.calls() == 1).await;
    cache.set("k", &"new".to_string()).await.unwrap();
    gate.open();
    loading.await.unwrap().unwrap();
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some("new"));
}
