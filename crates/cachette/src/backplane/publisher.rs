//! The publishing side: one task, one connection, messages in order.
//!
//! Callers enqueue; the task numbers each message as it takes it off the
//! queue (so sequence numbers follow publishing order, which is what makes
//! an acknowledgement of `seq` cover everything before it), sends whatever
//! has queued up as one pipeline, and adds a heartbeat every interval.
//! A write never waits for Redis here unless it asked to (read-your-writes).
//!
//! A failed pipeline is retried, in order, until it goes through: an
//! invalidation published late is still correct. If the queue overflows
//! meanwhile, the dropped announcements are replaced by one "flush
//! everything" message as soon as publishing works again.
//!
//! The connection is the store's kind (`store::Connection`), except on
//! Redis Cluster, where it is pinned to one node, the first seed that
//! answers: a classic `PUBLISH` reaches every node over the cluster bus,
//! but in order only from one node, and acknowledgements rely on that
//! order. When that node fails, the next seed that answers takes over;
//! under Sentinel, the new master.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::Shared;
use super::wire::Body;
use crate::store::Connection;

/// Messages taken into one pipeline at most.
const BATCH: usize = 512;

/// Where a message went and when Redis had it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Published {
    pub(crate) seq: u64,
    pub(crate) at: Instant,
}

/// Something to publish.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// The entry under this store key changed.
    Key {
        store_key: String,
        reply: Option<oneshot::Sender<Published>>,
    },
    /// This key head was cleared.
    Namespace {
        head: String,
        reply: Option<oneshot::Sender<Published>>,
    },
    /// The invalidation mark under this store key was raised.
    Mark {
        key: String,
        reply: Option<oneshot::Sender<Published>>,
    },
    /// We applied `to`'s messages up to `upto`.
    Ack { to: u64, upto: u64 },
    /// A heartbeat out of turn, whose echo tells the caller that every
    /// message published before it has been applied here.
    Marker { reply: oneshot::Sender<Published> },
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    conn: Connection,
    mut queue: mpsc::Receiver<Outgoing>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut seq = 0u64;
    let mut next_beat = tokio::time::Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            () = tokio::time::sleep_until(next_beat) => {}
            received = queue.recv_many(&mut batch, BATCH) => if received == 0 { return },
        }
        // Checked on every round, not only when the timer wins: a busy
        // queue must not starve heartbeats, or this instance's own lease
        // would lapse under load.
        let now = tokio::time::Instant::now();
        let beat = now >= next_beat;
        if beat {
            next_beat = now + shared.config.heartbeat;
        }
        let mut pipe = redis::pipe();
        let mut replies = Vec::new();
        for outgoing in batch.drain(..) {
            let (channel, text) = match outgoing {
                Outgoing::Key { store_key, reply } => {
                    seq += 1;
                    let ack_wanted = reply.is_some();
                    replies.extend(reply.map(|r| (r, seq)));
                    (
                        &shared.channel,
                        shared.message(seq, ack_wanted, Body::Key(&store_key)),
                    )
                }
                Outgoing::Namespace { head, reply } => {
                    seq += 1;
                    let ack_wanted = reply.is_some();
                    replies.extend(reply.map(|r| (r, seq)));
                    (
                        &shared.channel,
                        shared.message(seq, ack_wanted, Body::Namespace(&head)),
                    )
                }
                Outgoing::Mark { key, reply } => {
                    seq += 1;
                    let ack_wanted = reply.is_some();
                    replies.extend(reply.map(|r| (r, seq)));
                    (
                        &shared.channel,
                        shared.message(seq, ack_wanted, Body::Mark(&key)),
                    )
                }
                Outgoing::Marker { reply } => {
                    seq += 1;
                    replies.push((reply, seq));
                    let body = Body::Heartbeat {
                        lease: shared.config.lease,
                        sent_ns: shared.health.now_ns(),
                    };
                    (&shared.channel, shared.message(seq, false, body))
                }
                Outgoing::Ack { to, upto } => {
                    pipe.cmd("PUBLISH")
                        .arg(shared.ack_channel_of(to))
                        .arg(shared.message(upto, false, Body::Ack))
                        .ignore();
                    continue;
                }
            };
            pipe.cmd("PUBLISH").arg(channel).arg(text).ignore();
        }
        if shared.lost.swap(false, Ordering::SeqCst) {
            seq += 1;
            pipe.cmd("PUBLISH")
                .arg(&shared.channel)
                .arg(shared.message(seq, false, Body::FlushAll))
                .ignore();
        }
        if beat {
            seq += 1;
            let body = Body::Heartbeat {
                lease: shared.config.lease,
                sent_ns: shared.health.now_ns(),
            };
            pipe.cmd("PUBLISH")
                .arg(&shared.channel)
                .arg(shared.message(seq, false, body))
                .ignore();
        }
        let sent = pipe.len() as u64;
        if !publish(&shared, &conn, &pipe, &mut shutdown).await {
            return;
        }
        shared.counters.sent.fetch_add(sent, Ordering::Relaxed);
        let at = Instant::now();
        for (reply, seq) in replies {
            let _ = reply.send(Published { seq, at });
        }
    }
}

/// Sends the pipeline until it goes through; false on shutdown.
async fn publish(
    shared: &Shared,
    conn: &Connection,
    pipe: &redis::Pipeline,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let timeout = shared.redis.command_timeout_value();
    let mut backoff = Duration::from_millis(5);
    let mut failing = false;
    loop {
        let mut handle = conn.handle();
        let outcome = tokio::time::timeout(timeout, pipe.query_async::<()>(&mut handle)).await;
        let failed = match &outcome {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(Some(err)),
            Err(_) => Some(None),
        };
        if let Some(err) = failed {
            // A pinned connection looks for its node again (rate-limited).
            conn.recover(&handle, err, Duration::ZERO).await;
        }
        match outcome {
            Ok(Ok(())) => {
                if failing {
                    tracing::info!("cachette backplane publishing again");
                }
                return true;
            }
            Ok(Err(err)) => {
                shared
                    .counters
                    .publish_errors
                    .fetch_add(1, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(error = %err, "cachette backplane cannot publish; retrying");
                }
            }
            Err(_) => {
                shared
                    .counters
                    .publish_errors
                    .fetch_add(1, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(after = ?timeout, "cachette backplane publish timed out; retrying");
                }
            }
        }
        failing = true;
        tokio::select! {
            _ = shutdown.changed() => return false,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}
