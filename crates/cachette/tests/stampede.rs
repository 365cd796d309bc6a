//! Loading a cold key once, and never storing a value older than the last
//! write: single flight in one cache, the fill lease across caches sharing
//! a store, and the stale-set harness that walks a reader and a writer
//! through every interleaving of their steps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cachette::Cache;
use cachette::Ttl;
use cachette::store::{Claim, LeaseToken, Mark, Store, StoreEntry, StoreError, StoreKind};
use cachette_test::{Fixture, for_each_store};
use tokio::sync::{Barrier, Notify, Semaphore};

const WAIT: Duration = Duration::from_secs(20);

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {WAIT:?}"))
}

/// 10,000 concurrent callers of one cold key: one loader run.
async fn ten_thousand_concurrent_misses_load_once(f: Fixture) {
    let cache: Cache<u64> = Cache::builder("cold").store_shared(&f).build().unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(10_000));
    let callers: Vec<_> = (0..10_000)
        .map(|_| {
            let (cache, loads, start) = (cache.clone(), loads.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                cache
                    .get_or_load("k", move || async move {
                        loads.fetch_add(1, SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, std::io::Error>(42)
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    for caller in callers {
        assert_eq!(bounded("a caller", caller).await.unwrap(), 42);
    }
    assert_eq!(loads.load(SeqCst), 1);
    assert_eq!(cache.stats().loads, 1);
}

/// Two caches of one namespace over one store (two instances, no
/// backplane) — 1,000 callers each: the lease makes it one load in all.
async fn two_caches_on_one_store_load_a_cold_key_once(f: Fixture) {
    let build = || -> Cache<u64> { Cache::builder("cold").store_shared(&f).build().unwrap() };
    let caches = [build(), build()];
    let loads = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(2_000));
    let callers: Vec<_> = (0..2_000)
        .map(|i| {
            let cache = caches[i % 2].clone();
            let (loads, start) = (loads.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                cache
                    .get_or_load("k", move || async move {
                        loads.fetch_add(1, SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok::<_, std::io::Error>(7)
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    for caller in callers {
        assert_eq!(bounded("a caller", caller).await.unwrap(), 7);
    }
    assert_eq!(loads.load(SeqCst), 1, "one load across both caches");
    let waited: u64 = caches.iter().map(|c| c.stats().lease_waits).sum();
    assert_eq!(waited, 1, "the other cache waited for the holder's fill");
}

trait SharedStore {
    fn store_shared(self, f: &Fixture) -> Self;
}

impl<V: cachette::Value> SharedStore for cachette::CacheBuilder<V, cachette::Json> {
    fn store_shared(self, f: &Fixture) -> Self {
        self.shared_store(f.store.clone())
    }
}

// ------------------------------------------------------ stale-set harness

/// The fixture's store with a gate on fills (the harness decides when a
/// reader's fill reaches the store) and, for the control run, the fill
/// guard switched off: a fill then stores whatever its lease says.
#[derive(Debug)]
struct Gated {
    inner: Arc<dyn Store>,
    guarded: bool,
    fills: Semaphore,
    fill_arrived: Notify,
}

#[async_trait]
impl Store for Gated {
    fn kind(&self) -> StoreKind {
        self.inner.kind()
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
        self.inner.get_many(keys).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Ttl) -> Result<(), StoreError> {
        self.inner.set(key, value, ttl).await
    }
    async fn set_many(&self, entries: &[StoreEntry]) -> Result<(), StoreError> {
        self.inner.set_many(entries).await
    }
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }
    async fn claim(
        &self,
        key: &str,
        seen: Option<&[u8]>,
        token: &LeaseToken,
        ttl: Ttl,
    ) -> Result<Claim, StoreError> {
        self.inner.claim(key, seen, token, ttl).await
    }
    async fn fill(
        &self,
        key: &str,
        token: &LeaseToken,
        value: Bytes,
        ttl: Ttl,
    ) -> Result<bool, StoreError> {
        self.fill_arrived.notify_one();
        self.fills.acquire().await.unwrap().forget();
        if self.guarded {
            self.inner.fill(key, token, value, ttl).await
        } else {
            // Plain cache-aside: the loaded value is written, whatever
            // happened since it was read.
            self.inner.set(key, value, ttl).await.map(|()| true)
        }
    }
    async fn extend_lease(
        &self,
        key: &str,
        token: &LeaseToken,
        ttl: Ttl,
    ) -> Result<bool, StoreError> {
        self.inner.extend_lease(key, token, ttl).await
    }
    async fn release_lease(&self, key: &str, token: &LeaseToken) -> Result<bool, StoreError> {
        self.inner.release_lease(key, token).await
    }

    async fn raise_mark(&self, key: &str, mark: Mark, ttl: Ttl) -> Result<Mark, StoreError> {
        self.inner.raise_mark(key, mark, ttl).await
    }

    async fn delete_matching(&self, pattern: &str, batch: usize) -> Result<u64, StoreError> {
        self.inner.delete_matching(pattern, batch).await
    }

    async fn sweep(&self, pattern: &str, before_ms: u64, batch: usize) -> Result<u64, StoreError> {
        self.inner.sweep(pattern, before_ms, batch).await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The reader misses and claims (up to its loader starting).
    Miss,
    /// The reader's loader reads the source.
    Read,
    /// The reader's fill reaches the store (and its call returns).
    Fill,
    /// The writer updates the source.
    Update,
    /// The writer invalidates: deletes the entry, or writes the new value.
    Invalidate,
}

/// Every order of the reader's three steps among the writer's two, each
/// side keeping its own order: C(5, 2) = 10.
fn interleavings() -> Vec<Vec<Step>> {
    let mut all = Vec::new();
    for first in 0..5 {
        for second in first + 1..5 {
            let mut reader = [Step::Miss, Step::Read, Step::Fill].into_iter();
            let order = (0..5)
                .map(|i| match i {
                    _ if i == first => Step::Update,
                    _ if i == second => Step::Invalidate,
                    _ => reader.next().unwrap(),
                })
                .collect();
            all.push(order);
        }
    }
    all
}

/// Runs one interleaving; true if the cache ends up holding a value older
/// than the source's.
async fn stale_after(f: &Fixture, guarded: bool, write_value: bool, order: &[Step]) -> bool {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let key = format!("k{}", RUN.fetch_add(1, SeqCst));
    let gated = Arc::new(Gated {
        inner: f.store.clone(),
        guarded,
        fills: Semaphore::new(0),
        fill_arrived: Notify::new(),
    });
    // Two instances, the reader's and the writer's. (Without L1: the
    // copies of another instance's L1 are the backplane's to drop, and
    // tests/l1.rs and tests/coherence.rs cover them.)
    let reader: Cache<u64> = Cache::builder("race")
        .shared_store(gated.clone())
        .build()
        .unwrap();
    let writer: Cache<u64> = Cache::builder("race")
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    let source = Arc::new(AtomicU64::new(1));
    let entered = Arc::new(Notify::new());
    let read_gate = Arc::new(Semaphore::new(0));
    let read_done = Arc::new(Notify::new());
    let loader_ran = Arc::new(AtomicBool::new(false));

    let mut call = None;
    for step in order {
        match step {
            Step::Miss => {
                let loader = {
                    let (source, entered, read_gate, read_done, ran) = (
                        source.clone(),
                        entered.clone(),
                        read_gate.clone(),
                        read_done.clone(),
                        loader_ran.clone(),
                    );
                    move || async move {
                        ran.store(true, SeqCst);
                        entered.notify_one();
                        read_gate.acquire().await.unwrap().forget();
                        let v = source.load(SeqCst);
                        read_done.notify_one();
                        Ok::<_, std::io::Error>(v)
                    }
                };
                let (reader, key) = (reader.clone(), key.clone());
                let entered = entered.notified();
                let mut task =
                    tokio::spawn(async move { reader.get_or_load(&key, loader).await.unwrap() });
                // Either the loader starts, or the read was a hit.
                tokio::select! {
                    () = entered => {}
                    done = &mut task => { done.unwrap(); }
                }
                call = Some(task);
            }
            Step::Read => {
                if loader_ran.load(SeqCst) {
                    let done = read_done.notified();
                    read_gate.add_permits(1);
                    bounded("the source read", done).await;
                }
            }
            Step::Fill => {
                gated.fills.add_permits(1);
                if let Some(task) = call.take()
                    && !task.is_finished()
                {
                    bounded("the reader's call", task).await.unwrap();
                }
            }
            Step::Update => {
                source.fetch_add(1, SeqCst);
            }
            Step::Invalidate => {
                if write_value {
                    writer.set(&key, &source.load(SeqCst)).await.unwrap();
                } else {
                    writer.delete(&key).await.unwrap();
                }
            }
        }
    }
    // Quiescence: the entry, against the source.
    let truth = source.load(SeqCst);
    writer.get(&key).await.unwrap().is_some_and(|v| v != truth)
}

async fn count_stale(f: &Fixture, guarded: bool, write_value: bool) -> usize {
    let mut bad = 0;
    for order in interleavings() {
        if stale_after(f, guarded, write_value, &order).await {
            if guarded {
                println!("stale with the lease: {order:?}");
            }
            bad += 1;
        }
    }
    bad
}

/// A reader (miss → load the old value → fill) and a writer (update the
/// source → invalidate) through all 10 interleavings, with the writer
/// deleting or writing the new value. Plain cache-aside (the fill guard off)
/// must show the stale set; with the lease, none.
async fn no_interleaving_stores_a_value_older_than_the_write(f: Fixture) {
    assert_eq!(interleavings().len(), 10);
    for write_value in [false, true] {
        let writer = if write_value {
            "writes the new value"
        } else {
            "deletes"
        };
        let unguarded = count_stale(&f, false, write_value).await;
        let guarded = count_stale(&f, true, write_value).await;
        println!(
            "{:?} store, writer {writer}: stale after quiescence in {unguarded}/10 interleavings unguarded, {guarded}/10 with the lease",
            f.store.kind()
        );
        assert!(unguarded > 0, "the harness must catch the stale set");
        assert_eq!(guarded, 0);
    }
}

for_each_store!(
    cluster:
    ten_thousand_concurrent_misses_load_once,
    two_caches_on_one_store_load_a_cold_key_once,
    no_interleaving_stores_a_value_older_than_the_write,
);
