//! Batch loads and warming: one store read and one loader call for many
//! keys, single flight shared with `get_or_load`, fills under leases, and
//! warming with a hard bound on loader concurrency.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cachette::{Cache, WarmOptions};
use cachette_test::{Fixture, for_each_store};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(30);

fn cache(f: &Fixture, namespace: &str) -> Cache<u64> {
    Cache::builder(namespace)
        .shared_store(f.store.clone())
        .ttl(Duration::from_secs(600))
        .build()
        .unwrap()
}

fn squares(keys: &[String]) -> HashMap<String, u64> {
    keys.iter()
        .map(|k| (k.clone(), k.parse::<u64>().unwrap().pow(2)))
        .collect()
}

/// Counts loader calls and the keys they were asked for.
#[derive(Clone, Default)]
struct Source {
    calls: Arc<AtomicUsize>,
    keys: Arc<AtomicUsize>,
}

impl Source {
    fn loader(
        &self,
    ) -> impl Fn(Vec<String>) -> std::future::Ready<Result<HashMap<String, u64>, std::io::Error>>
    + Send
    + Sync
    + 'static {
        let me = self.clone();
        move |keys: Vec<String>| {
            me.calls.fetch_add(1, SeqCst);
            me.keys.fetch_add(keys.len(), SeqCst);
            std::future::ready(Ok(squares(&keys)))
        }
    }
}

async fn a_thousand_keys_with_thirty_percent_missing_cost_one_read_and_one_load(mut f: Fixture) {
    let c = cache(&f, "many");
    let keys: Vec<String> = (0..1_000).map(|i| i.to_string()).collect();
    let present: Vec<(String, u64)> = keys
        .iter()
        .filter(|k| k.parse::<u64>().unwrap() % 10 >= 3)
        .map(|k| (k.clone(), k.parse::<u64>().unwrap().pow(2)))
        .collect();
    assert_eq!(present.len(), 700);
    c.set_many(&present).await.unwrap();
    // The namespace's invalidation mark is fetched once per poll period;
    // fetch it now so the count below is the batch's alone.
    assert_eq!(c.get("3").await.unwrap(), Some(9));
    if let Some(server) = f.server.as_mut() {
        server.reset_stats();
    }
    let source = Source::default();
    let values = c.get_or_load_many(&keys, source.loader()).await.unwrap();
    assert_eq!(values.len(), 1_000);
    assert!(
        keys.iter()
            .all(|k| values[k] == k.parse::<u64>().unwrap().pow(2))
    );
    assert_eq!(source.calls.load(SeqCst), 1, "one loader call");
    assert_eq!(source.keys.load(SeqCst), 300, "for the missing keys only");
    if let Some(server) = f.server.as_mut() {
        assert_eq!(server.calls("mget"), Some(1), "one MGET");
        assert_eq!(server.calls("keys"), Some(0));
        println!("get_or_load_many of 1,000 keys, 300 missing: 1 MGET, 1 loader call");
    }
    // All cached now: the next batch loads nothing.
    let values = c.get_or_load_many(&keys, source.loader()).await.unwrap();
    assert_eq!(values.len(), 1_000);
    assert_eq!(source.calls.load(SeqCst), 1);
    assert_eq!(c.stats().loads, 1);
}

async fn a_loader_may_answer_part_of_a_batch(f: Fixture) {
    let c = cache(&f, "partial");
    let keys = ["1", "2", "3", "4"];
    let values = c
        .get_or_load_many(&keys, |keys: Vec<String>| async move {
            let mut found = squares(&keys);
            found.remove("2");
            found.remove("4");
            Ok::<_, std::io::Error>(found)
        })
        .await
        .unwrap();
    assert_eq!(values.len(), 2);
    assert_eq!((values["1"], values["3"]), (1, 9));
    // Failures are reported, and what was loaded stays cached.
    let failing =
        |_: Vec<String>| async { Err::<HashMap<String, u64>, _>(std::io::Error::other("down")) };
    assert!(c.get_or_load_many(&["5"], failing).await.is_err());
    assert_eq!(c.get("3").await.unwrap(), Some(9));
    assert!(
        c.get_or_load_many(&[""], failing).await.is_err(),
        "an empty key is refused"
    );
}

/// A `get_or_load` in flight and a batch asking for the same key: the key
/// is loaded once, by the first, and the batch loads only the others; the
/// other way round, a `get_or_load` joins the batch's flight.
async fn batches_share_single_flight_with_get_or_load(f: Fixture) {
    let c = cache(&f, "shared");
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let single_loads = Arc::new(AtomicUsize::new(0));
    let first = tokio::spawn({
        let (c, entered, release, n) = (
            c.clone(),
            entered.clone(),
            release.clone(),
            single_loads.clone(),
        );
        async move {
            c.get_or_load("7", move || async move {
                n.fetch_add(1, SeqCst);
                entered.notify_one();
                release.notified().await;
                Ok::<_, std::io::Error>(49)
            })
            .await
        }
    });
    tokio::time::timeout(WAIT, entered.notified())
        .await
        .unwrap();
    let source = Source::default();
    let batch = tokio::spawn({
        let (c, loader) = (c.clone(), source.loader());
        async move { c.get_or_load_many(&["6", "7", "8"], loader).await }
    });
    // The batch loads 6 and 8 while 7 is still held by the first load.
    tokio::time::timeout(WAIT, async {
        while source.calls.load(SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    release.notify_one();
    let values = tokio::time::timeout(WAIT, batch)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, first)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        49
    );
    assert_eq!(values.len(), 3);
    assert_eq!(
        source.keys.load(SeqCst),
        2,
        "the batch did not load the key in flight"
    );
    assert_eq!(single_loads.load(SeqCst), 1);

    // The other way: a batch in flight, then a single load of one of its keys.
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let batch_calls = Arc::new(AtomicUsize::new(0));
    let batch = tokio::spawn({
        let (c, entered, release, n) = (
            c.clone(),
            entered.clone(),
            release.clone(),
            batch_calls.clone(),
        );
        async move {
            c.get_or_load_many(&["10", "11"], move |keys: Vec<String>| {
                let (entered, release, n) = (entered.clone(), release.clone(), n.clone());
                async move {
                    n.fetch_add(1, SeqCst);
                    entered.notify_one();
                    release.notified().await;
                    Ok::<_, std::io::Error>(squares(&keys))
                }
            })
            .await
        }
    });
    tokio::time::timeout(WAIT, entered.notified())
        .await
        .unwrap();
    let before = c.stats().load_waits;
    let single = tokio::spawn({
        let c = c.clone();
        async move {
            c.get_or_load("11", || async {
                if true {
                    panic!("the single load ran although the batch was loading the key");
                }
                Ok::<u64, std::io::Error>(0)
            })
            .await
        }
    });
    tokio::time::timeout(WAIT, async {
        while c.stats().load_waits == before {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    // The single call is waiting: on the batch's flight for "11" (two
    // flights in this process), not on one of its own (three).
    assert_eq!(
        c.loads_in_flight(),
        2,
        "the single load did not join the batch's flight"
    );
    release.notify_one();
    assert_eq!(
        tokio::time::timeout(WAIT, single)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        121
    );
    assert_eq!(
        tokio::time::timeout(WAIT, batch)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(batch_calls.load(SeqCst), 1);
    // Shared in process, not through the store: nobody waited on a lease
    // (callers in separate flights would have, and still loaded once).
    assert_eq!(
        c.stats().lease_waits,
        0,
        "a caller waited on the lease instead of joining"
    );
}

/// The stale-set race, batch edition: a write during the batch load wins.
async fn a_write_during_a_batch_load_is_not_overwritten(f: Fixture) {
    let c = cache(&f, "batchrace");
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let batch = tokio::spawn({
        let (c, entered, release) = (c.clone(), entered.clone(), release.clone());
        async move {
            c.get_or_load_many(&["1", "2"], move |keys: Vec<String>| {
                let (entered, release) = (entered.clone(), release.clone());
                async move {
                    let old = squares(&keys);
                    entered.notify_one();
                    release.notified().await;
                    Ok::<_, std::io::Error>(old)
                }
            })
            .await
        }
    });
    tokio::time::timeout(WAIT, entered.notified())
        .await
        .unwrap();
    c.set("1", &1_000).await.unwrap();
    release.notify_one();
    tokio::time::timeout(WAIT, batch)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        c.get("1").await.unwrap(),
        Some(1_000),
        "the batch's older value replaced the write"
    );
    assert_eq!(c.get("2").await.unwrap(), Some(4));
    assert_eq!(c.stats().fills_refused, 1);
}

for_each_store!(
    cluster:
    a_thousand_keys_with_thirty_percent_missing_cost_one_read_and_one_load,
    a_loader_may_answer_part_of_a_batch,
    batches_share_single_flight_with_get_or_load,
    a_write_during_a_batch_load_is_not_overwritten,
);

/// Keys warmed by the warming figure (the README's uses 100,000, release).
fn warm_keys() -> usize {
    std::env::var("CACHETTE_WARM_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            20_000
        } else {
            100_000
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_stays_under_its_concurrency_bound_and_skips_what_is_cached() {
    let mut f = Fixture::redis().await;
    let c = cache(&f, "warm");
    let n = warm_keys();
    const BOUND: usize = 4;
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let loader = {
        let (running, peak, calls) = (running.clone(), peak.clone(), calls.clone());
        move |keys: Vec<String>| {
            let (running, peak, calls) = (running.clone(), peak.clone(), calls.clone());
            async move {
                let now = running.fetch_add(1, SeqCst) + 1;
                peak.fetch_max(now, SeqCst);
                calls.fetch_add(1, SeqCst);
                // A source query's time: long enough that calls overlap.
                tokio::time::sleep(Duration::from_millis(2)).await;
                running.fetch_sub(1, SeqCst);
                Ok::<_, std::io::Error>(squares(&keys))
            }
        }
    };
    // A few keys are cached already and must be skipped.
    c.set_many(&[("0".to_owned(), 0), ("1".to_owned(), 1)])
        .await
        .unwrap();
    let keys = futures_util::stream::iter((0..n).map(|i| i.to_string()));
    let mut reports = 0;
    let options = WarmOptions {
        batch: 500,
        concurrency: BOUND,
    };
    let started = Instant::now();
    let report = c
        .warm(keys, loader.clone(), options, |p| {
            reports += 1;
            assert!(p.done <= n);
        })
        .await;
    let took = started.elapsed();
    assert_eq!(report.done, n);
    assert_eq!(report.loaded, n - 2);
    assert_eq!(report.skipped, 2);
    assert_eq!((report.failed, report.not_found), (0, 0));
    assert_eq!(reports, n.div_ceil(500), "one progress report per batch");
    let peak = peak.load(SeqCst);
    assert!(peak <= BOUND, "{peak} loader calls at once, bound {BOUND}");
    assert!(
        peak >= 2,
        "the bound was never approached: the test shows nothing"
    );
    println!(
        "warming {n} keys (batches of 500, at most {BOUND} loader calls at once, 2 ms per call): {:.2} s, {:.0} keys/s, peak concurrency {peak}",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    // Spot checks, then everything skipped the second time.
    assert_eq!(c.get("12").await.unwrap(), Some(144));
    let again = c
        .warm(
            futures_util::stream::iter((0..n).map(|i| i.to_string())),
            loader,
            options,
            |_| {},
        )
        .await;
    assert_eq!((again.loaded, again.skipped), (0, n));
    assert_eq!(f.server().calls("keys"), Some(0));
}
