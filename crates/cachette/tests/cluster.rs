//! Redis Cluster: what the store must do beyond routing. Slots migrate
//! under load without an error reaching a caller (redirects are followed,
//! pipelines stay within a slot), keyspace walks reach every master, and
//! multi-key reads span all slots. The capability suites (conformance,
//! single flight, leases, tags, batches, the backplane) also run on a
//! cluster, in their own files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachette::Cache;
use cachette::store::{RedisConfig, RedisStore};
use cachette_test::{Fixture, RedisCluster};
use rand::{Rng, SeedableRng};

/// Slots moved by the migration test, each holding one group of keys.
const GROUPS: usize = 12;
const KEYS_PER_GROUP: usize = 10;
/// Keys with a slot of their own each, beside the groups.
const SINGLES: usize = 60;
const TASKS: usize = 6;
/// How long a slot stays `MIGRATING`/`IMPORTING` before and after its keys
/// move: long enough for the load to meet `ASK` and `TRYAGAIN`.
const HOLD: Duration = Duration::from_millis(150);
const BOUND: Duration = Duration::from_secs(60);

fn value_of(key: &str) -> String {
    format!("value of {key}")
}

/// A key of group `g`: user keys `{g<g>}:<i>`. The store key
/// `ns:v1:{{g3}:1}` has the hash tag `{g3`, so a group shares one slot.
fn group_key(g: usize, i: usize) -> String {
    format!("{{g{g}}}:{i}")
}

fn all_keys() -> Vec<String> {
    let mut keys: Vec<String> = (0..GROUPS)
        .flat_map(|g| (0..KEYS_PER_GROUP).map(move |i| group_key(g, i)))
        .collect();
    keys.extend((0..SINGLES).map(|i| format!("single:{i}")));
    keys
}

/// Replies of each kind the cluster's nodes sent (`INFO errorstats`):
/// redirects the client followed, and errors it must never cause.
async fn error_replies(cluster: &RedisCluster) -> HashMap<String, u64> {
    let mut total = HashMap::new();
    for node in cluster.nodes() {
        let mut conn = node.connection().await;
        let info: String = redis::cmd("INFO")
            .arg("errorstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        for line in info.lines() {
            let Some((name, rest)) = line
                .strip_prefix("errorstat_")
                .and_then(|l| l.split_once(":count="))
            else {
                continue;
            };
            *total.entry(name.to_owned()).or_insert(0) += rest.trim().parse::<u64>().unwrap();
        }
    }
    total
}

/// The store as an application would configure it (the default command
/// timeout, 500 ms, and retries, 2), with a patient first connection.
async fn connect(url: &str) -> RedisStore {
    let config = RedisConfig::from_url(url)
        .unwrap()
        .connect_timeout(Duration::from_secs(2));
    RedisStore::connect(config).await.unwrap()
}

#[derive(Default)]
struct Tally {
    ops: [AtomicU64; 6],
    errors: AtomicU64,
    wrong: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

const OPS: [&str; 6] = [
    "get_or_load",
    "set",
    "get_many",
    "delete",
    "get",
    "invalidate_matching",
];

impl Tally {
    fn record<T>(&self, op: usize, result: Result<T, cachette::Error>) -> Option<T> {
        self.ops[op].fetch_add(1, SeqCst);
        match result {
            Ok(v) => Some(v),
            Err(err) => {
                self.errors.fetch_add(1, SeqCst);
                let mut first = self.first_errors.lock().unwrap();
                if first.len() < 10 {
                    first.push(format!("{}: {err} ({err:?})", OPS[op]));
                }
                None
            }
        }
    }

    fn check(&self, key: &str, got: Option<&String>) {
        if got.is_some_and(|v| *v != value_of(key)) {
            self.wrong.fetch_add(1, SeqCst);
        }
    }
}

/// One load task: random operations over every key until `stop`.
async fn load(cache: Cache<String>, tally: Arc<Tally>, stop: Arc<AtomicBool>, seed: u64) {
    let keys = all_keys();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(SeqCst) {
        let key = &keys[rng.random_range(0..keys.len())];
        match rng.random_range(0..100) {
            0..40 => {
                let value = value_of(key);
                let loaded = cache
                    .get_or_load(key, move || async move { Ok::<_, std::io::Error>(value) })
                    .await;
                if let Some(v) = tally.record(0, loaded) {
                    tally.check(key, Some(&v));
                }
            }
            40..60 => {
                tally.record(1, cache.set(key, &value_of(key)).await);
            }
            60..80 => {
                // Two whole groups (keys sharing a slot) and two singles.
                let (a, b) = (rng.random_range(0..GROUPS), rng.random_range(0..GROUPS));
                let mut batch: Vec<String> = (0..KEYS_PER_GROUP)
                    .flat_map(|i| [group_key(a, i), group_key(b, i)])
                    .collect();
                batch.push(format!("single:{}", rng.random_range(0..SINGLES)));
                batch.push(format!("single:{}", rng.random_range(0..SINGLES)));
                if let Some(values) = tally.record(2, cache.get_many(&batch).await) {
                    for (key, v) in batch.iter().zip(&values) {
                        tally.check(key, v.as_ref());
                    }
                }
            }
            80..90 => {
                tally.record(3, cache.delete(key).await);
            }
            90..99 => {
                if let Some(v) = tally.record(4, cache.get(key).await) {
                    tally.check(key, v.as_ref());
                }
            }
            _ => {
                // A keyspace walk over every master, while slots move.
                let g = rng.random_range(0..GROUPS);
                tally.record(5, cache.invalidate_matching(&format!("{{g{g}}}:*")).await);
            }
        }
    }
}

/// Twelve slots, each holding ten keys of the load, move to another node
/// while six tasks read, write, batch-read, delete and walk those keys.
/// Each slot is held `MIGRATING`/`IMPORTING` before and after its keys
/// move, so the load meets `ASK` (and `TRYAGAIN` for keys of one slot split
/// across the two nodes), then `MOVED`. No error of any kind may reach a
/// caller, and every value read is the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_migrating_under_load_never_fail_a_caller() {
    let cluster = Arc::new(RedisCluster::spawn());
    let store = connect(&Fixture::cluster_url(&cluster)).await;
    let cache: Cache<String> = Cache::builder("mig")
        .store(store)
        .ttl(Duration::from_secs(600))
        .build()
        .unwrap();
    for key in all_keys() {
        cache.set(&key, &value_of(&key)).await.unwrap();
    }
    let slots: Vec<u16> = (0..GROUPS)
        .map(|g| RedisCluster::slot_of(cache.store_key(&group_key(g, 0)).unwrap()))
        .collect();
    let owners: Vec<usize> = slots.iter().map(|&s| cluster.node_for_slot(s)).collect();
    for (g, &slot) in slots.iter().enumerate() {
        for i in 0..KEYS_PER_GROUP {
            let key = cache.store_key(&group_key(g, i)).unwrap();
            assert_eq!(RedisCluster::slot_of(&key), slot, "{key}");
        }
    }
    let before = error_replies(&cluster).await;

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| tokio::spawn(load(cache.clone(), tally.clone(), stop.clone(), t as u64)))
        .collect();

    let started = Instant::now();
    let migrator = {
        let (cluster, slots, owners) = (cluster.clone(), slots.clone(), owners.clone());
        tokio::task::spawn_blocking(move || {
            for (&slot, &from) in slots.iter().zip(&owners) {
                let to = (from + 1) % 3;
                cluster.begin_migration(slot, to);
                std::thread::sleep(HOLD);
                cluster.move_keys(slot);
                std::thread::sleep(HOLD);
                cluster.finish_migration(slot);
                assert_eq!(cluster.node_for_slot(slot), to);
            }
        })
    };
    tokio::time::timeout(BOUND, migrator)
        .await
        .expect("the migrations finished in time")
        .unwrap();
    let migrating = started.elapsed();
    // A little load after the last move, against the new owners (MOVED).
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, SeqCst);
    for task in tasks {
        tokio::time::timeout(BOUND, task).await.unwrap().unwrap();
    }

    let after = error_replies(&cluster).await;
    let delta =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    let ops: Vec<String> = OPS
        .iter()
        .zip(&tally.ops)
        .map(|(name, n)| format!("{name} {}", n.load(SeqCst)))
        .collect();
    let stats = cache.stats();
    println!(
        "{GROUPS} slots migrated in {:.1} s under {TASKS} tasks: {} ({} calls); \
         errors reaching a caller: {}; wrong values: {}; server replies during the run: \
         MOVED {}, ASK {}, TRYAGAIN {}, CROSSSLOT {}; store errors absorbed by the cache \
         (loads without a lease): {}",
        migrating.as_secs_f64(),
        ops.join(", "),
        tally.ops.iter().map(|n| n.load(SeqCst)).sum::<u64>(),
        tally.errors.load(SeqCst),
        tally.wrong.load(SeqCst),
        delta("MOVED"),
        delta("ASK"),
        delta("TRYAGAIN"),
        delta("CROSSSLOT"),
        stats.store_errors,
    );
    assert_eq!(
        tally.errors.load(SeqCst),
        0,
        "errors reached callers: {:?}",
        tally.first_errors.lock().unwrap()
    );
    assert_eq!(tally.wrong.load(SeqCst), 0, "a wrong value was read");
    assert_eq!(delta("CROSSSLOT"), 0, "a CROSSSLOT reply was sent");
    assert!(delta("ASK") > 0, "the load never met a slot mid-migration");
    assert!(delta("MOVED") > 0, "the load never met a moved slot");

    // Afterwards every key reads its value (loading the deleted ones).
    for key in all_keys() {
        let value = value_of(&key);
        let v = cache
            .get_or_load(&key, move || async move { Ok::<_, std::io::Error>(value) })
            .await
            .unwrap();
        assert_eq!(v, value_of(&key));
    }
}

/// `invalidate_matching` and a namespace sweep walk every master: with
/// keys on all three nodes, every matching key goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_walks_reach_every_master() {
    let cluster = RedisCluster::spawn();
    let store = connect(&Fixture::cluster_url(&cluster)).await;
    let cache: Cache<String> = Cache::builder("walk")
        .store(store)
        .ttl(Duration::from_secs(600))
        .build()
        .unwrap();
    let keys: Vec<String> = (0..300).map(|i| format!("user:{i}")).collect();
    let entries: Vec<(String, String)> = keys.iter().map(|k| (k.clone(), value_of(k))).collect();
    cache.set_many(&entries).await.unwrap();
    let mut per_node = [0usize; 3];
    for key in &keys {
        per_node[cluster.node_for_key(cache.store_key(key).unwrap())] += 1;
    }
    assert!(per_node.iter().all(|&n| n > 50), "{per_node:?}");
    // One batch read across every slot and node.
    let values = cache.get_many(&keys).await.unwrap();
    assert!(
        keys.iter()
            .zip(&values)
            .all(|(k, v)| v.as_deref() == Some(value_of(k).as_str()))
    );
    let deleted = cache.invalidate_matching("user:1*").await.unwrap();
    let expected = keys.iter().filter(|k| k.starts_with("user:1")).count();
    assert_eq!(deleted as usize, expected);
    let deleted = cache.invalidate_matching("*").await.unwrap();
    assert_eq!(deleted as usize, keys.len() - expected);
    for node in cluster.nodes() {
        let mut conn = node.connection().await;
        let size: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
        assert_eq!(size, 0, "keys left on node {}", node.port());
    }
}

/// A store key without a hash tag cannot have its lease in its slot: the
/// store says so instead of passing Redis's `CROSSSLOT` on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_on_a_key_without_a_hash_tag_is_refused_plainly() {
    use cachette::store::{LeaseToken, Store};
    let cluster = RedisCluster::spawn();
    let store = connect(&Fixture::cluster_url(&cluster)).await;
    let ttl = cachette::Ttl::new(Duration::from_secs(5)).unwrap();
    let err = store
        .claim("untagged", None, &LeaseToken::random(), ttl)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("hash tag"), "{source}");
    // Plain writes and reads of such a key still work.
    store
        .set("untagged", bytes::Bytes::from_static(b"v"), ttl)
        .await
        .unwrap();
    assert!(store.delete("untagged").await.unwrap());
}

/// A slot held mid-migration has keys on both nodes (old keys still on the
/// source, new ones created on the target through `ASK`): a pattern
/// invalidation finds and deletes both halves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_during_a_migration_finds_the_keys_on_both_nodes() {
    let cluster = RedisCluster::spawn();
    let store = connect(&Fixture::cluster_url(&cluster)).await;
    let cache: Cache<String> = Cache::builder("split")
        .store(store)
        .ttl(Duration::from_secs(600))
        .build()
        .unwrap();
    let key = |i: usize| group_key(7, i);
    let slot = RedisCluster::slot_of(cache.store_key(&key(0)).unwrap());
    let from = cluster.node_for_slot(slot);
    let to = (from + 1) % 3;
    for i in 0..10 {
        cache.set(&key(i), &value_of(&key(i))).await.unwrap();
    }
    cluster.begin_migration(slot, to);
    for i in 10..20 {
        cache.set(&key(i), &value_of(&key(i))).await.unwrap();
    }
    let keys_in_slot = |node: usize| {
        let node = cluster.node(node);
        async move {
            let mut conn = node.connection().await;
            redis::cmd("CLUSTER")
                .arg("COUNTKEYSINSLOT")
                .arg(slot)
                .query_async::<u64>(&mut conn)
                .await
                .unwrap()
        }
    };
    assert_eq!((keys_in_slot(from).await, keys_in_slot(to).await), (10, 10));
    let all: Vec<String> = (0..20).map(key).collect();
    let values = cache.get_many(&all).await.unwrap();
    assert!(values.iter().all(Option::is_some), "a key was not found");

    let deleted = cache.invalidate_matching("{g7}:*").await.unwrap();
    assert_eq!(deleted, 20);
    assert_eq!((keys_in_slot(from).await, keys_in_slot(to).await), (0, 0));
    cluster.finish_migration(slot);
}
