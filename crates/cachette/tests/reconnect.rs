//! Redis restarting under a running cache: calls during the outage fail
//! within their deadline (loads fail open to the loader), and calls after it
//! succeed on the same `Cache`, with no new connection made by the caller.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cachette::Cache;
use cachette_test::Fixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_succeed_after_redis_restarts() {
    let mut f = Fixture::redis().await;
    let c: Cache<String> = Cache::builder("restart")
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    c.set("before", &"v".to_string()).await.unwrap();

    f.server().restart();

    // The connection dropped under the cache: the first command meets the
    // dead socket and is retried on the new connection.
    c.set("after", &"w".to_string()).await.unwrap();
    assert_eq!(c.get("after").await.unwrap().as_deref(), Some("w"));
    // The restarted server kept nothing (no persistence): a miss, not an error.
    assert_eq!(c.get("before").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_outage_reads_fail_fast_and_loads_fail_open() {
    let mut f = Fixture::redis().await;
    let c: Cache<String> = Cache::builder("outage")
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    f.server().stop();

    let started = Instant::now();
    let err = c.get("k").await.unwrap_err();
    assert!(err.is_store_unavailable(), "{err:?}");
    let v = c
        .get_or_load("k", || async {
            Ok::<_, std::io::Error>("from source".to_string())
        })
        .await
        .unwrap();
    assert_eq!(v, "from source");
    // Bounded by the fixture's 2 s command deadline (times the retries), not hung.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(c.stats().store_errors >= 2);

    f.server().start();
    c.set("k", &"cached".to_string()).await.unwrap();
    assert_eq!(c.get("k").await.unwrap().as_deref(), Some("cached"));
}
