//! A disposable three-master Redis Cluster for tests.
//!
//! Each node is a [`RedisServer`] (own port, temp dir, log, `KEYS` check, kill
//! on drop), started with `--cluster-enabled yes`. The cluster is assembled
//! the way an operator would (slots, `CLUSTER MEET`), and slots can be moved
//! between nodes with the real migration protocol, step by step, so tests
//! can run load while a slot is `MIGRATING`/`IMPORTING` (clients get `ASK`)
//! or right after it moved (clients get `MOVED`).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::Value;

use crate::RedisServer;
use crate::server::{BACKOFF_MAX, BACKOFF_START, sleep_until_at_most};

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;
const NODES: usize = 3;
/// The slot ranges of the three masters, as `redis-cli --cluster create`
/// would assign them.
const RANGES: [(u16, u16); NODES] = [(0, 5460), (5461, 10922), (10923, 16383)];
/// Small enough that failure detection is quick, large enough that a
/// loaded machine does not make nodes suspect each other spuriously.
/// Override with `--cluster-node-timeout` in [`RedisCluster::spawn_with_args`].
const NODE_TIMEOUT_MS: &str = "2000";
/// Bound for the cluster to converge (at spawn, after a migration, in
/// [`RedisCluster::wait_until_stable`]), and for one `move_keys`.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(20);
/// Timeout of one admin command to a node.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// `MIGRATE`'s own timeout, in milliseconds.
const MIGRATE_TIMEOUT_MS: u64 = 5000;
/// Keys moved per `MIGRATE`.
const MIGRATE_BATCH: usize = 100;
const UNASSIGNED: u8 = u8::MAX;

/// Three Redis Cluster masters (no replicas) on free loopback ports, slots
/// split in three ranges, all stopped on drop.
///
/// ```no_run
/// # async fn example() {
/// use cachette_test::RedisCluster;
/// let cluster = RedisCluster::spawn();
/// let mut conn = cluster.connection().await; // redis::cluster_async
/// let slot = RedisCluster::slot_of("user:42");
/// let to = (cluster.node_for_slot(slot) + 1) % 3;
/// cluster.begin_migration(slot, to); // clients now get ASK for moved keys
/// cluster.move_keys(slot);
/// cluster.finish_migration(slot); // ... and MOVED
/// # }
/// ```
///
/// The admin helpers are blocking (like [`RedisServer::spawn`]): in an
/// async test they hold the runtime thread while they run, so load meant to
/// run *during* a step needs a multi-threaded runtime; load between steps
/// works anywhere.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    ids: Vec<String>,
    /// Which node owns each slot (index into `nodes`), as we configured it.
    owners: Mutex<Vec<u8>>,
    /// Slots in the middle of a migration: slot -> (from, to).
    migrations: Mutex<HashMap<u16, (usize, usize)>>,
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster")
            .field("nodes", &self.nodes)
            .field("ids", &self.ids)
            .field("migrations", &*lock(&self.migrations))
            .finish_non_exhaustive()
    }
}

impl RedisCluster {
    /// Starts three cluster masters, assigns slots 0–5460, 5461–10922 and
    /// 10923–16383 to nodes 0, 1 and 2, introduces them to each other, and
    /// waits until every node reports `cluster_state:ok` and the same slot map.
    ///
    /// # Panics
    ///
    /// If a node does not start or the cluster does not converge within 20
    /// seconds; node logs are printed.
    pub fn spawn() -> RedisCluster {
        Self::spawn_with_args(&[])
    }

    /// Like [`spawn`](RedisCluster::spawn), with extra arguments for every
    /// node, e.g. `["--cluster-require-full-coverage", "no"]` or
    /// `["--cluster-node-timeout", "1000"]` (the default is 2000 ms).
    ///
    /// # Panics
    ///
    /// As for [`spawn`](RedisCluster::spawn).
    pub fn spawn_with_args(extra: &[&str]) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..NODES)
            .map(|_| {
                RedisServer::builder()
                    .cluster_node()
                    .args(["--cluster-node-timeout", NODE_TIMEOUT_MS])
                    .args(extra)
                    .spawn()
            })
            .collect();
        let ids: Vec<String> = nodes
            .iter()
            .map(|node| admin(node, redis::cmd("CLUSTER").arg("MYID")))
            .collect();
        let mut owners = vec![UNASSIGNED; usize::from(SLOTS)];
        for (i, (node, &(first, last))) in nodes.iter().zip(RANGES.iter()).enumerate() {
            // Distinct epochs up front spare the nodes the collision dance
            // that would otherwise give them distinct ones.
            let _: () = admin(
                node,
                redis::cmd("CLUSTER").arg("SET-CONFIG-EPOCH").arg(i + 1),
            );
            let _: () = admin(
                node,
                redis::cmd("CLUSTER")
                    .arg("ADDSLOTSRANGE")
                    .arg(first)
                    .arg(last),
            );
            owners[usize::from(first)..=usize::from(last)].fill(index_u8(i));
        }
        for node in &nodes[1..] {
            let bus_port = node
                .cluster_bus_port()
                .expect("a cluster node has a bus port");
            let _: () = admin(
                &nodes[0],
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(node.port())
                    .arg(bus_port),
            );
        }
        let cluster = RedisCluster {
            nodes,
            ids,
            owners: Mutex::new(owners),
            migrations: Mutex::new(HashMap::new()),
        };
        cluster.wait_until_stable();
        cluster
    }

    /// The nodes, in slot-range order. Pause and resume them through this;
    /// see [`node_mut`](RedisCluster::node_mut) to stop, start or restart one.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Node `index` (0, 1 or 2).
    pub fn node(&self, index: usize) -> &RedisServer {
        &self.nodes[index]
    }

    /// Node `index`, to [`stop`](RedisServer::stop),
    /// [`start`](RedisServer::start) or [`restart`](RedisServer::restart)
    /// it. A restarted node keeps its identity and slots (they live in its
    /// `nodes.conf`) but loses its data.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// Cluster node ID of node `index`.
    pub fn node_id(&self, index: usize) -> &str {
        &self.ids[index]
    }

    /// `redis://127.0.0.1:{port}` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The URL of node 0, enough for a cluster client to discover the rest.
    pub fn seed_url(&self) -> String {
        self.nodes[0].url()
    }

    /// A cluster client seeded with every node's URL.
    ///
    /// # Panics
    ///
    /// If the `redis` crate rejects the URLs (should not happen).
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(self.urls())
            .unwrap_or_else(|e| panic!("cannot build a cluster client for {:?}: {e}", self.urls()))
    }

    /// An async cluster connection (it follows `MOVED` and `ASK`), for
    /// tests to inspect or tamper with the data directly.
    ///
    /// # Panics
    ///
    /// If connecting fails or takes longer than 10 seconds.
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        let client = self.client();
        match tokio::time::timeout(Duration::from_secs(10), client.get_async_connection()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => panic!("cannot connect to the cluster {:?}: {e}", self.urls()),
            Err(_) => panic!("connecting to the cluster {:?} timed out", self.urls()),
        }
    }

    /// The hash slot of `key`: CRC16 (XMODEM) of the key, or of its hash
    /// tag (the part between the first `{` and the next `}`, if non-empty),
    /// modulo 16384.
    pub fn slot_of(key: impl AsRef<[u8]>) -> u16 {
        let key = key.as_ref();
        let hashed = key
            .iter()
            .position(|&b| b == b'{')
            .and_then(|open| {
                let rest = &key[open + 1..];
                let close = rest.iter().position(|&b| b == b'}')?;
                (close > 0).then(|| &rest[..close])
            })
            .unwrap_or(key);
        crc16_xmodem(hashed) % SLOTS
    }

    /// Index of the node that owns `slot`: the source while a migration of
    /// the slot is in progress, the target once it is finished.
    pub fn node_for_slot(&self, slot: u16) -> usize {
        assert!(slot < SLOTS, "slot {slot} out of range");
        usize::from(lock(&self.owners)[usize::from(slot)])
    }

    /// Index of the node that owns the slot of `key`.
    pub fn node_for_key(&self, key: impl AsRef<[u8]>) -> usize {
        self.node_for_slot(Self::slot_of(key))
    }

    /// Moves `slot` to node `to`: [`begin_migration`], [`move_keys`],
    /// [`finish_migration`]. Does nothing if `to` already owns it.
    ///
    /// [`begin_migration`]: RedisCluster::begin_migration
    /// [`move_keys`]: RedisCluster::move_keys
    /// [`finish_migration`]: RedisCluster::finish_migration
    ///
    /// # Panics
    ///
    /// As for the three steps.
    pub fn migrate_slot(&self, slot: u16, to: usize) {
        if self.node_for_slot(slot) == to {
            return;
        }
        self.begin_migration(slot, to);
        self.move_keys(slot);
        self.finish_migration(slot);
    }

    /// Starts moving `slot` to node `to`: the target is set `IMPORTING`
    /// and the owner `MIGRATING`. From now on the owner answers `ASK` for
    /// keys of the slot it does not have (including new ones), and the
    /// target serves them to clients that send `ASKING`.
    ///
    /// # Panics
    ///
    /// If `to` already owns the slot, the slot is already migrating, or a
    /// node refuses.
    pub fn begin_migration(&self, slot: u16, to: usize) {
        let from = self.node_for_slot(slot);
        assert!(to < NODES, "no node {to}: the cluster has {NODES}");
        assert_ne!(from, to, "node {to} already owns slot {slot}");
        let mut migrations = lock(&self.migrations);
        assert!(
            !migrations.contains_key(&slot),
            "slot {slot} is already migrating"
        );
        let _: () = admin(
            &self.nodes[to],
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("IMPORTING")
                .arg(&self.ids[from]),
        );
        let _: () = admin(
            &self.nodes[from],
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("MIGRATING")
                .arg(&self.ids[to]),
        );
        migrations.insert(slot, (from, to));
    }

    /// Moves the keys of a migrating slot from its owner to the target,
    /// with `CLUSTER GETKEYSINSLOT` and `MIGRATE ... KEYS`, until the owner
    /// has none left. Returns how many keys were moved. May be called
    /// several times, e.g. between bursts of load.
    ///
    /// # Panics
    ///
    /// If the slot is not migrating, a node refuses, or keys remain after
    /// 20 seconds.
    pub fn move_keys(&self, slot: u16) -> usize {
        let (from, to) = self.migration(slot);
        let source = &self.nodes[from];
        let target_port = self.nodes[to].port();
        let deadline = Instant::now() + CLUSTER_DEADLINE;
        let mut moved = 0;
        loop {
            let keys: Vec<Vec<u8>> = admin(
                source,
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(MIGRATE_BATCH),
            );
            if keys.is_empty() {
                return moved;
            }
            assert!(
                Instant::now() < deadline,
                "slot {slot} still has keys on node {from} after {CLUSTER_DEADLINE:?} of migrating"
            );
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(target_port)
                .arg("")
                .arg(0)
                .arg(MIGRATE_TIMEOUT_MS)
                .arg("KEYS")
                .arg(&keys);
            // "OK", or "NOKEY" if they all vanished (expired or deleted).
            let _: Value = admin(source, &migrate);
            moved += keys.len();
        }
    }

    /// Completes a migration: moves any remaining keys, then assigns the
    /// slot to the target on the target, the old owner and the third node
    /// (`CLUSTER SETSLOT <slot> NODE <id>`), and waits until every node
    /// agrees. Clients still going to the old owner now get `MOVED`.
    ///
    /// # Panics
    ///
    /// If the slot is not migrating, a node refuses, or the nodes do not
    /// agree within 20 seconds.
    pub fn finish_migration(&self, slot: u16) {
        let (from, to) = self.migration(slot);
        self.move_keys(slot);
        let order = [to, from, 3 - to - from];
        for index in order {
            let _: () = admin(
                &self.nodes[index],
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("NODE")
                    .arg(&self.ids[to]),
            );
        }
        lock(&self.owners)[usize::from(slot)] = index_u8(to);
        lock(&self.migrations).remove(&slot);
        self.wait_until_stable();
    }

    /// Waits until every node reports `cluster_state:ok`, knows the other
    /// two as healthy, connected masters, and has the slot map this value
    /// configured (migrations in progress aside). Useful after restarting,
    /// stopping or pausing a node.
    ///
    /// # Panics
    ///
    /// If a node is stopped or paused, or the cluster is not stable within
    /// 20 seconds (with what each node last reported).
    pub fn wait_until_stable(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            assert!(
                node.is_running() && !node.is_paused(),
                "the cluster cannot become stable while node {i} (port {}) is {}",
                node.port(),
                if node.is_running() {
                    "paused"
                } else {
                    "stopped"
                }
            );
        }
        let deadline = Instant::now() + CLUSTER_DEADLINE;
        let mut backoff = BACKOFF_START;
        loop {
            let problems: Vec<String> = (0..NODES)
                .filter_map(|i| self.node_problem(i).err())
                .collect();
            if problems.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster was not stable within {CLUSTER_DEADLINE:?}:\n  {}",
                problems.join("\n  ")
            );
            sleep_until_at_most(backoff, deadline);
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// `Ok` if node `i` sees the cluster as configured, else what is off.
    fn node_problem(&self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        let describe = |what: String| format!("node {i} (port {}): {what}", node.port());
        let info: String = node
            .query_within(redis::cmd("CLUSTER").arg("INFO"), COMMAND_TIMEOUT)
            .map_err(|e| describe(format!("CLUSTER INFO failed: {e}")))?;
        if !info.lines().any(|line| line.trim() == "cluster_state:ok") {
            return Err(describe("cluster_state is not ok".into()));
        }
        let listing: String = node
            .query_within(redis::cmd("CLUSTER").arg("NODES"), COMMAND_TIMEOUT)
            .map_err(|e| describe(format!("CLUSTER NODES failed: {e}")))?;
        let seen = parse_nodes(&listing, &self.ids).map_err(describe)?;
        if *lock(&self.owners) != seen {
            return Err(describe(format!(
                "its slot map differs from the configured one:\n{listing}"
            )));
        }
        Ok(())
    }

    fn migration(&self, slot: u16) -> (usize, usize) {
        *lock(&self.migrations)
            .get(&slot)
            .unwrap_or_else(|| panic!("slot {slot} is not migrating: call begin_migration first"))
    }
}

/// Parses `CLUSTER NODES` into slot owners (indexes into `ids`), failing if
/// a node is unknown, missing, unhealthy or not a master.
fn parse_nodes(listing: &str, ids: &[String]) -> Result<Vec<u8>, String> {
    let mut owners = vec![UNASSIGNED; usize::from(SLOTS)];
    let mut seen = 0;
    for line in listing.lines().filter(|line| !line.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(format!("malformed CLUSTER NODES line {line:?}"));
        }
        let Some(index) = ids.iter().position(|id| id == fields[0]) else {
            return Err(format!("it knows a stranger: {line}"));
        };
        let flags: Vec<&str> = fields[2].split(',').collect();
        if !flags.contains(&"master")
            || flags
                .iter()
                .any(|f| matches!(*f, "fail" | "fail?" | "handshake" | "noaddr"))
        {
            return Err(format!("node {index} is not a healthy master: {line}"));
        }
        if fields[7] != "connected" {
            return Err(format!("node {index} is not connected: {line}"));
        }
        seen |= 1 << index;
        for range in &fields[8..] {
            // `[slot->-id]`/`[slot-<-id]`: a migration in progress.
            if range.starts_with('[') {
                continue;
            }
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            let (Ok(first), Ok(last)) = (first.parse::<u16>(), last.parse::<u16>()) else {
                return Err(format!("malformed slot range {range:?} in {line}"));
            };
            if first > last || last >= SLOTS {
                return Err(format!("malformed slot range {range:?} in {line}"));
            }
            owners[usize::from(first)..=usize::from(last)].fill(index_u8(index));
        }
    }
    if seen != (1 << ids.len()) - 1 {
        return Err(format!("it does not know every node yet:\n{listing}"));
    }
    Ok(owners)
}

/// Runs an admin command on a cluster node, panicking with context on error.
fn admin<T: redis::FromRedisValue>(node: &RedisServer, cmd: &redis::Cmd) -> T {
    node.query_within(cmd, COMMAND_TIMEOUT).unwrap_or_else(|e| {
        panic!(
            "cluster node on port {} refused {:?}: {e}",
            node.port(),
            String::from_utf8_lossy(&cmd.get_packed_command())
        )
    })
}

fn index_u8(index: usize) -> u8 {
    u8::try_from(index).expect("node index fits in u8")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere (a failed assertion) must not hide the state.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), as Redis Cluster uses.
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_reference_vector() {
        // The check value from the Redis Cluster spec.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
    }

    #[test]
    fn hash_tags() {
        assert_eq!(
            RedisCluster::slot_of("{user1000}.following"),
            RedisCluster::slot_of("user1000")
        );
        assert_eq!(
            RedisCluster::slot_of("foo{}{bar}"),
            crc16_xmodem(b"foo{}{bar}") % SLOTS
        );
        assert_eq!(
            RedisCluster::slot_of("foo{{bar}}zap"),
            RedisCluster::slot_of("{bar")
        );
        assert_eq!(
            RedisCluster::slot_of("foo{bar}{zap}"),
            RedisCluster::slot_of("bar")
        );
    }
}
