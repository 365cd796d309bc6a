//! The embedded store: entries in this process, bounded by total bytes.
//!
//! Built on moka's concurrent cache (TinyLFU admission, LRU eviction), which
//! already does the hard parts: lock-free reads, a byte weigher, and
//! per-entry expiry through its timer wheel. We add only the byte accounting
//! and the TTL of each entry. Rejected: a hand-written sharded LRU (more code
//! to get wrong, worse hit ratio than TinyLFU on skewed traffic).
//!
//! The budget counts the key, the value *and* a fixed per-entry overhead
//! ([`EmbeddedStore::ENTRY_OVERHEAD`], measured — see the README's memory
//! figures), so the budget bounds resident memory, not just payload bytes.
//! moka evicts lazily, in batches during later calls: the weighted size can
//! pass the budget briefly between two maintenance runs.
//!
//! Fill leases live beside the entries, in lock stripes: a claim, a fill
//! and every write of a key take its stripe's lock, so "check the token,
//! then store" cannot interleave with a write — the same guarantee the
//! Redis store gets from running each lease operation as one script.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use moka::Expiry;
use moka::sync::Cache as MokaCache;

use super::lease::{Claim, Lease, LeaseToken, changed_since};
use super::{Mark, Store, StoreEntry, StoreError, StoreKind, created_ms};
use crate::Ttl;
use crate::glob;

#[derive(Debug, Clone)]
struct Slot {
    value: Bytes,
    ttl: Duration,
    /// Checked on delete so that `delete` answers like Redis `DEL` for an
    /// expired entry moka has not evicted yet.
    expires_at: Instant,
}

/// Each entry expires after its own TTL, also when overwritten.
struct PerEntryTtl;

impl Expiry<String, Slot> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, slot: &Slot, _: Instant) -> Option<Duration> {
        Some(slot.ttl)
    }
    fn expire_after_update(
        &self,
        _: &String,
        slot: &Slot,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.ttl)
    }
}

/// An in-process store bounded by total bytes. Cheap to clone: clones share
/// the same entries.
///
/// ```
/// use cachette::store::EmbeddedStore;
///
/// let store = EmbeddedStore::new(64 * 1024 * 1024); // 64 MiB
/// let shared = store.clone(); // same entries
/// # drop(shared);
/// ```
#[derive(Clone)]
pub struct EmbeddedStore {
    entries: MokaCache<String, Slot>,
    leases: Arc<Leases>,
    max_bytes: u64,
}

/// Lease stripes: unrelated keys rarely share one.
const LEASE_STRIPES: usize = 64;

/// The fill leases, by key, in lock stripes.
struct Leases {
    stripes: Box<[Mutex<HashMap<String, Held>>]>,
    hasher: RandomState,
}

/// A lease: its holder's token and when it runs out.
struct Held {
    token: LeaseToken,
    until: Instant,
}

impl Leases {
    fn new() -> Leases {
        Leases {
            stripes: (0..LEASE_STRIPES)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// The stripe of `key`, locked: lease checks and the entry writes they
    /// guard happen under it.
    fn lock(&self, key: &str) -> MutexGuard<'_, HashMap<String, Held>> {
        let stripe = (self.hasher.hash_one(key) as usize) % LEASE_STRIPES;
        // The map stays consistent across a panic (single inserts and
        // removes), so a poisoned lock is still usable.
        self.stripes[stripe]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// True if `token` holds the unexpired lease in `held`.
fn holds(held: Option<&Held>, token: &LeaseToken, now: Instant) -> bool {
    held.is_some_and(|h| h.token == *token && h.until > now)
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("max_bytes", &self.max_bytes)
            .field("weighted_bytes", &self.entries.weighted_size())
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl Default for EmbeddedStore {
    /// A store with a 64 MiB budget.
    fn default() -> Self {
        EmbeddedStore::new(64 * 1024 * 1024)
    }
}

impl EmbeddedStore {
    /// Bytes charged per entry on top of its key and value: moka's node,
    /// timer-wheel and hash-table share, the key's and value's allocations,
    /// and allocator rounding. Measured with `cargo run --release -p
    /// cachette-benches --bin embedded_memory` (README, "Memory"): 487–516
    /// bytes per entry for 41–1,026-byte values, rounded up.
    pub const ENTRY_OVERHEAD: u32 = 528;

    /// A store that keeps at most `max_bytes` of keys, values and overhead.
    pub fn new(max_bytes: u64) -> EmbeddedStore {
        let entries = MokaCache::builder()
            .name("cachette-embedded")
            .max_capacity(max_bytes)
            .weigher(|key: &String, slot: &Slot| {
                let bytes = key.len().saturating_add(slot.value.len());
                u32::try_from(bytes)
                    .unwrap_or(u32::MAX)
                    .saturating_add(Self::ENTRY_OVERHEAD)
            })
            .expire_after(PerEntryTtl)
            .build();
        EmbeddedStore {
            entries,
            leases: Arc::new(Leases::new()),
            max_bytes,
        }
    }

    /// The byte budget.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes currently charged (keys, values and overhead), as of the last
    /// maintenance run.
    pub fn weighted_bytes(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Entries currently held, as of the last maintenance run.
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Runs pending evictions and expirations now. moka does this lazily
    /// during other calls; tests and memory reports call it to see settled
    /// figures.
    pub fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks();
    }

    fn insert(&self, key: String, value: Bytes, ttl: Ttl) {
        // An exact-size copy: `Bytes` from a grown `Vec` (or a slice of a
        // larger buffer) keeps the whole allocation alive, which the weigher
        // cannot see, so the budget would stop bounding memory.
        let value = Bytes::copy_from_slice(&value);
        let ttl = ttl.get();
        let slot = Slot {
            value,
            ttl,
            expires_at: Instant::now() + ttl,
        };
        self.entries.insert(key, slot);
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Embedded
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        Ok(self.entries.get(key).map(|slot| slot.value))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
        Ok(keys
            .iter()
            .map(|key| self.entries.get(key.as_str()).map(|slot| slot.value))
            .collect())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Ttl) -> Result<(), StoreError> {
        let mut leases = self.leases.lock(key);
        leases.remove(key);
        self.insert(key.to_owned(), value, ttl);
        Ok(())
    }

    async fn set_many(&self, entries: &[StoreEntry]) -> Result<(), StoreError> {
        for entry in entries {
            let mut leases = self.leases.lock(&entry.key);
            leases.remove(&entry.key);
            self.insert(entry.key.clone(), entry.value.clone(), entry.ttl);
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let mut leases = self.leases.lock(key);
        leases.remove(key);
        Ok(self
            .entries
            .remove(key)
            .is_some_and(|slot| slot.expires_at > Instant::now()))
    }

    async fn claim(
        &self,
        key: &str,
        seen: Option<&[u8]>,
        token: &LeaseToken,
        ttl: Ttl,
    ) -> Result<Claim, StoreError> {
        let mut leases = self.leases.lock(key);
        let value = self.entries.get(key).map(|slot| slot.value);
        if changed_since(value.as_deref(), seen) {
            return Ok(Claim {
                value,
                lease: Lease::Changed,
            });
        }
        let now = Instant::now();
        let lease = match leases.get(key) {
            Some(held) if held.until > now => Lease::Held {
                expires_in: held.until - now,
            },
            _ => {
                // Leases of holders that vanished are dropped as stripes
                // grow, so abandoned keys cannot pile up.
                if leases.len() >= 64 {
                    leases.retain(|_, held| held.until > now);
                }
                leases.insert(
                    key.to_owned(),
                    Held {
                        token: token.clone(),
                        until: now + ttl.get(),
                    },
                );
                Lease::Granted
            }
        };
        Ok(Claim { value, lease })
    }

    async fn fill(
        &self,
        key: &str,
        token: &LeaseToken,
        value: Bytes,
        ttl: Ttl,
    ) -> Result<bool, StoreError> {
        let mut leases = self.leases.lock(key);
        if !holds(leases.get(key), token, Instant::now()) {
            return Ok(false);
        }
        leases.remove(key);
        self.insert(key.to_owned(), value, ttl);
        Ok(true)
    }

    async fn extend_lease(
        &self,
        key: &str,
        token: &LeaseToken,
        ttl: Ttl,
    ) -> Result<bool, StoreError> {
        let mut leases = self.leases.lock(key);
        let now = Instant::now();
        match leases.get_mut(key) {
            Some(held) if held.token == *token && held.until > now => {
                held.until = now + ttl.get();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lease(&self, key: &str, token: &LeaseToken) -> Result<bool, StoreError> {
        let mut leases = self.leases.lock(key);
        if holds(leases.get(key), token, Instant::now()) {
            leases.remove(key);
            return Ok(true);
        }
        // An expired lease of anyone is garbage either way.
        if leases.get(key).is_some_and(|h| h.until <= Instant::now()) {
            leases.remove(key);
        }
        Ok(false)
    }

    async fn raise_mark(&self, key: &str, mark: Mark, ttl: Ttl) -> Result<Mark, StoreError> {
        // The key's stripe orders concurrent raises: each reads and writes
        // under it, so none is lost.
        let _stripe = self.leases.lock(key);
        let current = self
            .entries
            .get(key)
            .and_then(|slot| Mark::parse(&slot.value))
            .unwrap_or_default();
        let raised = current.merge(mark);
        self.insert(key.to_owned(), Bytes::from(raised.encode()), ttl);
        Ok(raised)
    }

    async fn delete_matching(&self, pattern: &str, _batch: usize) -> Result<u64, StoreError> {
        let now = Instant::now();
        let matching: Vec<Arc<String>> = self
            .entries
            .iter()
            .filter(|(key, _)| glob::matches(pattern.as_bytes(), key.as_bytes()))
            .map(|(key, _)| key)
            .collect();
        // Leases of matching keys go too, entry or not: a load in flight
        // must not fill after this.
        for stripe in self.leases.stripes.iter() {
            stripe
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|key, _| !glob::matches(pattern.as_bytes(), key.as_bytes()));
        }
        let mut deleted = 0;
        for key in matching {
            let mut leases = self.leases.lock(&key);
            leases.remove(key.as_str());
            if self
                .entries
                .remove(key.as_str())
                .is_some_and(|slot| slot.expires_at > now)
            {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    async fn sweep(
        &self,
        pattern: &str,
        created_before_ms: u64,
        _batch: usize,
    ) -> Result<u64, StoreError> {
        let old = |value: &[u8]| created_ms(value).is_some_and(|ms| ms < created_before_ms);
        let matching: Vec<Arc<String>> = self
            .entries
            .iter()
            .filter(|(key, slot)| {
                glob::matches(pattern.as_bytes(), key.as_bytes()) && old(&slot.value)
            })
            .map(|(key, _)| key)
            .collect();
        let mut deleted = 0;
        for key in matching {
            let _stripe = self.leases.lock(&key);
            // Checked again under the stripe: a write may have replaced it.
            if self
                .entries
                .get(key.as_str())
                .is_some_and(|s| old(&s.value))
            {
                self.entries.invalidate(key.as_str());
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}
