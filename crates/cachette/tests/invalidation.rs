//! Invalidating many entries at once: tags (remove and expire), namespace
//! clears with their background cleanup, and pattern invalidation. Every
//! test runs on both stores; the Redis ones also prove (at drop of the
//! server) that no `KEYS` command was sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cachette::{Cache, Tagged, escape_glob};
use cachette_test::{Fixture, for_each_store};
use futures_util::StreamExt;
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(20);

fn cache(f: &Fixture, namespace: &str) -> Cache<String> {
    Cache::builder(namespace)
        .shared_store(f.store.clone())
        .ttl(Duration::from_secs(600))
        .build()
        .unwrap()
}

fn s(v: &str) -> String {
    v.to_owned()
}

async fn a_removed_tag_takes_every_entry_carrying_it_and_nothing_else(f: Fixture) {
    let c = cache(&f, "tags");
    c.set_tagged("a", &s("1"), &["red", "big"]).await.unwrap();
    c.set_tagged("b", &s("2"), &["red"]).await.unwrap();
    c.set_tagged("c", &s("3"), &["big"]).await.unwrap();
    c.set("d", &s("4")).await.unwrap();
    c.invalidate_tag("red").await.unwrap();
    assert_eq!(c.get("a").await.unwrap(), None);
    assert_eq!(c.get("b").await.unwrap(), None);
    assert_eq!(c.get("c").await.unwrap(), Some(s("3")));
    assert_eq!(c.get("d").await.unwrap(), Some(s("4")));
    assert_eq!(
        c.get_many(&["a", "b", "c", "d"]).await.unwrap(),
        [None, None, Some(s("3")), Some(s("4"))]
    );
    // Written after the invalidation: carries the tag, and is served.
    c.set_tagged("a", &s("1b"), &["red"]).await.unwrap();
    assert_eq!(c.get("a").await.unwrap(), Some(s("1b")));
    // A loader-decided tag, then its invalidation: the next call reloads.
    let loads = Arc::new(AtomicUsize::new(0));
    for expected_loads in [1, 1, 2] {
        if expected_loads == 2 {
            c.invalidate_tag("from-loader").await.unwrap();
        }
        let l = loads.clone();
        let v = c
            .get_or_load_tagged("e", move || async move {
                l.fetch_add(1, SeqCst);
                Ok::<_, std::io::Error>(Tagged::new(s("5")).tag("from-loader"))
            })
            .await
            .unwrap();
        assert_eq!(v, "5");
        assert_eq!(loads.load(SeqCst), expected_loads);
    }
    // Bad tags are refused, and nothing is written.
    assert!(c.set_tagged("x", &s("x"), &[""]).await.is_err());
    assert!(
        c.set_tagged("x", &s("x"), &["t".repeat(129)])
            .await
            .is_err()
    );
    assert!(c.invalidate_tag("").await.is_err());
    assert_eq!(c.get("x").await.unwrap(), None);
}

async fn an_expired_tag_leaves_its_entries_only_as_the_fail_safe_fallback(f: Fixture) {
    let c: Cache<String> = Cache::builder("expiring")
        .shared_store(f.store.clone())
        .ttl(Duration::from_secs(600))
        .fail_safe(Duration::from_secs(600))
        .build()
        .unwrap();
    c.set_tagged("k", &s("old"), &["t"]).await.unwrap();
    c.expire_tag("t").await.unwrap();
    assert_eq!(c.get("k").await.unwrap(), None, "not served as fresh");
    let failing = || async { Err::<String, _>(std::io::Error::other("source down")) };
    assert_eq!(
        c.get_or_load("k", failing).await.unwrap(),
        "old",
        "the fail-safe fallback"
    );
    // Once the source answers, its value replaces the expired one.
    let c2: Cache<String> = Cache::builder("expiring")
        .shared_store(f.store.clone())
        .fail_safe(Duration::from_secs(600))
        .build()
        .unwrap();
    c2.set_tagged("j", &s("old"), &["u"]).await.unwrap();
    c2.expire_tag("u").await.unwrap();
    let v = c2
        .get_or_load("j", || async { Ok::<_, std::io::Error>(s("new")) })
        .await
        .unwrap();
    assert_eq!(v, "new");
    // Removal is stronger: not even a fallback.
    c.invalidate_tag("t").await.unwrap();
    assert!(c.get_or_load("k", failing).await.is_err());
}

/// The stale-set race, tag edition: a load reads the source, the tag is
/// invalidated, then the load stores its (older) value. The value is
/// served to the load's own callers, but never from the cache.
async fn a_load_that_read_before_an_invalidation_never_serves_from_the_cache(f: Fixture) {
    let c = cache(&f, "race");
    let read_source = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (r, go) = (read_source.clone(), release.clone());
    let load = tokio::spawn({
        let c = c.clone();
        async move {
            c.get_or_load_tagged("k", move || async move {
                let value = s("before");
                r.notify_one();
                go.notified().await;
                Ok::<_, std::io::Error>(Tagged::new(value).tag("t"))
            })
            .await
        }
    });
    tokio::time::timeout(WAIT, read_source.notified())
        .await
        .unwrap();
    c.invalidate_tag("t").await.unwrap();
    release.notify_one();
    assert_eq!(
        tokio::time::timeout(WAIT, load)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        "before"
    );
    assert_eq!(
        c.get("k").await.unwrap(),
        None,
        "the pre-invalidation value was served"
    );
}

async fn an_l1_copy_respects_a_tag_invalidated_through_another_cache(f: Fixture) {
    // Without a backplane, another cache's invalidation is seen within the
    // mark poll period (across processes the backplane makes it immediate:
    // tests/coherence.rs); with a zero period, at once.
    let poll = Duration::from_millis(30);
    let reader: Cache<String> = Cache::builder("l1tags")
        .shared_store(f.store.clone())
        .l1(1 << 20)
        .mark_poll(poll)
        .build()
        .unwrap();
    let strict: Cache<String> = Cache::builder("l1tags")
        .shared_store(f.store.clone())
        .l1(1 << 20)
        .mark_poll(Duration::ZERO)
        .build()
        .unwrap();
    let writer = cache(&f, "l1tags");
    writer.set_tagged("k", &s("v"), &["t"]).await.unwrap();
    for c in [&reader, &strict] {
        assert_eq!(c.get("k").await.unwrap(), Some(s("v")));
        assert_eq!(c.get("k").await.unwrap(), Some(s("v")));
    }
    assert!(reader.stats().l1_hits >= 1, "the copy is in L1");
    writer.invalidate_tag("t").await.unwrap();
    assert_eq!(
        strict.get("k").await.unwrap(),
        None,
        "zero poll: seen at once"
    );
    // The poll period is the mechanism under test here: wait it out.
    tokio::time::sleep(poll * 2).await;
    assert_eq!(
        reader.get("k").await.unwrap(),
        None,
        "seen after one poll period"
    );
}

async fn a_namespace_clear_voids_everything_at_once_and_sweeps_in_the_background(f: Fixture) {
    let c = cache(&f, "cleared");
    let other = cache(&f, "kept");
    let keys: Vec<String> = (0..2_500).map(|i| format!("k{i}")).collect();
    let entries: Vec<(String, String)> = keys.iter().map(|k| (k.clone(), k.clone())).collect();
    c.set_many(&entries).await.unwrap();
    other.set("k0", &s("stays")).await.unwrap();
    let sweep = c.clear().await.unwrap();
    let after = c.get_many(&keys).await.unwrap();
    assert!(
        after.iter().all(Option::is_none),
        "an entry survived the clear"
    );
    // A write after the clear is served, and the sweep leaves it alone.
    tokio::time::sleep(Duration::from_millis(2)).await;
    c.set("new", &s("after")).await.unwrap();
    let deleted = tokio::time::timeout(WAIT, sweep.finished())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deleted, 2_500, "the sweep deletes exactly the orphans");
    f.settle();
    for key in &keys[..10] {
        let skey = c.store_key(key).unwrap();
        assert!(
            f.store.get(&skey).await.unwrap().is_none(),
            "{skey} still stored"
        );
    }
    assert_eq!(c.get("new").await.unwrap(), Some(s("after")));
    assert_eq!(other.get("k0").await.unwrap(), Some(s("stays")));
}

async fn pattern_invalidation_matches_keys_and_escaped_input_only_itself(f: Fixture) {
    let c = cache(&f, "pattern");
    let other = cache(&f, "pattern2");
    for key in ["user:1", "user:2", "user:*", "order:1", "a*", "ab"] {
        c.set(key, &s(key)).await.unwrap();
    }
    other.set("user:1", &s("other namespace")).await.unwrap();
    assert_eq!(c.invalidate_matching(&escape_glob("a*")).await.unwrap(), 1);
    assert_eq!(c.get("a*").await.unwrap(), None);
    assert_eq!(c.get("ab").await.unwrap(), Some(s("ab")));
    assert_eq!(c.invalidate_matching("user:*").await.unwrap(), 3);
    for key in ["user:1", "user:2", "user:*"] {
        assert_eq!(c.get(key).await.unwrap(), None);
    }
    assert_eq!(c.get("order:1").await.unwrap(), Some(s("order:1")));
    assert_eq!(
        other.get("user:1").await.unwrap(),
        Some(s("other namespace"))
    );
    assert!(c.invalidate_matching("").await.is_err());
}

async fn a_pattern_invalidation_during_a_load_keeps_its_value_out(f: Fixture) {
    let c = cache(&f, "patrace");
    let read_source = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (r, go) = (read_source.clone(), release.clone());
    let load = tokio::spawn({
        let c = c.clone();
        async move {
            c.get_or_load("user:9", move || async move {
                r.notify_one();
                go.notified().await;
                Ok::<_, std::io::Error>(s("before"))
            })
            .await
        }
    });
    tokio::time::timeout(WAIT, read_source.notified())
        .await
        .unwrap();
    c.invalidate_matching("user:*").await.unwrap();
    release.notify_one();
    tokio::time::timeout(WAIT, load)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        c.get("user:9").await.unwrap(),
        None,
        "the fill outlived the invalidation"
    );
}

for_each_store!(
    cluster:
    a_removed_tag_takes_every_entry_carrying_it_and_nothing_else,
    an_expired_tag_leaves_its_entries_only_as_the_fail_safe_fallback,
    a_load_that_read_before_an_invalidation_never_serves_from_the_cache,
    an_l1_copy_respects_a_tag_invalidated_through_another_cache,
    a_namespace_clear_voids_everything_at_once_and_sweeps_in_the_background,
    pattern_invalidation_matches_keys_and_escaped_input_only_itself,
    a_pattern_invalidation_during_a_load_keeps_its_value_out,
);

/// Entries tagged for the flat-time figure: 1,000 and this many (the
/// README's figure uses 1,000,000 in a release build).
fn large() -> usize {
    std::env::var("CACHETTE_TAG_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            20_000
        } else {
            1_000_000
        })
}

/// Writes `n` entries carrying `tag`, 512 writes in flight at a time.
async fn fill_tagged(c: &Cache<String>, prefix: &str, tag: &str, n: usize) {
    futures_util::stream::iter(0..n)
        .map(|i| {
            let c = c.clone();
            let tag = tag.to_owned();
            let key = format!("{prefix}{i}");
            async move { c.set_tagged(&key, &key, &[tag]).await.unwrap() }
        })
        .buffer_unordered(512)
        .collect::<Vec<()>>()
        .await;
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

/// Tag invalidation costs one small write whatever the number of entries
/// carrying the tag; deleting the same entries by pattern (the baseline)
/// walks them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_invalidation_time_is_flat_from_a_thousand_to_a_million_entries() {
    let mut f = Fixture::redis().await;
    let c = cache(&f, "flat");
    let mut report = Vec::new();
    for (n, tag) in [(1_000, "small"), (large(), "large")] {
        fill_tagged(&c, tag, tag, n).await;
        let mut times = Vec::new();
        for _ in 0..21 {
            let t = Instant::now();
            c.invalidate_tag(tag).await.unwrap();
            times.push(t.elapsed());
        }
        let sample: Vec<String> = (0..n)
            .step_by(n / 100)
            .map(|i| format!("{tag}{i}"))
            .collect();
        assert!(
            c.get_many(&sample)
                .await
                .unwrap()
                .iter()
                .all(Option::is_none),
            "an entry outlived its tag"
        );
        let t = Instant::now();
        let deleted = c.invalidate_matching(&format!("{tag}*")).await.unwrap();
        let by_pattern = t.elapsed();
        assert_eq!(deleted as usize, n);
        report.push((n, median(times), by_pattern));
    }
    for (n, tag, pattern) in &report {
        println!(
            "tag invalidation over {n} tagged entries: median {:.0} µs (deleting them by pattern: {:.1} ms)",
            tag.as_secs_f64() * 1e6,
            pattern.as_secs_f64() * 1e3
        );
    }
    let (small, large) = (report[0].1, report[1].1);
    assert!(
        large <= small * 3 + Duration::from_millis(1),
        "tag invalidation grew with the entries: {small:?} at 1,000, {large:?} at {}",
        report[1].0
    );
    assert_eq!(f.server().calls("keys"), Some(0));
}
