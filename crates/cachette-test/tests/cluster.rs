//! Self-tests of `RedisCluster`: real nodes, a real cluster client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cachette_test::RedisCluster;
use redis::AsyncCommands;

#[tokio::test]
async fn three_masters_serve_keys_through_a_cluster_client() {
    let started = Instant::now();
    let cluster = RedisCluster::spawn();
    eprintln!("cluster up in {:?}", started.elapsed());
    assert_eq!(cluster.nodes().len(), 3);
    assert_eq!(cluster.urls().len(), 3);
    assert_eq!(cluster.seed_url(), cluster.node(0).url());

    // Our slot function agrees with the server's, and the slot map with ours.
    for key in ["a", "user:42", "{tag}x", "foo{bar}{zap}", "\u{e9}t\u{e9}"] {
        let slot: u16 = cluster
            .node(0)
            .query_blocking(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .unwrap();
        assert_eq!(RedisCluster::slot_of(key), slot, "slot of {key:?}");
    }
    assert_eq!(cluster.node_for_slot(0), 0);
    assert_eq!(cluster.node_for_slot(5461), 1);
    assert_eq!(cluster.node_for_slot(16383), 2);

    // Keys on every node, written and read through a cluster client
    // seeded with one node only.
    let client = redis::cluster::ClusterClient::new(vec![cluster.seed_url()]).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let mut per_node = [0; 3];
    for i in 0..30 {
        let key = format!("key:{i}");
        let () = conn.set(&key, i).await.unwrap();
        per_node[cluster.node_for_key(&key)] += 1;
    }
    assert!(
        per_node.iter().all(|&n| n > 0),
        "keys per node: {per_node:?}"
    );
    for i in 0..30 {
        let key = format!("key:{i}");
        let value: i64 = conn.get(&key).await.unwrap();
        assert_eq!(value, i);
        // It really lives on the node we say owns it.
        let owner = cluster.node(cluster.node_for_key(&key));
        let exists: bool = owner
            .query_blocking(redis::cmd("EXISTS").arg(&key))
            .unwrap();
        assert!(exists, "{key} not on node {}", cluster.node_for_key(&key));
    }
}

#[tokio::test]
async fn a_migrated_slot_is_still_readable_through_ask_and_moved() {
    let cluster = RedisCluster::spawn();
    let mut conn = cluster.connection().await;
    let key = "{migrating}k";
    let other = "{migrating}other";
    let slot = RedisCluster::slot_of(key);
    let from = cluster.node_for_slot(slot);
    let to = (from + 1) % 3;
    let () = conn.set(key, "v1").await.unwrap();
    let () = conn.set(other, "o").await.unwrap();

    // MIGRATING/IMPORTING with the key still on the source: plain reads.
    cluster.begin_migration(slot, to);
    assert_eq!(conn.get::<_, String>(key).await.unwrap(), "v1");

    // Keys moved, slot not yet reassigned: the source answers ASK.
    assert_eq!(cluster.move_keys(slot), 2);
    assert_eq!(cluster.node_for_slot(slot), from);
    // The target only serves the slot to clients that send ASKING.
    let err = cluster
        .node(to)
        .query_blocking::<bool>(redis::cmd("EXISTS").arg(key))
        .unwrap_err();
    assert_eq!(err.code(), Some("MOVED"), "{err}");
    let moved: redis::RedisResult<String> = cluster
        .node(from)
        .query_blocking(redis::cmd("GET").arg(key));
    let err = moved.unwrap_err();
    assert_eq!(err.code(), Some("ASK"), "{err}");
    assert_eq!(conn.get::<_, String>(key).await.unwrap(), "v1");
    // A new key of the slot goes to the target (through ASK as well).
    let () = conn.set("{migrating}new", "n").await.unwrap();

    // Reassigned: the old owner answers MOVED; the client follows.
    cluster.finish_migration(slot);
    assert_eq!(cluster.node_for_slot(slot), to);
    let err = cluster
        .node(from)
        .query_blocking::<String>(redis::cmd("GET").arg(key))
        .unwrap_err();
    assert_eq!(err.code(), Some("MOVED"), "{err}");
    assert_eq!(conn.get::<_, String>(key).await.unwrap(), "v1");
    assert_eq!(conn.get::<_, String>(other).await.unwrap(), "o");
    assert_eq!(conn.get::<_, String>("{migrating}new").await.unwrap(), "n");
    let () = conn.set(key, "v2").await.unwrap();
    assert_eq!(conn.get::<_, String>(key).await.unwrap(), "v2");

    // And back in one go.
    let started = Instant::now();
    cluster.migrate_slot(slot, from);
    eprintln!("migrate_slot took {:?}", started.elapsed());
    assert_eq!(cluster.node_for_slot(slot), from);
    assert_eq!(conn.get::<_, String>(key).await.unwrap(), "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_under_load() {
    let cluster = RedisCluster::spawn();
    let slot = RedisCluster::slot_of("{load}");
    let to = (cluster.node_for_slot(slot) + 1) % 3;
    let mut conn = cluster.connection().await;
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (ops, stop) = (ops.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                let n = ops.load(Ordering::SeqCst);
                let key = format!("{{load}}{}", n % 200);
                let () = conn.set(&key, n).await.unwrap();
                let read: u64 = conn.get(&key).await.unwrap();
                assert_eq!(read, n);
                ops.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    // Each step runs while the load does: hold the slot MIGRATING for a
    // while (ASK), move its keys, reassign it (MOVED).
    let wait_for_ops = |more: u64| {
        let target = ops.load(Ordering::SeqCst) + more;
        let deadline = Instant::now() + Duration::from_secs(10);
        while ops.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "the load stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    tokio::task::block_in_place(|| {
        wait_for_ops(200);
        cluster.begin_migration(slot, to);
        wait_for_ops(100);
        cluster.move_keys(slot);
        wait_for_ops(100);
        cluster.finish_migration(slot);
        wait_for_ops(100);
    });
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert_eq!(cluster.node_for_slot(slot), to);
}

#[test]
fn a_restarted_node_rejoins() {
    let mut cluster = RedisCluster::spawn();
    cluster.node_mut(1).restart();
    let started = Instant::now();
    cluster.wait_until_stable();
    eprintln!("stable again {:?} after a node restart", started.elapsed());
    cluster.node(2).pause();
    cluster.node(2).resume();
    cluster.wait_until_stable();
}

#[test]
#[should_panic(expected = "is stopped")]
fn wait_until_stable_refuses_a_stopped_node() {
    let mut cluster = RedisCluster::spawn();
    cluster.node_mut(0).stop();
    cluster.wait_until_stable();
}
