//! The store conformance suite: what every [`Store`] must do, run against
//! each store by [`store_conformance!`](crate::store_conformance).
//!
//! The embedded store is a product feature, so it must behave like Redis
//! wherever the cache can observe a difference: missing versus empty values,
//! binary safety, overwrite, per-entry TTLs, batch order — and the fill
//! leases: one holder at a time, fills only with the holder's token, every
//! write or delete ending the lease, release and extend never touching
//! another holder's lease.
//!
//! Every key carries a hash tag (`{…}`), as the cache's keys do, so the
//! suite also runs on Redis Cluster, where a key and its lease must share
//! a slot.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cachette::Ttl;
use cachette::store::{Lease, LeaseToken, Mark, Store, StoreEntry};

use crate::Fixture;

fn ttl(ms: u64) -> Ttl {
    Ttl::new(Duration::from_millis(ms)).expect("valid test TTL")
}

const LONG: u64 = 60_000;
/// Short enough to wait for, long enough that no scheduling hiccup between
/// a write and the read right after it lets the entry expire.
const SHORT: u64 = 300;

async fn get(store: &dyn Store, key: &str) -> Option<Bytes> {
    store.get(key).await.expect("get")
}

/// Waits until `key` is gone; bounded, checking every 10 ms.
async fn wait_until_expired(store: &dyn Store, key: &str) -> Duration {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(5);
    while get(store, key).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "`{key}` did not expire within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// A key never written reads as `None`.
pub async fn get_of_a_missing_key_is_none(f: &Fixture) {
    assert_eq!(get(&*f.store, "{nope}").await, None);
}

/// Bytes come back exactly, every byte value included.
pub async fn set_then_get_returns_the_same_bytes(f: &Fixture) {
    let all: Vec<u8> = (0..=255).collect();
    f.store
        .set("{k}", Bytes::from(all.clone()), ttl(LONG))
        .await
        .expect("set");
    assert_eq!(get(&*f.store, "{k}").await.as_deref(), Some(&all[..]));
}

/// An empty value is a value, not a missing key.
pub async fn an_empty_value_is_present(f: &Fixture) {
    f.store
        .set("{empty}", Bytes::new(), ttl(LONG))
        .await
        .expect("set");
    assert_eq!(get(&*f.store, "{empty}").await, Some(Bytes::new()));
}

/// A second set replaces the first.
pub async fn set_overwrites(f: &Fixture) {
    f.store
        .set("{k}", Bytes::from_static(b"one"), ttl(LONG))
        .await
        .expect("set");
    f.store
        .set("{k}", Bytes::from_static(b"two"), ttl(LONG))
        .await
        .expect("set");
    assert_eq!(
        get(&*f.store, "{k}").await,
        Some(Bytes::from_static(b"two"))
    );
}

/// Delete answers whether something was there, and removes it.
pub async fn delete_reports_whether_the_key_was_there(f: &Fixture) {
    f.store
        .set("{k}", Bytes::from_static(b"v"), ttl(LONG))
        .await
        .expect("set");
    assert!(f.store.delete("{k}").await.expect("delete"));
    assert_eq!(get(&*f.store, "{k}").await, None);
    assert!(!f.store.delete("{k}").await.expect("delete"));
}

/// `get_many` answers in the order asked, with gaps for missing keys.
pub async fn get_many_keeps_order_and_gaps(f: &Fixture) {
    f.store
        .set("{a}", Bytes::from_static(b"1"), ttl(LONG))
        .await
        .expect("set");
    f.store
        .set("{c}", Bytes::from_static(b"3"), ttl(LONG))
        .await
        .expect("set");
    let keys: Vec<String> = ["{c}", "{b}", "{a}", "{c}"]
        .iter()
        .map(|k| k.to_string())
        .collect();
    let got = f.store.get_many(&keys).await.expect("get_many");
    let got: Vec<Option<&[u8]>> = got.iter().map(|v| v.as_deref()).collect();
    assert_eq!(
        got,
        vec![Some(&b"3"[..]), None, Some(&b"1"[..]), Some(&b"3"[..])]
    );
    assert!(
        f.store
            .get_many(&[])
            .await
            .expect("empty get_many")
            .is_empty()
    );
}

/// `set_many` writes every entry, each with its own TTL.
pub async fn set_many_writes_every_entry(f: &Fixture) {
    let entries: Vec<StoreEntry> = (0..100)
        .map(|i| StoreEntry {
            key: format!("{{k{i}}}"),
            value: Bytes::from(format!("v{i}")),
            ttl: ttl(if i == 0 { SHORT } else { LONG }),
        })
        .collect();
    f.store.set_many(&entries).await.expect("set_many");
    f.store.set_many(&[]).await.expect("empty set_many");
    let keys: Vec<String> = entries.iter().map(|e| e.key.clone()).collect();
    let got = f.store.get_many(&keys).await.expect("get_many");
    for (i, v) in got.iter().enumerate() {
        assert_eq!(v.as_deref(), Some(format!("v{i}").as_bytes()));
    }
    wait_until_expired(&*f.store, "{k0}").await;
    assert!(
        get(&*f.store, "{k1}").await.is_some(),
        "only k0 had a short TTL"
    );
}

/// An entry is gone once its TTL has passed, and not before.
pub async fn entries_expire_after_their_ttl(f: &Fixture) {
    let start = Instant::now();
    f.store
        .set("{k}", Bytes::from_static(b"v"), ttl(SHORT))
        .await
        .expect("set");
    let present = get(&*f.store, "{k}").await.is_some();
    if start.elapsed() < Duration::from_millis(SHORT) {
        assert!(present, "entry missing before its TTL");
    }
    wait_until_expired(&*f.store, "{k}").await;
    assert!(
        start.elapsed() >= Duration::from_millis(SHORT - 5),
        "expired early"
    );
    assert!(
        !f.store.delete("{k}").await.expect("delete"),
        "expired entry deleted"
    );
}

/// Overwriting an entry gives it the new TTL, in both directions.
pub async fn overwrite_replaces_the_ttl(f: &Fixture) {
    f.store
        .set("{longer}", Bytes::from_static(b"1"), ttl(SHORT))
        .await
        .expect("set");
    f.store
        .set("{longer}", Bytes::from_static(b"2"), ttl(LONG))
        .await
        .expect("set");
    f.store
        .set("{shorter}", Bytes::from_static(b"1"), ttl(LONG))
        .await
        .expect("set");
    f.store
        .set("{shorter}", Bytes::from_static(b"2"), ttl(SHORT))
        .await
        .expect("set");
    // "{shorter}" expiring is the signal that SHORT has passed for "{longer}" too.
    wait_until_expired(&*f.store, "{shorter}").await;
    assert_eq!(
        get(&*f.store, "{longer}").await,
        Some(Bytes::from_static(b"2"))
    );
}

/// Values of several hundred KiB round-trip.
pub async fn large_values_round_trip(f: &Fixture) {
    let big: Vec<u8> = (0..512 * 1024).map(|i| (i % 251) as u8).collect();
    f.store
        .set("{big}", Bytes::from(big.clone()), ttl(LONG))
        .await
        .expect("set");
    assert_eq!(get(&*f.store, "{big}").await.as_deref(), Some(&big[..]));
}

async fn claim(f: &Fixture, key: &str, seen: Option<&[u8]>, token: &LeaseToken) -> Lease {
    f.store
        .claim(key, seen, token, ttl(LONG))
        .await
        .expect("claim")
        .lease
}

/// One holder at a time: the first claim of a missing entry wins, the
/// others see it held; the holder's fill stores and ends the lease.
pub async fn one_lease_per_key_and_only_its_holder_fills(f: &Fixture) {
    let (a, b) = (LeaseToken::random(), LeaseToken::random());
    assert_eq!(claim(f, "{k}", None, &a).await, Lease::Granted);
    match claim(f, "{k}", None, &b).await {
        Lease::Held { expires_in } => {
            assert!(expires_in > Duration::from_secs(50) && expires_in <= Duration::from_secs(60));
        }
        other => panic!("a second claim got {other:?}"),
    }
    let stored = f
        .store
        .fill("{k}", &b, Bytes::from_static(b"b"), ttl(LONG))
        .await;
    assert!(!stored.expect("fill"), "a non-holder's fill is refused");
    assert_eq!(get(&*f.store, "{k}").await, None);
    let stored = f
        .store
        .fill("{k}", &a, Bytes::from_static(b"a"), ttl(LONG))
        .await;
    assert!(stored.expect("fill"));
    assert_eq!(get(&*f.store, "{k}").await.as_deref(), Some(&b"a"[..]));
    let again = f
        .store
        .fill("{k}", &a, Bytes::from_static(b"again"), ttl(LONG))
        .await;
    assert!(!again.expect("fill"), "the fill ended the lease");
    // The entry is there now: a claim that saw nothing gets it back.
    let claimed = f
        .store
        .claim("{k}", None, &b, ttl(LONG))
        .await
        .expect("claim");
    assert_eq!(claimed.lease, Lease::Changed);
    assert_eq!(claimed.value.as_deref(), Some(&b"a"[..]));
}

/// A claim that names the entry it saw is granted while that entry is
/// still there (a refresh of a stale value), and answered with the new
/// entry once someone replaced it. An empty value is a value.
pub async fn a_claim_compares_the_entry_it_saw(f: &Fixture) {
    let t = LeaseToken::random();
    f.store
        .set("{k}", Bytes::from_static(b"v1-payload"), ttl(LONG))
        .await
        .expect("set");
    assert_eq!(claim(f, "{k}", Some(b"v1"), &t).await, Lease::Granted);
    f.store.release_lease("{k}", &t).await.expect("release");
    f.store
        .set("{k}", Bytes::from_static(b"v2-payload"), ttl(LONG))
        .await
        .expect("set");
    let claimed = f
        .store
        .claim("{k}", Some(b"v1"), &t, ttl(LONG))
        .await
        .expect("claim");
    assert_eq!(claimed.lease, Lease::Changed);
    assert_eq!(claimed.value.as_deref(), Some(&b"v2-payload"[..]));
    f.store
        .set("{e}", Bytes::new(), ttl(LONG))
        .await
        .expect("set");
    assert_eq!(claim(f, "{e}", None, &t).await, Lease::Changed);
    assert_eq!(claim(f, "{e}", Some(b""), &t).await, Lease::Granted);
    // Gone since it was seen: there is something to load, so it is granted.
    assert_eq!(claim(f, "{gone}", Some(b"v1"), &t).await, Lease::Granted);
}

/// A write or delete while a lease is held ends it: the holder's fill
/// (which may carry a value read before the write) is refused.
pub async fn writes_and_deletes_end_the_lease(f: &Fixture) {
    for write in ["set", "set_many", "delete"] {
        let key = format!("{{k-{write}}}");
        let holder = LeaseToken::random();
        assert_eq!(claim(f, &key, None, &holder).await, Lease::Granted);
        match write {
            "set" => f
                .store
                .set(&key, Bytes::from_static(b"new"), ttl(LONG))
                .await
                .expect("set"),
            "set_many" => f
                .store
                .set_many(&[StoreEntry {
                    key: key.clone(),
                    value: Bytes::from_static(b"new"),
                    ttl: ttl(LONG),
                }])
                .await
                .expect("set_many"),
            _ => drop(f.store.delete(&key).await.expect("delete")),
        }
        let stored = f
            .store
            .fill(&key, &holder, Bytes::from_static(b"old"), ttl(LONG))
            .await;
        assert!(
            !stored.expect("fill"),
            "{write}: a fill after it is refused"
        );
        let expected = (write != "delete").then_some(&b"new"[..]);
        assert_eq!(get(&*f.store, &key).await.as_deref(), expected, "{write}");
        // And the next claim is free.
        assert_eq!(
            claim(f, &key, Some(b"x"), &LeaseToken::random()).await == Lease::Granted,
            write == "delete"
        );
    }
}

/// Release and extend act only on the caller's own lease; an expired
/// lease is free to claim and its holder's fill is refused.
pub async fn release_and_extend_never_touch_another_holders_lease(f: &Fixture) {
    let (a, b) = (LeaseToken::random(), LeaseToken::random());
    assert_eq!(claim(f, "{k}", None, &a).await, Lease::Granted);
    assert!(!f.store.release_lease("{k}", &b).await.expect("release"));
    assert!(
        !f.store
            .extend_lease("{k}", &b, ttl(LONG))
            .await
            .expect("extend")
    );
    assert!(matches!(
        claim(f, "{k}", None, &b).await,
        Lease::Held { .. }
    ));
    assert!(f.store.release_lease("{k}", &a).await.expect("release"));
    assert_eq!(claim(f, "{k}", None, &b).await, Lease::Granted);
    assert!(!f.store.release_lease("{k}", &a).await.expect("release"));

    // Expiry, and extension keeping a lease alive past its first TTL.
    let (c, d) = (LeaseToken::random(), LeaseToken::random());
    let granted = f
        .store
        .claim("{short}", None, &c, ttl(SHORT))
        .await
        .expect("claim");
    assert_eq!(granted.lease, Lease::Granted);
    assert!(
        f.store
            .extend_lease("{short}", &c, ttl(LONG))
            .await
            .expect("extend")
    );
    tokio::time::sleep(Duration::from_millis(SHORT + 100)).await;
    assert!(
        matches!(claim(f, "{short}", None, &d).await, Lease::Held { .. }),
        "extended"
    );
    assert!(
        f.store
            .extend_lease("{short}", &c, ttl(SHORT))
            .await
            .expect("extend")
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lease = f
            .store
            .claim("{short}", None, &d, ttl(LONG))
            .await
            .expect("claim")
            .lease;
        if lease == Lease::Granted {
            break;
        }
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = f
        .store
        .fill("{short}", &c, Bytes::from_static(b"late"), ttl(LONG))
        .await;
    assert!(
        !stored.expect("fill"),
        "an expired holder's fill is refused"
    );
}

/// Defines one test per conformance case for a store: `$fixture` is an
/// expression giving a `Future<Output = Fixture>`, evaluated once per test.
///
/// ```text
/// cachette_test::store_conformance!(embedded, async { cachette_test::Fixture::embedded() });
/// cachette_test::store_conformance!(redis, cachette_test::Fixture::redis());
/// ```
/// A raised mark is the later of each time, whatever the order of raises.
pub async fn marks_only_rise(f: &Fixture) {
    let ttl = Ttl::new(Duration::from_secs(60)).expect("ttl");
    let m = |removed_us, expired_us| Mark {
        removed_us,
        expired_us,
    };
    let raised = f
        .store
        .raise_mark("c:tag:{t}", m(100, 0), ttl)
        .await
        .expect("raise");
    assert_eq!(raised, m(100, 0));
    let raised = f
        .store
        .raise_mark("c:tag:{t}", m(50, 70), ttl)
        .await
        .expect("raise");
    assert_eq!(raised, m(100, 70), "a mark went back");
    let big = 1_900_000_000_000_000; // µs in 2030: exact through the store
    let raised = f
        .store
        .raise_mark("c:tag:{t}", m(big, 0), ttl)
        .await
        .expect("raise");
    assert_eq!(raised, m(big, 70));
    let stored = get(f.store.as_ref(), "c:tag:{t}").await.expect("stored");
    assert_eq!(Mark::parse(&stored), Some(m(big, 70)));
}

/// Glob rules as Redis has them; leases of matching keys end even when
/// their entry does not exist yet.
pub async fn delete_matching_follows_glob_rules_and_ends_leases(f: &Fixture) {
    let ttl = Ttl::new(Duration::from_secs(60)).expect("ttl");
    for key in [
        "p:{user:1}",
        "p:{user:2}",
        "p:{user:*}",
        "p:{order:1}",
        "q:{user:1}",
    ] {
        f.store
            .set(key, Bytes::from_static(b"v"), ttl)
            .await
            .expect("set");
    }
    let token = LeaseToken::random();
    assert_eq!(claim(f, "p:{user:3}", None, &token).await, Lease::Granted);
    let deleted = f
        .store
        .delete_matching("p:{user:*}", 2)
        .await
        .expect("delete_matching");
    assert_eq!(deleted, 3);
    for (key, kept) in [
        ("p:{user:1}", false),
        ("p:{user:*}", false),
        ("p:{order:1}", true),
        ("q:{user:1}", true),
    ] {
        assert_eq!(get(f.store.as_ref(), key).await.is_some(), kept, "{key}");
    }
    let filled = f
        .store
        .fill("p:{user:3}", &token, Bytes::from_static(b"old"), ttl)
        .await
        .expect("fill");
    assert!(!filled, "a lease of a matching key survived");
    let deleted = f
        .store
        .delete_matching(r"p:{order:\*}", 10)
        .await
        .expect("delete_matching");
    assert_eq!(deleted, 0, "an escaped star matched a key");
}

/// Only entries (by their header) created before the cut go.
pub async fn sweep_deletes_only_entries_created_before_the_cut(f: &Fixture) {
    let ttl = Ttl::new(Duration::from_secs(60)).expect("ttl");
    let entry = |created_ms: u64| {
        let mut b = vec![0xCA, 0xC7, 1, 0];
        b.extend_from_slice(&created_ms.to_le_bytes());
        b.extend_from_slice(&[0; 30]);
        Bytes::from(b)
    };
    f.store
        .set("s:v1:{old}", entry(1_000), ttl)
        .await
        .expect("set");
    f.store
        .set("s:v1:{new}", entry(3_000), ttl)
        .await
        .expect("set");
    f.store
        .set("s:v1:{foreign}", Bytes::from_static(b"not an entry"), ttl)
        .await
        .expect("set");
    f.store
        .set("t:v1:{old}", entry(1_000), ttl)
        .await
        .expect("set");
    let swept = f.store.sweep("s:v*", 2_000, 1).await.expect("sweep");
    assert_eq!(swept, 1);
    assert!(get(f.store.as_ref(), "s:v1:{old}").await.is_none());
    for key in ["s:v1:{new}", "s:v1:{foreign}", "t:v1:{old}"] {
        assert!(get(f.store.as_ref(), key).await.is_some(), "{key}");
    }
}

#[macro_export]
macro_rules! store_conformance {
    ($name:ident, $fixture:expr) => {
        $crate::__store_conformance!($name, $fixture;
            get_of_a_missing_key_is_none,
            set_then_get_returns_the_same_bytes,
            an_empty_value_is_present,
            set_overwrites,
            delete_reports_whether_the_key_was_there,
            get_many_keeps_order_and_gaps,
            set_many_writes_every_entry,
            entries_expire_after_their_ttl,
            overwrite_replaces_the_ttl,
            large_values_round_trip,
            one_lease_per_key_and_only_its_holder_fills,
            a_claim_compares_the_entry_it_saw,
            writes_and_deletes_end_the_lease,
            release_and_extend_never_touch_another_holders_lease,
            marks_only_rise,
            delete_matching_follows_glob_rules_and_ends_leases,
            sweep_deletes_only_entries_created_before_the_cut,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance {
    ($name:ident, $fixture:expr; $($case:ident),* $(,)?) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = $fixture.await;
                    $crate::conformance::$case(&fixture).await;
                }
            )*
        }
    };
}
