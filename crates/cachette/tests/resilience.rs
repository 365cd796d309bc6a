//! Redis failing under load: killed, hung, and back again.
//!
//! The promises: callers see no failures (loads fail open to their
//! loaders), the source never sees more concurrent loads than the cap, the
//! circuit breaker closes within 2 s of Redis answering again and L2 fills
//! again, a hung Redis costs each call at most its deadline, and nothing
//! (tasks, connections) outlives the outage. Writes skipped while the
//! circuit was open never leave an older copy in Redis to be served later.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachette::store::{BreakerConfig, CircuitState, RedisConfig, RedisStore, Store};
use cachette::{Cache, LoadLimit};
use cachette_test::RedisServer;

const KEYS: u64 = 400;
const CALLERS: usize = 16;
const CAP: usize = 4;
const LOADER_TIME: Duration = Duration::from_millis(2);

async fn store(server: &RedisServer, command_timeout: Duration) -> RedisStore {
    let config = RedisConfig::from_url(&server.url())
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .command_timeout(command_timeout)
        .circuit_breaker(
            BreakerConfig::default()
                .failures(5)
                .probe_every(Duration::from_millis(100)),
        );
    RedisStore::connect(config).await.unwrap()
}

/// Counts the loader's concurrent runs, as the source would see them.
#[derive(Default)]
struct Source {
    running: AtomicUsize,
    peak: AtomicUsize,
    loads: AtomicU64,
}

impl Source {
    async fn load(&self, key: &str) -> String {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.loads.fetch_add(1, Ordering::SeqCst);
        // The source's own latency; nothing synchronises on it.
        tokio::time::sleep(LOADER_TIME).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        format!("value of {key}")
    }
}

/// What the callers saw.
#[derive(Default)]
struct Seen {
    calls: AtomicU64,
    failures: AtomicU64,
    wrong: AtomicU64,
    slowest_us: AtomicU64,
}

impl Seen {
    /// Waits (at most 10 s) until more than `calls` calls returned.
    async fn wait_for_calls(&self, calls: u64) {
        let reached = wait_for(Duration::from_secs(10), || {
            self.calls.load(Ordering::SeqCst) > calls
        })
        .await;
        assert!(reached.is_some(), "the load stalled below {calls} calls");
    }
}

/// Waits (at most 5 s) until the circuit is closed, or not closed; returns
/// how long that took.
async fn wait_for_circuit(store: &RedisStore, closed: bool) -> Option<Duration> {
    wait_for(Duration::from_secs(5), || {
        (store.circuit().state == CircuitState::Closed) == closed
    })
    .await
}

/// `CALLERS` tasks reading random keys through `get_or_load` until `stop`.
fn start_load(
    cache: &Cache<String>,
    source: &Arc<Source>,
    seen: &Arc<Seen>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CALLERS)
        .map(|caller| {
            let (cache, source, seen, stop) = (
                cache.clone(),
                Arc::clone(source),
                Arc::clone(seen),
                Arc::clone(stop),
            );
            tokio::spawn(async move {
                let mut n = caller as u64;
                // Bounded: the test stops the load well before this.
                for _ in 0..10_000_000u64 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let key = format!("k{}", (n >> 33) % KEYS);
                    let started = Instant::now();
                    let source = Arc::clone(&source);
                    let k = key.clone();
                    let got = cache
                        .get_or_load(&key, move || async move {
                            Ok::<_, std::io::Error>(source.load(&k).await)
                        })
                        .await;
                    let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    seen.slowest_us.fetch_max(took, Ordering::SeqCst);
                    seen.calls.fetch_add(1, Ordering::SeqCst);
                    match got {
                        Ok(v) if v == format!("value of {key}") => {}
                        Ok(_) => {
                            seen.wrong.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            if seen.failures.fetch_add(1, Ordering::SeqCst) < 3 {
                                eprintln!("call failed: {e:?}");
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

/// Polls `done` every 5 ms until it holds or `within` passes; returns how
/// long it took, or `None`.
async fn wait_for(within: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if done() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done().then(|| started.elapsed())
}

fn dbsize(server: &RedisServer) -> u64 {
    let mut conn = server.client().get_connection().unwrap();
    redis::cmd("DBSIZE").query(&mut conn).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_fails_no_call_and_recovers_within_two_seconds() {
    let mut server = RedisServer::spawn();
    let store = store(&server, Duration::from_millis(250)).await;
    let cache: Cache<String> = Cache::builder("killed")
        .store(store.clone())
        .l1(4 * 1024 * 1024)
        .l1_ttl(Duration::from_millis(500))
        .load_limit(LoadLimit::new(CAP))
        .build()
        .unwrap();
    let (source, seen, stop) = (
        Arc::new(Source::default()),
        Arc::new(Seen::default()),
        Arc::new(AtomicBool::new(false)),
    );
    let load = start_load(&cache, &source, &seen, &stop);

    // Warm: L2 holds entries.
    assert!(
        wait_for(Duration::from_secs(10), || dbsize(&server) > KEYS / 2)
            .await
            .is_some()
    );
    let before_kill = seen.calls.load(Ordering::SeqCst);

    server.stop(); // SIGKILL
    let opened = wait_for_circuit(&store, false)
        .await
        .expect("the circuit opens while Redis is dead");
    // Serve a while with Redis dead: L1 and the loaders only.
    let outage_calls = seen.calls.load(Ordering::SeqCst);
    let outage_loads = source.loads.load(Ordering::SeqCst);
    seen.wait_for_calls(outage_calls + 2_000).await;
    let loads_in_outage = source.loads.load(Ordering::SeqCst);
    let (calls_open, loads_open) = (
        seen.calls.load(Ordering::SeqCst) - outage_calls,
        loads_in_outage - outage_loads,
    );

    server.start();
    let closed = wait_for_circuit(&store, true)
        .await
        .expect("the circuit closes once Redis answers");
    // The restarted Redis is empty; L2 fills again under load.
    let refilled = wait_for(Duration::from_secs(10), || dbsize(&server) > KEYS / 2).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }

    let stats = cache.stats();
    eprintln!(
        "killed: {} calls ({} before the kill), {} failed, {} wrong; circuit opened {:?} after the kill, \
         closed {:?} after restart; L2 refilled in {:?}; source loads {} ({} by the end of the outage), \
         peak concurrency {} (cap {CAP}); while open: {loads_open} loads for {calls_open} calls; {} store calls skipped, {} store errors, opened {} time(s), \
         {} loads waited for a permit",
        seen.calls.load(Ordering::SeqCst),
        before_kill,
        seen.failures.load(Ordering::SeqCst),
        seen.wrong.load(Ordering::SeqCst),
        opened,
        closed,
        refilled,
        source.loads.load(Ordering::SeqCst),
        loads_in_outage,
        source.peak.load(Ordering::SeqCst),
        stats.store_skipped,
        stats.store_errors,
        stats.circuit.opened,
        stats.load_permit_waits,
    );
    assert_eq!(seen.failures.load(Ordering::SeqCst), 0, "no call failed");
    assert_eq!(seen.wrong.load(Ordering::SeqCst), 0);
    assert!(source.peak.load(Ordering::SeqCst) <= CAP, "the cap held");
    // L1 keeps what the loaders return while the store is away: the source
    // sees each key about once per L1 TTL, not every read.
    assert!(
        loads_open * 4 < calls_open,
        "{loads_open} loads for {calls_open} calls while the circuit was open"
    );
    assert!(
        closed <= Duration::from_secs(2),
        "closed within 2 s: {closed:?}"
    );
    assert!(refilled.is_some(), "L2 fills again");
    assert_eq!(stats.circuit.state, CircuitState::Closed);
    assert_eq!(stats.circuit.opened, 1, "one outage, one opening");
    assert!(stats.store_skipped > 0, "calls skipped the dead store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_each_call_at_most_its_deadline_and_leaks_nothing() {
    let server = RedisServer::spawn();
    let command_timeout = Duration::from_millis(150);
    let store = store(&server, command_timeout).await;
    let cache: Cache<String> = Cache::builder("hung")
        .store(store.clone())
        .l1(4 * 1024 * 1024)
        .l1_ttl(Duration::from_millis(500))
        .load_limit(LoadLimit::new(CAP))
        .build()
        .unwrap();
    let clients = || -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query(&mut server.client().get_connection().unwrap())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    };
    // Baselines, with the store's one connection open and idle.
    cache
        .get_or_load("warm", || async {
            Ok::<_, std::io::Error>("w".to_string())
        })
        .await
        .unwrap();
    let runtime = tokio::runtime::Handle::current().metrics();
    let tasks_before = runtime.num_alive_tasks();
    let clients_before = clients();

    let (source, seen, stop) = (
        Arc::new(Source::default()),
        Arc::new(Seen::default()),
        Arc::new(AtomicBool::new(false)),
    );
    let load = start_load(&cache, &source, &seen, &stop);
    seen.wait_for_calls(500).await;
    let slowest_before = seen.slowest_us.swap(0, Ordering::SeqCst);

    server.pause(); // SIGSTOP: connections stay open, nothing answers.
    let opened = wait_for_circuit(&store, false)
        .await
        .expect("the circuit opens while Redis hangs");
    let during = seen.calls.load(Ordering::SeqCst);
    seen.wait_for_calls(during + 2_000).await;
    let slowest_hung = seen.slowest_us.load(Ordering::SeqCst);

    server.resume();
    let closed = wait_for_circuit(&store, true)
        .await
        .expect("the circuit closes once Redis answers");
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    // Everything the outage started ends: the probe task, timed-out
    // commands' bookkeeping, the loads. Bounded wait for stragglers.
    let tasks_settled = wait_for(Duration::from_secs(5), || {
        runtime.num_alive_tasks() <= tasks_before
    })
    .await;
    let clients_settled = wait_for(Duration::from_secs(5), || clients() <= clients_before).await;

    // A call's deadline: one command timeout for each store step it can
    // wait on (read, claim, fill) plus the loader, with scheduling slack.
    let deadline = command_timeout * 3 + LOADER_TIME + Duration::from_millis(150);
    eprintln!(
        "hung: {} calls, {} failed, {} wrong; slowest call {:.1} ms before the hang, {:.1} ms while hung \
         (deadline {:?}); circuit opened {opened:?} after SIGSTOP, closed {closed:?} after SIGCONT; \
         tasks {} -> {} ({tasks_settled:?}), connections {} -> {} ({clients_settled:?})",
        seen.calls.load(Ordering::SeqCst),
        seen.failures.load(Ordering::SeqCst),
        seen.wrong.load(Ordering::SeqCst),
        slowest_before as f64 / 1000.0,
        slowest_hung as f64 / 1000.0,
        deadline,
        tasks_before,
        runtime.num_alive_tasks(),
        clients_before,
        clients(),
    );
    assert_eq!(seen.failures.load(Ordering::SeqCst), 0, "no call failed");
    assert_eq!(seen.wrong.load(Ordering::SeqCst), 0);
    assert!(
        Duration::from_micros(slowest_hung) <= deadline,
        "every call returned within its deadline"
    );
    assert!(source.peak.load(Ordering::SeqCst) <= CAP);
    assert!(tasks_settled.is_some(), "no task outlived the outage");
    assert!(
        clients_settled.is_some(),
        "no connection outlived the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_skipped_while_the_circuit_was_open_leaves_no_older_copy_in_redis() {
    let server = RedisServer::spawn();
    let store = store(&server, Duration::from_millis(100)).await;
    let cache: Cache<String> = Cache::builder("skipped")
        .store(store.clone())
        .build()
        .unwrap();
    cache.set("k", &"v1".to_string()).await.unwrap();
    cache.set("other", &"kept".to_string()).await.unwrap();

    server.pause();
    // Reads time out until the circuit opens.
    for _ in 0..20 {
        let _ = cache.get("probe").await;
        if store.circuit().state != CircuitState::Closed {
            break;
        }
    }
    assert_eq!(store.circuit().state, CircuitState::Open);
    // The source changed: the write cannot reach Redis, which still holds v1.
    let err = cache.set("k", &"v2".to_string()).await.unwrap_err();
    assert!(err.is_store_unavailable(), "{err:?}");
    server.resume();
    wait_for_circuit(&store, true)
        .await
        .expect("the circuit closes");

    // Redis kept its data through the hang, but not the key whose write it
    // missed: the next read loads the current value instead of v1.
    let v = cache
        .get_or_load("k", || async { Ok::<_, std::io::Error>("v2".to_string()) })
        .await
        .unwrap();
    assert_eq!(v, "v2", "no older copy served after the outage");
    assert_eq!(cache.get("other").await.unwrap().as_deref(), Some("kept"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_cap_holds_across_caches_sharing_it() {
    // The embedded store never fails: the cap also holds with the store up.
    let limit = LoadLimit::new(3);
    let a: Cache<String> = Cache::builder("cap-a")
        .load_limit(limit.clone())
        .build()
        .unwrap();
    let b: Cache<String> = Cache::builder("cap-b")
        .load_limit(limit.clone())
        .build()
        .unwrap();
    let source = Arc::new(Source::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (source, gate) = (Arc::clone(&source), Arc::clone(&gate));
            tokio::spawn(async move {
                cache
                    .get_or_load(&format!("k{i}"), move || async move {
                        let now = source.running.fetch_add(1, Ordering::SeqCst) + 1;
                        source.peak.fetch_max(now, Ordering::SeqCst);
                        let _ = gate.acquire().await.map(|p| p.forget());
                        source.running.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, std::io::Error>(format!("v{i}"))
                    })
                    .await
            })
        })
        .collect();
    // Three loads start and hold their permits; the rest wait for one.
    assert!(
        wait_for(Duration::from_secs(5), || source
            .running
            .load(Ordering::SeqCst)
            == 3)
        .await
        .is_some()
    );
    assert!(
        wait_for(Duration::from_secs(5), || a.stats().load_permit_waits
            + b.stats().load_permit_waits
            == 17)
        .await
        .is_some()
    );
    assert_eq!(limit.in_use(), 3);
    gate.add_permits(20);
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), format!("v{i}"));
    }
    assert_eq!(source.peak.load(Ordering::SeqCst), 3);
    assert_eq!(limit.in_use(), 0);
}
