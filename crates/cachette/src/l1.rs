//! The in-process first tier: decoded values (`Arc<V>`) in a byte-bounded
//! moka cache in front of the store.
//!
//! An L1 hit is a hash lookup and an `Arc` clone: no store call, no
//! decoding. Each copy expires at the earlier of its entry's freshness in
//! the store and the namespace's L1 TTL cap, so it never outlives what it
//! copies.
//!
//! The hard part is a fill racing an invalidation: a reader fetches the old
//! value from the store, a writer replaces it and invalidates the copies,
//! and then the reader puts the old value into L1, where it would live
//! until its TTL. The "caching in progress" placeholder prevents that: a
//! reader takes a [`Ticket`] (the sequence number of the key's stripe)
//! *before* it reads the store, and may fill only if no invalidation of that
//! stripe happened since. Check and insert happen under the stripe's lock,
//! which invalidations take too, so no invalidation can slip between them.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache as Moka;

use crate::envelope::Tags;
use crate::policy::Stamp;

/// Lock stripes: enough that unrelated keys rarely share one (a shared
/// stripe only costs an occasional skipped fill), few enough to lock all of
/// them for a namespace-wide invalidation.
const STRIPES: usize = 256;

/// Charged per L1 entry besides its key and value: moka's bookkeeping, the
/// key and the `Arc` allocations (the same order as the embedded store's
/// measured overhead).
pub(crate) const ENTRY_OVERHEAD: u64 = 512;

/// L1 settings, from the builder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct L1Config {
    pub(crate) max_bytes: u64,
    pub(crate) ttl_cap: Duration,
    pub(crate) max_entry_bytes: usize,
}

/// How full an L1 tier is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L1Usage {
    /// Copies held.
    pub entries: u64,
    /// Their charged size: keys, encoded values and per-entry overhead.
    pub weighted_bytes: u64,
}

/// What L1 holds for a key: the value, or a cached "not found".
#[derive(Debug)]
pub(crate) struct Slot<V> {
    pub(crate) value: Option<Arc<V>>,
    /// The copied entry's times, for early refresh and marks.
    pub(crate) stamp: Stamp,
    /// Its tags: an L1 hit checks their marks.
    pub(crate) tags: Option<Tags>,
    weight: u32,
    ttl: Duration,
}

impl<V> Clone for Slot<V> {
    fn clone(&self) -> Self {
        Slot {
            value: self.value.clone(),
            stamp: self.stamp,
            tags: self.tags.clone(),
            weight: self.weight,
            ttl: self.ttl,
        }
    }
}

/// Taken before a store read; a fill with it succeeds only if no
/// invalidation touched the key's stripe (or the whole tier) since.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    stripe: usize,
    seq: u64,
    epoch: u64,
}

struct PerEntry;

impl<V> Expiry<String, Slot<V>> for PerEntry {
    fn expire_after_create(
        &self,
        _key: &String,
        slot: &Slot<V>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(slot.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        slot: &Slot<V>,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.ttl)
    }
}

/// The tier.
pub(crate) struct L1<V> {
    entries: Moka<String, Slot<V>>,
    stripes: Box<[Mutex<u64>]>,
    hasher: RandomState,
    /// Bumped by [`L1::invalidate_all`], with every stripe locked.
    epoch: AtomicU64,
    config: L1Config,
}

impl<V: Send + Sync + 'static> L1<V> {
    pub(crate) fn new(config: L1Config) -> L1<V> {
        let entries = Moka::builder()
            .max_capacity(config.max_bytes)
            .weigher(|key: &String, slot: &Slot<V>| (key.len() as u32).saturating_add(slot.weight))
            .expire_after(PerEntry)
            .build();
        L1 {
            entries,
            stripes: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
            hasher: RandomState::new(),
            epoch: AtomicU64::new(0),
            config,
        }
    }

    /// The copy of `key`, if any.
    pub(crate) fn get(&self, key: &str) -> Option<Slot<V>> {
        self.entries.get(key)
    }

    fn stripe_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % STRIPES
    }

    fn lock(&self, stripe: usize) -> MutexGuard<'_, u64> {
        // A poisoned stripe only means a panic elsewhere; its counter is
        // still a counter.
        self.stripes[stripe]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The placeholder for a fill of `key`: take it before reading the store.
    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        let stripe = self.stripe_of(key);
        let seq = *self.lock(stripe);
        Ticket {
            stripe,
            seq,
            epoch: self.epoch.load(Ordering::SeqCst),
        }
    }

    /// Puts a copy read from the store, unless an invalidation happened
    /// since `ticket` was taken. `size` is the encoded payload's length (the
    /// weight), `fresh_for` how long the store's entry stays fresh.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fill(
        &self,
        key: &str,
        ticket: Ticket,
        value: Option<Arc<V>>,
        size: usize,
        fresh_for: Duration,
        stamp: Stamp,
        tags: Option<Tags>,
    ) -> bool {
        let Some(slot) = self.slot(value, size, fresh_for, stamp, tags) else {
            return false;
        };
        let seq = self.lock(ticket.stripe);
        if !self.undisturbed(*seq, ticket) {
            return false;
        }
        self.entries.insert(key.to_owned(), slot);
        drop(seq);
        true
    }

    /// This instance wrote `value` to the store: replaces the copy, and
    /// voids fills that read the store before the write. `ticket` is taken
    /// before the write: if an invalidation came in since (another
    /// instance's later write, announced before this one's reply arrived),
    /// the copy is dropped instead, since this value may be the older one.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn put(
        &self,
        key: &str,
        ticket: Ticket,
        value: Option<Arc<V>>,
        size: usize,
        fresh_for: Duration,
        stamp: Stamp,
        tags: Option<Tags>,
    ) {
        let slot = self.slot(value, size, fresh_for, stamp, tags);
        let mut seq = self.lock(ticket.stripe);
        let undisturbed = self.undisturbed(*seq, ticket);
        *seq += 1;
        match slot {
            Some(slot) if undisturbed => self.entries.insert(key.to_owned(), slot),
            _ => self.entries.invalidate(key),
        }
    }

    /// No invalidation of the ticket's stripe (now at `seq`, read under its
    /// lock) nor of the whole tier since the ticket was taken.
    fn undisturbed(&self, seq: u64, ticket: Ticket) -> bool {
        seq == ticket.seq && self.epoch.load(Ordering::SeqCst) == ticket.epoch
    }

    /// Drops the copy of `key` and voids fills in progress.
    pub(crate) fn invalidate(&self, key: &str) {
        let mut seq = self.lock(self.stripe_of(key));
        *seq += 1;
        self.entries.invalidate(key);
    }

    /// Drops every copy and voids every fill in progress.
    pub(crate) fn invalidate_all(&self) {
        // Every stripe, in order: no fill can be between its check and its
        // insert while the epoch moves and the entries go.
        let guards: Vec<MutexGuard<'_, u64>> = (0..STRIPES).map(|s| self.lock(s)).collect();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
        drop(guards);
    }

    fn slot(
        &self,
        value: Option<Arc<V>>,
        size: usize,
        fresh_for: Duration,
        stamp: Stamp,
        tags: Option<Tags>,
    ) -> Option<Slot<V>> {
        if size > self.config.max_entry_bytes {
            return None;
        }
        let ttl = fresh_for.min(self.config.ttl_cap);
        if ttl.is_zero() {
            return None;
        }
        let weight = u32::try_from(size as u64 + ENTRY_OVERHEAD).unwrap_or(u32::MAX);
        Some(Slot {
            value,
            stamp,
            tags,
            weight,
            ttl,
        })
    }

    /// Entries and their weighed bytes, after pending evictions ran.
    pub(crate) fn usage(&self) -> L1Usage {
        self.entries.run_pending_tasks();
        L1Usage {
            entries: self.entries.entry_count(),
            weighted_bytes: self.entries.weighted_size(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l1() -> L1<String> {
        L1::new(L1Config {
            max_bytes: 1 << 20,
            ttl_cap: Duration::from_secs(60),
            max_entry_bytes: 1_000,
        })
    }

    fn v(s: &str) -> Option<Arc<String>> {
        Some(Arc::new(s.to_owned()))
    }

    #[test]
    fn a_fill_after_an_invalidation_is_refused() {
        let l1 = l1();
        let ticket = l1.ticket("k");
        l1.invalidate("k");
        assert!(!l1.fill(
            "k",
            ticket,
            v("old"),
            3,
            Duration::from_secs(5),
            Stamp::default(),
            None
        ));
        assert!(l1.get("k").is_none());
        let ticket = l1.ticket("k");
        assert!(l1.fill(
            "k",
            ticket,
            v("new"),
            3,
            Duration::from_secs(5),
            Stamp::default(),
            None
        ));
        assert_eq!(
            l1.get("k")
                .and_then(|s| s.value)
                .as_deref()
                .map(String::as_str),
            Some("new")
        );
    }

    #[test]
    fn a_fill_after_a_put_or_a_flush_is_refused() {
        let l1 = l1();
        let ticket = l1.ticket("k");
        l1.put(
            "k",
            l1.ticket("k"),
            v("written"),
            7,
            Duration::from_secs(5),
            Stamp::default(),
            None,
        );
        assert!(!l1.fill(
            "k",
            ticket,
            v("old"),
            3,
            Duration::from_secs(5),
            Stamp::default(),
            None
        ));
        assert_eq!(
            l1.get("k")
                .and_then(|s| s.value)
                .as_deref()
                .map(String::as_str),
            Some("written")
        );
        let ticket = l1.ticket("other");
        l1.invalidate_all();
        assert!(!l1.fill(
            "other",
            ticket,
            v("old"),
            3,
            Duration::from_secs(5),
            Stamp::default(),
            None
        ));
        assert!(l1.get("k").is_none());
    }

    #[test]
    fn a_put_after_an_invalidation_drops_the_copy() {
        let l1 = l1();
        let t = l1.ticket("k");
        assert!(l1.fill(
            "k",
            t,
            v("old"),
            3,
            Duration::from_secs(5),
            Stamp::default(),
            None
        ));
        // Our write is on its way to the store; another instance's later
        // write is announced before our reply arrives.
        let before_write = l1.ticket("k");
        l1.invalidate("k");
        l1.put(
            "k",
            before_write,
            v("ours"),
            4,
            Duration::from_secs(5),
            Stamp::default(),
            None,
        );
        assert!(l1.get("k").is_none(), "ours may be the older value");
        l1.put(
            "k",
            l1.ticket("k"),
            v("ours"),
            4,
            Duration::from_secs(5),
            Stamp::default(),
            None,
        );
        assert!(l1.get("k").is_some());
    }

    #[test]
    fn large_values_and_expired_entries_stay_out() {
        let l1 = l1();
        let t = l1.ticket("big");
        assert!(!l1.fill(
            "big",
            t,
            v("x"),
            1_001,
            Duration::from_secs(5),
            Stamp::default(),
            None
        ));
        let t = l1.ticket("stale");
        assert!(!l1.fill(
            "stale",
            t,
            v("x"),
            1,
            Duration::ZERO,
            Stamp::default(),
            None
        ));
    }

    #[test]
    fn copies_never_outlive_their_freshness_or_the_cap() {
        let l1 = l1();
        let t = l1.ticket("short");
        assert!(l1.fill(
            "short",
            t,
            v("x"),
            1,
            Duration::from_millis(30),
            Stamp::default(),
            None
        ));
        assert!(l1.get("short").is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            l1.get("short").is_none(),
            "expired with the store's freshness"
        );
        let capped: L1<String> = L1::new(L1Config {
            max_bytes: 1 << 20,
            ttl_cap: Duration::from_millis(30),
            max_entry_bytes: 1_000,
        });
        let t = capped.ticket("k");
        assert!(capped.fill(
            "k",
            t,
            v("x"),
            1,
            Duration::from_secs(60),
            Stamp::default(),
            None
        ));
        std::thread::sleep(Duration::from_millis(60));
        assert!(capped.get("k").is_none(), "expired with the cap");
    }
}
