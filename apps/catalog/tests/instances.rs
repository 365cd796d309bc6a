//! Catalog processes side by side, as they run in production: two
//! instances on one Redis and one database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Instant;

use cachette_test::{Fixture, RedisCluster, RedisServer, SentinelGroup};
use catalog::bench::Instance;
use catalog::load::HttpClient;
use serde_json::Value;

const PAIRS: usize = 10_000;
const WORKERS: usize = 8;
const PRODUCTS: i64 = 2_000;

/// A SQLite URL in a temporary directory (kept while the guard lives).
fn fresh_sqlite() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("catalog.db").display());
    (dir, db)
}

fn program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_catalog"))
}

fn serve_args(db: &str, redis: Option<&str>, products: i64) -> Vec<String> {
    let mut args: Vec<String> = [
        "serve",
        "--database",
        db,
        "--listen",
        "127.0.0.1:0",
        "--warm",
        "500",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(["--products".to_owned(), products.to_string()]);
    if let Some(redis) = redis {
        args.extend(["--redis".to_owned(), redis.to_owned()]);
    }
    args
}

/// PUT on A, then GET on B at once: B must return exactly what A's PUT
/// returned, and every tenth pair B's category listing must show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_on_one_instance_is_read_on_the_other_with_zero_stale() {
    let redis = RedisServer::spawn();
    put_on_a_read_on_b(&redis.url(), PAIRS, "one Redis").await;
}

/// The same two instances over a three-master Redis Cluster, configured by
/// a `redis+cluster://` URL alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_instances_work_over_redis_cluster() {
    let cluster = RedisCluster::spawn();
    put_on_a_read_on_b(&Fixture::cluster_url(&cluster), PAIRS / 5, "Redis Cluster").await;
}

/// And over a master found through three sentinels (`redis+sentinel://`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_instances_work_over_sentinel() {
    let group = SentinelGroup::spawn();
    put_on_a_read_on_b(&Fixture::sentinel_url(&group), PAIRS / 5, "Sentinel").await;
}

async fn put_on_a_read_on_b(redis_url: &str, pairs: usize, topology: &str) {
    let (_dir, db) = fresh_sqlite();
    let a = Instance::start(program(), &serve_args(&db, Some(redis_url), PRODUCTS))
        .await
        .unwrap();
    let b = Instance::start(program(), &serve_args(&db, Some(redis_url), PRODUCTS))
        .await
        .unwrap();

    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (mut on_a, mut on_b) = (
            HttpClient::new(&a.url()).await.unwrap(),
            HttpClient::new(&b.url()).await.unwrap(),
        );
        workers.push(tokio::spawn(async move {
            let (mut stale_products, mut stale_listings) = (0, 0);
            for i in 0..pairs / WORKERS {
                // Each worker owns the ids congruent to it, so no other
                // worker's PUT can legitimately change what it reads.
                let id = 1 + ((i * 37) as i64 * WORKERS as i64 + w as i64) % PRODUCTS;
                let price = (w * pairs + i) as i64;
                let put = on_a
                    .put_json(
                        &format!("/products/{id}"),
                        format!("{{\"price_cents\":{price}}}"),
                    )
                    .await
                    .unwrap();
                assert_eq!(put.status, 200);
                let written = put.json().unwrap();
                assert_eq!(written["price_cents"], price);
                let read = on_b
                    .get(&format!("/products/{id}"))
                    .await
                    .unwrap()
                    .json()
                    .unwrap();
                if read != written {
                    stale_products += 1;
                }
                if i % 10 == 0 {
                    let category = written["category_id"].as_i64().unwrap();
                    let listing = on_b
                        .get(&format!("/categories/{category}/products?limit=100"))
                        .await
                        .unwrap()
                        .json()
                        .unwrap();
                    let listed = listing.as_array().unwrap().contains(&written);
                    if !listed {
                        stale_listings += 1;
                    }
                }
            }
            (stale_products, stale_listings)
        }));
    }
    let (mut stale_products, mut stale_listings) = (0, 0);
    for worker in workers {
        let (p, l) = worker.await.unwrap();
        stale_products += p;
        stale_listings += l;
    }
    eprintln!(
        "{topology}: {pairs} PUT-on-A / GET-on-B pairs in {:.1} s: {stale_products} stale products, {stale_listings} stale listings",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(stale_products, 0);
    assert_eq!(stale_listings, 0);
    a.stop().await;
    b.stop().await;
}

/// A category's listing, cached on both instances (read twice on each, so
/// B holds it in L1), then a PUT on A of a product of that category: the
/// moment the PUT returns, B's listing shows the new name and price. With
/// L1 (the backplane acknowledges the tag invalidation) and without (B
/// reads the tag's mark from Redis on every page read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_on_one_instance_updates_the_listing_on_the_other() {
    for l1_mb in ["64", "0"] {
        let redis = RedisServer::spawn();
        let (_dir, db) = fresh_sqlite();
        let mut args = serve_args(&db, Some(&redis.url()), PRODUCTS);
        args.extend(["--l1-mb".to_owned(), l1_mb.to_owned()]);
        let a = Instance::start(program(), &args).await.unwrap();
        let b = Instance::start(program(), &args).await.unwrap();
        let (mut on_a, mut on_b) = (
            HttpClient::new(&a.url()).await.unwrap(),
            HttpClient::new(&b.url()).await.unwrap(),
        );
        for round in 0..20_i64 {
            // Category 1 holds products 1, 101, ..., 1901: a page of 100
            // shows all 20, newest first.
            let id = 1 + 100 * (round % 20);
            let page = "/categories/1/products?limit=100";
            for _ in 0..2 {
                for c in [&mut on_a, &mut on_b] {
                    assert_eq!(c.get(page).await.unwrap().status, 200);
                }
            }
            let body = format!("{{\"name\":\"Renamed {round}\",\"price_cents\":{round}}}");
            let put = on_a
                .put_json(&format!("/products/{id}"), body)
                .await
                .unwrap();
            assert_eq!(put.status, 200);
            let written = put.json().unwrap();
            for (instance, c) in [("B", &mut on_b), ("A", &mut on_a)] {
                let listing = c.get(page).await.unwrap().json().unwrap();
                let listing = listing.as_array().unwrap();
                assert_eq!(
                    listing.first(),
                    Some(&written),
                    "l1 {l1_mb} MiB, round {round}: {instance}'s listing is not headed by the update"
                );
                assert_eq!(listing.iter().filter(|p| p["id"] == id).count(), 1);
            }
        }
        let stats: Value = on_b.get("/stats").await.unwrap().json().unwrap();
        let hits = &stats["namespaces"]["listing"];
        assert!(
            hits["hits"].as_u64().unwrap() >= 20,
            "B served the listing from its cache: {hits}"
        );
        a.stop().await;
        b.stop().await;
    }
}

/// Two processes started at the same moment on one empty database: one
/// seeds, the other waits and uses its rows; neither fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_first_starts_on_one_empty_database_seed_once() {
    let (_dir, db) = fresh_sqlite();
    let (args_a, args_b) = (serve_args(&db, None, 3_000), serve_args(&db, None, 5_000));
    let (a, b) = tokio::join!(
        Instance::start(program(), &args_a),
        Instance::start(program(), &args_b),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let count = |h: Value| h["products"].as_i64().unwrap();
    let ha = count(
        HttpClient::new(&a.url())
            .await
            .unwrap()
            .get("/health")
            .await
            .unwrap()
            .json()
            .unwrap(),
    );
    let hb = count(
        HttpClient::new(&b.url())
            .await
            .unwrap()
            .get("/health")
            .await
            .unwrap()
            .json()
            .unwrap(),
    );
    assert_eq!(ha, hb, "both use the one seeded catalog");
    assert!(ha == 3_000 || ha == 5_000);
    let mut c = HttpClient::new(&b.url()).await.unwrap();
    assert_eq!(c.get(&format!("/products/{ha}")).await.unwrap().status, 200);
    assert_eq!(
        c.get(&format!("/products/{}", ha + 1))
            .await
            .unwrap()
            .status,
        404
    );
    a.stop().await;
    b.stop().await;
}

/// The binary's `/metrics` is Prometheus text with the cache's and the
/// service's own series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text() {
    let (_dir, db) = fresh_sqlite();
    let a = Instance::start(program(), &serve_args(&db, None, 1_000))
        .await
        .unwrap();
    let mut c = HttpClient::new(&a.url()).await.unwrap();
    c.get("/products/1").await.unwrap();
    c.get("/products/999").await.unwrap();
    let r = c.get("/metrics").await.unwrap();
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    for series in [
        "cachette_requests_total{namespace=\"product\",result=\"hit\",tier=\"l2\"}",
        "catalog_db_queries_total{query=\"products_between\"}",
        "catalog_http_requests_total{route=\"/products/{id}\",status=\"200\"}",
        "cachette_load_duration_seconds",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    a.stop().await;
}
