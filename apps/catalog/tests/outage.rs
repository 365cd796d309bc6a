//! The database goes down (or hangs) under a running catalog: products
//! that were cached are still served, past their TTL, with their last
//! value; the database sees at most one attempt per product per throttle
//! period; a product never cached fails with a 503 at once (or at the hard
//! timeout when the database hangs), never a 500 or a hang; and once the
//! database is back, products are reloaded from it.
//!
//! Real parts throughout: SQLite, the embedded store, the real router on a
//! loopback port. TTLs and throttles are a second or less so that sleeping
//! past them, which is what is being tested, keeps the tests short.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use catalog::db::{DbError, Outage, QueryHook};
use catalog::product::{ProductPatch, now_micros};
use catalog::read_policy::{FailSafe, ReadPolicy};
use common::{Gate, Options, TestApp, WAIT, wait_until};
use futures_util::future::BoxFuture;
use serde_json::Value;

const TTL: Duration = Duration::from_secs(1);
const STALE_WHILE_REVALIDATE: Duration = Duration::from_millis(500);
const THROTTLE: Duration = Duration::from_secs(1);
const SOFT_TIMEOUT: Duration = Duration::from_millis(200);
const HARD_TIMEOUT: Duration = Duration::from_secs(1);

/// Production's shape, scaled down to a one-second TTL.
fn short_policy() -> ReadPolicy {
    ReadPolicy {
        product_ttl: TTL,
        stale_while_revalidate: STALE_WHILE_REVALIDATE,
        fail_safe: Some(FailSafe {
            max_stale: Duration::from_secs(60),
            throttle: THROTTLE,
        }),
        soft_timeout: Some(SOFT_TIMEOUT),
        hard_timeout: Some(HARD_TIMEOUT),
    }
}

/// The outage switch, counting the product queries that reach it (refused
/// ones included): the database's view of how hard it is being tried.
struct CountedOutage {
    outage: Arc<Outage>,
    product_queries: AtomicU64,
}

impl CountedOutage {
    fn product_queries(&self) -> u64 {
        self.product_queries.load(Ordering::SeqCst)
    }
}

impl QueryHook for CountedOutage {
    fn before(&self, query: &'static str) -> BoxFuture<'static, Result<(), DbError>> {
        if query == "product" {
            self.product_queries.fetch_add(1, Ordering::SeqCst);
        }
        self.outage.before(query)
    }
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let r = app.client().await.get(path).await.unwrap();
    (r.status.as_u16(), r.json().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_products_outlive_a_database_outage() {
    let outage = Outage::new();
    let hook = Arc::new(CountedOutage {
        outage: outage.clone(),
        product_queries: AtomicU64::new(0),
    });
    let app = TestApp::start(Options {
        hook: Some(hook.clone()),
        read_policy: short_policy(),
        ..Options::default()
    })
    .await;

    // Cache product 7, then change its price behind the cache's back: the
    // cache holds the old price, the database the new one.
    let (status, cached) = get(&app, "/products/7").await;
    assert_eq!(status, 200);
    let new_price = cached["price_cents"].as_i64().unwrap() + 1;
    let patch = ProductPatch {
        name: None,
        price_cents: Some(new_price),
        description: None,
    };
    app.state
        .catalog
        .database()
        .update_product(7, &patch, now_micros())
        .await
        .unwrap()
        .unwrap();

    outage.take_down();
    // Past the TTL and the stale-while-revalidate window: the entry is now
    // only a fail-safe fallback.
    tokio::time::sleep(TTL + STALE_WHILE_REVALIDATE + Duration::from_millis(100)).await;

    // Four readers hammer it for three throttle periods.
    let attempts_before = hook.product_queries();
    let started = Instant::now();
    let hammering = 3 * THROTTLE;
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut client = app.client().await;
        readers.push(tokio::spawn(async move {
            let mut bodies = Vec::new();
            while started.elapsed() < hammering {
                let r = client.get("/products/7").await.unwrap();
                bodies.push((r.status.as_u16(), r.json().unwrap()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            bodies
        }));
    }
    let mut reads = 0;
    for reader in readers {
        for (status, body) in tokio::time::timeout(WAIT, reader).await.unwrap().unwrap() {
            assert_eq!(status, 200, "a cached product while the database is down");
            assert_eq!(body, cached, "the last cached value");
            reads += 1;
        }
    }
    let elapsed = started.elapsed();
    let attempts = hook.product_queries() - attempts_before;
    // One attempt when the first reader found the fallback, then at most
    // one per throttle period: each failure makes the value fresh again for
    // a full period. (Almost: early refresh may start the next attempt a
    // few milliseconds before the period ends, hence the margin.)
    let period = THROTTLE - Duration::from_millis(50);
    let most = (elapsed.as_secs_f64() / period.as_secs_f64()).floor() as u64 + 1;
    eprintln!(
        "database down: {reads} reads of a cached product in {elapsed:?}, {attempts} database attempts"
    );
    assert!(
        (2..=most).contains(&attempts),
        "{attempts} database attempts for {reads} reads in {elapsed:?} (throttle {THROTTLE:?}): \
         one per period, and retried after each"
    );
    let p = &app.stats().await["namespaces"]["product"];
    assert!(
        p["fail_safe_hits"].as_u64().unwrap() >= 1,
        "the first read got the fallback: {p}"
    );
    assert!(
        p["refreshes"].as_u64().unwrap() >= 1,
        "after a throttle period the retry runs in the background: {p}"
    );

    // Never cached: nothing to fall back on, so an immediate 503.
    let started = Instant::now();
    let (status, body) = get(&app, "/products/999").await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].is_string());
    assert!(
        started.elapsed() < HARD_TIMEOUT,
        "a refused query fails at once, took {:?}",
        started.elapsed()
    );

    // Back up: within about a throttle period product 7 is reloaded and
    // shows the price the database has had all along.
    outage.bring_up();
    let recovered = Instant::now();
    wait_until("product 7 to be reloaded from the database", || async {
        let (status, body) = get(&app, "/products/7").await;
        status == 200 && body["price_cents"] == new_price
    })
    .await;
    assert!(
        recovered.elapsed() < THROTTLE + STALE_WHILE_REVALIDATE + Duration::from_secs(2),
        "reloaded {:?} after the database came back",
        recovered.elapsed()
    );
    assert_eq!(get(&app, "/products/999").await.0, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_costs_readers_the_timeouts_at_most() {
    let gate = Gate::new();
    gate.open();
    let app = TestApp::start(Options {
        hook: Some(gate.clone()),
        // No stale-while-revalidate: past its TTL the entry is a fallback,
        // so the reader waits for the load, up to the soft timeout.
        read_policy: ReadPolicy {
            stale_while_revalidate: Duration::ZERO,
            ..short_policy()
        },
        ..Options::default()
    })
    .await;
    let (status, cached) = get(&app, "/products/7").await;
    assert_eq!(status, 200);

    // Every query now hangs until the gate opens.
    gate.close();
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;

    let started = Instant::now();
    let (status, body) = get(&app, "/products/7").await;
    let took = started.elapsed();
    assert_eq!((status, &body), (200, &cached), "the stale value");
    assert!(
        (SOFT_TIMEOUT..HARD_TIMEOUT).contains(&took),
        "served stale at the soft timeout, took {took:?}"
    );

    let started = Instant::now();
    let (status, body) = get(&app, "/products/998").await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(
        (HARD_TIMEOUT..HARD_TIMEOUT + Duration::from_secs(2)).contains(&took),
        "a never-cached product fails at the hard timeout, took {took:?}"
    );
    let p = &app.stats().await["namespaces"]["product"];
    assert!(p["load_timeouts"].as_u64().unwrap() >= 2, "{p}");

    gate.open();
    wait_until("product 998 to load once the database answers", || async {
        get(&app, "/products/998").await.0 == 200
    })
    .await;
    app.stop().await;
}
