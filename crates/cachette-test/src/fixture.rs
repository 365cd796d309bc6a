//! A store to test against, with whatever it needs kept alive.

use std::sync::Arc;
use std::time::Duration;

use cachette::store::{EmbeddedStore, RedisConfig, RedisStore, Store};

use crate::{RedisCluster, RedisServer, SentinelGroup};

/// A store under test. For Redis it owns the `redis-server` processes (one,
/// a cluster, or a sentinel group), stopped when the fixture is dropped.
#[derive(Debug)]
pub struct Fixture {
    /// The store, shared like an application would share it.
    pub store: Arc<dyn Store>,
    /// The embedded store, when that is the one under test.
    pub embedded: Option<EmbeddedStore>,
    /// The Redis server, when the store is one Redis server.
    pub server: Option<RedisServer>,
    /// The cluster, when the store is on Redis Cluster.
    pub cluster: Option<RedisCluster>,
    /// The sentinel group, when the store finds its master through Sentinel.
    pub sentinel: Option<SentinelGroup>,
}

impl Fixture {
    /// A fresh embedded store with a 64 MiB budget.
    pub fn embedded() -> Fixture {
        let store = EmbeddedStore::new(64 * 1024 * 1024);
        Fixture {
            store: Arc::new(store.clone()),
            embedded: Some(store),
            server: None,
            cluster: None,
            sentinel: None,
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
            cluster: None,
            sentinel: None,
        }
    }

    /// A fresh three-master [`RedisCluster`] and a [`RedisStore`] on it,
    /// through a `redis+cluster://` URL naming every node.
    pub async fn cluster() -> Fixture {
        let cluster = RedisCluster::spawn();
        let store = connect(&Fixture::cluster_url(&cluster)).await;
        Fixture {
            store: Arc::new(store),
            embedded: None,
            server: None,
            cluster: Some(cluster),
            sentinel: None,
        }
    }

    /// A fresh [`SentinelGroup`] and a [`RedisStore`] on its master, found
    /// through a `redis+sentinel://` URL naming the three sentinels.
    pub async fn sentinel() -> Fixture {
        let group = SentinelGroup::spawn();
        let store = connect(&Fixture::sentinel_url(&group)).await;
        Fixture {
            store: Arc::new(store),
            embedded: None,
            server: None,
            cluster: None,
            sentinel: Some(group),
        }
    }

    /// `redis+cluster://127.0.0.1:{port},...` naming every node of `cluster`.
    pub fn cluster_url(cluster: &RedisCluster) -> String {
        let hosts: Vec<String> = cluster
            .nodes()
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// `redis+sentinel://127.0.0.1:{port},.../{master}` naming every sentinel
    /// of `group`.
    pub fn sentinel_url(group: &SentinelGroup) -> String {
        let hosts: Vec<String> = group
            .sentinel_addrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        format!(
            "redis+sentinel://{}/{}",
            hosts.join(","),
            group.master_name()
        )
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
/// the test with an `embedded` and a `redis` test in it. Led by `cluster:`,
/// each module also gets a `cluster` test, on a three-master
/// [`RedisCluster`].
#[macro_export]
macro_rules! for_each_store {
    (cluster: $($test:ident),* $(,)?) => {
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
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn cluster() {
                    super::$test($crate::Fixture::cluster().await).await;
                }
            }
        )*
    };
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
