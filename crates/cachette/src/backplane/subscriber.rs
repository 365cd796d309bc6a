//! The listening side: a dedicated subscriber connection (the shared
//! command connection cannot carry a subscription, and its 500 ms response
//! timeout must not apply to a connection that waits by design).
//!
//! Messages are applied in the order Redis delivered them. After each batch
//! the acknowledgements asked for go out (one per sender, covering the
//! batch) and waiting writers are woken.
//!
//! The connection is considered lost when it closes (a killed client, a
//! restarted server) or goes deaf: this instance's own heartbeat did not
//! come back within its lease (a half-open socket, a hung server). Either
//! way every L1 copy is flushed and, until the next own heartbeat comes
//! back on a new subscription, copies live at most one lease; then the
//! copies are flushed once more, since messages published in between were
//! never delivered. Each transition is logged once.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use redis::aio::{PubSub, PubSubStream};
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::sync::{oneshot, watch};

use super::Shared;
use super::publisher::Outgoing;
use super::wire::{Body, Message, head_of};
use crate::store::{StoreError, StoreKind, classify, pubsub_nodes};

const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Messages applied before acknowledging and waking writers.
const BATCH: usize = 1024;

/// Why a subscription ended.
#[derive(Debug, Clone, Copy)]
enum Lost {
    Closed,
    Deaf,
    /// The publisher moved to another node.
    Moved,
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    first: oneshot::Sender<Result<(), StoreError>>,
) {
    let mut first = Some(first);
    let mut backoff = MIN_BACKOFF;
    loop {
        let connected = tokio::select! {
            _ = shutdown.changed() => return,
            connected = subscribe(&shared) => connected,
        };
        match connected {
            Ok(Subscribed {
                stream,
                local_addr,
                moves,
            }) => {
                backoff = MIN_BACKOFF;
                shared.subscribed(local_addr);
                if let Some(first) = first.take() {
                    let _ = first.send(Ok(()));
                }
                let Some(lost) = listen(&shared, stream, moves, &mut shutdown).await else {
                    return;
                };
                shared.lost_subscription(lost);
            }
            Err(err) => {
                if let Some(first) = first.take() {
                    let _ = first.send(Err(err));
                    return;
                }
                shared
                    .counters
                    .connect_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %err, "cachette backplane reconnect failed");
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A subscription.
struct Subscribed {
    stream: PubSubStream,
    local_addr: Option<SocketAddr>,
    /// Sees the publisher move to another node (when it is pinned to one).
    moves: Option<watch::Receiver<u64>>,
}

/// Opens a subscriber connection and subscribes to the broadcast channel
/// and this instance's acknowledgement channel: on the publisher's node
/// when it is pinned to one (Cluster, Sentinel), else, or when that node
/// fails, on the first node that answers of those the configuration offers
/// (`store::pubsub_nodes`: the server, the cluster's seeds in order, or
/// the master the sentinels name).
async fn subscribe(shared: &Shared) -> Result<Subscribed, StoreError> {
    let timeout = shared.redis.connect_timeout_value();
    let (pinned, moves) = match shared.publishing.pinned_node() {
        Some((node, moves)) => (Some(node), Some(moves)),
        None => (None, None),
    };
    let mut last_err = None;
    // Tried from the back.
    let mut nodes: Vec<ConnectionInfo> = pinned.into_iter().collect();
    let mut offered = false;
    loop {
        let Some(node) = nodes.pop() else {
            if offered {
                break;
            }
            offered = true;
            match pubsub_nodes(&shared.redis).await {
                Ok(found) => nodes = found.into_iter().rev().collect(),
                Err(err) => return Err(last_err.unwrap_or(err)),
            }
            continue;
        };
        let attempt = tokio::time::timeout(timeout, subscribe_on(shared, &node))
            .await
            .unwrap_or(Err(StoreError::Timeout {
                store: StoreKind::Redis,
                after: timeout,
            }));
        match attempt {
            Ok((stream, local_addr)) => {
                return Ok(Subscribed {
                    stream,
                    local_addr,
                    moves,
                });
            }
            Err(err) => last_err = Some(err),
        }
    }
    Err(last_err.unwrap_or(StoreError::Unavailable {
        store: StoreKind::Redis,
        source: "no node to subscribe on".into(),
    }))
}

async fn subscribe_on(
    shared: &Shared,
    node: &ConnectionInfo,
) -> Result<(PubSubStream, Option<SocketAddr>), StoreError> {
    let timeout = shared.redis.connect_timeout_value();
    let redis_err = |e| classify(e, timeout);
    let (mut pubsub, local_addr) = match node.addr() {
        // Plain TCP: our own socket, so NODELAY is set and its local
        // address is known (it names this connection in CLIENT LIST).
        ConnectionAddr::Tcp(host, port) => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| StoreError::Unavailable {
                    store: StoreKind::Redis,
                    source: Box::new(e),
                })?;
            let _ = stream.set_nodelay(true);
            let local_addr = stream.local_addr().ok();
            let pubsub = PubSub::new(node.redis_settings(), stream)
                .await
                .map_err(redis_err)?;
            (pubsub, local_addr)
        }
        _ => {
            crate::store::ensure_crypto_provider();
            let client = redis::Client::open(node.clone()).map_err(redis_err)?;
            (client.get_async_pubsub().await.map_err(redis_err)?, None)
        }
    };
    pubsub
        .subscribe(&[shared.channel.as_str(), shared.ack_channel.as_str()])
        .await
        .map_err(redis_err)?;
    Ok((pubsub.into_on_message(), local_addr))
}

/// Applies messages until the subscription is lost (`None` on shutdown).
async fn listen(
    shared: &Shared,
    mut stream: PubSubStream,
    mut moves: Option<watch::Receiver<u64>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Lost> {
    let connected_at = Instant::now();
    let lease = shared.config.lease;
    let mut acks: HashMap<u64, u64> = HashMap::new();
    // Senders heard since this subscription began. The first message from
    // each is acknowledged even unasked: messages of that sender before it
    // were either applied or published before this subscription, and then
    // covered by the flush that started it. So a writer that waits on a
    // message this instance missed while reconnecting is released by its
    // next message (a waiting writer sends out-of-turn heartbeats, see
    // `Shared::nudge`) instead of waiting out the lease.
    let mut heard: HashSet<u64> = HashSet::new();
    loop {
        let deaf_at = shared
            .health
            .lease_until()
            .map_or(connected_at + lease, |until| {
                until.max(connected_at + lease)
            });
        let next = tokio::select! {
            biased;
            _ = shutdown.changed() => return None,
            next = stream.next() => next,
            () = tokio::time::sleep_until(deaf_at.into()) => return Some(Lost::Deaf),
            () = moved(&mut moves) => return Some(Lost::Moved),
        };
        let Some(msg) = next else {
            return Some(Lost::Closed);
        };
        shared.apply(msg.get_payload_bytes(), &mut acks, &mut heard);
        let mut closed = false;
        for _ in 1..BATCH {
            match stream.next().now_or_never() {
                Some(Some(msg)) => shared.apply(msg.get_payload_bytes(), &mut acks, &mut heard),
                Some(None) => {
                    closed = true;
                    break;
                }
                None => break,
            }
        }
        for (to, upto) in acks.drain() {
            shared.enqueue(Outgoing::Ack { to, upto });
        }
        shared.fleet.changed();
        if closed {
            return Some(Lost::Closed);
        }
    }
}

/// Resolves when the publisher's node changes; never without one.
async fn moved(moves: &mut Option<watch::Receiver<u64>>) {
    if let Some(moves) = moves
        && moves.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

impl Shared {
    /// Applies one message.
    fn apply(&self, payload: &[u8], acks: &mut HashMap<u64, u64>, heard: &mut HashSet<u64>) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let Some(message) = Message::parse(payload) else {
            self.counters.unreadable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if message.sender == self.id {
            match message.body {
                Body::Heartbeat { sent_ns, .. } => {
                    if self.health.renew(sent_ns) {
                        tracing::info!(
                            "cachette backplane healthy: invalidations flow, L1 copies live their full TTL"
                        );
                    }
                    self.fleet.own_applied(message.seq);
                }
                Body::Ack => {}
                _ => self.fleet.own_applied(message.seq),
            }
            return;
        }
        match message.body {
            Body::Key(store_key) => {
                if let Some(head) = head_of(store_key) {
                    self.registry
                        .each(head, None, |listener| listener.drop_key(store_key));
                }
            }
            Body::Namespace(head) => self.registry.each(head, None, |l| l.drop_namespace()),
            Body::Mark(key) => self.registry.all(None, |l| l.drop_mark(key)),
            Body::FlushAll => self.registry.all(None, |l| l.flush()),
            Body::Heartbeat { lease, .. } => self.fleet.heard(message.sender, lease),
            Body::Ack => self.fleet.acked(message.sender, message.seq),
        }
        let first_heard = !matches!(message.body, Body::Ack) && heard.insert(message.sender);
        if message.ack_wanted || first_heard {
            let upto = acks.entry(message.sender).or_insert(0);
            *upto = (*upto).max(message.seq);
        }
    }

    fn subscribed(&self, local_addr: Option<SocketAddr>) {
        *self
            .local_addr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = local_addr;
        // Messages published while we were not subscribed are lost: drop
        // every copy that could have missed one.
        self.registry.all(None, |l| l.flush());
        let reconnects = self.counters.subscriptions.fetch_add(1, Ordering::Relaxed);
        if reconnects > 0 {
            tracing::info!("cachette backplane subscribed again; L1 flushed");
        }
    }

    fn lost_subscription(&self, lost: Lost) {
        // Unhealthy first, then flush: a fill that checks health after the
        // flush sees the short cap; one that checked before is refused by
        // the flush.
        let was_healthy = self.health.revoke();
        self.registry.all(None, |l| l.flush());
        self.counters.disconnects.fetch_add(1, Ordering::Relaxed);
        if was_healthy {
            let why = match lost {
                Lost::Closed => "connection closed",
                Lost::Deaf => "own heartbeat not heard within the lease",
                Lost::Moved => "the publisher moved to another node",
            };
            tracing::warn!(reason = why, cap = ?self.config.lease, "cachette backplane lost: L1 flushed, copies capped until it is back");
        }
    }
}
