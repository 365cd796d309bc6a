//! The target's own counters (`/stats`) and shape (`/health`).

use serde_json::Value;

use super::{HttpClient, LoadError};

/// The part of `/health` the load generator needs.
#[derive(Debug, Clone)]
pub(super) struct Health {
    pub(super) products: i64,
    pub(super) categories: i64,
}

/// The part of `/stats` the load generator reports.
#[derive(Debug, Clone, Default)]
pub struct ServerStats {
    /// Queries attempted (refused ones included).
    pub database_queries: u64,
    /// The `product` namespace's counters; `None` without a cache.
    pub product: Option<NamespaceCounters>,
    pub cache: String,
    pub database: String,
}

/// One cache namespace's counters, as `/stats` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespaceCounters {
    pub hits: u64,
    pub misses: u64,
    pub loads: u64,
    pub load_errors: u64,
    /// Served stale at once while a refresh ran.
    pub stale_hits: u64,
    /// Served stale because the load failed or was slow.
    pub fail_safe_hits: u64,
    pub refreshes: u64,
    pub load_timeouts: u64,
}

impl NamespaceCounters {
    /// `namespace`'s counters in a `/stats` body; `None` if it has none.
    fn from_stats(stats: &Value, namespace: &str) -> Option<NamespaceCounters> {
        let ns = stats["namespaces"].get(namespace)?;
        let count = |field: &str| ns[field].as_u64();
        Some(NamespaceCounters {
            hits: count("hits")?,
            misses: count("misses")?,
            loads: count("loads")?,
            // Absent from catalogs that predate them: read as zero.
            load_errors: count("load_errors").unwrap_or(0),
            stale_hits: count("stale_hits").unwrap_or(0),
            fail_safe_hits: count("fail_safe_hits").unwrap_or(0),
            refreshes: count("refreshes").unwrap_or(0),
            load_timeouts: count("load_timeouts").unwrap_or(0),
        })
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &NamespaceCounters) -> NamespaceCounters {
        NamespaceCounters {
            hits: self.hits.saturating_sub(earlier.hits),
            misses: self.misses.saturating_sub(earlier.misses),
            loads: self.loads.saturating_sub(earlier.loads),
            load_errors: self.load_errors.saturating_sub(earlier.load_errors),
            stale_hits: self.stale_hits.saturating_sub(earlier.stale_hits),
            fail_safe_hits: self.fail_safe_hits.saturating_sub(earlier.fail_safe_hits),
            refreshes: self.refreshes.saturating_sub(earlier.refreshes),
            load_timeouts: self.load_timeouts.saturating_sub(earlier.load_timeouts),
        }
    }
}

pub(super) async fn health(client: &mut HttpClient) -> Result<Health, LoadError> {
    let response = client.get("/health").await?;
    let v = response
        .json()
        .map_err(|e| LoadError::Stats(format!("/health: {e}")))?;
    let int = |name: &str| {
        v[name]
            .as_i64()
            .ok_or_else(|| LoadError::Stats(format!("/health has no integer {name:?}")))
    };
    Ok(Health {
        products: int("products")?,
        categories: int("categories")?,
    })
}

impl ServerStats {
    pub async fn fetch(client: &mut HttpClient) -> Result<ServerStats, LoadError> {
        let response = client.get("/stats").await?;
        let v = response
            .json()
            .map_err(|e| LoadError::Stats(format!("/stats: {e}")))?;
        let database_queries = v["database_queries"]
            .as_u64()
            .ok_or_else(|| LoadError::Stats("/stats has no database_queries".into()))?;
        Ok(ServerStats {
            database_queries,
            product: NamespaceCounters::from_stats(&v, "product"),
            cache: v["cache"].as_str().unwrap_or("?").to_owned(),
            database: v["database"].as_str().unwrap_or("?").to_owned(),
        })
    }
}
