//! L1 coherence between separate OS processes on one real redis-server.
//!
//! The test binary runs itself again as "nodes" (the ignored `node` test,
//! switched on by an environment variable): each node is one instance with
//! its own Redis store, backplane and L1, driven by line commands on stdin
//! and answering with `@ `-prefixed lines on stdout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cachette::Cache;
use cachette::backplane::{Backplane, BackplaneConfig};
use cachette::store::{RedisConfig, RedisStore};
use cachette_test::RedisServer;
use cachette_test::node::{self, NodeProcess, say, serial};
use rand::{Rng, SeedableRng};

const NODE_ENV: &str = "CACHETTE_COHERENCE_NODE";
const LEASE: Duration = Duration::from_millis(500);

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

// ---------------------------------------------------------------- node side

/// One instance. Ignored in normal runs; the tests below start it.
#[test]
#[ignore = "a child process of the coherence tests"]
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

struct Node {
    cache: Cache<String>,
    /// The same namespace without L1: what the store (L2) holds.
    l2: Cache<String>,
    backplane: Backplane,
    redis_url: String,
    chaos: Arc<AtomicBool>,
}

async fn node_main() {
    let url = std::env::var("NODE_REDIS_URL").unwrap();
    let ryw = std::env::var("NODE_RYW").is_ok_and(|v| v == "1");
    let l1_bytes: u64 = std::env::var("NODE_L1_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64 << 20);
    let config = RedisConfig::from_url(&url).unwrap();
    let store = RedisStore::connect(config.clone()).await.unwrap();
    let backplane = Backplane::connect(BackplaneConfig::new(config).lease(LEASE))
        .await
        .unwrap();
    let mut builder = Cache::builder("co")
        .store(store.clone())
        .ttl(Duration::from_secs(600))
        .l1(l1_bytes)
        .l1_ttl(Duration::from_secs(600))
        .backplane(backplane.clone());
    if ryw {
        builder = builder.read_your_writes();
    }
    let node = Arc::new(Node {
        cache: builder.build().unwrap(),
        l2: Cache::builder("co").store(store).build().unwrap(),
        backplane,
        redis_url: url,
        chaos: Arc::new(AtomicBool::new(false)),
    });
    say(format!("ready {}", node.backplane.id()));
    let mut commands = node::commands();
    while let Some(line) = commands.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        run_command(&node, &words).await;
    }
}

fn shown(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

async fn run_command(node: &Arc<Node>, words: &[&str]) {
    let cache = &node.cache;
    match words {
        ["set", key, value] => {
            let start = unix_ns();
            let t = Instant::now();
            cache.set(key, &(*value).to_string()).await.unwrap();
            say(format!("ok {start} {}", t.elapsed().as_nanos()));
        }
        ["del", key] => {
            let start = unix_ns();
            let t = Instant::now();
            cache.delete(key).await.unwrap();
            say(format!("ok {start} {}", t.elapsed().as_nanos()));
        }
        ["get", key] => {
            let before = cache.stats().l1_hits;
            let v = cache.get(key).await.unwrap();
            let l1 = u8::from(cache.stats().l1_hits > before);
            say(format!("v {} {l1}", shown(v)));
        }
        // Holds `old` in L1, then reads until `new` shows up.
        ["watch", key, old, new] => {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let before = cache.stats().l1_hits;
                let v = shown(cache.get(key).await.unwrap());
                if cache.stats().l1_hits > before && v == *old {
                    break;
                }
                if Instant::now() > deadline {
                    say(format!("timeout arming: read {v}"));
                    return;
                }
                tokio::task::yield_now().await;
            }
            say("armed");
            loop {
                let v = cache.get_shared(key).await.unwrap();
                if v.as_deref().map_or("-", String::as_str) == *new {
                    say(format!("seen {}", unix_ns()));
                    return;
                }
                if Instant::now() > deadline {
                    say("timeout");
                    return;
                }
                // Leave the cores to Redis, the writer and this node's
                // subscriber between reads (2 cores for all of them).
                std::thread::sleep(Duration::from_micros(20));
                tokio::task::yield_now().await;
            }
        }
        ["random", seed, ops, keys, tasks] => {
            let (seed, ops, keys, tasks): (u64, usize, usize, usize) = (
                seed.parse().unwrap(),
                ops.parse().unwrap(),
                keys.parse().unwrap(),
                tasks.parse().unwrap(),
            );
            let mut handles = Vec::new();
            for t in 0..tasks {
                let node = Arc::clone(node);
                handles.push(tokio::spawn(async move {
                    random_ops(&node.cache, seed * 1000 + t as u64, ops / tasks, keys).await;
                }));
            }
            for h in handles {
                h.await.unwrap();
            }
            node.backplane.sync().await.unwrap();
            say(format!("done {ops}"));
        }
        ["audit", keys] => {
            node.backplane.sync().await.unwrap();
            let keys: usize = keys.parse().unwrap();
            let (mut copies, mut divergent) = (0, 0);
            for k in 0..keys {
                let key = format!("r{k}");
                let Some(copy) = cache.l1_peek(&key).unwrap() else {
                    continue;
                };
                copies += 1;
                let stored = node.l2.get(&key).await.unwrap();
                if copy.as_deref() != stored.as_ref() {
                    divergent += 1;
                    eprintln!("divergent {key}: L1 {copy:?}, L2 {stored:?}");
                }
            }
            say(format!("audit {keys} {copies} {divergent}"));
        }
        // Reads `key` for `ms` milliseconds; reports, per value, the last
        // instant it was read.
        ["read", key, ms] => {
            let until = Instant::now() + Duration::from_millis(ms.parse().unwrap());
            let mut last: HashMap<String, u128> = HashMap::new();
            let mut reads = 0u64;
            while Instant::now() < until {
                let v = shown(cache.get(key).await.unwrap());
                last.insert(v, unix_ns());
                reads += 1;
                tokio::task::yield_now().await;
            }
            let list: Vec<String> = last.iter().map(|(v, t)| format!("{v}:{t}")).collect();
            say(format!("reads {reads} {}", list.join(" ")));
        }
        // Writes `key` = 1..=n, one every `gap` µs; reports each write's
        // completion instant.
        ["write", key, n, gap] => {
            let (n, gap): (u64, u64) = (n.parse().unwrap(), gap.parse().unwrap());
            let mut done = Vec::new();
            for i in 1..=n {
                cache.set(key, &i.to_string()).await.unwrap();
                done.push(format!("{i}:{}", unix_ns()));
                tokio::time::sleep(Duration::from_micros(gap)).await;
            }
            say(format!("writes {}", done.join(" ")));
        }
        // Fault injection: kill this node's own subscriber connection every
        // `ms` milliseconds, through Redis (CLIENT KILL), until `chaos off`.
        ["chaos", "on", ms] => {
            let every = Duration::from_millis(ms.parse().unwrap());
            node.chaos.store(true, Ordering::SeqCst);
            let node = Arc::clone(node);
            tokio::spawn(async move {
                let client = redis::Client::open(node.redis_url.as_str()).unwrap();
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                while node.chaos.load(Ordering::SeqCst) {
                    tokio::time::sleep(every).await;
                    if let Some(addr) = node.backplane.subscriber_addr() {
                        let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                            .arg("KILL")
                            .arg("ADDR")
                            .arg(addr.to_string())
                            .query_async(&mut conn)
                            .await;
                    }
                }
            });
            say("ok");
        }
        ["chaos", "off"] => {
            node.chaos.store(false, Ordering::SeqCst);
            say("ok");
        }
        ["stats"] => {
            let s = cache.stats();
            let b = node.backplane.stats();
            say(format!(
                "stats l1_hits={} hits={} misses={} sent={} received={} disconnects={} subscriptions={} acknowledged={} lease_waits={} healthy={}",
                s.l1_hits,
                s.hits,
                s.misses,
                s.invalidations_sent,
                s.invalidations_received,
                b.disconnects,
                b.subscriptions,
                b.acknowledged_writes,
                b.lease_waits,
                b.healthy
            ));
        }
        // Writes `n` values of `size` bytes (each enters L1), reporting the
        // resident memory before and after, and what L1 charges.
        ["fill", n, size] => {
            let (n, size): (usize, usize) = (n.parse().unwrap(), size.parse().unwrap());
            let before = rss_bytes();
            for i in 0..n {
                let mut value = format!("{i:08}-");
                value.extend(std::iter::repeat_n('x', size.saturating_sub(9)));
                cache.set(&format!("m{i}"), &value).await.unwrap();
            }
            let usage = cache.l1_usage().unwrap();
            say(format!(
                "filled {before} {} {} {}",
                rss_bytes(),
                usage.weighted_bytes,
                usage.entries
            ));
        }
        ["peek", key] => {
            let held = cache.l1_peek(key).unwrap().is_some();
            say(format!("peek {}", u8::from(held)));
        }
        ["sync"] => {
            node.backplane.sync().await.unwrap();
            say("ok");
        }
        ["settag", key, value, tag] => {
            cache
                .set_tagged(key, &(*value).to_string(), &[tag])
                .await
                .unwrap();
            say("ok");
        }
        ["invtag", tag] => {
            cache.invalidate_tag(tag).await.unwrap();
            say("ok");
        }
        ["clear"] => {
            drop(cache.clear().await.unwrap());
            say("ok");
        }
        other => say(format!("error unknown command {other:?}")),
    }
}

/// This process's resident set size.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

async fn random_ops(cache: &Cache<String>, seed: u64, ops: usize, keys: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..ops {
        let key = format!("r{}", rng.random_range(0..keys));
        let value = format!("{seed}-{}", rng.random::<u32>());
        match rng.random_range(0..100) {
            0..50 => drop(cache.get(&key).await.unwrap()),
            50..75 => cache.set(&key, &value).await.unwrap(),
            75..85 => drop(cache.delete(&key).await.unwrap()),
            85..97 => drop(
                cache
                    .get_or_load(&key, move || async move { Ok::<_, std::io::Error>(value) })
                    .await
                    .unwrap(),
            ),
            _ => {
                let other = format!("r{}", rng.random_range(0..keys));
                cache
                    .set_many(&[(key, value.clone()), (other, value)])
                    .await
                    .unwrap();
            }
        }
    }
}

// ---------------------------------------------------------------- test side

type Process = NodeProcess;

fn start(redis: &RedisServer, ryw: bool, l1_bytes: Option<u64>) -> Process {
    let mut env = vec![
        ("NODE_REDIS_URL", redis.url()),
        ("NODE_RYW", if ryw { "1" } else { "0" }.to_owned()),
    ];
    if let Some(bytes) = l1_bytes {
        env.push(("NODE_L1_BYTES", bytes.to_string()));
    }
    NodeProcess::start(NODE_ENV, "node", &env)
}

fn percentile(sorted: &[u128], p: f64) -> u128 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(ns: u128) -> String {
    format!("{:.0} µs", ns as f64 / 1000.0)
}

/// Rounds of propagation measured (the README's figure uses 10,000).
fn rounds() -> usize {
    std::env::var("CACHETTE_COHERENCE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

#[test]
fn a_write_in_one_process_is_seen_by_another_within_milliseconds() {
    let _serial = serial();
    let redis = RedisServer::spawn();
    let mut a = start(&redis, false, None);
    let mut b = start(&redis, false, None);
    a.ask("set k v0", "ok");
    let mut delays = Vec::new();
    let mut writes = Vec::new();
    let mut current = "v0".to_owned();
    let n = rounds();
    for i in 1..=n {
        let deleting = i % 10 == 0;
        let next = if deleting {
            "-".to_owned()
        } else {
            format!("v{i}")
        };
        b.ask(&format!("watch k {current} {next}"), "armed");
        let answer = if deleting {
            a.ask("del k", "ok")
        } else {
            a.ask(&format!("set k {next}"), "ok")
        };
        let mut fields = answer
            .split_whitespace()
            .map(|f| f.parse::<u128>().unwrap());
        let started = fields.next().unwrap();
        writes.push(fields.next().unwrap());
        let seen: u128 = b.expect("seen").parse().unwrap();
        delays.push(seen.saturating_sub(started));
        current = next;
        if deleting {
            current = format!("v{i}");
            a.ask(&format!("set k {current}"), "ok");
        }
    }
    delays.sort_unstable();
    let (p50, p99, max) = (
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        *delays.last().unwrap(),
    );
    println!(
        "propagation over {n} invalidations (sets and deletes, process A to process B's reader): p50 {} p99 {} max {}",
        us(p50),
        us(p99),
        us(max)
    );
    writes.sort_unstable();
    println!(
        "eventual-mode write latency (set/delete on A, Redis round trip included): p50 {} p99 {}",
        us(percentile(&writes, 0.5)),
        us(percentile(&writes, 0.99))
    );
    assert!(b.stat("received") >= n as u64);
    // The figure (p99 ≤ 5 ms on loopback) comes from the release run in the
    // README; here, on a shared machine in a debug build, only that every
    // change arrived by message, orders of magnitude before the L1 TTL.
    assert!(
        max < 1_000_000_000,
        "max {} is not a message's delay",
        us(max)
    );
}

#[test]
fn three_processes_under_random_load_end_with_l1_agreeing_with_l2() {
    let _serial = serial();
    let redis = RedisServer::spawn();
    let mut nodes: Vec<Process> = (0..3).map(|_| start(&redis, false, None)).collect();
    let (keys, ops) = (200, 30_000);
    for (i, node) in nodes.iter_mut().enumerate() {
        node.send(&format!("random {} {ops} {keys} 4", i + 1));
    }
    for node in &mut nodes {
        node.expect("done");
    }
    let mut total_copies = 0;
    for node in &mut nodes {
        let audit = node.ask(&format!("audit {keys}"), "audit");
        let fields: Vec<u64> = audit
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        let (copies, divergent) = (fields[1], fields[2]);
        println!("audit: {keys} keys, {copies} L1 copies, {divergent} divergent");
        assert_eq!(divergent, 0, "every L1 copy equals L2");
        total_copies += copies;
    }
    assert!(total_copies > 0, "the audit looked at copies");
    for node in &mut nodes {
        assert!(node.stat("received") > 0);
    }
}

/// Max over reads on B of: how long after the write that replaced a value
/// B still read it.
fn max_staleness(writes: &str, reads: &str) -> u128 {
    let done: HashMap<u64, u128> = writes
        .split_whitespace()
        .map(|w| {
            let (i, t) = w.split_once(':').unwrap();
            (i.parse().unwrap(), t.parse().unwrap())
        })
        .collect();
    let mut worst = 0;
    for r in reads.split_whitespace().skip(1) {
        let (v, t) = r.split_once(':').unwrap();
        let t: u128 = t.parse().unwrap();
        let Ok(v) = v.parse::<u64>() else { continue };
        if let Some(replaced) = done.get(&(v + 1)) {
            worst = worst.max(t.saturating_sub(*replaced));
        }
    }
    worst
}

#[test]
fn killing_the_backplane_connection_never_serves_a_value_past_the_cap() {
    let _serial = serial();
    let redis = RedisServer::spawn();
    let mut a = start(&redis, false, None);
    let mut b = start(&redis, false, None);
    a.ask("set k 0", "ok");
    b.ask("chaos on 40", "ok");
    b.send("read k 4000");
    let writes = a.ask("write k 1500 1000", "writes");
    let reads = b.expect("reads");
    b.ask("chaos off", "ok");
    let worst = max_staleness(&writes, &reads);
    let disconnects = b.stat("disconnects");
    println!(
        "backplane killed {disconnects} times in 4 s: worst staleness on B {} (cap: lease {LEASE:?})",
        us(worst)
    );
    assert!(disconnects >= 10, "the chaos killed the connection");
    assert!(
        worst <= LEASE.as_nanos() + 50_000_000,
        "stale past the cap: {}",
        us(worst)
    );
    // Back by itself: healthy, and invalidations flow again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.ask("stats", "stats").contains("healthy=false") {
        assert!(Instant::now() < deadline, "B's backplane never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    b.ask("watch k 1500 new", "armed");
    a.ask("set k new", "ok");
    b.expect("seen");
}

#[test]
fn read_your_writes_across_processes_never_reads_stale_even_under_kills() {
    let _serial = serial();
    let redis = RedisServer::spawn();
    let mut a = start(&redis, true, None);
    let mut b = start(&redis, true, None);
    let n = rounds();
    let mut latencies = Vec::with_capacity(n);
    let mut stale = 0;
    for phase in ["quiet", "kills"] {
        if phase == "kills" {
            b.ask("chaos on 100", "ok");
        }
        latencies.clear();
        for i in 0..n {
            let key = format!("k{}", i % 16);
            let value = format!("{phase}{i}");
            // B holds the old value in L1 (most rounds), then A writes.
            b.ask(&format!("get {key}"), "v");
            let answer = a.ask(&format!("set {key} {value}"), "ok");
            latencies.push(
                answer
                    .split_whitespace()
                    .nth(1)
                    .unwrap()
                    .parse::<u128>()
                    .unwrap(),
            );
            let read = b.ask(&format!("get {key}"), "v");
            if read.split_whitespace().next() != Some(value.as_str()) {
                stale += 1;
            }
        }
        latencies.sort_unstable();
        println!(
            "read-your-writes, {phase}: {n} write-then-read pairs, {stale} stale; write latency p50 {} p99 {} max {}",
            us(percentile(&latencies, 0.5)),
            us(percentile(&latencies, 0.99)),
            us(*latencies.last().unwrap())
        );
    }
    b.ask("chaos off", "ok");
    println!(
        "B: {} disconnects; A: {} acknowledged writes, {} lease waits",
        b.stat("disconnects"),
        a.stat("acknowledged"),
        a.stat("lease_waits")
    );
    assert_eq!(stale, 0);
    assert!(b.stat("disconnects") >= 5);
}

/// Process A invalidates a tag; process B, holding an L1 copy of an entry
/// carrying it, never serves that copy again: at once in read-your-writes
/// mode, and once the announcement is through (`sync`) in eventual mode.
/// Each round checks the copy really was an L1 hit before.
#[test]
fn a_tag_invalidated_in_one_process_is_respected_by_another_processs_l1() {
    let _serial = serial();
    let redis = RedisServer::spawn();
    for ryw in [true, false] {
        let mut a = start(&redis, ryw, None);
        let mut b = start(&redis, ryw, None);
        for round in 0..100 {
            let (key, tag) = (format!("t{ryw}{round}"), format!("cat{}", round % 7));
            a.ask(&format!("settag {key} v{round} {tag}"), "ok");
            if !ryw {
                a.ask("sync", "ok");
                b.ask("sync", "ok");
            }
            b.ask(&format!("get {key}"), "v");
            assert_eq!(
                b.ask(&format!("get {key}"), "v"),
                format!("v{round} 1"),
                "an L1 hit"
            );
            a.ask(&format!("invtag {tag}"), "ok");
            if !ryw {
                a.ask("sync", "ok");
                b.ask("sync", "ok");
            }
            assert_eq!(
                b.ask(&format!("get {key}"), "v"),
                "- 0",
                "round {round} (read-your-writes: {ryw}): B served an entry whose tag A invalidated"
            );
        }
        // A namespace clear on A drops B's L1 copies too.
        a.ask(&format!("set z{ryw} v"), "ok");
        if !ryw {
            a.ask("sync", "ok");
            b.ask("sync", "ok");
        }
        b.ask(&format!("get z{ryw}"), "v");
        assert_eq!(b.ask(&format!("get z{ryw}"), "v"), "v 1", "an L1 hit");
        a.ask("clear", "ok");
        if !ryw {
            a.ask("sync", "ok");
            b.ask("sync", "ok");
        }
        assert_eq!(
            b.ask(&format!("get z{ryw}"), "v"),
            "- 0",
            "read-your-writes: {ryw}: B served a copy from before A cleared the namespace"
        );
    }
}

#[test]
fn an_l1_filled_far_past_its_budget_stays_within_it() {
    let _serial = serial();
    let redis = RedisServer::spawn();
    let budget: u64 = 32 << 20;
    let mut node = start(&redis, false, Some(budget));
    // 8× the budget, in values of 16 KiB.
    let (n, size) = (16_384, 16 * 1024);
    let filled = node.ask(&format!("fill {n} {size}"), "filled");
    let f: Vec<u64> = filled
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let (before, after, weighted, entries) = (f[0], f[1], f[2], f[3]);
    let grown = after.saturating_sub(before);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "L1 budget {:.0} MiB, {:.0} MiB written: resident grew {:.1} MiB ({:.1} % of the budget); L1 charges {:.1} MiB for {entries} entries",
        mib(budget),
        mib((n * size) as u64),
        mib(grown),
        grown as f64 * 100.0 / budget as f64,
        mib(weighted)
    );
    assert!(weighted <= budget);
    assert!(grown <= budget + budget / 10, "resident grew {grown} bytes");
    // Over the size threshold (64 KiB by default): never in L1.
    let big = "y".repeat(100 * 1024);
    node.ask(&format!("set big {big}"), "ok");
    node.ask("get big", "v");
    assert_eq!(node.ask("peek big", "peek"), "0");
    node.ask("set small s", "ok");
    assert_eq!(node.ask("peek small", "peek"), "1");
}
