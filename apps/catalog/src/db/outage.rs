//! A switch that takes the database down and brings it back.
//!
//! While it is down every query fails at once with the error sqlx gives
//! when the database server refuses connections, so everything above the
//! database (the cache's fail-safe, the HTTP error mapping) sees what it
//! would see in a real outage. The outage report and the outage tests
//! install it as the database's [`QueryHook`]; production runs without it.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures_util::future::{self, BoxFuture};

use super::{DbError, QueryHook};

/// The switch. Starts up; shared as an `Arc` between the database (as its
/// hook) and whoever flips it.
#[derive(Debug, Default)]
pub struct Outage {
    down: AtomicBool,
    refused: AtomicU64,
}

impl Outage {
    /// A switch in the "up" position.
    pub fn new() -> Arc<Outage> {
        Arc::new(Outage::default())
    }

    /// From now on every query fails.
    pub fn take_down(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    /// From now on queries run again.
    pub fn bring_up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Queries refused while down, since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl QueryHook for Outage {
    fn before(&self, _query: &'static str) -> BoxFuture<'static, Result<(), DbError>> {
        if !self.is_down() {
            return Box::pin(future::ready(Ok(())));
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        let refused = io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "the database is down (outage switch)",
        );
        Box::pin(future::ready(Err(DbError::Sql(sqlx::Error::Io(refused)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queries_fail_only_while_down() {
        let outage = Outage::new();
        assert!(outage.before("product").await.is_ok());
        outage.take_down();
        let refused = outage.before("product").await;
        assert!(
            matches!(refused, Err(DbError::Sql(sqlx::Error::Io(ref e))) if e.kind() == io::ErrorKind::ConnectionRefused),
            "{refused:?}"
        );
        outage.bring_up();
        assert!(outage.before("product").await.is_ok());
        assert_eq!(outage.refused(), 1);
    }
}
