//! The other instances on the backplane, and what they have acknowledged.
//!
//! Read-your-writes uses it: after publishing message `seq`, a writer waits
//! until every instance it knows of has acknowledged `seq` (applied it, and
//! everything before it) or has been silent for longer than its lease
//! (then it has stopped serving from L1 on its own, see `health`), and at
//! most until one lease after the publish: an instance that never applied
//! the message heard nothing after it, so its lease ran out by then.
//!
//! The writer first waits for its own message to come back: that proves it
//! has applied every heartbeat published before it, so it knows every
//! instance that could already be serving from L1.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Slack on other instances' leases: clock-rate drift between processes
/// (1 %, far above real hardware) plus scheduling jitter.
fn with_slack(lease: Duration) -> Duration {
    lease + lease / 100 + Duration::from_millis(2)
}

/// Members not heard for this many leases are forgotten.
const FORGET_AFTER_LEASES: u32 = 20;

#[derive(Debug)]
struct Member {
    last_heard: Instant,
    lease: Duration,
    acked: u64,
}

#[derive(Debug, Default)]
struct State {
    members: HashMap<u64, Member>,
    /// The highest own sequence number that came back.
    own_applied: u64,
}

/// How a read-your-writes wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Confirmed {
    /// Every known instance acknowledged.
    Acknowledged,
    /// Some instance stayed silent; its lease ran out instead.
    LeaseRanOut,
}

#[derive(Debug, Default)]
pub(crate) struct Fleet {
    state: Mutex<State>,
    changed: Notify,
}

impl Fleet {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A heartbeat from `sender`, holding a lease of `lease`.
    pub(crate) fn heard(&self, sender: u64, lease: Duration) {
        let now = Instant::now();
        let mut state = self.state();
        let member = state.members.entry(sender).or_insert(Member {
            last_heard: now,
            lease,
            acked: 0,
        });
        member.last_heard = now;
        member.lease = lease;
        state
            .members
            .retain(|_, m| now.duration_since(m.last_heard) < m.lease * FORGET_AFTER_LEASES);
    }

    /// `sender` applied our messages up to `seq`.
    pub(crate) fn acked(&self, sender: u64, seq: u64) {
        if let Some(member) = self.state().members.get_mut(&sender) {
            member.acked = member.acked.max(seq);
        }
    }

    /// Our own message `seq` came back.
    pub(crate) fn own_applied(&self, seq: u64) {
        let mut state = self.state();
        state.own_applied = state.own_applied.max(seq);
    }

    /// A batch of messages was applied: wake the waiting writers.
    pub(crate) fn changed(&self) {
        self.changed.notify_waiters();
    }

    /// Resolves at the next applied batch (register it before checking
    /// what it waits for).
    pub(crate) fn next_change(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Members heard within their lease.
    pub(crate) fn live(&self) -> usize {
        let now = Instant::now();
        self.state()
            .members
            .values()
            .filter(|m| now < m.last_heard + with_slack(m.lease))
            .count()
    }

    /// Waits until our own message `seq` came back, or `until`; true if it did.
    pub(crate) async fn own_echo(&self, seq: u64, until: Instant) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state().own_applied >= seq {
                return true;
            }
            if tokio::time::timeout_at(until.into(), notified)
                .await
                .is_err()
            {
                return self.state().own_applied >= seq;
            }
        }
    }

    /// Waits until message `seq`, published at `published_at`, is applied
    /// by every live instance or their leases ran out (see the module docs).
    pub(crate) async fn confirm(
        &self,
        seq: u64,
        published_at: Instant,
        own_lease: Duration,
    ) -> Confirmed {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let wake = {
                let state = self.state();
                let longest = state
                    .members
                    .values()
                    .map(|m| m.lease)
                    .fold(own_lease, Duration::max);
                let deadline = published_at + with_slack(longest);
                if now >= deadline {
                    return Confirmed::LeaseRanOut;
                }
                if state.own_applied < seq {
                    deadline
                } else {
                    let mut wake = None::<Instant>;
                    let mut lease_ran_out = false;
                    for m in state.members.values().filter(|m| m.acked < seq) {
                        let silent_until = m.last_heard + with_slack(m.lease);
                        if silent_until > now {
                            wake = Some(wake.map_or(silent_until, |w| w.min(silent_until)));
                        } else {
                            lease_ran_out = true;
                        }
                    }
                    match wake {
                        None if lease_ran_out => return Confirmed::LeaseRanOut,
                        None => return Confirmed::Acknowledged,
                        Some(wake) => wake.min(deadline),
                    }
                }
            };
            let _ = tokio::time::timeout_at(wake.into(), notified).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(200);

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_own_echo_then_every_member() {
        let fleet = std::sync::Arc::new(Fleet::default());
        fleet.heard(1, LEASE);
        fleet.heard(2, LEASE);
        let start = Instant::now();
        let f = std::sync::Arc::clone(&fleet);
        let wait = tokio::spawn(async move { f.confirm(5, Instant::now(), LEASE).await });
        tokio::task::yield_now().await;
        fleet.acked(1, 5);
        fleet.acked(2, 9);
        fleet.changed();
        tokio::task::yield_now().await;
        assert!(!wait.is_finished(), "the own echo has not come back");
        fleet.own_applied(5);
        fleet.changed();
        assert_eq!(wait.await.unwrap(), Confirmed::Acknowledged);
        assert!(start.elapsed() < Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_member_costs_its_lease() {
        let fleet = Fleet::default();
        fleet.heard(1, LEASE);
        fleet.own_applied(1);
        let start = Instant::now();
        assert_eq!(fleet.confirm(1, start, LEASE).await, Confirmed::LeaseRanOut);
        let waited = start.elapsed();
        // The fleet keeps real (std) time, so on a loaded machine the wake
        // can come late by a scheduling delay; a second lease would not fit.
        assert!(
            waited >= LEASE && waited <= with_slack(LEASE) + Duration::from_millis(50),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_the_echo_the_wait_is_one_lease() {
        let fleet = Fleet::default();
        let start = Instant::now();
        assert_eq!(fleet.confirm(1, start, LEASE).await, Confirmed::LeaseRanOut);
        assert!(start.elapsed() >= LEASE);
    }
}
