//! The connections, one kind per topology, behind one handle.
//!
//! * One server: redis-rs's `ConnectionManager`, one multiplexed socket
//!   that reconnects by itself.
//! * Redis Cluster: redis-rs's `ClusterConnection`, which keeps one
//!   multiplexed socket per node, routes each command by its key's slot and
//!   refreshes its slot map on `MOVED`. Its own retries are off (see
//!   [`CLUSTER_RETRIES`]): this handle follows `MOVED` and `ASK` itself,
//!   straight to the node named, with `ASKING` and the command in one
//!   pipeline, and `TRYAGAIN` goes back to the store's retry.
//! * Sentinel: a `ConnectionManager` *pinned* to the master the sentinels
//!   name. redis-rs's own sentinel client resolves the master only when a
//!   connection opens and never follows a failover on an open one
//!   (redis-rs issue 1438), so the pinned connection does it, two ways:
//!   - it listens to every sentinel's failover announcements (Pub/Sub):
//!     the moment the leading sentinel tells the replica to become master
//!     (`+failover-state-send-slaveof-noone`), and when the failover is
//!     done (`+switch-master`), it moves to the new master as soon as its
//!     `ROLE` says master. A graceful failover gives clients no error until
//!     the old master is demoted, up to seconds later, and every write the
//!     old master takes after the promotion is lost: the sooner we move,
//!     the fewer (a dozen in the forced-failover test, against ~350 when
//!     moving on `+switch-master` only, and all of them when waiting for
//!     errors).
//!   - a command that meets a dropped connection, a timeout or `READONLY`
//!     (a demoted master) wakes the same resolver, which keeps the current
//!     node while it still is a master, and otherwise asks the sentinels in
//!     turn and checks with `ROLE` the node they name (a sentinel may lag).
//!     The failed command is retried within the store's retry budget.
//!
//!   Resolutions run one at a time, at most every 100 ms, in a task of
//!   their own (a caller's cancellation cannot cut one short); the
//!   connection is swapped under a `RwLock`.
//!
//! The backplane pins its publishing connection the same way on Cluster, to
//! the first seed that answers (see `backplane`): Pub/Sub ordering holds
//! per node, not across nodes.
//!
//! Rejected: `arc-swap` for the current connection (a `RwLock` read and a
//! clone per command cost nothing next to a round trip); redis-rs's
//! `SentinelClient` (no timeouts of ours on the sentinel round trips, no
//! failover following); and periodic re-resolution (the announcements say
//! when, and errors cover a missed one).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSubStream};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::io::tcp::TcpSettings;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, ErrorKind, Pipeline, RedisError,
    RedisFuture, ServerErrorKind, Value,
};
use tokio::sync::{mpsc, watch};

use super::classify;
use super::config::{RedisConfig, SentinelSpec, Topology, node_name};
use crate::store::{StoreError, StoreKind};

/// Retries of a cluster command inside redis-rs: none. Its retries follow
/// `ASK` racily (see [`asking`]) and every `MOVED` makes it refresh its
/// slot map while holding back every other command, so a bounced redirect
/// stalls the whole connection, refresh after refresh. Redirects are
/// followed here instead ([`MAX_REDIRECTS`] per command), straight to the
/// node named, while redis-rs still refreshes its map once per `MOVED` it
/// sees; `TRYAGAIN` and lost connections go back to the store, which
/// retries with its own backoff (`RedisStore::run`).
const CLUSTER_RETRIES: u32 = 0;
/// Redirects followed per command at most: a slot moves once at a time, so
/// more means the cluster is reconfiguring, and the store's retry (after a
/// backoff, on redis-rs's refreshed slot map) is the better next step.
const MAX_REDIRECTS: usize = 4;
/// The shortest time between two resolutions of a pinned connection.
const MIN_RESOLVE_INTERVAL: Duration = Duration::from_millis(100);
/// `ROLE` checks of a replica the sentinels announced they are promoting,
/// 20 ms apart, before giving up on it.
const ANNOUNCED_CHECKS: u32 = 15;
/// What the sentinels announce, and where the new master is in each
/// message: `+switch-master <name> <old ip> <old port> <new ip> <new port>`
/// once the failover is done; earlier, `+failover-state-send-slaveof-noone
/// slave <ip:port> <ip> <port> @ <name> <ip> <port>` the moment the replica
/// is told to become master, which is when the old master's writes start to
/// be lost.
const ANNOUNCEMENTS: [(&str, usize, usize, usize); 2] = [
    ("+switch-master", 0, 3, 4),
    ("+failover-state-send-slaveof-noone", 5, 2, 3),
];

/// The command connection of a store (or of the backplane's publisher).
#[derive(Clone)]
pub(crate) enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Pinned(Arc<Pinned>),
}

impl Connection {
    /// The store's connection for `config`, waiting at most the connect
    /// timeout (per node tried).
    pub(crate) async fn open(config: &RedisConfig) -> Result<Connection, StoreError> {
        ensure_crypto_provider();
        match config.topology() {
            Topology::Standalone(info) => Ok(Connection::Standalone(manager(info, config).await?)),
            Topology::Cluster(nodes) => Ok(Connection::Cluster(cluster(nodes, config).await?)),
            Topology::Sentinel(spec) => {
                Pinned::open(Discovery::Sentinel(Box::new(spec.clone())), config).await
            }
        }
    }

    /// The backplane publisher's connection: the store's, except on
    /// Cluster, where it is pinned to the first seed that answers.
    pub(crate) async fn open_for_publishing(
        config: &RedisConfig,
    ) -> Result<Connection, StoreError> {
        match config.topology() {
            Topology::Cluster(nodes) => Pinned::open(Discovery::Seeds(nodes.clone()), config).await,
            _ => Connection::open(config).await,
        }
    }

    /// A handle to send commands on now.
    pub(crate) fn handle(&self) -> RedisConnection {
        let inner = match self {
            Connection::Standalone(conn) => Inner::Manager {
                conn: conn.clone(),
                generation: 0,
            },
            Connection::Cluster(conn) => Inner::Cluster(conn.clone()),
            Connection::Pinned(pinned) => {
                let current = pinned
                    .current
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                Inner::Manager {
                    conn: current.conn.clone(),
                    generation: current.generation,
                }
            }
        };
        RedisConnection { inner }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Connection::Cluster(_))
    }

    /// The node a pinned connection uses now, and a receiver that sees it
    /// change (taken first, so no change after the node is missed).
    pub(crate) fn pinned_node(&self) -> Option<(ConnectionInfo, watch::Receiver<u64>)> {
        let Connection::Pinned(pinned) = self else {
            return None;
        };
        let mut changes = pinned.changed.subscribe();
        changes.borrow_and_update();
        let info = pinned
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .info
            .clone();
        Some((info, changes))
    }

    /// After `used` failed with `err` (`None`: a timeout): on a pinned
    /// connection whose failure suggests the node moved, wakes the resolver
    /// and waits up to `wait` for it to swap the connection; otherwise
    /// waits `wait`. Returns early once a new connection is in place.
    pub(crate) async fn recover(
        &self,
        used: &RedisConnection,
        err: Option<&RedisError>,
        wait: Duration,
    ) {
        let Connection::Pinned(pinned) = self else {
            tokio::time::sleep(wait).await;
            return;
        };
        let Inner::Manager { generation, .. } = &used.inner else {
            tokio::time::sleep(wait).await;
            return;
        };
        let mut changed = pinned.changed.subscribe();
        if *changed.borrow_and_update() != *generation {
            return; // already swapped since `used` was taken
        }
        if err.is_none_or(node_may_have_moved) {
            // Full: a resolution is already due, which is all we ask.
            let _ = pinned.wake.try_send(());
        }
        let _ = tokio::time::timeout(wait, changed.changed()).await;
    }
}

/// Whether an error says the node this connection is pinned to may no
/// longer be the one to use: it is unreachable or demoted.
pub(crate) fn node_may_have_moved(err: &RedisError) -> bool {
    err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_io_error()
        || err.is_timeout()
        || is_readonly(err)
        || matches!(
            err.kind(),
            ErrorKind::Server(ServerErrorKind::MasterDown | ServerErrorKind::BusyLoading)
        )
}

/// `READONLY`: a write reached a replica (a master demoted by a failover).
/// Inside a script the server's error carries the code in its message.
pub(crate) fn is_readonly(err: &RedisError) -> bool {
    matches!(err.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly))
        || err.code() == Some("READONLY")
        || err.to_string().contains("READONLY")
}

/// A handle on the connection a [`RedisStore`](super::RedisStore) uses,
/// for commands cachette does not send itself: one server's multiplexed
/// connection, a Redis Cluster connection (routing by key), or the
/// current master's connection under Sentinel — a snapshot: after a
/// failover, ask the store for a new one. Cheap to clone; it is shared, so
/// do not send blocking commands on it.
#[derive(Clone)]
pub struct RedisConnection {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Manager {
        conn: ConnectionManager,
        /// Which connection of a pinned one this is (0 otherwise).
        generation: u64,
    },
    Cluster(ClusterConnection),
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.inner {
            Inner::Manager { .. } => "single node",
            Inner::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisConnection")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.inner {
            Inner::Manager { conn, .. } => conn.req_packed_command(cmd),
            Inner::Cluster(conn) => Box::pin(async move {
                let mut reply = conn.req_packed_command(cmd).await;
                for _ in 0..MAX_REDIRECTS {
                    reply = match redirect(&reply) {
                        Some(Redirect::Ask(node)) => asking(conn, cmd, &node).await,
                        Some(Redirect::Moved(node)) => {
                            let (host, port) = host_port(&node)?;
                            let route = SingleNodeRoutingInfo::ByAddress { host, port };
                            conn.route_command(cmd.clone(), RoutingInfo::SingleNode(route))
                                .await
                        }
                        None => break,
                    };
                }
                reply
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.inner {
            Inner::Manager { conn, .. } => conn.req_packed_commands(pipeline, offset, count),
            // `MOVED` is followed here; `ASK` is left to the caller, who
            // sends the pipeline again one command at a time (`ASKING`
            // covers one command only).
            Inner::Cluster(conn) => Box::pin(async move {
                let mut reply = conn.req_packed_commands(pipeline, offset, count).await;
                for _ in 0..MAX_REDIRECTS {
                    let Err(err) = &reply else {
                        break;
                    };
                    let Some(Redirect::Moved(node)) = redirect_of(err) else {
                        break;
                    };
                    let (host, port) = host_port(&node)?;
                    let route = SingleNodeRoutingInfo::ByAddress { host, port };
                    reply = conn
                        .route_pipeline(pipeline.clone(), offset, count, route)
                        .await;
                }
                reply
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Manager { conn, .. } => conn.get_db(),
            Inner::Cluster(conn) => conn.get_db(),
        }
    }
}

impl RedisConnection {
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }

    /// Runs `cmd` on the cluster node `node` (`host:port`, as the cluster
    /// names it); on a single node, runs it there.
    pub(crate) async fn on_node(&mut self, cmd: Cmd, node: &str) -> Result<Value, RedisError> {
        match &mut self.inner {
            Inner::Manager { conn, .. } => cmd.query_async(conn).await,
            Inner::Cluster(conn) => {
                let (host, port) = host_port(node)?;
                let routing =
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                conn.route_command(cmd, routing).await?.extract_error()
            }
        }
    }

    /// Runs `cmd` on every cluster master; their answers by node
    /// (`host:port`). On a single node, its answer under `""`.
    pub(crate) async fn on_masters(
        &mut self,
        cmd: Cmd,
    ) -> Result<Vec<(String, Value)>, RedisError> {
        match &mut self.inner {
            Inner::Manager { conn, .. } => Ok(vec![(String::new(), cmd.query_async(conn).await?)]),
            Inner::Cluster(conn) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let Value::Map(answers) = conn.route_command(cmd, routing).await? else {
                    return Err(RedisError::from((
                        ErrorKind::UnexpectedReturnType,
                        "expected one answer per master",
                    )));
                };
                answers
                    .into_iter()
                    .map(|(node, answer)| {
                        let node: String = redis::from_redis_value(node)?;
                        Ok((node, answer.extract_error()?))
                    })
                    .collect()
            }
        }
    }
}

/// Where Redis Cluster sent a command instead.
enum Redirect {
    /// The slot is migrating and the key is not here: ask `node`, once.
    Ask(String),
    /// The slot is served by `node` now.
    Moved(String),
}

fn redirect_of(err: &RedisError) -> Option<Redirect> {
    let (node, _slot) = err.redirect_node()?;
    match err.kind() {
        ErrorKind::Server(ServerErrorKind::Ask) => Some(Redirect::Ask(node.to_owned())),
        ErrorKind::Server(ServerErrorKind::Moved) => Some(Redirect::Moved(node.to_owned())),
        _ => None,
    }
}

fn redirect(reply: &Result<Value, RedisError>) -> Option<Redirect> {
    match reply {
        Err(err) => redirect_of(err),
        Ok(Value::ServerError(err)) => redirect_of(&RedisError::from(err.clone())),
        Ok(_) => None,
    }
}

/// `cmd` on `node` (`host:port`), right after `ASKING`, in one pipeline.
///
/// redis-rs follows `ASK` by sending `ASKING` and then the command as two
/// requests on the node's shared multiplexed connection: another caller's
/// command can be written in between and consume the one-command `ASKING`
/// flag, and the command is then sent back with `MOVED`, over and over
/// until the retries run out (seen under load in `tests/cluster.rs`: two
/// thousand `MOVED` replies in a few seconds, and calls timing out). Sent
/// as one pipeline, nothing comes in between.
async fn asking(conn: &mut ClusterConnection, cmd: &Cmd, node: &str) -> Result<Value, RedisError> {
    let (host, port) = host_port(node)?;
    let mut pipe = redis::pipe();
    pipe.cmd("ASKING");
    pipe.add_command(cmd.clone());
    let route = SingleNodeRoutingInfo::ByAddress { host, port };
    let mut replies = conn.route_pipeline(pipe, 0, 2, route).await?;
    replies
        .pop()
        .ok_or_else(|| {
            RedisError::from((ErrorKind::UnexpectedReturnType, "no reply after ASKING"))
        })?
        .extract_error()
}

fn host_port(node: &str) -> Result<(String, u16), RedisError> {
    node.rsplit_once(':')
        .and_then(|(host, port)| Some((host.to_owned(), port.parse::<u16>().ok()?)))
        .ok_or_else(|| RedisError::from((ErrorKind::Client, "not a cluster node address")))
}

/// The settings of every `ConnectionManager` made here.
fn manager_config(config: &RedisConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.command_timeout))
        // Few, quick reconnect attempts: a cache call should fail fast
        // and fall back to its loader rather than queue behind a long
        // backoff; the next call starts a new reconnect anyway.
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(200))
}

fn connect_timed_out(after: Duration) -> StoreError {
    StoreError::Timeout {
        store: StoreKind::Redis,
        after,
    }
}

/// A multiplexed, self-reconnecting connection to one node, waiting at most
/// the connect timeout.
async fn manager(
    info: &ConnectionInfo,
    config: &RedisConfig,
) -> Result<ConnectionManager, StoreError> {
    let timeout = config.connect_timeout;
    let client = Client::open(info.clone()).map_err(|e| classify(e, timeout))?;
    tokio::time::timeout(
        timeout,
        client.get_connection_manager_with_config(manager_config(config)),
    )
    .await
    .map_err(|_| connect_timed_out(timeout))?
    .map_err(|e| classify(e, timeout))
}

/// A cluster connection from the seeds: redis-rs reads the slot map from
/// the first that answers and connects to every node.
async fn cluster(
    nodes: &[ConnectionInfo],
    config: &RedisConfig,
) -> Result<ClusterConnection, StoreError> {
    let timeout = config.connect_timeout;
    let mut builder = ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.command_timeout)
        .tcp_settings(TcpSettings::default().set_nodelay(true))
        .retries(CLUSTER_RETRIES);
    if let Some(tls) = config.tls_certificates() {
        builder = builder.certs(tls.clone());
    }
    let client = builder.build().map_err(|e| classify(e, timeout))?;
    // redis-rs issue 1953: the first connection can hang; bound it here.
    let limit = config.connect_timeout + config.command_timeout;
    tokio::time::timeout(limit, client.get_async_connection())
        .await
        .map_err(|_| connect_timed_out(limit))?
        .map_err(|e| classify(e, timeout))
}

/// How a pinned connection finds its node.
#[derive(Clone)]
pub(crate) enum Discovery {
    /// The master the sentinels name.
    Sentinel(Box<SentinelSpec>),
    /// The first of these nodes that answers.
    Seeds(Vec<ConnectionInfo>),
}

/// A connection to one node, replaced when the node must change.
pub(crate) struct Pinned {
    discovery: Discovery,
    config: RedisConfig,
    current: RwLock<Current>,
    /// The generation of `current`, for waiters.
    changed: watch::Sender<u64>,
    /// Wakes the resolver task; capacity 1, so wakes coalesce.
    wake: mpsc::Sender<()>,
    /// The sentinel that answered last, asked first next time.
    preferred: AtomicUsize,
    /// The master a sentinel announced (`+switch-master`), tried first by
    /// the next resolution.
    announced: Mutex<Option<ConnectionInfo>>,
    /// Never sent: dropped with the connection, which ends the sentinel
    /// watcher.
    _alive: watch::Sender<()>,
}

struct Current {
    conn: ConnectionManager,
    node: String,
    info: ConnectionInfo,
    generation: u64,
}

impl Pinned {
    async fn open(discovery: Discovery, config: &RedisConfig) -> Result<Connection, StoreError> {
        let (wake, woken) = mpsc::channel(1);
        let (changed, _) = watch::channel(1);
        let preferred = AtomicUsize::new(0);
        let (conn, info) = discover(&discovery, config, &preferred, None)
            .await?
            .ok_or_else(|| StoreError::Unavailable {
                store: StoreKind::Redis,
                source: "no node found".into(),
            })?;
        let (alive, watching) = watch::channel(());
        let watched = match &discovery {
            Discovery::Sentinel(spec) => Some((**spec).clone()),
            Discovery::Seeds(_) => None,
        };
        let pinned = Arc::new(Pinned {
            discovery,
            config: config.clone(),
            current: RwLock::new(Current {
                conn,
                node: node_name(&info),
                info,
                generation: 1,
            }),
            changed,
            wake,
            preferred,
            announced: Mutex::new(None),
            _alive: alive,
        });
        tokio::spawn(resolver(Arc::downgrade(&pinned), woken));
        if let Some(spec) = watched {
            watch_sentinels(Arc::downgrade(&pinned), spec, config.clone(), watching);
        }
        Ok(Connection::Pinned(pinned))
    }

    /// Finds the node again and swaps the connection if it changed: to a
    /// master the sentinels announced, once it is one; otherwise, only when
    /// the current node is down or no longer a master, to the node the
    /// discovery finds. Keeping a node that still is a master means a
    /// sentinel that has not heard of a failover yet cannot send us back to
    /// the old master, which stays one until the sentinels demote it.
    async fn resolve(&self) {
        let (node, conn) = {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
            (current.node.clone(), current.conn.clone())
        };
        let announced = self
            .announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let mut found = Ok(None);
        if let Some(master) = announced.filter(|m| node_name(m) != node) {
            found = master_connection(&master, &self.config, ANNOUNCED_CHECKS)
                .await
                .map(|conn| Some((conn, master)));
        }
        if !matches!(found, Ok(Some(_))) && !self.still_usable(conn).await {
            found = discover(&self.discovery, &self.config, &self.preferred, Some(&node)).await;
        }
        match found {
            Ok(Some((conn, info))) => {
                let new_node = node_name(&info);
                let generation = {
                    let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
                    current.generation += 1;
                    current.conn = conn;
                    current.node = new_node.clone();
                    current.info = info;
                    current.generation
                };
                tracing::info!(from = %node, to = %new_node, "cachette redis: switched to another node");
                self.changed.send_replace(generation);
            }
            Ok(None) => tracing::debug!(node = %node, "cachette redis: still the node to use"),
            Err(err) => {
                tracing::debug!(error = %err, "cachette redis: no node found; keeping the current one")
            }
        }
    }

    /// Whether the current node still answers (and, under Sentinel, is
    /// still a master).
    async fn still_usable(&self, mut conn: ConnectionManager) -> bool {
        let timeout = self.config.command_timeout;
        match &self.discovery {
            Discovery::Seeds(_) => matches!(
                tokio::time::timeout(timeout, redis::cmd("PING").query_async::<()>(&mut conn))
                    .await,
                Ok(Ok(()))
            ),
            Discovery::Sentinel(_) => {
                let role = tokio::time::timeout(
                    timeout,
                    redis::cmd("ROLE").query_async::<Vec<Value>>(&mut conn),
                )
                .await;
                matches!(role, Ok(Ok(role)) if role.first().is_some_and(|r| {
                    redis::from_redis_value_ref::<String>(r).is_ok_and(|r| r == "master")
                }))
            }
        }
    }
}

/// Resolves on every wake, at most every [`MIN_RESOLVE_INTERVAL`]; ends
/// with the connection.
async fn resolver(pinned: Weak<Pinned>, mut woken: mpsc::Receiver<()>) {
    let mut last: Option<Instant> = None;
    while woken.recv().await.is_some() {
        if let Some(last) = last {
            tokio::time::sleep_until((last + MIN_RESOLVE_INTERVAL).into()).await;
        }
        let Some(pinned) = pinned.upgrade() else {
            return;
        };
        last = Some(Instant::now());
        pinned.resolve().await;
    }
}

/// Listens to every sentinel's announcements of a failover (each on its
/// own Pub/Sub connection, resubscribing when it drops: only the sentinel
/// leading a failover announces its start) and has the resolver move to
/// the announced master; and look again on every (re)subscription, since
/// an announcement may have been missed meanwhile. Sentinel's client
/// guidelines ask for this: a failover that demotes the old master
/// gracefully gives its clients no error until the demotion, up to seconds
/// later (the sentinels' next `INFO`), and every write the old master takes
/// meanwhile is lost. Ends with the connection.
fn watch_sentinels(
    pinned: Weak<Pinned>,
    spec: SentinelSpec,
    config: RedisConfig,
    alive: watch::Receiver<()>,
) {
    let spec = Arc::new(spec);
    for sentinel in spec.sentinels.clone() {
        tokio::spawn(watch_sentinel(
            pinned.clone(),
            sentinel,
            spec.clone(),
            config.connect_timeout,
            alive.clone(),
        ));
    }
}

async fn watch_sentinel(
    pinned: Weak<Pinned>,
    sentinel: ConnectionInfo,
    spec: Arc<SentinelSpec>,
    connect_timeout: Duration,
    mut alive: watch::Receiver<()>,
) {
    let mut backoff = MIN_RESOLVE_INTERVAL;
    loop {
        let subscribed = tokio::select! {
            _ = alive.changed() => return,
            subscribed = tokio::time::timeout(
                connect_timeout,
                subscribe_to_switches(&sentinel),
            ) => subscribed,
        };
        if let Ok(Ok(mut switches)) = subscribed {
            backoff = MIN_RESOLVE_INTERVAL;
            if !announce(&pinned, None) {
                return;
            }
            loop {
                let message = tokio::select! {
                    _ = alive.changed() => return,
                    message = switches.next() => message,
                };
                let Some(message) = message else {
                    break;
                };
                let payload: String = message.get_payload().unwrap_or_default();
                let fields: Vec<&str> = payload.split(' ').collect();
                let channel = message.get_channel_name();
                let Some(&(_, name, host, port)) =
                    ANNOUNCEMENTS.iter().find(|(c, ..)| *c == channel)
                else {
                    continue;
                };
                if fields.get(name) != Some(&spec.master_name.as_str()) {
                    continue;
                }
                let (Some(host), Some(port)) = (
                    fields.get(host),
                    fields.get(port).and_then(|p| p.parse::<u16>().ok()),
                ) else {
                    continue;
                };
                tracing::info!(
                    master = %spec.master_name,
                    to = %format!("{host}:{port}"),
                    announcement = channel,
                    "cachette redis: the sentinels are moving the master"
                );
                if !announce(&pinned, Some(spec.master_at((*host).to_owned(), port))) {
                    return;
                }
            }
        }
        tokio::select! {
            _ = alive.changed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn subscribe_to_switches(sentinel: &ConnectionInfo) -> Result<PubSubStream, RedisError> {
    let mut pubsub = Client::open(sentinel.clone())?.get_async_pubsub().await?;
    let channels: Vec<&str> = ANNOUNCEMENTS.iter().map(|(c, ..)| *c).collect();
    pubsub.subscribe(&channels).await?;
    Ok(pubsub.into_on_message())
}

/// Hands the resolver an announced master (if any) and wakes it; false once
/// the connection is gone.
fn announce(pinned: &Weak<Pinned>, master: Option<ConnectionInfo>) -> bool {
    let Some(pinned) = pinned.upgrade() else {
        return false;
    };
    if master.is_some() {
        *pinned
            .announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = master;
    }
    let _ = pinned.wake.try_send(());
    true
}

/// Finds the node: a new connection to it, or `None` when it is `current`.
async fn discover(
    discovery: &Discovery,
    config: &RedisConfig,
    preferred: &AtomicUsize,
    current: Option<&str>,
) -> Result<Option<(ConnectionManager, ConnectionInfo)>, StoreError> {
    let mut last_err = None;
    match discovery {
        Discovery::Seeds(seeds) => {
            for seed in seeds {
                let name = node_name(seed);
                match ping(seed, config).await {
                    Ok(conn) if current == Some(name.as_str()) => {
                        drop(conn);
                        return Ok(None);
                    }
                    Ok(conn) => return Ok(Some((conn, seed.clone()))),
                    Err(err) => last_err = Some(err),
                }
            }
        }
        Discovery::Sentinel(spec) => {
            let count = spec.sentinels.len();
            let first = preferred.load(Ordering::Relaxed);
            for i in (0..count).map(|i| (first + i) % count) {
                let Some(sentinel) = spec.sentinels.get(i) else {
                    continue;
                };
                let master = match ask_sentinel(sentinel, &spec.master_name, config).await {
                    Ok(master) => master,
                    Err(err) => {
                        last_err = Some(err);
                        continue;
                    }
                };
                preferred.store(i, Ordering::Relaxed);
                let name = node_name(&master);
                if current == Some(name.as_str()) {
                    return Ok(None);
                }
                match master_connection(&master, config, 1).await {
                    Ok(conn) => return Ok(Some((conn, master))),
                    Err(err) => last_err = Some(err),
                }
            }
        }
    }
    Err(last_err.unwrap_or_else(|| StoreError::Unavailable {
        store: StoreKind::Redis,
        source: "no node to try".into(),
    }))
}

/// A connection to `node` once it answered `PING`.
async fn ping(
    node: &ConnectionInfo,
    config: &RedisConfig,
) -> Result<ConnectionManager, StoreError> {
    let mut conn = manager(node, config).await?;
    let timeout = config.command_timeout;
    tokio::time::timeout(timeout, redis::cmd("PING").query_async::<()>(&mut conn))
        .await
        .map_err(|_| connect_timed_out(timeout))?
        .map_err(|e| classify(e, timeout))?;
    Ok(conn)
}

/// The master a sentinel names for `name`.
async fn ask_sentinel(
    sentinel: &ConnectionInfo,
    name: &str,
    config: &RedisConfig,
) -> Result<ConnectionInfo, StoreError> {
    let Topology::Sentinel(spec) = config.topology() else {
        return Err(StoreError::Refused {
            store: StoreKind::Redis,
            source: "not a Sentinel configuration".into(),
        });
    };
    let limit = config.connect_timeout + config.command_timeout;
    let timeout = config.connect_timeout;
    let ask = async {
        let client = Client::open(sentinel.clone())?;
        let conn_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&conn_config)
            .await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(name)
            .query_async::<Option<(String, u16)>>(&mut conn)
            .await
    };
    let answer = tokio::time::timeout(limit, ask)
        .await
        .map_err(|_| connect_timed_out(limit))?
        .map_err(|e| classify(e, timeout))?;
    let (host, port) = answer.ok_or_else(|| StoreError::Refused {
        store: StoreKind::Redis,
        source: format!(
            "the sentinel {} knows no master `{name}`",
            node_name(sentinel)
        )
        .into(),
    })?;
    Ok(spec.master_at(host, port))
}

/// A connection to `master` once its `ROLE` confirmed it is one: a
/// sentinel can name a master that was just demoted. Asks up to `checks`
/// times, 20 ms apart: a replica announced as being promoted takes a moment
/// to become master, and the promotion closes its clients' connections
/// (the manager reconnects on the next ask).
async fn master_connection(
    master: &ConnectionInfo,
    config: &RedisConfig,
    checks: u32,
) -> Result<ConnectionManager, StoreError> {
    let mut conn = manager(master, config).await?;
    let timeout = config.command_timeout;
    let mut last = String::from("unknown");
    for check in 0..checks.max(1) {
        if check > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let answer = tokio::time::timeout(
            timeout,
            redis::cmd("ROLE").query_async::<Vec<Value>>(&mut conn),
        )
        .await;
        match answer {
            Ok(Ok(answer)) => {
                let role = answer
                    .into_iter()
                    .next()
                    .and_then(|v| redis::from_redis_value::<String>(v).ok());
                if role.as_deref() == Some("master") {
                    return Ok(conn);
                }
                last = format!("its role is {}", role.as_deref().unwrap_or("unknown"));
            }
            Ok(Err(err)) => last = format!("ROLE failed: {err}"),
            Err(_) => last = format!("ROLE did not answer within {timeout:?}"),
        }
    }
    Err(StoreError::Refused {
        store: StoreKind::Redis,
        source: format!("{} is not a master (yet): {last}", node_name(master)).into(),
    })
}

/// The nodes a Pub/Sub subscriber may use, in order: the server; the
/// cluster's seeds (a classic `PUBLISH` reaches every node); the master the
/// sentinels name (what it publishes reaches its replicas too).
pub(crate) async fn pubsub_nodes(config: &RedisConfig) -> Result<Vec<ConnectionInfo>, StoreError> {
    match config.topology() {
        Topology::Standalone(info) => Ok(vec![info.clone()]),
        Topology::Cluster(nodes) => Ok(nodes.clone()),
        Topology::Sentinel(spec) => {
            let mut last_err = None;
            for sentinel in &spec.sentinels {
                match ask_sentinel(sentinel, &spec.master_name, config).await {
                    Ok(master) => return Ok(vec![master]),
                    Err(err) => last_err = Some(err),
                }
            }
            Err(last_err.unwrap_or_else(|| StoreError::Unavailable {
                store: StoreKind::Redis,
                source: "no sentinel to ask".into(),
            }))
        }
    }
}

/// TLS needs a process-wide rustls crypto provider, which redis-rs does not
/// pick: without one the first TLS handshake would panic. Installs ring's
/// unless the application installed one already.
pub(crate) fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race with the application's own install is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}
