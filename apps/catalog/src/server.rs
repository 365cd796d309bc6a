//! Starting the service: database, seed, cache, warm-up, then listen.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use cachette::store::{EmbeddedStore, RedisConfig, RedisStore, Store};
use cachette::{Backplane, BackplaneConfig};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::catalog::{Caching, Catalog};
use crate::db::{Database, DbOptions, FixedLatency, QueryHook, redact};
use crate::http::{AppState, router};
use crate::read_policy::ReadPolicy;

/// Categories the seed spreads products over.
pub const CATEGORIES: i64 = 100;
/// Products warmed per database query and cache pipeline.
const WARM_BATCH: i64 = 1_000;

/// Everything `catalog serve` is told.
#[derive(Clone)]
pub struct ServeConfig {
    /// `sqlite://FILE` or `postgres://...`.
    pub database_url: String,
    /// Products to seed an empty database with.
    pub products: i64,
    pub listen: SocketAddr,
    /// Serve straight from the database.
    pub no_cache: bool,
    /// Redis as the cache's store; the embedded store when `None`.
    pub redis_url: Option<String>,
    /// Hottest products put in the cache before listening.
    pub warm: i64,
    /// The embedded store's budget.
    pub cache_bytes: u64,
    /// The in-process L1 tier's budget (0: no L1). With Redis, a backplane
    /// keeps the L1 tiers of all instances coherent.
    pub l1_bytes: u64,
    pub db_connections: u32,
    /// Runs before every database query (`--db-latency`, the outage
    /// switch, tests).
    pub db_hook: Option<Arc<dyn QueryHook>>,
    /// Freshness, stale serving and timeouts of cached reads.
    pub read_policy: ReadPolicy,
    /// Print the warm-up's progress line.
    pub progress: bool,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("database_url", &redact(&self.database_url))
            .field("products", &self.products)
            .field("listen", &self.listen)
            .field("no_cache", &self.no_cache)
            .field("redis", &self.redis_url.as_ref().map(|_| "set"))
            .field("warm", &self.warm)
            .field("cache_bytes", &self.cache_bytes)
            .field("l1_bytes", &self.l1_bytes)
            .field("db_connections", &self.db_connections)
            .field("db_hook", &self.db_hook.is_some())
            .field("read_policy", &self.read_policy)
            .finish()
    }
}

impl ServeConfig {
    /// The defaults of `catalog serve`.
    pub fn new(database_url: impl Into<String>) -> ServeConfig {
        ServeConfig {
            database_url: database_url.into(),
            products: 100_000,
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            no_cache: false,
            redis_url: None,
            warm: 10_000,
            cache_bytes: 256 * 1024 * 1024,
            l1_bytes: 64 * 1024 * 1024,
            db_connections: 8,
            db_hook: None,
            read_policy: ReadPolicy::production(),
            progress: true,
        }
    }

    /// Adds a fixed latency to every query.
    pub fn db_latency(mut self, latency: Duration) -> ServeConfig {
        if !latency.is_zero() {
            self.db_hook = Some(Arc::new(FixedLatency(latency)));
        }
        self
    }
}

/// A startup failure, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("cache: {0}")]
    Cache(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The service, built and listening, not yet serving.
#[derive(Debug)]
pub struct Ready {
    pub state: AppState,
    pub listener: TcpListener,
    pub addr: SocketAddr,
}

/// Connects, seeds an empty database, builds the caches, warms, binds.
pub async fn start(
    config: &ServeConfig,
    metrics: Option<PrometheusHandle>,
) -> Result<Ready, StartError> {
    let db = Database::connect(
        &config.database_url,
        DbOptions {
            max_connections: config.db_connections,
            hook: config.db_hook.clone(),
        },
    )
    .await?;
    let prepared = db.prepare(config.products, CATEGORIES).await?;
    if !prepared.seeded && prepared.products != config.products {
        tracing::info!(
            products = prepared.products,
            "the database was seeded before; using its {} products",
            prepared.products
        );
    }

    let cache_error = |e: &dyn std::fmt::Display| StartError::Cache(e.to_string());
    let (caching, cache_kind) = if config.no_cache {
        (None, "none")
    } else if let Some(url) = &config.redis_url {
        let redis_config = RedisConfig::from_url(url).map_err(|e| cache_error(&e))?;
        let store = RedisStore::connect(redis_config.clone())
            .await
            .map_err(|e| cache_error(&e))?;
        // Without L1 there are no copies to keep coherent.
        let backplane = if config.l1_bytes > 0 {
            Some(
                Backplane::connect(BackplaneConfig::new(redis_config))
                    .await
                    .map_err(|e| cache_error(&e))?,
            )
        } else {
            None
        };
        let store: Arc<dyn Store> = Arc::new(store);
        (
            Some(Caching {
                store,
                l1_bytes: config.l1_bytes,
                backplane,
                read_policy: config.read_policy,
            }),
            "redis",
        )
    } else {
        (
            Some(Caching {
                store: Arc::new(EmbeddedStore::new(config.cache_bytes)),
                l1_bytes: config.l1_bytes,
                backplane: None,
                read_policy: config.read_policy,
            }),
            "embedded",
        )
    };
    let catalog = Catalog::new(db, caching, prepared.products, prepared.categories)
        .map_err(|e| StartError::Cache(e.to_string()))?;

    if catalog.is_cached() && config.warm > 0 {
        // On a terminal the progress line rewrites itself; in a log it is a
        // line per quarter.
        let terminal = std::io::stderr().is_terminal();
        let show = config.progress;
        let mut shown = 0;
        let summary = catalog
            .warm(config.warm, WARM_BATCH, |done, total| {
                let step = if terminal { 10 } else { 4 };
                let reached = done * step / total.max(1);
                if show && reached > shown {
                    shown = reached;
                    if terminal {
                        eprint!("\rwarming the cache: {done}/{total} hottest products");
                        let _ = std::io::stderr().flush();
                    } else {
                        eprintln!("warming the cache: {done}/{total} hottest products");
                    }
                }
            })
            .await;
        if show {
            eprintln!(
                "{}warming the cache: {} products loaded, {} failed, in {:.2} s",
                if terminal { "\r" } else { "" },
                summary.loaded,
                summary.failed,
                summary.elapsed.as_secs_f64()
            );
        }
    }

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    Ok(Ready {
        state: AppState::new(catalog, metrics, cache_kind),
        listener,
        addr,
    })
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    ready: Ready,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(ready.state.clone());
    // Responses are small; do not let Nagle hold them back.
    let listener = ready.listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    ready.state.catalog.database().close().await;
    Ok(())
}
