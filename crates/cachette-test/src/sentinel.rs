//! A disposable Redis Sentinel deployment for tests: a master, a replica and
//! three sentinels, each a [`RedisServer`] (own port, temp dir, log, `KEYS`
//! check, kill on drop).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::RedisServer;
use crate::server::{BACKOFF_MAX, BACKOFF_START, sleep_until_at_most};

/// The name the sentinels monitor the master under.
const MASTER_NAME: &str = "cachette";
const SENTINELS: usize = 3;
/// Sentinels needed to agree that the master is down.
const QUORUM: usize = 2;
/// How long the master must be unreachable before a sentinel considers it
/// down: short, so promotion is quick; not so short that a loaded machine
/// makes sentinels suspect a live master.
const DOWN_AFTER_MS: u64 = 1000;
/// Bounds each failover attempt (and the delay before a failed one is
/// retried, twice this).
const FAILOVER_TIMEOUT_MS: u64 = 3000;
/// Extra arguments of the master and the replica.
const DATA_SERVER_ARGS: &[&str] = &["--repl-diskless-sync-delay", "0"];
/// `SENTINEL DEBUG` settings applied to each sentinel, see [`speed_up`].
const SENTINEL_PERIODS: [(&str, u64); 3] = [
    ("info-period", 1000),
    ("publish-period", 500),
    ("tilt-period", 5000),
];
/// Bound for the group to come up or settle, and the default for a failover.
const GROUP_DEADLINE: Duration = Duration::from_secs(30);
/// Timeout of one admin command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// A master, one replica and three sentinels monitoring them (quorum 2), on
/// free loopback ports; everything is stopped on drop.
///
/// ```no_run
/// use std::time::Duration;
/// use cachette_test::SentinelGroup;
/// let mut group = SentinelGroup::spawn();
/// let old = group.kill_master(); // SIGKILL, like a crash
/// let new = group.wait_for_new_master(old, Duration::from_secs(30));
/// assert_eq!(group.master().addr(), new);
/// ```
///
/// Sentinels consider the master down after 1 s without answers
/// (`down-after-milliseconds`), and their fixed periods are shortened
/// (`SENTINEL DEBUG`: `INFO` every 1 s, hellos every 500 ms), so promotion
/// after a crash takes a few seconds. A sentinel restarted with
/// [`RedisServer::start`] goes back to the stock periods. The waiting helpers are blocking, like [`RedisServer::spawn`];
/// load meant to run while one waits needs a multi-threaded runtime.
#[derive(Debug)]
pub struct SentinelGroup {
    /// Dropped first, so they do not fail over while the data servers go.
    sentinels: Vec<RedisServer>,
    /// The server started as master, then the one started as replica.
    servers: Vec<RedisServer>,
    /// Index in `servers` of the current master, as last established by
    /// this value (at spawn, or by a failover helper).
    master: usize,
}

impl SentinelGroup {
    /// Starts the master, the replica (`--replicaof`), waits until it is in
    /// sync, then starts three sentinels and waits until every one of them
    /// sees the master, the replica (in sync) and the other two sentinels.
    ///
    /// # Panics
    ///
    /// If a process does not start or the group does not settle within 30
    /// seconds; logs are printed.
    pub fn spawn() -> SentinelGroup {
        // Either may become master: neither waits 5 s for more replicas
        // before a full sync (the default `repl-diskless-sync-delay`).
        let master = RedisServer::spawn_with_args(DATA_SERVER_ARGS);
        let master_port = master.port().to_string();
        let replica = RedisServer::builder()
            .args(DATA_SERVER_ARGS)
            .args(["--replicaof", "127.0.0.1", &master_port])
            .spawn();
        // A sentinel learns the replicas from the master's INFO, which it
        // reads right away and then only every 10 s: the replica must be
        // attached before the sentinels start.
        wait_for(GROUP_DEADLINE, "the replica to be in sync", || {
            replica_in_sync(&replica, &master)
        });
        let config = format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} {QUORUM}\n\
             sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n"
        );
        let sentinels = (0..SENTINELS)
            .map(|_| {
                let sentinel = RedisServer::builder().sentinel(config.clone()).spawn();
                speed_up(&sentinel);
                sentinel
            })
            .collect();
        let group = SentinelGroup {
            sentinels,
            servers: vec![master, replica],
            master: 0,
        };
        group.wait_until_stable();
        group
    }

    /// The name the sentinels know the master by (`cachette`).
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// The three sentinels.
    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }

    /// Sentinel `index` (0, 1 or 2), to stop, start or restart it.
    pub fn sentinel_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.sentinels[index]
    }

    /// `redis://127.0.0.1:{port}` of every sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// Socket address of every sentinel.
    pub fn sentinel_addrs(&self) -> Vec<SocketAddr> {
        self.sentinels.iter().map(RedisServer::addr).collect()
    }

    /// The master and the replica, in the order they were started (so
    /// roles change with failovers, indexes do not).
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }

    /// The current master, as established at spawn or by the last
    /// [`failover`](SentinelGroup::failover) or
    /// [`wait_for_new_master`](SentinelGroup::wait_for_new_master).
    pub fn master(&self) -> &RedisServer {
        &self.servers[self.master]
    }

    /// The current master, to stop, start or restart it.
    pub fn master_mut(&mut self) -> &mut RedisServer {
        &mut self.servers[self.master]
    }

    /// The other data server: the replica, once the group is stable.
    pub fn replica(&self) -> &RedisServer {
        &self.servers[1 - self.master]
    }

    /// The replica, to stop, start or restart it.
    pub fn replica_mut(&mut self) -> &mut RedisServer {
        &mut self.servers[1 - self.master]
    }

    /// Kills the current master with SIGKILL (see [`RedisServer::stop`])
    /// and returns its address, for
    /// [`wait_for_new_master`](SentinelGroup::wait_for_new_master).
    pub fn kill_master(&mut self) -> SocketAddr {
        let master = self.master_mut();
        master.stop();
        master.addr()
    }

    /// The master address according to the first sentinel that answers
    /// `SENTINEL GET-MASTER-ADDR-BY-NAME` (sentinels may briefly disagree
    /// during a failover).
    ///
    /// # Panics
    ///
    /// If no sentinel answers.
    pub fn current_master_addr(&self) -> SocketAddr {
        let mut errors = Vec::new();
        for sentinel in self.live_sentinels() {
            match master_addr_from(sentinel) {
                Ok(addr) => return addr,
                Err(e) => errors.push(format!("sentinel on port {}: {e}", sentinel.port())),
            }
        }
        panic!("no sentinel told the master address: {errors:?}")
    }

    /// Has a sentinel fail the master over to the replica (`SENTINEL
    /// FAILOVER`, retried while the sentinel refuses, e.g. because it is
    /// still judging the replica) and waits until every running sentinel
    /// names the replica as master and it reports `role:master`. Returns
    /// its address; [`master`](SentinelGroup::master) is then the new master.
    ///
    /// The old master stays up; the sentinels turn it into a replica of the
    /// new one a few seconds later (see
    /// [`wait_until_stable`](SentinelGroup::wait_until_stable)).
    ///
    /// # Panics
    ///
    /// If the failover does not complete within 30 seconds.
    pub fn failover(&mut self) -> SocketAddr {
        let old = self.master().addr();
        let deadline = Instant::now() + GROUP_DEADLINE;
        let mut backoff = BACKOFF_START;
        loop {
            let sentinel = self
                .live_sentinels()
                .next()
                .unwrap_or_else(|| panic!("no sentinel is running to fail over"));
            let reply: redis::RedisResult<()> = sentinel.query_within(
                redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER_NAME),
                COMMAND_TIMEOUT,
            );
            match reply {
                Ok(()) => break,
                // e.g. NOGOODSLAVE while the sentinel still judges the replica.
                Err(_) if Instant::now() < deadline => {
                    sleep_until_at_most(backoff, deadline);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(e) => panic!(
                    "sentinel on port {} refused SENTINEL FAILOVER for {GROUP_DEADLINE:?}: {e}",
                    sentinel.port()
                ),
            }
        }
        self.wait_for_new_master(old, deadline.saturating_duration_since(Instant::now()))
    }

    /// Waits until every running (and not paused) sentinel names a master
    /// other than `old`, one of this group's servers, and that server
    /// reports `role:master`; then [`master`](SentinelGroup::master) is that
    /// server. Returns its address. Use after [`kill_master`] (or pausing
    /// the master) to wait for the sentinels to promote the replica.
    ///
    /// [`kill_master`]: SentinelGroup::kill_master
    ///
    /// # Panics
    ///
    /// If that does not happen within `timeout`; the message has what each
    /// sentinel last said.
    pub fn wait_for_new_master(&mut self, old: SocketAddr, timeout: Duration) -> SocketAddr {
        let deadline = Instant::now() + timeout;
        let mut backoff = BACKOFF_START;
        loop {
            match self.promoted(old) {
                Ok(index) => {
                    self.master = index;
                    return self.servers[index].addr();
                }
                Err(problem) => {
                    assert!(
                        Instant::now() < deadline,
                        "the sentinels did not promote a new master (other than {old}) within {timeout:?}: {problem}"
                    );
                }
            }
            sleep_until_at_most(backoff, deadline);
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Waits until the group is settled around [`master`]: the other server
    /// runs, is its replica and is in sync, and every sentinel names the
    /// master, sees the replica in sync and knows the other two sentinels.
    /// After a failover this includes the old master having been turned
    /// into a replica, which sentinels do a few seconds later.
    ///
    /// [`master`]: SentinelGroup::master
    ///
    /// # Panics
    ///
    /// If a process is stopped or paused, or the group does not settle
    /// within 30 seconds.
    pub fn wait_until_stable(&self) {
        for server in self.servers.iter().chain(&self.sentinels) {
            assert!(
                server.is_running() && !server.is_paused(),
                "the sentinel group cannot become stable while the server on port {} is {}",
                server.port(),
                if server.is_running() {
                    "paused"
                } else {
                    "stopped"
                }
            );
        }
        let master = self.master();
        let replica = self.replica();
        wait_for(
            GROUP_DEADLINE,
            "the sentinel group to become stable",
            || {
                replica_in_sync(replica, master)?;
                for sentinel in &self.sentinels {
                    sentinel_sees(sentinel, master, replica)
                        .map_err(|e| format!("sentinel on port {}: {e}", sentinel.port()))?;
                }
                Ok(())
            },
        );
    }

    fn live_sentinels(&self) -> impl Iterator<Item = &RedisServer> {
        self.sentinels
            .iter()
            .filter(|sentinel| sentinel.is_running() && !sentinel.is_paused())
    }

    /// The index of the server that every live sentinel names as master
    /// (not `old`), if it reports `role:master`.
    fn promoted(&self, old: SocketAddr) -> Result<usize, String> {
        let mut named = None;
        let mut views = Vec::new();
        for sentinel in self.live_sentinels() {
            let addr = master_addr_from(sentinel)
                .map_err(|e| format!("sentinel on port {}: {e}", sentinel.port()))?;
            views.push(format!("sentinel {} -> {addr}", sentinel.port()));
            if addr == old {
                return Err(format!("a sentinel still names the old master: {views:?}"));
            }
            if named.is_some_and(|named| named != addr) {
                return Err(format!("the sentinels disagree: {views:?}"));
            }
            named = Some(addr);
        }
        let addr = named.ok_or("no sentinel is running")?;
        let index = self
            .servers
            .iter()
            .position(|server| server.addr() == addr)
            .ok_or_else(|| format!("the sentinels name a stranger: {views:?}"))?;
        let role = info_field(&self.servers[index], "replication", "role")?;
        if role != "master" {
            return Err(format!("{addr} is named master but reports role:{role}"));
        }
        Ok(index)
    }
}

/// Shortens a sentinel's fixed periods (`SENTINEL DEBUG`, Redis 7.0+), so
/// tests wait seconds, not tens of seconds: `INFO` to monitored servers every
/// second instead of 10 (role changes and replicas are noticed sooner),
/// hello messages every 500 ms instead of 2 s (sentinels find each other and
/// spread a new config sooner, and a demoted master is reconfigured 2 s
/// after it was seen, not 8), and a 5 s tilt instead of 30 s should a
/// stalled machine make it distrust its clock. The detection and failover
/// logic are untouched.
fn speed_up(sentinel: &RedisServer) {
    let mut cmd = redis::cmd("SENTINEL");
    cmd.arg("DEBUG");
    for (param, value) in SENTINEL_PERIODS {
        cmd.arg(param).arg(value);
    }
    let reply: redis::RedisResult<()> = sentinel.query_within(&cmd, COMMAND_TIMEOUT);
    if let Err(e) = reply {
        panic!(
            "sentinel on port {} refused SENTINEL DEBUG (Redis 7.0 or later is needed): {e}",
            sentinel.port()
        );
    }
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME` of one sentinel.
fn master_addr_from(sentinel: &RedisServer) -> Result<SocketAddr, String> {
    let reply: Option<(String, u16)> = sentinel
        .query_within(
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(MASTER_NAME),
            COMMAND_TIMEOUT,
        )
        .map_err(|e| e.to_string())?;
    let (ip, port) = reply.ok_or_else(|| format!("it does not know {MASTER_NAME}"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|e| format!("it named the master at {ip:?}: {e}"))?;
    Ok(SocketAddr::from((ip, port)))
}

/// `Ok` if `replica` replicates `master` with its link up and the master
/// sees it online.
fn replica_in_sync(replica: &RedisServer, master: &RedisServer) -> Result<(), String> {
    let replica_info = info(replica, "replication")?;
    let replica_field = |name: &str| field(&replica_info, name).unwrap_or_default();
    if replica_field("role") != "slave"
        || replica_field("master_port") != master.port().to_string()
        || replica_field("master_link_status") != "up"
    {
        return Err(format!(
            "the server on port {} is not an in-sync replica of port {}:\n{replica_info}",
            replica.port(),
            master.port()
        ));
    }
    let master_info = info(master, "replication")?;
    let online = format!("port={},state=online", replica.port());
    if field(&master_info, "role").as_deref() != Some("master") || !master_info.contains(&online) {
        return Err(format!(
            "the master on port {} does not list port {} as an online replica:\n{master_info}",
            master.port(),
            replica.port()
        ));
    }
    Ok(())
}

/// `Ok` if `sentinel` names `master`, sees it up, sees `replica` up and in
/// sync, and knows the other sentinels.
fn sentinel_sees(
    sentinel: &RedisServer,
    master: &RedisServer,
    replica: &RedisServer,
) -> Result<(), String> {
    let state: HashMap<String, String> = sentinel
        .query_within(
            redis::cmd("SENTINEL").arg("MASTER").arg(MASTER_NAME),
            COMMAND_TIMEOUT,
        )
        .map_err(|e| format!("SENTINEL MASTER failed: {e}"))?;
    let get = |name: &str| state.get(name).map(String::as_str).unwrap_or_default();
    let others = (SENTINELS - 1).to_string();
    if get("port") != master.port().to_string()
        || get("flags") != "master"
        || get("num-other-sentinels") != others
    {
        return Err(format!(
            "expected master port {} with flags master and {others} other sentinels, got {state:?}",
            master.port()
        ));
    }
    let replicas: Vec<HashMap<String, String>> = sentinel
        .query_within(
            redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER_NAME),
            COMMAND_TIMEOUT,
        )
        .map_err(|e| format!("SENTINEL REPLICAS failed: {e}"))?;
    let port = replica.port().to_string();
    let healthy = replicas.iter().any(|r| {
        let get = |name: &str| r.get(name).map(String::as_str).unwrap_or_default();
        get("port") == port && get("flags") == "slave" && get("master-link-status") == "ok"
    });
    if !healthy {
        return Err(format!(
            "replica port {port} is not listed as a healthy slave: {replicas:?}"
        ));
    }
    Ok(())
}

fn info(server: &RedisServer, section: &str) -> Result<String, String> {
    server
        .query_within(redis::cmd("INFO").arg(section), COMMAND_TIMEOUT)
        .map_err(|e| format!("INFO {section} on port {} failed: {e}", server.port()))
}

fn info_field(server: &RedisServer, section: &str, name: &str) -> Result<String, String> {
    let info = info(server, section)?;
    field(&info, name)
        .ok_or_else(|| format!("INFO {section} on port {} has no {name}", server.port()))
}

fn field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|value| value.trim().to_owned())
    })
}

/// Polls `check` with backoff until it passes; panics with its last
/// complaint once `within` has passed.
fn wait_for(within: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + within;
    let mut backoff = BACKOFF_START;
    loop {
        let Err(problem) = check() else {
            return;
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}: {problem}"
        );
        sleep_until_at_most(backoff, deadline);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
