//! 1,000 concurrent GETs of one cold product reach the database once.
//!
//! Every database query is held at a gate until all 1,000 requests have
//! missed the cache (the product namespace's miss counter in `/stats` says
//! so), so they are provably in flight together. The same burst against a
//! `--no-cache` catalog reaches the database 1,000 times: that is what the
//! single flight removes, and what this test would see without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use cachette_test::RedisServer;
use catalog::read_policy::ReadPolicy;
use common::{Gate, Options, TestApp, wait_until};

const CALLERS: usize = 1_000;
const PRODUCT: &str = "/products/321";

/// Fires the burst with the gate shut, waits until `in_flight` says all
/// callers are waiting, opens the gate, and returns the database queries it
/// caused.
async fn burst(app: &TestApp, gate: &Gate, in_flight: impl AsyncFn(&TestApp) -> bool) -> u64 {
    let before = app.db_queries().await;
    gate.close();
    let mut callers = Vec::with_capacity(CALLERS);
    for _ in 0..CALLERS {
        let mut client = app.client().await;
        callers.push(tokio::spawn(
            async move { client.get(PRODUCT).await.unwrap() },
        ));
    }
    wait_until("every caller to be waiting on the database", || {
        in_flight(app)
    })
    .await;
    gate.open();
    let mut bodies = Vec::with_capacity(CALLERS);
    for caller in callers {
        let r = tokio::time::timeout(common::WAIT, caller)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 200);
        bodies.push(r.body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every caller got the same product"
    );
    app.db_queries().await - before
}

async fn misses(app: &TestApp) -> u64 {
    app.stats().await["namespaces"]["product"]["misses"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cold_gets_make_one_database_query() {
    let redis = RedisServer::spawn();
    for redis_url in [None, Some(redis.url())] {
        let gate = Gate::new();
        gate.open();
        let app = TestApp::start(Options {
            redis_url: redis_url.clone(),
            hook: Some(gate.clone() as Arc<dyn catalog::db::QueryHook>),
            // The gate holds the query for as long as the burst takes to
            // assemble, on purpose: no hard timeout may give up on it.
            read_policy: ReadPolicy {
                hard_timeout: None,
                ..ReadPolicy::production()
            },
            ..Options::default()
        })
        .await;
        let queries = burst(&app, &gate, async |app| misses(app).await == CALLERS as u64).await;
        assert_eq!(
            queries, 1,
            "store {redis_url:?}: {CALLERS} concurrent GETs, one query"
        );
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cache_the_same_burst_reaches_the_database_every_time() {
    let gate = Gate::new();
    gate.open();
    let app = TestApp::start(Options {
        no_cache: true,
        hook: Some(gate.clone() as Arc<dyn catalog::db::QueryHook>),
        ..Options::default()
    })
    .await;
    let arrived_before = gate.arrived();
    let g = gate.clone();
    let queries = burst(&app, &gate, async move |_| {
        // `/stats` itself is a query-free endpoint; the gate counts arrivals.
        g.arrived() - arrived_before == CALLERS
    })
    .await;
    assert_eq!(queries, CALLERS as u64);
    app.stop().await;
}
