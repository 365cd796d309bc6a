//! The backplane between instances in one test process: each "instance" is
//! its own backplane connection (its own id) and cache over one real
//! redis-server (or a real Redis Cluster, whose nodes relay Pub/Sub to each
//! other). The separate-process runs are in `coherence.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cachette::backplane::{Backplane, BackplaneConfig};
use cachette::store::{RedisConfig, RedisStore};
use cachette::{Cache, Error};
use cachette_test::{Fixture, RedisCluster, RedisServer};

const LEASE: Duration = Duration::from_millis(300);
const BOUND: Duration = Duration::from_secs(10);

async fn backplane(url: &str) -> Backplane {
    let config = RedisConfig::from_url(url).unwrap();
    Backplane::connect(
        BackplaneConfig::new(config)
            .heartbeat(Duration::from_millis(50))
            .lease(LEASE),
    )
    .await
    .unwrap()
}

async fn store(url: &str) -> RedisStore {
    RedisStore::connect(RedisConfig::from_url(url).unwrap())
        .await
        .unwrap()
}

struct Instance {
    backplane: Backplane,
    cache: Cache<String>,
}

async fn instance(url: &str, read_your_writes: bool) -> Instance {
    let store = store(url).await;
    let backplane = backplane(url).await;
    let mut builder = Cache::builder("doc")
        .store(store)
        .l1(1 << 20)
        .backplane(backplane.clone());
    if read_your_writes {
        builder = builder.read_your_writes();
    }
    Instance {
        backplane,
        cache: builder.build().unwrap(),
    }
}

/// Two instances that know each other (each heard the other's heartbeat).
async fn pair(url_a: &str, url_b: &str, read_your_writes: bool) -> (Instance, Instance) {
    let a = instance(url_a, read_your_writes).await;
    let b = instance(url_b, read_your_writes).await;
    until("both instances know each other", || {
        a.backplane.stats().members == 1 && b.backplane.stats().members == 1
    })
    .await;
    (a, b)
}

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < BOUND, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads `key` on `i` until a read is an L1 hit (an announcement of the
/// write that stored it may still be on its way and drop the first copy).
async fn cached_in_l1(i: &Instance, key: &str) -> Option<String> {
    let start = Instant::now();
    loop {
        let before = i.cache.stats().l1_hits;
        let v = i.cache.get(key).await.unwrap();
        if i.cache.stats().l1_hits > before {
            return v;
        }
        assert!(start.elapsed() < BOUND, "{key} never became an L1 hit");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Reads `key` on `i` until it reads `want`: within a bound far below the
/// L1 TTL (60 s), so only an invalidation can have dropped the old copy.
async fn sees(i: &Instance, key: &str, want: Option<&str>) {
    let start = Instant::now();
    while i.cache.get(key).await.unwrap().as_deref() != want {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{key} never read {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn a_write_in_one_instance_drops_the_copy_in_another() {
    let redis = RedisServer::spawn();
    a_write_drops_the_copy_elsewhere(&redis.url(), &redis.url()).await;
}

/// The same on Redis Cluster, with the two instances on different nodes:
/// their URLs list the seeds in different orders, and each subscribes on
/// (and publishes through) its first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_cluster_a_write_in_one_instance_drops_the_copy_in_another() {
    let cluster = RedisCluster::spawn();
    let (url_a, url_b) = seeds_in_two_orders(&cluster);
    let _connected = a_write_drops_the_copy_elsewhere(&url_a, &url_b).await;
    // Each node had one subscriber: node 0 A's, node 1 B's.
    for node in &cluster.nodes()[..2] {
        let mut conn = node.connection().await;
        let (_, subscribers): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(cachette::backplane::DEFAULT_CHANNEL)
            .query_async::<Vec<(String, u64)>>(&mut conn)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(subscribers, 1, "subscribers on node {}", node.port());
    }
}

/// Cluster URLs of `cluster`: node 0 first, and node 1 first.
fn seeds_in_two_orders(cluster: &RedisCluster) -> (String, String) {
    let a = Fixture::cluster_url(cluster);
    let port = |i: usize| cluster.node(i).port();
    let b = format!(
        "redis+cluster://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        port(1),
        port(2),
        port(0)
    );
    (a, b)
}

/// Returns the instances, still connected.
async fn a_write_drops_the_copy_elsewhere(url_a: &str, url_b: &str) -> (Instance, Instance) {
    let (a, b) = pair(url_a, url_b, false).await;

    a.cache.set("k", &"v1".into()).await.unwrap();
    assert_eq!(cached_in_l1(&b, "k").await.as_deref(), Some("v1"));

    a.cache.set("k", &"v2".into()).await.unwrap();
    sees(&b, "k", Some("v2")).await;

    assert_eq!(cached_in_l1(&b, "k").await.as_deref(), Some("v2"));
    a.cache.delete("k").await.unwrap();
    sees(&b, "k", None).await;
    assert!(b.cache.stats().invalidations_received >= 2);

    // A namespace clear reaches B's every copy.
    a.cache.set("x", &"1".into()).await.unwrap();
    a.cache.set("y", &"2".into()).await.unwrap();
    cached_in_l1(&b, "x").await;
    cached_in_l1(&b, "y").await;
    until("B's L1 holds both", || {
        b.cache.l1_usage().unwrap().entries >= 2
    })
    .await;
    a.cache.clear_l1().await.unwrap();
    until("B's L1 cleared", || {
        b.cache.l1_usage().unwrap().entries == 0
    })
    .await;

    assert!(a.cache.stats().invalidations_sent >= 5);
    // A sender ignores its own messages.
    assert_eq!(a.cache.stats().invalidations_received, 0);
    (a, b)
}

#[tokio::test]
async fn a_cache_without_l1_still_announces() {
    let redis = RedisServer::spawn();
    let b = instance(&redis.url(), false).await;
    let writer_bp = backplane(&redis.url()).await;
    let writer: Cache<String> = Cache::builder("doc")
        .store(store(&redis.url()).await)
        .backplane(writer_bp)
        .build()
        .unwrap();
    writer.set("k", &"old".into()).await.unwrap();
    cached_in_l1(&b, "k").await;
    writer.set("k", &"new".into()).await.unwrap();
    sees(&b, "k", Some("new")).await;
}

#[tokio::test]
async fn two_caches_of_one_namespace_in_one_process_stay_coherent() {
    let redis = RedisServer::spawn();
    let a = instance(&redis.url(), false).await;
    let twin: Cache<String> = Cache::builder("doc")
        .store(store(&redis.url()).await)
        .l1(1 << 20)
        .backplane(a.backplane.clone())
        .build()
        .unwrap();
    a.cache.set("k", &"old".into()).await.unwrap();
    assert_eq!(twin.get("k").await.unwrap().as_deref(), Some("old"));
    a.cache.set("k", &"new".into()).await.unwrap();
    // Delivered in process, before `set` returned.
    assert_eq!(twin.get("k").await.unwrap().as_deref(), Some("new"));
}

#[tokio::test]
async fn read_your_writes_needs_no_waiting_by_the_reader() {
    let redis = RedisServer::spawn();
    read_your_writes_with_no_waiting(&redis.url(), &redis.url()).await;
}

/// The same on Redis Cluster, with the instances on different nodes: the
/// acknowledgements cross the cluster bus too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_cluster_read_your_writes_needs_no_waiting_by_the_reader() {
    let cluster = RedisCluster::spawn();
    let (url_a, url_b) = seeds_in_two_orders(&cluster);
    read_your_writes_with_no_waiting(&url_a, &url_b).await;
}

async fn read_your_writes_with_no_waiting(url_a: &str, url_b: &str) {
    let (a, b) = pair(url_a, url_b, true).await;
    for i in 0..300 {
        let key = format!("k{}", i % 7);
        if i < 7 {
            a.cache.set(&key, &"first".into()).await.unwrap();
        }
        cached_in_l1(&b, &key).await;
        let value = format!("v{i}");
        a.cache.set(&key, &value).await.unwrap();
        assert_eq!(b.cache.get(&key).await.unwrap(), Some(value), "round {i}");
    }
    let stats = a.backplane.stats();
    assert!(stats.acknowledged_writes >= 300, "{stats:?}");
}

#[tokio::test]
async fn a_killed_backplane_connection_flushes_caps_and_comes_back() {
    let redis = RedisServer::spawn();
    let (a, b) = pair(&redis.url(), &redis.url(), false).await;
    a.cache.set("k", &"v1".into()).await.unwrap();
    cached_in_l1(&b, "k").await;

    let addr = b.backplane.subscriber_addr().expect("plain TCP");
    assert!(
        redis.kill_client(addr).await,
        "B's subscriber found in CLIENT LIST"
    );
    until("B unhealthy", || !b.backplane.is_healthy()).await;
    assert_eq!(b.cache.l1_usage().unwrap().entries, 0, "flushed on loss");
    until("B back", || b.backplane.is_healthy()).await;
    let stats = b.backplane.stats();
    assert!(
        stats.disconnects >= 1 && stats.subscriptions >= 2,
        "{stats:?}"
    );
    assert_ne!(
        b.backplane.subscriber_addr(),
        Some(addr),
        "a new connection"
    );

    // Working again: the next write reaches B.
    cached_in_l1(&b, "k").await;
    a.cache.set("k", &"v2".into()).await.unwrap();
    sees(&b, "k", Some("v2")).await;
}

#[tokio::test]
async fn read_your_writes_holds_while_the_readers_backplane_is_down() {
    let redis = RedisServer::spawn();
    let (a, b) = pair(&redis.url(), &redis.url(), true).await;
    a.cache.set("k", &"v1".into()).await.unwrap();
    cached_in_l1(&b, "k").await;
    // B's subscriber is killed before every write: B misses some messages
    // and spends time reconnecting, yet every write must be visible on B
    // the moment it returns.
    for i in 0..30 {
        cached_in_l1(&b, "k").await;
        if let Some(addr) = b.backplane.subscriber_addr() {
            redis.kill_client(addr).await;
        }
        let value = format!("v{}", i + 2);
        let started = Instant::now();
        a.cache.set("k", &value).await.unwrap();
        assert!(
            started.elapsed() < LEASE * 2,
            "a write waits one lease at most"
        );
        assert_eq!(b.cache.get("k").await.unwrap(), Some(value), "round {i}");
    }
    assert!(a.backplane.stats().lease_waits + a.backplane.stats().acknowledged_writes >= 30);
}

#[tokio::test]
async fn settings_out_of_range_are_refused() {
    let redis = RedisServer::spawn();
    let config = || BackplaneConfig::new(RedisConfig::from_url(&redis.url()).unwrap());
    for bad in [
        config().heartbeat(Duration::from_millis(1)),
        config().lease(Duration::from_millis(100)),
        config().lease(Duration::from_secs(600)),
        config().channel(""),
    ] {
        let err = Backplane::connect(bad).await.unwrap_err();
        assert!(matches!(err, Error::Build(_)), "{err}");
    }
    let no_backplane = Cache::<String>::builder("x").read_your_writes().build();
    assert!(no_backplane.is_err());
    // Nothing listening: a clear error, not a hang.
    let mut gone = RedisServer::spawn();
    let url = gone.url();
    gone.stop();
    let started = Instant::now();
    let err = Backplane::connect(BackplaneConfig::new(RedisConfig::from_url(&url).unwrap()))
        .await
        .unwrap_err();
    assert!(err.is_store_unavailable(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
