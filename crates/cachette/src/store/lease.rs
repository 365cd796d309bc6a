//! Fill leases: the types of the store's half of the fill protocol.
//!
//! A cold key must be loaded once by the whole fleet, and a load that read
//! the source before a write must never land its value after the write.
//! Both are one mechanism (memcache's leases): a caller that misses
//! *claims* the key's lease with a random token, loads, and *fills* only if
//! its token still holds the lease. Every write and delete of the key ends
//! the lease, so a fill racing a write is refused, not stored — the store
//! does the check, atomically, which no client-side lock can.
//!
//! The lease is an efficiency lock, not a correctness one: if it expires
//! under a slow holder, a second caller may load too, but the first one's
//! fill is then refused (its token no longer holds the lease). Correctness
//! comes from the fill check alone.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

/// A lease holder's token: 128 random bits, as 32 hex characters.
#[derive(Clone, PartialEq, Eq)]
pub struct LeaseToken(String);

impl LeaseToken {
    /// A fresh random token.
    pub fn random() -> LeaseToken {
        LeaseToken(format!("{:032x}", rand::random::<u128>()))
    }

    /// The token as sent to the store.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Enough to tell holders apart in a log line.
        write!(f, "LeaseToken({}…)", &self.0[..8.min(self.0.len())])
    }
}

/// What a claim found (see [`Store::claim`](super::Store::claim)).
#[derive(Debug, Clone)]
pub struct Claim {
    /// The entry under the key at the time of the claim.
    pub value: Option<Bytes>,
    /// Whether the caller now holds the lease.
    pub lease: Lease,
}

/// The caller's standing after a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Lease {
    /// The entry is not the one the caller saw (someone filled or wrote
    /// it): use [`Claim::value`]; no lease was taken.
    Changed,
    /// The caller holds the lease: load, then fill with the token.
    Granted,
    /// Another caller holds the lease for `expires_in` more: wait for its
    /// fill.
    Held {
        /// How long the holder's lease still runs (unless extended).
        expires_in: Duration,
    },
}

/// Whether a stored entry is no longer the one a caller saw: `seen` is the
/// start of what it read (`None` when it found nothing). An entry that is
/// gone counts as unchanged: there is still something to load.
pub(crate) fn changed_since(current: Option<&[u8]>, seen: Option<&[u8]>) -> bool {
    match (current, seen) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(bytes), Some(seen)) => !bytes.starts_with(seen),
    }
}

/// The lease key of an entry: the entry's key with a suffix, so it keeps
/// the entry's hash tag (one Redis Cluster slot for both) and can never
/// equal an entry's key (those end with `}`).
pub(crate) fn lease_key(key: &str) -> String {
    format!("{key}{LEASE_SUFFIX}")
}

/// What a lease key adds to its entry's key.
pub(crate) const LEASE_SUFFIX: &str = ":lease";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hex() {
        let (a, b) = (LeaseToken::random(), LeaseToken::random());
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn an_entry_is_unchanged_only_while_it_starts_with_what_was_seen() {
        assert!(!changed_since(None, None));
        assert!(!changed_since(None, Some(b"abc")));
        assert!(changed_since(Some(b"abc"), None));
        assert!(changed_since(Some(b""), None), "an empty value is a value");
        assert!(!changed_since(Some(b""), Some(b"")));
        assert!(!changed_since(Some(b"abcdef"), Some(b"abc")));
        assert!(changed_since(Some(b"abXdef"), Some(b"abc")));
    }

    #[test]
    fn lease_keys_keep_the_hash_tag() {
        assert_eq!(lease_key("p:v1:{7}"), "p:v1:{7}:lease");
    }
}
