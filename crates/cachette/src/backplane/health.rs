//! Whether this instance hears the backplane, and its lease on L1.
//!
//! The lease (Gray & Cheriton, SOSP 1989) is what lets a read-your-writes
//! writer stop waiting for an instance that went silent: an instance may
//! serve read-your-writes data from L1 only until `sent + lease`, where
//! `sent` is when it sent the last heartbeat of its own that came back to
//! it through Redis. Hearing its own heartbeat proves that every message
//! published before it was applied (one subscriber connection delivers in
//! order); timing the lease from the *send* instant, on this instance's own
//! clock, makes the bound independent of how late the echo was processed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Health {
    base: Instant,
    pub(crate) lease: Duration,
    /// Nanoseconds after `base` when the lease ends; 0 = no lease.
    lease_until_ns: AtomicU64,
    /// Subscribed, and the last own heartbeat came back within the lease.
    healthy: AtomicBool,
}

impl Health {
    pub(crate) fn new(lease: Duration) -> Health {
        Health {
            base: Instant::now(),
            lease,
            lease_until_ns: AtomicU64::new(0),
            healthy: AtomicBool::new(false),
        }
    }

    /// Now, as nanoseconds after `base` (the heartbeat's timestamp).
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `ns` nanoseconds after `base`.
    pub(crate) fn instant_at(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }

    /// True while the lease runs: L1 may serve read-your-writes data.
    pub(crate) fn lease_valid(&self) -> bool {
        let until = self.lease_until_ns.load(Ordering::Acquire);
        until != 0 && self.now_ns() < until
    }

    /// When the current lease ends, if there is one.
    pub(crate) fn lease_until(&self) -> Option<Instant> {
        match self.lease_until_ns.load(Ordering::Acquire) {
            0 => None,
            ns => Some(self.instant_at(ns)),
        }
    }

    /// An own heartbeat sent at `sent_ns` came back. Returns true when this
    /// turned the instance healthy.
    pub(crate) fn renew(&self, sent_ns: u64) -> bool {
        let lease_ns = u64::try_from(self.lease.as_nanos()).unwrap_or(u64::MAX);
        self.lease_until_ns
            .fetch_max(sent_ns.saturating_add(lease_ns), Ordering::AcqRel);
        !self.healthy.swap(true, Ordering::SeqCst)
    }

    /// The subscription is gone or went deaf: no lease, not healthy.
    /// Returns true when this turned the instance unhealthy.
    pub(crate) fn revoke(&self) -> bool {
        self.lease_until_ns.store(0, Ordering::Release);
        self.healthy.swap(false, Ordering::SeqCst)
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_runs_from_the_send_instant() {
        let h = Health::new(Duration::from_millis(50));
        assert!(!h.lease_valid() && !h.is_healthy());
        let sent = h.now_ns();
        assert!(h.renew(sent));
        assert!(h.lease_valid() && h.is_healthy());
        // A heartbeat sent long ago renews nothing that has already run out.
        std::thread::sleep(Duration::from_millis(60));
        assert!(!h.lease_valid());
        assert!(!h.renew(sent), "already healthy");
        assert!(!h.lease_valid());
        assert!(!h.renew(h.now_ns()), "still healthy: only revoke ends that");
        assert!(h.lease_valid());
        assert!(h.revoke());
        assert!(!h.lease_valid() && !h.is_healthy());
    }
}
