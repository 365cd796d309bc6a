//! Time to live: every entry expires.
//!
//! A cache without expiry serves stale data forever and grows without bound,
//! so a [`Ttl`] can only be built from a positive duration, and every write
//! path (the stores included) takes one. There is no "store forever".
//!
//! Jitter spreads expiries of entries written together (a warm-up, a batch)
//! so they do not all miss in the same instant. It only ever shortens a TTL:
//! the configured TTL stays the upper bound on how stale an entry can be.

use std::time::Duration;

use crate::Error;

/// A validated time to live: at least 1 ms, at most [`Ttl::MAX`].
///
/// ```
/// use std::time::Duration;
/// use cachette::Ttl;
///
/// let ttl = Ttl::new(Duration::from_secs(300)).unwrap();
/// assert_eq!(ttl.as_millis(), 300_000);
/// assert!(Ttl::new(Duration::ZERO).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl(Duration);

impl Ttl {
    /// The shortest TTL: Redis expires by the millisecond.
    pub const MIN: Duration = Duration::from_millis(1);
    /// The longest TTL: one year. Longer ones are almost always a unit mistake.
    pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

    /// Validates `ttl`.
    ///
    /// # Errors
    /// [`Error::InvalidTtl`] when `ttl` is under [`Ttl::MIN`] or over [`Ttl::MAX`].
    pub fn new(ttl: Duration) -> Result<Ttl, Error> {
        Ttl::checked(ttl).map_err(|reason| Error::InvalidTtl { ttl, reason })
    }

    /// Validates `ttl`, saying why it is refused.
    pub(crate) fn checked(ttl: Duration) -> Result<Ttl, &'static str> {
        if ttl < Ttl::MIN {
            Err("a TTL must be at least 1 ms: every entry expires")
        } else if ttl > Ttl::MAX {
            Err("a TTL must be at most 365 days")
        } else {
            Ok(Ttl(ttl))
        }
    }

    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// Whole milliseconds, rounded down, never zero.
    pub fn as_millis(self) -> u64 {
        // MAX keeps this far below u64::MAX; MIN keeps it above zero.
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX).max(1)
    }

    /// This TTL lengthened by `extra`, at most [`Ttl::MAX`].
    pub(crate) fn saturating_add(self, extra: Duration) -> Ttl {
        Ttl(self.0.saturating_add(extra).min(Ttl::MAX))
    }

    /// This TTL shortened by a random fraction of at most `jitter` (0.0–1.0).
    pub(crate) fn jittered(self, jitter: f64) -> Ttl {
        if jitter <= 0.0 {
            return self;
        }
        let cut = rand::random::<f64>() * jitter;
        let ms = (self.as_millis() as f64 * (1.0 - cut)) as u64;
        Ttl(Duration::from_millis(ms.max(1)))
    }
}

impl TryFrom<Duration> for Ttl {
    type Error = Error;
    fn try_from(ttl: Duration) -> Result<Ttl, Error> {
        Ttl::new(ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_sub_millisecond_ttls_are_refused() {
        assert!(Ttl::new(Duration::ZERO).is_err());
        assert!(Ttl::new(Duration::from_micros(999)).is_err());
        assert!(Ttl::new(Duration::from_millis(1)).is_ok());
        assert!(Ttl::new(Ttl::MAX + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn jitter_only_shortens_and_stays_within_the_fraction() {
        let ttl = Ttl::new(Duration::from_secs(100)).unwrap_or(Ttl(Ttl::MIN));
        for _ in 0..1000 {
            let j = ttl.jittered(0.2).get();
            assert!(j <= ttl.get());
            assert!(j >= Duration::from_secs(80));
        }
        assert_eq!(ttl.jittered(0.0), ttl);
    }
}
