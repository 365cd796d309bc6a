//! How loads behave over time: freshness windows, early refresh, leases and
//! timeouts.
//!
//! An entry's life, from the times in its envelope:
//!
//! ```text
//!  created        fresh_until        +stale_while_revalidate      stale_until
//!     |---- fresh ----|---- stale: served at once, ----|-- fallback --|
//!                           one refresh in background     (fail-safe)
//! ```
//!
//! * **Fresh**: served. Shortly before `fresh_until`, a read may start one
//!   background refresh (XFetch, below), so a hot key is reloaded before it
//!   ever goes stale.
//! * **Stale** (stale-while-revalidate): served at once while one refresh
//!   runs; no caller waits.
//! * **Fallback** (fail-safe): callers wait for a load, but if it fails or
//!   passes the soft timeout they get this value instead of an error.
//! * Past `stale_until` the entry is gone (the store's TTL ends there too).
//!
//! Early refresh is XFetch (Vattani, Chierichetti and Lowenstein, VLDB
//! 2015): refresh when `now − δ·β·ln(U) ≥ fresh_until`, `U` uniform in
//! (0, 1], `δ` the last load's duration. The gap is δ times an exponential
//! variable, so the chance per read rises smoothly as expiry nears, and
//! with the lease only one refresh runs at a time.

use std::time::Duration;

use crate::Ttl;
use crate::envelope::Meta;

/// The fail-safe settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailSafe {
    /// How long past freshness an entry is kept as a fallback.
    pub(crate) max_stale: Duration,
    /// After a failed load, the fallback is served as fresh this long, so
    /// the source sees at most one attempt per key per period.
    pub(crate) throttle: Duration,
}

/// The load settings of one cache.
#[derive(Debug, Clone)]
pub(crate) struct LoadPolicy {
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) fail_safe: Option<FailSafe>,
    /// XFetch's β; 0 turns early refresh off.
    pub(crate) early_refresh_beta: f64,
    /// A fill lease lasts this long unless its holder extends it.
    pub(crate) lease_ttl: Ttl,
    /// A load waits at most this long for another caller's lease before
    /// loading itself (without caching: it holds no lease).
    pub(crate) lease_wait: Duration,
    /// With a fallback at hand, callers wait at most this long for a load.
    pub(crate) soft_timeout: Option<Duration>,
    /// A load is abandoned after this long and its callers get an error.
    pub(crate) hard_timeout: Option<Duration>,
}

/// What the cache keeps of an entry's times (also in its L1 copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Stamp {
    pub(crate) created_ms: u64,
    pub(crate) fresh_until_ms: u64,
    pub(crate) stale_until_ms: u64,
    pub(crate) load_us: u32,
    /// The source as of this time (unix µs): what invalidation marks are
    /// compared with.
    pub(crate) as_of_us: u64,
}

impl From<Meta> for Stamp {
    fn from(meta: Meta) -> Stamp {
        Stamp {
            created_ms: meta.created_at_ms,
            fresh_until_ms: meta.fresh_until_ms,
            stale_until_ms: meta.stale_until_ms,
            load_us: meta.load_us,
            as_of_us: meta.as_of_us,
        }
    }
}

/// Where an entry is in its life (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Age {
    Fresh,
    Stale,
    Fallback,
    Gone,
}

impl LoadPolicy {
    /// How long past freshness entries are kept.
    pub(crate) fn retention(&self) -> Duration {
        let fail_safe = self.fail_safe.map_or(Duration::ZERO, |f| f.max_stale);
        self.stale_while_revalidate.max(fail_safe)
    }

    /// Where `stamp`'s entry is at `now_ms`.
    pub(crate) fn age(&self, stamp: Stamp, now_ms: u64) -> Age {
        let swr_ms = u64::try_from(self.stale_while_revalidate.as_millis()).unwrap_or(u64::MAX);
        if now_ms < stamp.fresh_until_ms {
            Age::Fresh
        } else if now_ms >= stamp.stale_until_ms {
            Age::Gone
        } else if now_ms < stamp.fresh_until_ms.saturating_add(swr_ms) {
            Age::Stale
        } else if self.fail_safe.is_some() {
            Age::Fallback
        } else {
            Age::Gone
        }
    }

    /// XFetch: whether a read of a fresh entry should start a background
    /// refresh. `now_ms` reads the clock and `unit` draws uniformly from
    /// [0, 1); both run only when the answer can be yes, since this sits
    /// on every hit of `get_or_load`.
    pub(crate) fn refresh_early(
        &self,
        stamp: Stamp,
        now_ms: impl FnOnce() -> u64,
        unit: impl FnOnce() -> f64,
    ) -> bool {
        if self.early_refresh_beta <= 0.0 || stamp.load_us == 0 {
            return false;
        }
        let now_ms = now_ms();
        let left_ms = stamp.fresh_until_ms.saturating_sub(now_ms) as f64;
        let scale_ms = f64::from(stamp.load_us) / 1000.0 * self.early_refresh_beta;
        // e^-40: a draw that far out never fires; skip the logarithm.
        if left_ms > scale_ms * 40.0 {
            return false;
        }
        let u = 1.0 - unit(); // (0, 1]
        -scale_ms * u.ln() >= left_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(swr_s: u64, fail_safe_s: Option<u64>) -> LoadPolicy {
        LoadPolicy {
            stale_while_revalidate: Duration::from_secs(swr_s),
            fail_safe: fail_safe_s.map(|s| FailSafe {
                max_stale: Duration::from_secs(s),
                throttle: Duration::from_secs(1),
            }),
            early_refresh_beta: 1.0,
            lease_ttl: Ttl::new(Duration::from_secs(2)).unwrap_or_else(|e| panic!("{e}")),
            lease_wait: Duration::from_secs(5),
            soft_timeout: None,
            hard_timeout: None,
        }
    }

    fn stamp(fresh_until_ms: u64, stale_until_ms: u64, load_us: u32) -> Stamp {
        Stamp {
            created_ms: 0,
            fresh_until_ms,
            stale_until_ms,
            load_us,
            as_of_us: 0,
        }
    }

    #[test]
    fn an_entry_ages_through_its_windows() {
        let p = policy(10, Some(100));
        let s = stamp(1_000, 101_000, 0);
        assert_eq!(p.retention(), Duration::from_secs(100));
        assert_eq!(p.age(s, 999), Age::Fresh);
        assert_eq!(p.age(s, 1_000), Age::Stale);
        assert_eq!(p.age(s, 10_999), Age::Stale);
        assert_eq!(p.age(s, 11_000), Age::Fallback);
        assert_eq!(p.age(s, 101_000), Age::Gone);
        let no_fail_safe = policy(10, None);
        assert_eq!(no_fail_safe.age(s, 11_000), Age::Gone);
    }

    #[test]
    fn early_refresh_follows_the_exponential_gap() {
        let p = policy(0, None);
        // δ = 200 ms, β = 1: 400 ms before expiry fires with probability
        // e^-2 ≈ 13.5 %; 10 s before, never; an unknown δ, never.
        let s = stamp(10_400, 10_400, 200_000);
        let fired = (0..10_000)
            .filter(|i| p.refresh_early(s, || 10_000, || f64::from(*i) / 10_000.0))
            .count();
        assert!((1_300..=1_400).contains(&fired), "{fired}");
        let at = |ms| move || ms;
        assert!(!p.refresh_early(stamp(20_000, 20_000, 200_000), at(10_000), || 0.999_999));
        assert!(!p.refresh_early(stamp(10_001, 10_001, 0), at(10_000), || 0.999));
        assert!(p.refresh_early(stamp(10_000, 10_000, 1), at(10_000), || 0.0));
    }
}
