//! L1 hits against a raw moka `get` of the same `Arc`.
//!
//! What is measured: `Cache<Product>::get_shared` of a key whose copy is in
//! the L1 tier (over the embedded store; the store is never reached on an
//! L1 hit, so over Redis the figure is the same): the namespaced key, the
//! moka lookup, an `Arc` clone and the hit counters.
//!
//! The baseline is what an application would write for an in-process
//! cache of shared values: a `moka::sync::Cache<String, Arc<Product>>`
//! with a TTL and a capacity, `get` handing out an `Arc` clone. Same value,
//! same ownership, so the ratio is the tier's whole cost per hit. As in the
//! embedded-store benchmark, the async call runs in one `block_on` on a
//! current-thread runtime, so no wake-ups are measured.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use cachette::Cache;
use cachette::store::EmbeddedStore;
use cachette_benches::Product;
use criterion::{Criterion, criterion_group, criterion_main};

const TTL: Duration = Duration::from_secs(3600);

fn l1_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let product = Product::sample(42);
    let cache: Cache<Product> = Cache::builder("product")
        .ttl(TTL)
        .l1(64 * 1024 * 1024)
        .l1_ttl(TTL)
        .store(EmbeddedStore::new(64 * 1024 * 1024))
        .build()
        .expect("cache");
    rt.block_on(cache.set("42", &product)).expect("set");
    assert_eq!(
        rt.block_on(cache.get_shared("42")).expect("get").as_deref(),
        Some(&product)
    );
    assert_eq!(cache.stats().l1_hits, 1, "the benchmark measures L1 hits");
    let store_key = cache.store_key("42").expect("store key");

    let raw: moka::sync::Cache<String, Arc<Product>> = moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(TTL)
        .build();
    raw.insert(store_key.clone(), Arc::new(product));

    let mut group = c.benchmark_group("l1_get_hit");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("cachette_l1", |b| {
        b.to_async(&rt).iter(|| async {
            let value = cache.get_shared(black_box("42")).await;
            debug_assert!(matches!(value, Ok(Some(_))));
            value
        });
    });
    group.bench_function("raw_moka_arc", |b| {
        b.iter(|| raw.get(black_box(store_key.as_str())));
    });
    group.finish();
}

criterion_group!(benches, l1_hit);
criterion_main!(benches);
