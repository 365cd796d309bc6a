//! How product and listing reads ride out a slow or failing database:
//! how long a value is fresh, how long it may be served stale, and how long
//! a reader waits for the database.
//!
//! The production values below, in one picture (products, TTL 300 s):
//!
//! ```text
//! 0 s        300 s           360 s                              1 h 6 min
//! |-- fresh --|-- stale: served at once, --|-- fail-safe fallback: --|
//!                one refresh in background    served only if the
//!                                             database fails or is slow
//! ```
//!
//! A read never waits more than [`SOFT_TIMEOUT`] when a stale value is at
//! hand, nor more than [`HARD_TIMEOUT`] for the database when none is. A
//! product that was never cached has nothing to fall back on: while the
//! database is down, reading it fails (503).

use std::time::Duration;

use cachette::{CacheBuilder, Codec};

/// How long a product is fresh. Updates through this service replace it
/// at once; the TTL bounds how long a change made behind the service's
/// back (a manual SQL update) can go unseen (plus
/// [`STALE_WHILE_REVALIDATE`] for a key read only after it expired).
pub const PRODUCT_TTL: Duration = Duration::from_secs(300);

/// Past its TTL, a product or listing is served at once for this long
/// while one background refresh (one per key across the fleet, under the
/// fill lease) reloads it, so no reader waits for the database when an
/// entry expires. A fifth of the product TTL: it stretches the bound on
/// unseen behind-the-back changes from 5 to 6 minutes (listings: 1 to 2),
/// and a key read at least once a minute never makes a reader wait.
pub const STALE_WHILE_REVALIDATE: Duration = Duration::from_secs(60);

/// Fail-safe: entries are kept this long past freshness, and when the
/// database fails (or is slower than [`SOFT_TIMEOUT`]) readers get the kept
/// value instead of an error. An hour covers a failover, a restart or a
/// bad migration rolled back; past that, an hour-old price is worse than an
/// honest error. The cost is memory: an entry stays in the store up to an
/// hour longer than it is fresh, and a stored product is a few hundred
/// bytes, so keeping all 100,000 seeded ones costs some 30 MB (of the
/// embedded store's 256 MiB default, whose budget evicts the coldest
/// first; with Redis, of its `maxmemory`).
pub const FAIL_SAFE_MAX_STALE: Duration = Duration::from_secs(3_600);

/// After a failed load the stale value is served as fresh for this long,
/// so a down database sees at most one query per cached key per 10 s
/// instead of one per request (with 10,000 hot keys, 1,000 queries/s
/// rather than the full request rate), and a recovered one is noticed
/// within 10 s.
pub const FAIL_SAFE_THROTTLE: Duration = Duration::from_secs(10);

/// With a stale value at hand, a reader waits at most this long for the
/// database, then gets the stale value; the load goes on and fills the
/// cache. A product query takes about a millisecond (SQLite) to a few
/// (PostgreSQL across a network), waiting for a pooled connection
/// included: 200 ms is far above that, so a healthy database never trips
/// it, and low enough that a struggling one costs readers a fraction of a
/// second instead of seconds.
pub const SOFT_TIMEOUT: Duration = Duration::from_millis(200);

/// A load running this long is abandoned: readers with a stale value get
/// it, the others a 503. Without it a hung database holds requests for the
/// pool's 10 s acquire timeout or longer; 3 s is still far above a healthy
/// query (`--db-latency-ms` above it makes every cold read fail), and
/// below the 5–10 s after which clients and proxies usually give up on
/// their own, so they get our answer rather than their timeout.
pub const HARD_TIMEOUT: Duration = Duration::from_secs(3);

/// The read settings of the product and listing caches. A listing page
/// removed by its category's tag (an update) is not served stale nor as
/// the fail-safe fallback: only pages that merely aged are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPolicy {
    /// How long a product is fresh (listings keep their own TTL).
    pub product_ttl: Duration,
    /// See [`STALE_WHILE_REVALIDATE`]; zero for none.
    pub stale_while_revalidate: Duration,
    /// See [`FAIL_SAFE_MAX_STALE`]; `None`: a failed load is an error.
    pub fail_safe: Option<FailSafe>,
    /// See [`SOFT_TIMEOUT`].
    pub soft_timeout: Option<Duration>,
    /// See [`HARD_TIMEOUT`].
    pub hard_timeout: Option<Duration>,
}

/// The fail-safe's two settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailSafe {
    /// See [`FAIL_SAFE_MAX_STALE`].
    pub max_stale: Duration,
    /// See [`FAIL_SAFE_THROTTLE`].
    pub throttle: Duration,
}

impl ReadPolicy {
    /// The values above.
    pub fn production() -> ReadPolicy {
        ReadPolicy {
            product_ttl: PRODUCT_TTL,
            stale_while_revalidate: STALE_WHILE_REVALIDATE,
            fail_safe: Some(FailSafe {
                max_stale: FAIL_SAFE_MAX_STALE,
                throttle: FAIL_SAFE_THROTTLE,
            }),
            soft_timeout: Some(SOFT_TIMEOUT),
            hard_timeout: Some(HARD_TIMEOUT),
        }
    }

    /// A TTL and nothing else: no stale value is ever served and readers
    /// wait for the database as long as it takes. What the catalog did
    /// before it had the rest; the outage report's comparison.
    pub fn ttl_only(product_ttl: Duration) -> ReadPolicy {
        ReadPolicy {
            product_ttl,
            stale_while_revalidate: Duration::ZERO,
            fail_safe: None,
            soft_timeout: None,
            hard_timeout: None,
        }
    }

    /// The same, with products fresh for `ttl`.
    pub fn with_product_ttl(self, ttl: Duration) -> ReadPolicy {
        ReadPolicy {
            product_ttl: ttl,
            ..self
        }
    }

    /// Sets everything but the TTL on `builder`.
    pub(crate) fn apply<V: cachette::Value, C: Codec>(
        &self,
        builder: CacheBuilder<V, C>,
    ) -> CacheBuilder<V, C> {
        let mut builder = builder.stale_while_revalidate(self.stale_while_revalidate);
        if let Some(fail_safe) = self.fail_safe {
            builder = builder
                .fail_safe(fail_safe.max_stale)
                .fail_safe_throttle(fail_safe.throttle);
        }
        if let Some(soft) = self.soft_timeout {
            builder = builder.soft_timeout(soft);
        }
        if let Some(hard) = self.hard_timeout {
            builder = builder.hard_timeout(hard);
        }
        builder
    }
}

impl Default for ReadPolicy {
    fn default() -> ReadPolicy {
        ReadPolicy::production()
    }
}
