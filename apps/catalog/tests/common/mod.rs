//! In-process catalogs for tests: a real SQLite file (or the database a
//! test gives), a real listener on a free loopback port, the real router.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use catalog::db::{DbError, QueryHook};
use catalog::load::HttpClient;
use catalog::read_policy::ReadPolicy;
use catalog::server::{self, ServeConfig};
use futures_util::future::BoxFuture;
use tempfile::TempDir;
use tokio::sync::{oneshot, watch};

/// Bound for every wait on a condition in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// A catalog serving in this test's runtime.
pub struct TestApp {
    pub url: String,
    pub state: catalog::http::AppState,
    /// What the warm-up on start did (`None`: none ran).
    pub warmed: Option<cachette::WarmReport>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<TempDir>,
}

/// What to start.
pub struct Options {
    pub products: i64,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub no_cache: bool,
    pub warm: i64,
    pub hook: Option<Arc<dyn QueryHook>>,
    pub read_policy: ReadPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            products: 1_000,
            database_url: None,
            redis_url: None,
            no_cache: false,
            warm: 0,
            hook: None,
            read_policy: ReadPolicy::production(),
        }
    }
}

impl TestApp {
    pub async fn start(options: Options) -> TestApp {
        let (dir, url) = match options.database_url {
            Some(url) => (None, url),
            None => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
                (Some(dir), url)
            }
        };
        let mut config = ServeConfig::new(url);
        config.products = options.products;
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.no_cache = options.no_cache;
        config.redis_url = options.redis_url;
        config.warm = options.warm;
        config.db_hook = options.hook;
        config.read_policy = options.read_policy;
        config.progress = false;
        let ready = server::start(&config, None).await.unwrap();
        let url = format!("http://{}", ready.addr);
        let state = ready.state.clone();
        let warmed = ready.warmed;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            server::serve(ready, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestApp {
            url,
            state,
            warmed,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    pub async fn client(&self) -> HttpClient {
        HttpClient::new(&self.url).await.unwrap()
    }

    /// Database queries since start, as `/stats` reports them.
    pub async fn db_queries(&self) -> u64 {
        self.stats().await["database_queries"].as_u64().unwrap()
    }

    pub async fn stats(&self) -> serde_json::Value {
        self.client()
            .await
            .get("/stats")
            .await
            .unwrap()
            .json()
            .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Holds every database query until opened, and counts the arrivals.
pub struct Gate {
    open: watch::Sender<bool>,
    arrived: AtomicUsize,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate {
            open: watch::channel(false).0,
            arrived: AtomicUsize::new(0),
        })
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }

    pub fn close(&self) {
        self.open.send_replace(false);
    }

    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }
}

impl QueryHook for Gate {
    fn before(&self, _query: &'static str) -> BoxFuture<'static, Result<(), DbError>> {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.subscribe();
        Box::pin(async move {
            let _ = open.wait_for(|o| *o).await;
            Ok(())
        })
    }
}

/// Polls `condition` every few milliseconds until it holds; panics with
/// `what` after [`WAIT`].
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
