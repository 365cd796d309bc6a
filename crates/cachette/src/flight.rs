//! Single flight: at most one load per key per process.
//!
//! Without it, a hot key that expires under load sends every waiting request
//! to the source at once. The first caller to miss starts a *flight*; later
//! callers for the same key wait for its outcome.
//!
//! The load belongs to the flight, not to the caller that started it: it
//! runs as its own task, so a leader that is dropped or cancelled (a client
//! hung up) neither cancels the load nor fails the callers still waiting. A
//! panicking loader is caught and becomes an error for every waiter; if the
//! task itself is dropped (runtime shutdown), waiters see the channel close
//! and get an error instead of hanging.
//!
//! A flight's value must not land in the store after a write of the key
//! (it may have been read from the source before the write). That is not
//! this module's job but the fill lease's (`store::lease`): every write ends
//! the key's lease in the store, so the fill is refused there — in this
//! process and in every other alike.
//!
//! Rejected: moka's `try_get_with`, whose init future runs inside the first
//! caller, so cancelling that caller restarts the load in the next waiter.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// Why a load produced no value.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    Loader(Arc<dyn StdError + Send + Sync + 'static>),
    Panicked(String),
    /// The load passed the hard timeout and was abandoned.
    TimedOut(std::time::Duration),
}

/// What every waiter of a flight receives.
pub(crate) type Outcome<V> = Result<Option<V>, Failure>;

/// One in-flight load.
#[derive(Debug)]
pub(crate) struct Flight<V> {
    outcome: watch::Receiver<Option<Outcome<V>>>,
}

impl<V: Clone> Flight<V> {
    /// Waits for the outcome; `None` when the flight was abandoned.
    pub(crate) async fn outcome(&self) -> Option<Outcome<V>> {
        let mut rx = self.outcome.clone();
        let settled = rx.wait_for(Option::is_some).await.ok()?;
        settled.clone()
    }
}

/// Hands a flight's outcome to its waiters.
#[derive(Debug)]
pub(crate) struct Settle<V>(watch::Sender<Option<Outcome<V>>>);

impl<V> Settle<V> {
    pub(crate) fn settle(self, outcome: Outcome<V>) {
        // No receivers left is fine: nobody waits any more.
        let _ = self.0.send(Some(outcome));
    }
}

/// A caller's part in a flight.
pub(crate) enum Role<V> {
    /// Start the load and settle the flight.
    Leader(Arc<Flight<V>>, Settle<V>),
    /// Wait for the flight's outcome.
    Follower(Arc<Flight<V>>),
}

/// The flights of one cache, by store key.
#[derive(Debug)]
pub(crate) struct Flights<V> {
    inflight: Mutex<HashMap<String, Arc<Flight<V>>>>,
}

impl<V> Default for Flights<V> {
    fn default() -> Self {
        Flights {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

impl<V> Flights<V> {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Flight<V>>>> {
        // The map is consistent after any panic (single inserts/removes), so
        // a poisoned lock is still safe to use.
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the flight for `key`, or starts one.
    pub(crate) fn join(&self, key: &str) -> Role<V> {
        let mut map = self.map();
        if let Some(flight) = map.get(key) {
            return Role::Follower(Arc::clone(flight));
        }
        let (tx, rx) = watch::channel(None);
        let flight = Arc::new(Flight { outcome: rx });
        map.insert(key.to_owned(), Arc::clone(&flight));
        Role::Leader(flight, Settle(tx))
    }

    /// Removes `flight` from the map if it is still the one for `key`.
    pub(crate) fn finish(&self, key: &str, flight: &Arc<Flight<V>>) {
        let mut map = self.map();
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(key);
        }
    }

    /// Loads in flight now.
    pub(crate) fn len(&self) -> usize {
        self.map().len()
    }
}
