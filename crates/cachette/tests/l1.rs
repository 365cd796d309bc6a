//! The in-process L1 tier over each store: hits without a store call or
//! decoding, the size threshold, copies that never outlive their entry, and
//! the fill/invalidation race.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cachette::store::{Claim, LeaseToken, Mark, Store, StoreEntry, StoreError, StoreKind};
use cachette::{Cache, Ttl};
use cachette_test::{Fixture, for_each_store};
use tokio::sync::Notify;

/// The fixture's store, counting reads, and able to hold a read after the
/// store answered it (the moment a reader has the old value in hand).
#[derive(Debug)]
struct Observed {
    inner: Arc<dyn Store>,
    reads: AtomicUsize,
    hold_next_read: AtomicBool,
    held: Notify,
    release: Notify,
}

impl Observed {
    fn new(inner: Arc<dyn Store>) -> Arc<Observed> {
        Arc::new(Observed {
            inner,
            reads: AtomicUsize::new(0),
            hold_next_read: AtomicBool::new(false),
            held: Notify::new(),
            release: Notify::new(),
        })
    }
}

#[async_trait]
impl Store for Observed {
    fn kind(&self) -> StoreKind {
        self.inner.kind()
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.reads.fetch_add(1, SeqCst);
        let answer = self.inner.get(key).await;
        if self.hold_next_read.swap(false, SeqCst) {
            let released = self.release.notified();
            self.held.notify_one();
            released.await;
        }
        answer
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
        self.inner.fill(key, token, value, ttl).await
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

fn cache(store: Arc<Observed>, ttl: Duration) -> Cache<String> {
    Cache::builder("tiered")
        .ttl(ttl)
        .l1(1 << 20)
        .l1_max_entry_bytes(1_000)
        .shared_store(store)
        .build()
        .unwrap()
}

async fn l1_hits_are_local(f: Fixture) {
    let store = Observed::new(f.store.clone());
    let c = cache(store.clone(), Duration::from_secs(60));
    c.set("a", &"one".to_owned()).await.unwrap();
    let reads = store.reads.load(SeqCst);
    for _ in 0..100 {
        assert_eq!(
            c.get_shared("a")
                .await
                .unwrap()
                .as_deref()
                .map(String::as_str),
            Some("one")
        );
    }
    assert_eq!(
        store.reads.load(SeqCst),
        reads,
        "every read after the set came from L1"
    );
    assert_eq!(c.stats().l1_hits, 100);

    // A value another writer put straight in the store: one store read,
    // then L1.
    let other = Cache::<String>::builder("tiered")
        .ttl(Duration::from_secs(60))
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    other.set("b", &"two".to_owned()).await.unwrap();
    for _ in 0..10 {
        assert_eq!(c.get("b").await.unwrap().as_deref(), Some("two"));
    }
    assert_eq!(store.reads.load(SeqCst), reads + 1);
    let s = c.stats();
    assert_eq!((s.hits, s.l1_hits), (110, 109));
}

async fn large_values_stay_in_the_store(f: Fixture) {
    let store = Observed::new(f.store.clone());
    let c = cache(store.clone(), Duration::from_secs(60));
    let big = "x".repeat(2_000);
    c.set("big", &big).await.unwrap();
    for _ in 0..5 {
        assert_eq!(c.get("big").await.unwrap().as_deref(), Some(big.as_str()));
    }
    assert_eq!(c.stats().l1_hits, 0);
    assert_eq!(c.l1_usage().unwrap().entries, 0);
}

async fn a_copy_never_outlives_its_entry(f: Fixture) {
    let store = Observed::new(f.store.clone());
    let c = cache(store.clone(), Duration::from_secs(60));
    c.set_for("short", &"brief".to_owned(), Duration::from_millis(200))
        .await
        .unwrap();
    assert!(c.get("short").await.unwrap().is_some());
    // Wait (bounded) until the store itself has dropped the entry.
    let deadline = Instant::now() + Duration::from_secs(5);
    while f
        .store
        .get(&c.store_key("short").unwrap())
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "the store never expired the entry"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        c.get("short").await.unwrap(),
        None,
        "L1 expired with the store's entry"
    );
}

/// A reader has the old value in hand (its store read is held after the
/// store answered) when a delete runs; released, it must not put that value
/// in L1.
async fn an_invalidation_during_a_fill_keeps_the_old_value_out(f: Fixture) {
    let store = Observed::new(f.store.clone());
    let c = cache(store.clone(), Duration::from_secs(60));
    let writer = Cache::<String>::builder("tiered")
        .ttl(Duration::from_secs(60))
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    writer.set("k", &"old".to_owned()).await.unwrap();

    store.hold_next_read.store(true, SeqCst);
    let held = store.held.notified();
    let reader = {
        let c = c.clone();
        tokio::spawn(async move { c.get("k").await.unwrap() })
    };
    tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .unwrap();
    c.delete("k").await.unwrap();
    store.release.notify_one();
    assert_eq!(
        reader.await.unwrap().as_deref(),
        Some("old"),
        "it read before the delete"
    );
    assert_eq!(
        c.get("k").await.unwrap(),
        None,
        "and did not cache what it read"
    );
    assert_eq!(c.l1_usage().unwrap().entries, 0);
}

async fn clearing_l1_reads_the_store_again(f: Fixture) {
    let store = Observed::new(f.store.clone());
    let c = cache(store.clone(), Duration::from_secs(60));
    c.set("a", &"one".to_owned()).await.unwrap();
    c.get("a").await.unwrap();
    let reads = store.reads.load(SeqCst);
    c.clear_l1().await.unwrap();
    assert_eq!(c.get("a").await.unwrap().as_deref(), Some("one"));
    assert_eq!(store.reads.load(SeqCst), reads + 1);
}

for_each_store!(
    l1_hits_are_local,
    large_values_stay_in_the_store,
    a_copy_never_outlives_its_entry,
    an_invalidation_during_a_fill_keeps_the_old_value_out,
    clearing_l1_reads_the_store_again,
);
