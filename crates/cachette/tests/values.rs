//! The typed API: what counts as a hit, batch calls, size and key limits,
//! serialization failures, schema versions, negative caching.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use cachette::{BuildError, Cache, Error, Value};
use cachette_test::{Fixture, for_each_store};

fn cache<V: Value>(f: &Fixture, namespace: &str) -> Cache<V> {
    Cache::builder(namespace)
        .ttl(Duration::from_secs(60))
        .shared_store(f.store.clone())
        .build()
        .unwrap()
}

for_each_store!(
    empty_zero_false_and_null_are_hits,
    get_many_and_set_many_round_trip_in_order,
    an_oversized_value_is_refused_and_nothing_is_written,
    one_oversized_value_in_set_many_writes_nothing,
    long_keys_are_hashed_and_still_found,
    a_serialization_failure_is_an_error_not_a_miss,
    schema_versions_do_not_see_each_other,
    not_found_is_cached_only_with_a_negative_ttl,
    stats_count_hits_misses_and_loads,
);

async fn empty_zero_false_and_null_are_hits(f: Fixture) {
    let strings: Cache<String> = cache(&f, "s");
    strings.set("k", &String::new()).await.unwrap();
    assert_eq!(strings.get("k").await.unwrap(), Some(String::new()));
    let numbers: Cache<i64> = cache(&f, "n");
    numbers.set("k", &0).await.unwrap();
    assert_eq!(numbers.get("k").await.unwrap(), Some(0));
    let flags: Cache<bool> = cache(&f, "b");
    flags.set("k", &false).await.unwrap();
    assert_eq!(flags.get("k").await.unwrap(), Some(false));
    let nulls: Cache<Option<u32>> = cache(&f, "o");
    nulls.set("k", &None).await.unwrap();
    assert_eq!(
        nulls.get("k").await.unwrap(),
        Some(None),
        "a stored null is a hit"
    );

    // And get_or_load does not reload them.
    let loaded = numbers
        .get_or_load("k", || async { Ok::<_, std::io::Error>(99) })
        .await
        .unwrap();
    assert_eq!(loaded, 0);
    assert_eq!(numbers.stats().loads, 0);
    for stats in [
        strings.stats(),
        numbers.stats(),
        flags.stats(),
        nulls.stats(),
    ] {
        assert_eq!(stats.misses, 0, "{stats:?}");
    }
}

async fn get_many_and_set_many_round_trip_in_order(f: Fixture) {
    let c: Cache<u32> = cache(&f, "batch");
    let entries: Vec<(String, u32)> = (0..1000).map(|i| (format!("k{i}"), i)).collect();
    c.set_many(&entries).await.unwrap();
    let keys = ["k7", "missing", "k0", "k999"];
    assert_eq!(
        c.get_many(&keys).await.unwrap(),
        vec![Some(7), None, Some(0), Some(999)]
    );
    let all: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    let values = c.get_many(&all).await.unwrap();
    assert!(values.iter().enumerate().all(|(i, v)| *v == Some(i as u32)));
    assert!(c.get_many::<&str>(&[]).await.unwrap().is_empty());
}

async fn an_oversized_value_is_refused_and_nothing_is_written(f: Fixture) {
    let c: Cache<String> = Cache::builder("big")
        .max_value_bytes(1024)
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    c.set("k", &"small".to_string()).await.unwrap();
    let err = c.set("k", &"x".repeat(2000)).await.unwrap_err();
    match &err {
        Error::ValueTooLarge { size, max, .. } => {
            assert!(*size > 2000);
            assert_eq!(*max, 1024);
        }
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    assert!(err.to_string().contains("nothing was written"), "{err}");
    assert_eq!(c.get("k").await.unwrap().as_deref(), Some("small"));
    // A loaded value that is too large is still returned, just not cached.
    let v = c
        .get_or_load("other", || async {
            Ok::<_, std::io::Error>("y".repeat(2000))
        })
        .await
        .unwrap();
    assert_eq!(v.len(), 2000);
    assert_eq!(c.get("other").await.unwrap(), None);
}

async fn one_oversized_value_in_set_many_writes_nothing(f: Fixture) {
    let c: Cache<String> = Cache::builder("big")
        .max_value_bytes(1024)
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    let entries = vec![
        ("a".to_string(), "fine".to_string()),
        ("b".to_string(), "x".repeat(5000)),
        ("c".to_string(), "fine".to_string()),
    ];
    assert!(matches!(
        c.set_many(&entries).await,
        Err(Error::ValueTooLarge { .. })
    ));
    assert_eq!(
        c.get_many(&["a", "b", "c"]).await.unwrap(),
        vec![None, None, None]
    );
}

async fn long_keys_are_hashed_and_still_found(f: Fixture) {
    let c: Cache<u8> = cache(&f, "keys");
    let long = "k".repeat(5000);
    c.set(&long, &1).await.unwrap();
    assert_eq!(c.get(&long).await.unwrap(), Some(1));
    let stored = c.store_key(&long).unwrap();
    assert!(stored.len() < 100, "{stored}");
    assert!(stored.starts_with("keys:v1:{#"), "{stored}");
    // Another long key does not collide with it.
    assert_eq!(c.get(&"j".repeat(5000)).await.unwrap(), None);
    assert!(matches!(c.get("").await, Err(Error::InvalidKey { .. })));
}

async fn a_serialization_failure_is_an_error_not_a_miss(f: Fixture) {
    // JSON maps need string keys: this value cannot be serialized.
    let c: Cache<HashMap<Vec<u8>, u8>> = cache(&f, "ser");
    let value = HashMap::from([(vec![1u8], 1u8)]);
    assert!(matches!(
        c.set("k", &value).await,
        Err(Error::Serialize { .. })
    ));
    assert_eq!(c.get("k").await.unwrap(), None);
}

async fn schema_versions_do_not_see_each_other(f: Fixture) {
    let v1: Cache<String> = Cache::builder("user")
        .schema_version(1)
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    let v2: Cache<u64> = Cache::builder("user")
        .schema_version(2)
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    v1.set("42", &"Ada".to_string()).await.unwrap();
    assert_eq!(v2.get("42").await.unwrap(), None);
    assert_eq!(v1.store_key("42").unwrap(), "user:v1:{42}");
    assert_eq!(v2.store_key("42").unwrap(), "user:v2:{42}");
}

async fn not_found_is_cached_only_with_a_negative_ttl(f: Fixture) {
    let plain: Cache<String> = cache(&f, "plain");
    let negative: Cache<String> = Cache::builder("neg")
        .negative_ttl(Duration::from_secs(30))
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    for _ in 0..3 {
        let a = plain
            .get_or_load_optional("gone", || async {
                Ok::<Option<String>, std::io::Error>(None)
            })
            .await
            .unwrap();
        let b = negative
            .get_or_load_optional("gone", || async {
                Ok::<Option<String>, std::io::Error>(None)
            })
            .await
            .unwrap();
        assert_eq!((a, b), (None, None));
    }
    assert_eq!(plain.stats().loads, 3);
    assert_eq!(negative.stats().loads, 1, "the negative entry was not used");
    // For a plain get_or_load the negative entry is a miss, counted as one,
    // and the value is loaded.
    let before = negative.stats();
    let v = negative
        .get_or_load("gone", || async {
            Ok::<_, std::io::Error>("now here".to_string())
        })
        .await
        .unwrap();
    assert_eq!(v, "now here");
    let after = negative.stats();
    assert_eq!((after.hits, after.misses), (before.hits, before.misses + 1));
    negative.delete("gone").await.unwrap();
    // A write replaces the negative entry at once.
    negative.set("gone", &"created".to_string()).await.unwrap();
    assert_eq!(
        negative.get("gone").await.unwrap().as_deref(),
        Some("created")
    );
}

async fn stats_count_hits_misses_and_loads(f: Fixture) {
    let c: Cache<u32> = cache(&f, "stats");
    for _ in 0..3 {
        c.get_or_load("k", || async { Ok::<_, std::io::Error>(1) })
            .await
            .unwrap();
    }
    c.get("absent").await.unwrap();
    let s = c.stats();
    assert_eq!((s.hits, s.misses, s.loads, s.load_errors), (2, 2, 1, 0));
    assert!((s.hit_rate() - 0.5).abs() < 1e-9);
    assert_eq!(s.namespace, "stats");
}

#[test]
fn configuration_mistakes_come_back_from_build() {
    let bad_ns = Cache::<u8>::builder("has:colon").build();
    assert!(matches!(bad_ns, Err(BuildError::InvalidName { .. })));
    let zero_ttl = Cache::<u8>::builder("ok").ttl(Duration::ZERO).build();
    assert!(matches!(zero_ttl, Err(BuildError::InvalidTtl { .. })));
    let jitter = Cache::<u8>::builder("ok").ttl_jitter(1.5).build();
    assert!(matches!(jitter, Err(BuildError::OutOfRange { .. })));
    let tiny = Cache::<u8>::builder("ok").max_value_bytes(10).build();
    assert!(matches!(tiny, Err(BuildError::OutOfRange { .. })));
}

#[tokio::test]
async fn there_is_no_way_to_store_without_a_ttl() {
    let c: Cache<u8> = Cache::builder("ttl").build().unwrap();
    assert!(matches!(
        c.set_for("k", &1, Duration::ZERO).await,
        Err(Error::InvalidTtl { .. })
    ));
    assert_eq!(c.get("k").await.unwrap(), None);
}

#[tokio::test]
async fn counters_reach_the_metrics_facade() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Handles are registered at build time, so build under the recorder.
    let c: Cache<u8> =
        metrics::with_local_recorder(&recorder, || Cache::builder("metered").build().unwrap());
    c.get_or_load("k", || async { Ok::<_, std::io::Error>(1) })
        .await
        .unwrap();
    c.get("k").await.unwrap();
    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str, result: Option<&str>| {
        // Summed over the series that match (hits come in two tiers).
        snapshot
            .iter()
            .filter(|(key, _, _, _)| {
                let k = key.key();
                k.name() == name
                    && k.labels()
                        .any(|l| l.key() == "namespace" && l.value() == "metered")
                    && result
                        .is_none_or(|r| k.labels().any(|l| l.key() == "result" && l.value() == r))
            })
            .map(|(_, _, _, value)| match value {
                DebugValue::Counter(n) => *n,
                _ => u64::MAX,
            })
            .reduce(|a, b| a + b)
    };
    assert_eq!(counter("cachette_requests_total", Some("hit")), Some(1));
    assert_eq!(counter("cachette_requests_total", Some("miss")), Some(1));
    assert_eq!(counter("cachette_loads_total", None), Some(1));
}
