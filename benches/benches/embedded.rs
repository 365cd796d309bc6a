//! `get` hits on the embedded store, against raw moka.
//!
//! What is measured: one `Cache<Product>::get` of a present key on an
//! [`EmbeddedStore`], i.e. everything cachette adds to a lookup: building
//! the namespaced store key, the `Store` trait call (a boxed future), the
//! moka lookup, envelope parsing, the JSON decode of the value and the
//! hit/miss counters.
//!
//! Why the baseline is fair: `raw_moka` is what an application would write
//! without cachette — a `moka::sync::Cache<String, Product>` (the same moka
//! cache type the embedded store is built on, also with a TTL and a
//! capacity) holding the same `Product`, and a `get` that hands the caller
//! an owned `Product` exactly like cachette's `get` does (moka clones the
//! value out). Both return the same owned value, so the ratio is
//! cachette's total cost per hit. `raw_moka_bytes_json` is a breakdown,
//! not a baseline: moka holding the value's JSON bytes and decoding them
//! on each get, which shows how much of the ratio is JSON decoding (the
//! price of storing bytes, which is what makes one `Store` trait serve both
//! the embedded store and Redis) rather than cachette's own bookkeeping.
//!
//! Runtime: `Cache::get` is async, but on the embedded store its future
//! never waits. Criterion's `to_async` on a *current_thread* runtime runs
//! the whole timed batch inside one `block_on`, so each iteration costs one
//! poll of the future and nothing else — no cross-thread wake-up, no task
//! spawn — and the figure is the cache's, not the runtime's.

// Benchmark setup: a failure to build the fixture should abort loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use cachette::Cache;
use cachette::store::EmbeddedStore;
use cachette_benches::Product;
use criterion::{Criterion, criterion_group, criterion_main};

const TTL: Duration = Duration::from_secs(3600);
const CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

fn get_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let product = Product::sample(42);

    let cache: Cache<Product> = Cache::builder("product")
        .ttl(TTL)
        .store(EmbeddedStore::new(CAPACITY_BYTES))
        .build()
        .expect("cache");
    rt.block_on(cache.set("42", &product)).expect("set");
    assert_eq!(
        rt.block_on(cache.get("42")).expect("get"),
        Some(product.clone())
    );
    let store_key = cache.store_key("42").expect("store key");

    let raw: moka::sync::Cache<String, Product> = moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(TTL)
        .build();
    raw.insert(store_key.clone(), product.clone());
    assert_eq!(raw.get(&store_key), Some(product.clone()));

    let raw_bytes: moka::sync::Cache<String, Bytes> = moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(TTL)
        .build();
    raw_bytes.insert(
        store_key.clone(),
        Bytes::from(serde_json::to_vec(&product).expect("json")),
    );

    let mut group = c.benchmark_group("embedded_get_hit");
    group.measurement_time(Duration::from_secs(5));

    group.bench_function("cachette", |b| {
        b.to_async(&rt).iter(|| async {
            let value = cache.get(black_box("42")).await;
            debug_assert!(matches!(value, Ok(Some(_))));
            value
        });
    });

    group.bench_function("raw_moka", |b| {
        b.iter(|| {
            let value = raw.get(black_box(store_key.as_str()));
            debug_assert!(value.is_some());
            value
        });
    });

    group.bench_function("raw_moka_bytes_json", |b| {
        b.iter(|| {
            raw_bytes
                .get(black_box(store_key.as_str()))
                .map(|bytes| serde_json::from_slice::<Product>(&bytes).expect("decode"))
        });
    });

    group.finish();
}

criterion_group!(benches, get_hit);
criterion_main!(benches);
