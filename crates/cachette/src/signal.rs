//! Fill signals: how a load waiting on another caller's lease learns that
//! the fill landed, without polling.
//!
//! A waiter registers interest in a store key *before* it asks the store
//! about the lease, so a fill that lands between the answer and the wait
//! still wakes it. Wakes come from this process (a cache's fill, write,
//! delete or released lease — which covers every cache sharing an embedded
//! store) and from other processes through the backplane, whose key
//! messages are the fills' announcements. The map is process-wide because
//! the thing waited for is a store key, not a cache: two caches of one
//! namespace over one store wait on the same fills.
//!
//! A wake only says "look again"; the waiter re-reads the store, so a
//! spurious wake costs one round trip and a lost one costs at most the
//! holder's remaining lease (the waiter's bounded sleep).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::Notify;

/// Waiters by store key.
static WAITING: LazyLock<Mutex<HashMap<String, Weak<Notify>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
/// Keys in [`WAITING`], so a wake with no waiters anywhere skips the lock.
static REGISTERED: AtomicUsize = AtomicUsize::new(0);

fn waiting() -> MutexGuard<'static, HashMap<String, Weak<Notify>>> {
    // Single inserts and removes keep the map consistent across a panic.
    WAITING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The signal of `key`, shared by every waiter of it in this process. Keep
/// it while waiting; call `notified()` and enable it before the store call
/// whose answer decides to wait.
pub(crate) fn listen(key: &str) -> Arc<Notify> {
    let mut map = waiting();
    if let Some(notify) = map.get(key).and_then(Weak::upgrade) {
        return notify;
    }
    if map.len() >= 256 {
        map.retain(|_, w| w.strong_count() > 0);
    }
    let notify = Arc::new(Notify::new());
    map.insert(key.to_owned(), Arc::downgrade(&notify));
    REGISTERED.store(map.len(), Ordering::Relaxed);
    notify
}

/// Wakes every waiter of `key` in this process.
pub(crate) fn wake(key: &str) {
    if REGISTERED.load(Ordering::Relaxed) == 0 {
        return;
    }
    let mut map = waiting();
    match map.get(key).map(Weak::upgrade) {
        Some(Some(notify)) => notify.notify_waiters(),
        Some(None) => {
            map.remove(key);
        }
        None => {}
    }
    REGISTERED.store(map.len(), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_after_enabling_is_not_lost() {
        let notify = listen("signal-test:{1}");
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        wake("signal-test:{1}");
        tokio::time::timeout(std::time::Duration::from_secs(5), notified)
            .await
            .unwrap_or_else(|_| panic!("the wake was lost"));
    }

    #[tokio::test]
    async fn waking_a_key_nobody_waits_for_is_harmless() {
        wake("signal-test:{nobody}");
        let kept = listen("signal-test:{2}");
        drop(kept);
        wake("signal-test:{2}");
        assert!(waiting().get("signal-test:{2}").is_none());
    }
}
