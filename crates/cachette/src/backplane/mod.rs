//! The backplane: keeps the L1 tiers of many instances coherent through
//! Redis Pub/Sub.
//!
//! Every write of a cache with L1 (set, delete, write-through, a load's
//! fill, a namespace clear) is announced on one channel as a small message
//! (see `wire`); every other instance drops its copy. Messages are sent by
//! a background task in pipelines, so a write does not wait for them in
//! the default, eventual mode: a copy elsewhere is dropped about one
//! Redis round trip after the write (measured in the README).
//!
//! # When the backplane is down
//!
//! Pub/Sub delivers at most once: a subscriber that is disconnected misses
//! messages for good. So when the subscription closes, or this instance's
//! own heartbeat does not come back within the lease (a hung server, a
//! half-open socket), every L1 copy is flushed and new copies live at most
//! one lease until the subscription is back and heard; then everything is
//! flushed once more. Each transition is logged once and counted.
//!
//! # Read-your-writes
//!
//! A cache built with [`CacheBuilder::read_your_writes`](crate::CacheBuilder::read_your_writes)
//! makes every write wait until each live instance has acknowledged
//! dropping its copy, or until a silent instance's lease has run out; and it
//! serves from L1 only while its own lease runs. Once such a write returns,
//! no instance serves the old value (`fleet` and `health` explain why). The
//! cost: one Pub/Sub round trip per write when every instance answers, up
//! to one lease when one is silent.
//!
//! # On Redis Cluster and Sentinel
//!
//! A classic `PUBLISH` on any cluster node reaches the subscribers of every
//! node (over the cluster bus), so an instance subscribes on one node, the
//! first seed of its URL that answers, and publishes through one node too
//! (the same, normally): messages from one node arrive in the order they
//! were published, which acknowledgements rely on. (Sharded Pub/Sub would
//! scale further but ties a channel to a slot's node, which moves.) Under
//! Sentinel both sides use the master. The subscriber follows the
//! publisher's node: when the publisher moves (a failover, or its cluster
//! node failing), the subscription is dropped like a lost one (L1 flushed)
//! and made again on the new node, instead of staying deaf on a node that
//! no longer hears this instance's messages.
//!
//! # Why Pub/Sub and not RESP3 client tracking
//!
//! Tracking needs RESP3 on every connection (some proxies and managed
//! services refuse it), is per connection and must be re-armed after every
//! reconnect, and in its default mode costs server memory per cached key.
//! Our messages also carry what tracking cannot: namespace clears in one
//! message, acknowledgements for read-your-writes, and heartbeats for the
//! lease. A store without Redis has nothing to be coherent with.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::store::{Connection, RedisConfig};
use crate::{BuildError, Error};

mod fleet;
mod health;
mod publisher;
mod registry;
mod subscriber;
mod wire;

pub(crate) use self::fleet::Confirmed;
use self::fleet::Fleet;
pub(crate) use self::health::Health;
use self::publisher::{Outgoing, Published};
pub(crate) use self::registry::Listener;
use self::registry::Registry;
use self::wire::{Body, Message};

/// The default channel (the `c1` is the message format's version).
pub const DEFAULT_CHANNEL: &str = "cachette:backplane:c1";
/// How often an instance announces itself, by default.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(100);
/// The default lease (see the module docs): also the longest an L1 copy
/// lives while the backplane is down, and the longest a read-your-writes
/// write waits for a silent instance.
pub const DEFAULT_LEASE: Duration = Duration::from_millis(500);

/// How often a read-your-writes write that is still waiting for an
/// acknowledgement sends an out-of-turn heartbeat (see `Shared::nudge`).
const NUDGE: Duration = Duration::from_millis(10);

/// Announcements queued for publishing at most; beyond, they are replaced
/// by one "flush everything" message.
const QUEUE: usize = 65_536;

/// Backplane settings.
#[derive(Debug, Clone)]
pub struct BackplaneConfig {
    redis: RedisConfig,
    channel: String,
    heartbeat: Duration,
    lease: Duration,
}

impl BackplaneConfig {
    /// A backplane over the Redis that `redis` points to, with the default
    /// channel, heartbeat and lease.
    pub fn new(redis: RedisConfig) -> BackplaneConfig {
        BackplaneConfig {
            redis,
            channel: DEFAULT_CHANNEL.to_owned(),
            heartbeat: DEFAULT_HEARTBEAT,
            lease: DEFAULT_LEASE,
        }
    }

    /// The Pub/Sub channel; instances talk only to those on the same one
    /// (give each application or environment its own on a shared Redis).
    #[must_use]
    pub fn channel(mut self, channel: impl Into<String>) -> BackplaneConfig {
        self.channel = channel.into();
        self
    }

    /// How often this instance announces itself. By default, 100 ms.
    #[must_use]
    pub fn heartbeat(mut self, every: Duration) -> BackplaneConfig {
        self.heartbeat = every;
        self
    }

    /// The lease. At least three heartbeats; the same on every instance.
    /// By default, 500 ms.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> BackplaneConfig {
        self.lease = lease;
        self
    }

    fn check(&self) -> Result<(), BuildError> {
        let out_of_range = |what, reason: String| Err(BuildError::OutOfRange { what, reason });
        if self.channel.is_empty() || self.channel.len() > 200 {
            return out_of_range("backplane channel", "must be 1 to 200 bytes".into());
        }
        if self.heartbeat < Duration::from_millis(5) {
            return out_of_range(
                "backplane heartbeat",
                format!("{:?} is under 5 ms", self.heartbeat),
            );
        }
        if self.lease < self.heartbeat * 3 || self.lease > Duration::from_secs(60) {
            return out_of_range(
                "backplane lease",
                format!(
                    "{:?} must be at least three heartbeats ({:?}) and at most 60 s",
                    self.lease,
                    self.heartbeat * 3
                ),
            );
        }
        Ok(())
    }
}

/// Timing settings the tasks read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) heartbeat: Duration,
    pub(crate) lease: Duration,
}

/// A snapshot of a backplane's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackplaneStats {
    /// Subscribed, and this instance's own heartbeat comes back.
    pub healthy: bool,
    /// Other instances heard within their lease.
    pub members: usize,
    /// Messages published (announcements, acknowledgements, heartbeats).
    pub sent: u64,
    /// Messages received, own echoes included.
    pub received: u64,
    /// Received messages that were not in this format (ignored).
    pub unreadable: u64,
    /// Failed publish attempts (each retried).
    pub publish_errors: u64,
    /// Announcements dropped because the queue was full (replaced by a
    /// flush of every instance's L1).
    pub dropped: u64,
    /// Subscriptions made (1 + reconnections).
    pub subscriptions: u64,
    /// Subscriptions lost (closed, or deaf past the lease).
    pub disconnects: u64,
    /// Failed reconnection attempts.
    pub connect_errors: u64,
    /// Read-your-writes writes confirmed by every instance's acknowledgement.
    pub acknowledged_writes: u64,
    /// Read-your-writes writes that waited out a silent instance's lease.
    pub lease_waits: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    unreadable: AtomicU64,
    publish_errors: AtomicU64,
    dropped: AtomicU64,
    subscriptions: AtomicU64,
    disconnects: AtomicU64,
    connect_errors: AtomicU64,
    acknowledged_writes: AtomicU64,
    lease_waits: AtomicU64,
}

/// What the tasks and the handles share.
pub(crate) struct Shared {
    id: u64,
    channel: String,
    ack_channel: String,
    redis: RedisConfig,
    config: Settings,
    health: Health,
    fleet: Fleet,
    registry: Registry,
    counters: Counters,
    queue: mpsc::Sender<Outgoing>,
    /// Announcements were dropped: publish a flush of everything.
    lost: AtomicBool,
    /// When (`health` clock) the last out-of-turn heartbeat was queued for
    /// a waiting read-your-writes write.
    nudged_ns: AtomicU64,
    local_addr: Mutex<Option<SocketAddr>>,
    /// The publisher's connection. When it is pinned to one node (Cluster,
    /// Sentinel), the subscriber subscribes on that node and follows it.
    publishing: Connection,
}

impl Shared {
    fn message(&self, seq: u64, ack_wanted: bool, body: Body<'_>) -> String {
        Message {
            sender: self.id,
            seq,
            ack_wanted,
            body,
        }
        .encode()
    }

    fn ack_channel_of(&self, id: u64) -> String {
        format!("{}:ack:{id:016x}", self.channel)
    }

    /// Queues an out-of-turn heartbeat, at most one per [`NUDGE`] (or per
    /// heartbeat, if shorter) for all waiting writers together. An instance
    /// that resubscribed acknowledges the first message it hears from us
    /// (see `subscriber`), so this releases a write it missed while
    /// reconnecting about one nudge after its return, instead of at our
    /// next periodic heartbeat (up to 100 ms later).
    fn nudge(&self) {
        let now = self.health.now_ns();
        let every = u64::try_from(self.nudge_every().as_nanos()).unwrap_or(u64::MAX);
        let last = self.nudged_ns.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= every
            && self
                .nudged_ns
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let (reply, _) = oneshot::channel();
            self.enqueue(Outgoing::Marker { reply });
        }
    }

    fn nudge_every(&self) -> Duration {
        NUDGE.min(self.config.heartbeat)
    }

    fn enqueue(&self, outgoing: Outgoing) {
        if self.queue.try_send(outgoing).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            if !self.lost.swap(true, Ordering::SeqCst) {
                tracing::warn!(
                    "cachette backplane queue full: announcements dropped; every instance's L1 will be flushed"
                );
            }
        }
    }
}

struct Handle {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// A connection of this instance to the backplane. Cheap to clone; pass
/// clones to every cache that has (or whose other instances have) an L1
/// tier. The background tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct Backplane {
    handle: Arc<Handle>,
}

impl fmt::Debug for Backplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.handle.shared;
        f.debug_struct("Backplane")
            .field("id", &format_args!("{:016x}", s.id))
            .field("channel", &s.channel)
            .field("redis", &s.redis)
            .field("config", &s.config)
            .field("healthy", &s.health.is_healthy())
            .finish()
    }
}

/// Something a cache announces.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Change<'a> {
    /// The entry under this store key.
    Key(&'a str),
    /// Every entry under this key head.
    Namespace(&'a str),
    /// The invalidation mark under this store key was raised.
    Mark(&'a str),
}

/// An announcement whose delivery a read-your-writes write waits for.
#[derive(Debug)]
pub(crate) struct Pending(oneshot::Receiver<Published>);

impl Backplane {
    /// Connects: subscribes (waiting at most the Redis connect timeout),
    /// starts the background tasks, and waits (at most one lease) for the
    /// first own heartbeat to come back. Needs a Tokio runtime.
    ///
    /// # Errors
    /// [`Error::Build`] for settings out of range; [`Error::Store`] when
    /// Redis cannot be reached.
    pub async fn connect(config: BackplaneConfig) -> Result<Backplane, Error> {
        config.check()?;
        let conn = Connection::open_for_publishing(&config.redis).await?;
        let (queue, queued) = mpsc::channel(QUEUE);
        let (shutdown, stop) = watch::channel(false);
        let id = loop {
            let id = rand::random::<u64>();
            if id != 0 {
                break id;
            }
        };
        let settings = Settings {
            heartbeat: config.heartbeat,
            lease: config.lease,
        };
        let shared = Arc::new(Shared {
            id,
            ack_channel: format!("{}:ack:{id:016x}", config.channel),
            channel: config.channel,
            redis: config.redis,
            config: settings,
            health: Health::new(settings.lease),
            fleet: Fleet::default(),
            registry: Registry::default(),
            counters: Counters::default(),
            queue,
            lost: AtomicBool::new(false),
            nudged_ns: AtomicU64::new(0),
            local_addr: Mutex::new(None),
            publishing: conn.clone(),
        });
        let (first_tx, first) = oneshot::channel();
        tokio::spawn(subscriber::run(Arc::clone(&shared), stop.clone(), first_tx));
        match first.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => {
                return Err(Error::Backplane {
                    reason: "the subscriber task ended before subscribing".into(),
                });
            }
        }
        tokio::spawn(publisher::run(Arc::clone(&shared), conn, queued, stop));
        let backplane = Backplane {
            handle: Arc::new(Handle { shared, shutdown }),
        };
        let _ = tokio::time::timeout(settings.lease, backplane.healthy()).await;
        Ok(backplane)
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// This instance's random id (the sender of its messages).
    pub fn id(&self) -> u64 {
        self.shared().id
    }

    /// True while subscribed and hearing its own heartbeat.
    pub fn is_healthy(&self) -> bool {
        self.shared().health.is_healthy()
    }

    /// Waits until the backplane is healthy (see [`Backplane::is_healthy`]):
    /// woken by each batch of messages the subscriber applies, so it
    /// returns as soon as the own heartbeat is back. It waits as long as
    /// that takes; bound it with a timeout.
    pub async fn healthy(&self) {
        loop {
            let next = self.shared().fleet.next_change();
            tokio::pin!(next);
            next.as_mut().enable();
            if self.is_healthy() {
                return;
            }
            next.await;
        }
    }

    /// The local address of the subscriber connection (plain TCP only): the
    /// `addr` of this instance's subscriber in Redis's `CLIENT LIST`.
    pub fn subscriber_addr(&self) -> Option<SocketAddr> {
        *self
            .shared()
            .local_addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> BackplaneStats {
        let s = self.shared();
        let c = &s.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BackplaneStats {
            healthy: s.health.is_healthy(),
            members: s.fleet.live(),
            sent: get(&c.sent),
            received: get(&c.received),
            unreadable: get(&c.unreadable),
            publish_errors: get(&c.publish_errors),
            dropped: get(&c.dropped),
            subscriptions: get(&c.subscriptions),
            disconnects: get(&c.disconnects),
            connect_errors: get(&c.connect_errors),
            acknowledged_writes: get(&c.acknowledged_writes),
            lease_waits: get(&c.lease_waits),
        }
    }

    /// Waits until every announcement this instance queued so far is
    /// published, and every message that reached Redis before that has been
    /// applied here. After each instance of a quiet fleet has synced, all
    /// of them have applied each other's announcements.
    ///
    /// # Errors
    /// [`Error::Backplane`] when that did not happen within one lease plus
    /// the Redis command timeout.
    pub async fn sync(&self) -> Result<(), Error> {
        let s = self.shared();
        let limit = s.config.lease + s.redis.command_timeout_value();
        let until = std::time::Instant::now() + limit;
        let (reply, published) = oneshot::channel();
        s.enqueue(Outgoing::Marker { reply });
        let fail = || Error::Backplane {
            reason: format!("could not sync with the backplane within {limit:?}"),
        };
        let published = match tokio::time::timeout(limit, published).await {
            Ok(Ok(published)) => published,
            Ok(Err(_)) | Err(_) => return Err(fail()),
        };
        if s.fleet.own_echo(published.seq, until).await {
            Ok(())
        } else {
            Err(fail())
        }
    }

    pub(crate) fn health(&self) -> &Health {
        &self.shared().health
    }

    /// Adds a cache's L1 under its key head; returns its id.
    pub(crate) fn register(&self, head: &str, listener: Weak<dyn Listener>) -> u64 {
        self.shared().registry.register(head, listener)
    }

    /// Drops the copies of the other caches of this process under the same
    /// head and queues the announcement for the other instances. With
    /// `confirm`, the returned [`Pending`] is for [`Backplane::confirm`].
    pub(crate) fn announce(
        &self,
        change: Change<'_>,
        origin: u64,
        confirm: bool,
    ) -> Option<Pending> {
        let s = self.shared();
        let (reply, pending) = if confirm {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(Pending(rx)))
        } else {
            (None, None)
        };
        let outgoing = match change {
            Change::Key(store_key) => {
                if let Some(head) = wire::head_of(store_key) {
                    s.registry
                        .each(head, Some(origin), |l| l.drop_key(store_key));
                }
                Outgoing::Key {
                    store_key: store_key.to_owned(),
                    reply,
                }
            }
            Change::Namespace(head) => {
                s.registry.each(head, Some(origin), |l| l.drop_namespace());
                Outgoing::Namespace {
                    head: head.to_owned(),
                    reply,
                }
            }
            Change::Mark(key) => {
                s.registry.all(Some(origin), |l| l.drop_mark(key));
                Outgoing::Mark {
                    key: key.to_owned(),
                    reply,
                }
            }
        };
        s.enqueue(outgoing);
        pending
    }

    /// Waits until every live instance applied the announcement, or a
    /// silent one's lease ran out (see the module docs).
    ///
    /// # Errors
    /// [`Error::Backplane`] when the announcement could not be published
    /// within one lease plus the Redis command timeout.
    pub(crate) async fn confirm(&self, pending: Pending, namespace: &str) -> Result<(), Error> {
        let s = self.shared();
        let limit = s.config.lease + s.redis.command_timeout_value();
        let published = match tokio::time::timeout(limit, pending.0).await {
            Ok(Ok(published)) => published,
            Ok(Err(_)) | Err(_) => {
                return Err(Error::Backplane {
                    reason: format!(
                        "namespace `{namespace}`: the write is stored, but its invalidation could not be published within {limit:?}; other instances may serve the old value for up to their L1 TTL cap"
                    ),
                });
            }
        };
        let confirm = s.fleet.confirm(published.seq, published.at, s.config.lease);
        tokio::pin!(confirm);
        let confirmed = loop {
            tokio::select! {
                biased;
                confirmed = &mut confirm => break confirmed,
                () = tokio::time::sleep(s.nudge_every()) => s.nudge(),
            }
        };
        let counter = match confirmed {
            Confirmed::Acknowledged => &s.counters.acknowledged_writes,
            Confirmed::LeaseRanOut => &s.counters.lease_waits,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
