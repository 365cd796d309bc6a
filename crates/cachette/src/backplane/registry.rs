//! Which caches of this process hold L1 copies under which key head, so a
//! message for `product:v1:{7}` reaches exactly the `product` caches.
//!
//! Entries are weak: a dropped cache leaves the registry on the next
//! registration instead of being kept alive by it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, Weak};

/// A cache, as the backplane sees it: L1 copies to drop, and loads
/// waiting on a fill lease to wake.
pub(crate) trait Listener: Send + Sync {
    /// Another instance changed the entry under `store_key`.
    fn drop_key(&self, store_key: &str);
    /// Another instance cleared the whole namespace.
    fn drop_namespace(&self);
    /// Another instance raised the invalidation mark under `mark_key`
    /// (each cache checks whether it is one of its own).
    fn drop_mark(&self, mark_key: &str);
    /// Copies may have missed invalidations (the backplane was down).
    fn flush(&self);
}

type Entries = HashMap<String, Vec<(u64, Weak<dyn Listener>)>>;

#[derive(Default)]
pub(crate) struct Registry {
    next_id: AtomicU64,
    by_head: RwLock<Entries>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let heads = self.read(|by_head| by_head.len());
        f.debug_struct("Registry").field("heads", &heads).finish()
    }
}

impl Registry {
    fn read<T>(&self, f: impl FnOnce(&Entries) -> T) -> T {
        f(&self.by_head.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Adds a listener for `head`; the id lets its own announcements skip it.
    pub(crate) fn register(&self, head: &str, listener: Weak<dyn Listener>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut by_head = self.by_head.write().unwrap_or_else(PoisonError::into_inner);
        for listeners in by_head.values_mut() {
            listeners.retain(|(_, l)| l.strong_count() > 0);
        }
        by_head.retain(|_, listeners| !listeners.is_empty());
        by_head
            .entry(head.to_owned())
            .or_default()
            .push((id, listener));
        id
    }

    /// Runs `f` on every live listener of `head` except `except`.
    pub(crate) fn each(&self, head: &str, except: Option<u64>, f: impl Fn(&dyn Listener)) {
        self.read(|by_head| {
            for (id, listener) in by_head.get(head).into_iter().flatten() {
                if Some(*id) != except
                    && let Some(listener) = listener.upgrade()
                {
                    f(listener.as_ref());
                }
            }
        });
    }

    /// Runs `f` on every live listener except `except`.
    pub(crate) fn all(&self, except: Option<u64>, f: impl Fn(&dyn Listener)) {
        self.read(|by_head| {
            for (id, listener) in by_head.values().flatten() {
                if Some(*id) != except
                    && let Some(listener) = listener.upgrade()
                {
                    f(listener.as_ref());
                }
            }
        });
    }
}
