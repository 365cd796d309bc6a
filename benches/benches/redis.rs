//! `get` hits and batched writes on the Redis store, against the raw
//! `redis` crate on the same connection.
//!
//! One real `redis-server` (spawned on a free loopback port by
//! `cachette_test::RedisServer`, killed when the benchmark ends) serves
//! every benchmark.
//!
//! * `redis_get_hit/cachette`: `Cache<Product>::get` of a present key on a
//!   [`RedisStore`]: store key, per-command deadline and retry wrapper,
//!   one `GET` round trip, envelope parsing, JSON decode, counters.
//! * `redis_get_hit/raw_get`: a `GET` of the same store key, returning its
//!   bytes, sent with the `redis` crate on **the same** `ConnectionManager`
//!   the store uses (`RedisStore::connection()`). Same socket, same
//!   server, same value bytes on the wire, so the difference is exactly
//!   what cachette adds on the client side; the target is within 10%.
//! * `redis_set_1000/cachette_set_many`: `Cache::set_many` of 1,000
//!   `Product`s — one pipeline, one round trip.
//! * `redis_set_1000/cachette_sequential_set`: the same 1,000 entries by
//!   1,000 awaited `Cache::set` calls — 1,000 round trips. Both encode the
//!   same values and write the same keys (overwriting the previous
//!   iteration's), so the ratio is the value of pipelining.
//!
//! Runtime: current_thread. The connection's driver task then runs on the
//! benchmark thread inside criterion's `block_on`, so a round trip costs
//! the socket I/O plus local polls rather than two cross-thread wake-ups,
//! and the second core is left to redis-server. On the 2-core machine of
//! the README figures, multi-thread runtimes with 1 and 2 workers (set
//! `CACHETTE_BENCH_WORKERS=1` or `2` to try) gave the same medians within
//! run-to-run noise (about ±5%), so the simplest runtime stays the default.

// Benchmark setup: a failure to start Redis or build the fixture should
// abort loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use cachette::Cache;
use cachette::store::{RedisConfig, RedisStore};
use cachette_benches::Product;
use cachette_test::RedisServer;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

const TTL: Duration = Duration::from_secs(3600);
const BATCH: usize = 1_000;

fn runtime() -> tokio::runtime::Runtime {
    match std::env::var("CACHETTE_BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse::<usize>().ok())
    {
        // An escape hatch to compare runtimes; the default is current_thread.
        Some(workers) if workers > 0 => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .expect("tokio runtime"),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime"),
    }
}

fn redis(c: &mut Criterion) {
    let server = RedisServer::spawn();
    let rt = runtime();
    let config = RedisConfig::from_url(&server.url()).expect("redis url");
    let store = rt
        .block_on(RedisStore::connect(config))
        .expect("connect to redis");
    let cache: Cache<Product> = Cache::builder("product")
        .ttl(TTL)
        .store(store.clone())
        .build()
        .expect("cache");
    let conn = store.connection();

    // --- get hit ---
    let product = Product::sample(42);
    rt.block_on(cache.set("42", &product)).expect("set");
    let store_key = cache.store_key("42").expect("store key");
    assert_eq!(
        rt.block_on(cache.get("42")).expect("get"),
        Some(product.clone())
    );
    let raw_len = rt
        .block_on(async {
            let mut conn = conn.clone();
            redis::cmd("GET")
                .arg(&store_key)
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await
        })
        .expect("raw get")
        .map(|bytes| bytes.len());
    assert!(raw_len.is_some(), "raw GET did not find the key");

    let mut group = c.benchmark_group("redis_get_hit");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("cachette", |b| {
        b.to_async(&rt).iter(|| async {
            let value = cache.get(black_box("42")).await;
            debug_assert!(matches!(value, Ok(Some(_))));
            value
        });
    });
    group.bench_function("raw_get", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            let key = black_box(store_key.as_str());
            async move {
                let value = redis::cmd("GET")
                    .arg(key)
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await;
                debug_assert!(matches!(value, Ok(Some(_))));
                value
            }
        });
    });
    group.finish();

    // --- 1,000 writes: one pipeline vs. one round trip each ---
    let entries: Vec<(String, Product)> = (0..BATCH as u64)
        .map(|i| (i.to_string(), Product::sample(i)))
        .collect();
    // Both forms write every entry (checked once, outside the timing).
    let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    rt.block_on(async {
        let all_present = || async {
            let got = cache.get_many(&keys).await.expect("get_many");
            assert!(got.iter().all(Option::is_some), "an entry was not written");
        };
        for (key, value) in &entries {
            cache.set(key, value).await.expect("set");
        }
        all_present().await;
        for key in &keys {
            cache.delete(key).await.expect("delete");
        }
        cache.set_many(&entries).await.expect("set_many");
        all_present().await;
    });

    let mut group = c.benchmark_group("redis_set_1000");
    group
        .throughput(Throughput::Elements(BATCH as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(30)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("cachette_set_many", |b| {
        b.to_async(&rt).iter(|| async {
            cache.set_many(black_box(&entries)).await.expect("set_many");
        });
    });
    group.bench_function("cachette_sequential_set", |b| {
        b.to_async(&rt).iter(|| async {
            for (key, value) in black_box(&entries) {
                cache.set(key, value).await.expect("set");
            }
        });
    });
    group.finish();

    // Every entry of the last iteration is readable.
    let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    let read = rt.block_on(cache.get_many(&keys)).expect("get_many");
    assert!(
        read.iter().all(Option::is_some),
        "a written entry is missing"
    );

    drop(rt);
    drop(server);
}

criterion_group!(benches, redis);
criterion_main!(benches);
