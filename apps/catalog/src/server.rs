//! Starting the service: database, seed, cache, warm-up, then listen.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use cachette::store::{EmbeddedStore, RedisConfig, RedisStore, Store};
use cachette::{Backplane, BackplaneConfig, LoadLimit, WarmOptions, WarmReport};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::catalog::{Caching, Catalog, WARM_BATCH, WARM_CONCURRENCY};
use crate::db::{Database, DbOptions, FixedLatency, QueryHook, redact};
use crate::http::{AppState, router};
use crate::read_policy::ReadPolicy;

/// Categories the seed spreads products over.
pub const CATEGORIES: i64 = 100;
/// The warm-up's progress line is printed at most this often (and once
/// more at the end).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

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
    /// Warming's database queries in flight at once, at most.
    pub warm_concurrency: usize,
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
            .field("warm_concurrency", &self.warm_concurrency)
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
            warm_concurrency: WARM_CONCURRENCY,
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
    /// What the warm-up did; `None` when there was none (no cache, or
    /// `warm` 0).
    pub warmed: Option<WarmReport>,
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
                load_limit: LoadLimit::new(config.db_connections as usize),
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
                load_limit: LoadLimit::new(config.db_connections as usize),
            }),
            "embedded",
        )
    };
    let catalog = Catalog::new(db, caching, prepared.products, prepared.categories)
        .map_err(|e| StartError::Cache(e.to_string()))?;

    let warmed = if catalog.is_cached() && config.warm > 0 {
        let total = config.warm.min(catalog.product_count()).max(0) as usize;
        let mut line = ProgressLine::new(total, std::io::stderr().is_terminal());
        let show = config.progress;
        let options = WarmOptions {
            batch: WARM_BATCH,
            concurrency: config.warm_concurrency.max(1),
        };
        let report = catalog
            .warm(config.warm, options, |report| {
                if show {
                    line.update(report, Instant::now());
                }
            })
            .await;
        if show {
            line.finish(&report);
        }
        tracing::info!(
            total,
            loaded = report.loaded,
            skipped = report.skipped,
            not_found = report.not_found,
            failed = report.failed,
            elapsed_s = report.elapsed.as_secs_f64(),
            "warm-up done"
        );
        Some(report)
    } else {
        None
    };

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
        warmed,
    })
}

/// The warm-up's progress line on stderr: at most one per
/// [`PROGRESS_EVERY`] while it runs, then the final one. On a terminal the
/// line rewrites itself; in a log it is a line each time.
struct ProgressLine {
    total: usize,
    terminal: bool,
    started: Instant,
    last: Option<Instant>,
}

impl ProgressLine {
    fn new(total: usize, terminal: bool) -> ProgressLine {
        ProgressLine {
            total,
            terminal,
            started: Instant::now(),
            last: None,
        }
    }

    /// Whether a report at `now` is shown: the first after a second of
    /// warming, then one a second.
    fn due(&mut self, now: Instant) -> bool {
        let since = now.duration_since(self.last.unwrap_or(self.started));
        if since < PROGRESS_EVERY {
            return false;
        }
        self.last = Some(now);
        true
    }

    fn update(&mut self, report: &WarmReport, now: Instant) {
        if !self.due(now) {
            return;
        }
        if self.terminal {
            eprint!("\r{}", warm_line(self.total, report));
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{}", warm_line(self.total, report));
        }
    }

    fn finish(&self, report: &WarmReport) {
        let rewrite = if self.terminal && self.last.is_some() {
            "\r"
        } else {
            ""
        };
        eprintln!("{rewrite}{}", warm_line(self.total, report));
    }
}

/// `warming products: 4000/10000 (loaded 3990, skipped 10, not found 0,
/// failed 0) 1.2s`
pub fn warm_line(total: usize, r: &WarmReport) -> String {
    format!(
        "warming products: {}/{total} (loaded {}, skipped {}, not found {}, failed {}) {:.1}s",
        r.done,
        r.loaded,
        r.skipped,
        r.not_found,
        r.failed,
        r.elapsed.as_secs_f64()
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_says_everything_and_at_most_once_a_second() {
        let report = WarmReport {
            done: 40_000,
            loaded: 39_990,
            skipped: 10,
            not_found: 0,
            failed: 0,
            elapsed: Duration::from_millis(1_234),
        };
        assert_eq!(
            warm_line(100_000, &report),
            "warming products: 40000/100000 (loaded 39990, skipped 10, not found 0, failed 0) 1.2s"
        );
        let mut line = ProgressLine::new(100_000, false);
        let t0 = line.started;
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(!line.due(ms(10)), "not in the first second");
        assert!(!line.due(ms(999)));
        assert!(line.due(ms(1_000)));
        assert!(!line.due(ms(1_500)));
        assert!(!line.due(ms(1_999)));
        assert!(line.due(ms(2_100)));
        assert!(line.due(ms(3_100)));
    }
}
