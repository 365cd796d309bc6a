//! The fill lease across separate OS processes on one real redis-server.
//!
//! What this file proves, with real processes (not caches sharing a store
//! in one process):
//!
//! * a cold key hit by 1,000 concurrent callers in each of 4 processes is
//!   loaded once by the whole fleet, and every caller gets that one value;
//! * when the process holding a key's lease dies mid-load (SIGKILL: no
//!   release, no goodbye), the processes waiting on it load after at most
//!   the rest of its lease, and again only one of them loads;
//! * a waiter in another process is woken by the holder's fill (the
//!   backplane's announcement), not by its lease running out.
//!
//! The test binary runs itself again as "nodes" (the ignored `node` test,
//! switched on by an environment variable), as in `coherence.rs`: each node
//! is one instance with its own Redis store, backplane and L1, driven by
//! line commands on stdin and answering with `@ `-prefixed lines on stdout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cachette::Cache;
use cachette::backplane::{Backplane, BackplaneConfig};
use cachette::store::{RedisConfig, RedisStore};
use cachette_test::RedisServer;
use cachette_test::node::{self, ANSWER, NodeProcess, say, serial};
use tokio::sync::Barrier;

const NODE_ENV: &str = "CACHETTE_FLEET_NODE";

// ---------------------------------------------------------------- node side

/// One instance. Ignored in normal runs; the tests below start it.
#[test]
#[ignore = "a child process of the fleet tests"]
fn node() {
    if std::env::var_os(NODE_ENV).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(node_main());
}

fn env_ms(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()
        .map(|v| Duration::from_millis(v.parse().unwrap()))
}

/// The value a node's loader produces: says which process loaded it.
fn loaded_value(key: &str) -> String {
    format!("{key}@{}", std::process::id())
}

async fn node_main() {
    let url = std::env::var("NODE_REDIS_URL").unwrap();
    let config = RedisConfig::from_url(&url).unwrap();
    let store = RedisStore::connect(config.clone()).await.unwrap();
    let backplane = Backplane::connect(BackplaneConfig::new(config))
        .await
        .unwrap();
    let mut builder = Cache::builder("fleet")
        .store(store)
        .ttl(Duration::from_secs(600))
        .l1(16 << 20)
        .backplane(backplane);
    if let Some(ttl) = env_ms("NODE_LEASE_TTL_MS") {
        builder = builder.lease_ttl(ttl);
    }
    if let Some(wait) = env_ms("NODE_LEASE_WAIT_MS") {
        builder = builder.lease_wait(wait);
    }
    let cache: Cache<String> = builder.build().unwrap();
    say("ready");
    let mut commands = node::commands();
    while let Some(line) = commands.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        run_command(&cache, &words).await;
    }
}

async fn run_command(cache: &Cache<String>, words: &[&str]) {
    match *words {
        // `n` tasks, released together, call get_or_load(key); the loader
        // takes `ms`. Answers: loads here, errors, then the distinct values
        // the callers got (comma-separated).
        ["burst", key, n, ms] => {
            let (n, ms): (usize, u64) = (n.parse().unwrap(), ms.parse().unwrap());
            let loads = Arc::new(AtomicU64::new(0));
            let start = Arc::new(Barrier::new(n));
            let callers: Vec<_> = (0..n)
                .map(|_| {
                    let (cache, loads, start) = (cache.clone(), loads.clone(), start.clone());
                    let key = key.to_owned();
                    tokio::spawn(async move {
                        start.wait().await;
                        let loader = {
                            let key = key.clone();
                            move || async move {
                                loads.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                Ok::<_, std::io::Error>(loaded_value(&key))
                            }
                        };
                        cache.get_or_load(&key, loader).await
                    })
                })
                .collect();
            let (mut errors, mut values) = (0, BTreeSet::new());
            for caller in callers {
                match caller.await.unwrap() {
                    Ok(value) => {
                        values.insert(value);
                    }
                    Err(err) => {
                        if errors == 0 {
                            eprintln!("burst {key}: {err}");
                        }
                        errors += 1;
                    }
                }
            }
            let values: Vec<String> = values.into_iter().collect();
            say(format!(
                "done {} {errors} {}",
                loads.load(Ordering::SeqCst),
                values.join(",")
            ));
        }
        // get_or_load(key) with a loader that answers `loading` as soon as
        // it runs, then never returns: this node holds the lease (and
        // extends it) until it dies.
        ["hang", key] => {
            let cache = cache.clone();
            let key = key.to_owned();
            tokio::spawn(async move {
                let _ = cache
                    .get_or_load(&key, || async {
                        say("loading");
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok::<_, std::io::Error>("never".to_owned())
                    })
                    .await;
            });
        }
        // get_or_load(key) in the background (the node keeps answering
        // other commands meanwhile), with a loader of `ms` that answers
        // `loading` when it starts. Answers `calling` before the call, then
        // `value <value> <1 if this node's loader ran, else 0> <µs taken>`.
        ["get", key, ms] => {
            let ms: u64 = ms.parse().unwrap();
            let cache = cache.clone();
            let key = key.to_owned();
            say("calling");
            tokio::spawn(async move {
                let ran = Arc::new(AtomicU64::new(0));
                let loader = {
                    let (key, ran) = (key.clone(), ran.clone());
                    move || async move {
                        ran.fetch_add(1, Ordering::SeqCst);
                        say("loading");
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok::<_, std::io::Error>(loaded_value(&key))
                    }
                };
                let started = Instant::now();
                let value = cache.get_or_load(&key, loader).await;
                let took = started.elapsed().as_micros();
                match value {
                    Ok(value) => say(format!(
                        "value {value} {} {took}",
                        ran.load(Ordering::SeqCst)
                    )),
                    Err(err) => say(format!("error {err}")),
                }
            });
        }
        ["stats"] => {
            let s = cache.stats();
            say(format!(
                "stats loads={} lease_waits={} load_waits={} fills_refused={} load_errors={}",
                s.loads, s.lease_waits, s.load_waits, s.fills_refused, s.load_errors
            ));
        }
        ref other => say(format!("error unknown command {other:?}")),
    }
}

// ---------------------------------------------------------------- test side

type Process = NodeProcess;

/// Lease settings of a node, in milliseconds (None: the default).
#[derive(Clone, Copy, Default)]
struct Leases {
    ttl_ms: Option<u64>,
    wait_ms: Option<u64>,
}

fn start(redis: &RedisServer, name: &str, leases: Leases) -> Process {
    let mut env = vec![("NODE_REDIS_URL", redis.url())];
    if let Some(ms) = leases.ttl_ms {
        env.push(("NODE_LEASE_TTL_MS", ms.to_string()));
    }
    if let Some(ms) = leases.wait_ms {
        env.push(("NODE_LEASE_WAIT_MS", ms.to_string()));
    }
    NodeProcess::start(NODE_ENV, name, &env)
}

/// A `value` answer: the value, whether the node's own loader ran, and how
/// long its get_or_load took.
struct Got {
    value: String,
    loaded: bool,
    took: Duration,
}

fn parse_value(answer: &str) -> Got {
    let fields: Vec<&str> = answer.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "bad value answer `{answer}`");
    Got {
        value: fields[0].to_owned(),
        loaded: fields[1] == "1",
        took: Duration::from_micros(fields[2].parse().unwrap()),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The (single) fill lease in Redis, looked at directly.
struct LeaseProbe {
    conn: redis::Connection,
    key: String,
}

impl LeaseProbe {
    fn new(redis: &RedisServer) -> LeaseProbe {
        let mut conn = redis.client().get_connection().unwrap();
        // SCAN, not KEYS: every test server fails its test on KEYS.
        let mut leases: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        for _ in 0..10_000 {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("*:lease")
                .query(&mut conn)
                .unwrap();
            leases.extend(keys);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        assert_eq!(leases.len(), 1, "one lease held, found {leases:?}");
        let key = leases.into_iter().next().unwrap();
        LeaseProbe { conn, key }
    }

    /// What is left of the lease.
    fn left(&mut self) -> Duration {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&self.key)
            .query(&mut self.conn)
            .unwrap();
        assert!(
            pttl >= 0,
            "the lease {} is gone or has no expiry ({pttl})",
            self.key
        );
        Duration::from_millis(pttl as u64)
    }

    /// Waits (bounded) until the holder has extended the lease `n` times,
    /// seen as its time left going up.
    fn await_extensions(&mut self, n: usize) {
        let deadline = Instant::now() + ANSWER;
        let (mut seen, mut last) = (0, self.left());
        loop {
            let left = self.left();
            if left > last {
                seen += 1;
                if seen == n {
                    return;
                }
            }
            last = left;
            assert!(
                Instant::now() < deadline,
                "the lease was extended {seen} times in {ANSWER:?}, not {n}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn four_processes_load_a_cold_key_once() {
    let _serial = serial();
    let redis = RedisServer::spawn();
    let mut nodes: Vec<Process> = (0..4)
        .map(|i| start(&redis, &format!("node {i}"), Leases::default()))
        .collect();
    let (rounds, callers, loader_ms) = (5, 1_000, 300);
    let mut total_loads = 0;
    for round in 0..rounds {
        let key = format!("cold{round}");
        // All four bursts go out before any answer is read, so they overlap
        // (the loader's 300 ms dwarfs the skew of four pipe writes).
        for node in &mut nodes {
            node.send(&format!("burst {key} {callers} {loader_ms}"));
        }
        let mut loads = 0;
        let mut values = BTreeSet::new();
        for node in &mut nodes {
            let answer = node.expect("done");
            let fields: Vec<&str> = answer.split_whitespace().collect();
            assert_eq!(
                fields.len(),
                3,
                "bad answer from {}: `{answer}`",
                node.name()
            );
            let (here, errors): (u64, u64) =
                (fields[0].parse().unwrap(), fields[1].parse().unwrap());
            assert_eq!(errors, 0, "{} had failed calls on {key}", node.name());
            loads += here;
            values.extend(fields[2].split(',').map(str::to_owned));
        }
        assert_eq!(
            values.len(),
            1,
            "every caller of {key} in every process got the same value: {values:?}"
        );
        assert!(values.iter().all(|v| v.starts_with(&format!("{key}@"))));
        assert_eq!(loads, 1, "{key}: one load across the 4 processes");
        total_loads += loads;
    }
    let (mut lease_waits, mut refused) = (0, 0);
    for node in &mut nodes {
        lease_waits += node.stat("lease_waits");
        refused += node.stat("fills_refused");
    }
    println!(
        "4 processes × {callers} concurrent get_or_load of a cold key ({loader_ms} ms loader): \
         {total_loads} load(s) in total over {rounds} rounds; {lease_waits} flights waited on \
         another process's lease; {refused} fills refused"
    );
    assert_eq!(total_loads, rounds);
    assert_eq!(refused, 0);
    // Each round: one process loads, the others' flights find its lease
    // (unless a burst arrives after the fill, which the 300 ms loader makes
    // unlikely but not impossible; at least some must have waited).
    assert!(lease_waits >= 1, "the lease was exercised");
}

#[test]
fn killing_the_lease_holder_mid_load_lets_the_others_load_within_the_lease() {
    let _serial = serial();
    let redis = RedisServer::spawn();
    let lease = Duration::from_secs(1);
    let leases = Leases {
        ttl_ms: Some(lease.as_millis() as u64),
        // Long enough that B and C never give up waiting and load without
        // the lease: what is measured is the lease running out.
        wait_ms: Some(30_000),
    };
    let mut a = start(&redis, "A", leases);
    let mut b = start(&redis, "B", leases);
    let mut c = start(&redis, "C", leases);
    let loader_ms = 10;

    // A claims the lease and hangs in its loader.
    a.send("hang k");
    a.expect("loading");
    // B and C find the lease held and wait on it.
    for node in [&mut b, &mut c] {
        node.ask(&format!("get k {loader_ms}"), "calling");
        node.await_stat("lease_waits", 1);
    }
    // A extends its lease every third of it, back to the full `lease`: at
    // the kill at most that is left. Kill it right after an extension (the
    // worst case), and after enough of them that B and C have outlived the
    // lease they first saw and claimed again.
    let extensions = 4;
    let mut probe = LeaseProbe::new(&redis);
    probe.await_extensions(extensions);
    let left = probe.left();
    let killed = Instant::now();
    a.kill();

    let mut answers = Vec::new();
    for node in [&mut b, &mut c] {
        // The node that loads answers `loading` first.
        let (at, answer) = node.expect_at("");
        let (at, answer) = match answer.strip_prefix("loading") {
            Some(_) => node.expect_at("value"),
            None => match answer.strip_prefix("value") {
                Some(rest) => (at, rest.trim().to_owned()),
                None => panic!("expected `value` from {}, got `{answer}`", node.name()),
            },
        };
        answers.push((node.name().to_owned(), at - killed, parse_value(&answer)));
    }
    for (name, after_kill, got) in &answers {
        println!(
            "holder A killed after {extensions} extensions, {} of its {} lease left: {name} got {} \
             {} after the kill ({} in get_or_load), {}",
            ms(left),
            ms(lease),
            got.value,
            ms(*after_kill),
            ms(got.took),
            if got.loaded {
                "loaded it itself"
            } else {
                "from the other's fill"
            }
        );
    }
    let loads = answers.iter().filter(|(_, _, got)| got.loaded).count();
    assert_eq!(loads, 1, "one of B and C loads once A's lease is gone");
    assert_eq!(
        answers[0].2.value, answers[1].2.value,
        "B and C got the same value"
    );
    assert!(!answers[0].2.value.is_empty());
    for (name, after_kill, _) in &answers {
        // The rest of A's lease (≤ 1 s), the 2 ms past its end the waiter
        // sleeps, the 10 ms loader, a few round trips; the margin is for a
        // debug build on two shared cores.
        assert!(
            *after_kill < lease + Duration::from_millis(500),
            "{name} answered {} after A's death (lease {})",
            ms(*after_kill),
            ms(lease)
        );
    }
    assert_eq!(b.stat("fills_refused") + c.stat("fills_refused"), 0);
}

#[test]
fn a_fill_wakes_waiters_in_other_processes_before_the_lease_ends() {
    let _serial = serial();
    let redis = RedisServer::spawn();
    let lease = Duration::from_secs(5);
    let leases = Leases {
        ttl_ms: Some(lease.as_millis() as u64),
        wait_ms: Some(30_000),
    };
    let mut a = start(&redis, "A", leases);
    let mut b = start(&redis, "B", leases);
    let loader_ms = 200;

    // A takes the lease and loads for 200 ms; B asks meanwhile.
    a.ask(&format!("get k {loader_ms}"), "calling");
    a.expect("loading");
    b.ask("get k 10", "calling");
    let (a_at, a_answer) = a.expect_at("value");
    let (b_at, b_answer) = b.expect_at("value");
    let (a_got, b_got) = (parse_value(&a_answer), parse_value(&b_answer));
    let b_waits = b.stat("lease_waits");
    // B's answer after A's (both stamped as they arrived here); B can come
    // out a hair ahead: A's answer is written after the fill's announcement.
    let gap = b_at.saturating_duration_since(a_at);
    println!(
        "A loaded in {} ({loader_ms} ms loader, lease {}); B, waiting on A's lease, got the \
         value after {} in get_or_load, {} after A's answer",
        ms(a_got.took),
        ms(lease),
        ms(b_got.took),
        ms(gap)
    );
    assert!(a_got.loaded, "A held the lease and loaded");
    assert!(!b_got.loaded, "B did not load: it got A's fill");
    assert_eq!(a_got.value, b_got.value);
    assert_eq!(b_waits, 1, "B waited on A's lease");
    // Woken by the fill (≈ the rest of A's 200 ms load), not by the 5 s
    // lease running out.
    assert!(
        b_got.took < Duration::from_secs(1),
        "B took {}: not woken by the fill",
        ms(b_got.took)
    );
    assert!(
        gap < Duration::from_millis(500),
        "B came {} after A",
        ms(gap)
    );
}
