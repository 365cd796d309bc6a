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
//! A write or delete of the key *voids* an in-flight load: the load may have
//! read the source before the write, so its result must not land in the
//! store after the write. The fill and the void take the same per-flight
//! lock, so either the fill lands first (and the write then replaces it) or
//! the void lands first (and the fill is skipped). Across processes the same
//! guarantee needs fenced fills in the store; that is the lease's job.
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
    /// True once a write voided this load. Held across the fill.
    voided: tokio::sync::Mutex<bool>,
}

impl<V: Clone> Flight<V> {
    /// Waits for the outcome; `None` when the flight was abandoned.
    pub(crate) async fn outcome(&self) -> Option<Outcome<V>> {
        let mut rx = self.outcome.clone();
        let settled = rx.wait_for(Option::is_some).await.ok()?;
        settled.clone()
    }

    /// Runs `fill` unless a write voided this load; returns whether it ran.
    pub(crate) async fn fill_unless_voided<F: Future<Output = ()>>(&self, fill: F) -> bool {
        let voided = self.voided.lock().await;
        if *voided {
            return false;
        }
        fill.await;
        true
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
        let flight = Arc::new(Flight {
            outcome: rx,
            voided: tokio::sync::Mutex::new(false),
        });
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

    /// Voids the in-flight load of `key`, if any, waiting for a fill in
    /// progress to land first.
    pub(crate) async fn void(&self, key: &str) {
        let flight = self.map().get(key).cloned();
        if let Some(flight) = flight {
            *flight.voided.lock().await = true;
        }
    }

    /// Loads in flight now.
    pub(crate) fn len(&self) -> usize {
        self.map().len()
    }
}
