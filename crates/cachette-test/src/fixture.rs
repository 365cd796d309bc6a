//! A store to test against, with whatever it needs kept alive.

use std::sync::Arc;
use std::time::Duration;

use cachette::store::{EmbeddedStore, RedisConfig, RedisStore, Store};

use crate::RedisServer;

/// A store under test. For Redis it owns the `redis-server` process, which
/// is stopped when the fixture is dropped.
#[derive(Debug)]
pub struct Fixture {
    /// The store, shared like an application would share it.
    pub store: Arc<dyn Store>,
    /// The embedded store, when that is the one under test.
    pub embedded: Option<EmbeddedStore>,
    /// The Redis server, when the store is Redis.
    pub server: Option<RedisServer>,
}

impl Fixture {
    /// A fresh embedded store with a 64 MiB budget.
    pub fn embedded() -> Fixture {
        let store = EmbeddedStore::new(64 * 1024 * 1024);
        Fixture {
            store: Arc::new(store.clone()),
            embedded: Some(store),
            server: None,
        }
    }

    /// A fresh `redis-server` and a [`RedisStore`] connected to it.
    pub async fn redis() -> Fixture {
        let server = RedisServer::spawn();
        let store = connect(&server.url()).await;
        Fixture {
            store: Arc::new(store),
            embedded: None,
            server: Some(server),
        }
    }

    /// The Redis server. Panics for the embedded fixture.
    pub fn server(&mut self) -> &mut RedisServer {
        self.server
            .as_mut()
            .expect("this test needs the Redis fixture")
    }

    /// Lets moka run its lazy maintenance, so the embedded store's counts
    /// are settled. Does nothing for Redis.
    pub fn settle(&self) {
        if let Some(embedded) = &self.embedded {
            embedded.run_pending_tasks();
        }
    }
}

/// Connects a [`RedisStore`] with test-friendly timeouts.
pub async fn connect(url: &str) -> RedisStore {
    let config = RedisConfig::from_url(url)
        .unwrap_or_else(|e| panic!("bad test URL: {e}"))
        .connect_timeout(Duration::from_secs(2))
        .command_timeout(Duration::from_secs(2));
    RedisStore::connect(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test redis-server: {e}"))
}

/// Runs the async test `$test(Fixture)` once per store: a module named after
/// the test with an `embedded` and a `redis` test in it.
#[macro_export]
macro_rules! for_each_store {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn embedded() {
                    super::$test($crate::Fixture::embedded()).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis() {
                    super::$test($crate::Fixture::redis().await).await;
                }
            }
        )*
    };
}
