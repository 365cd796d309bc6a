//! The target's own counters (`/stats`) and shape (`/health`).

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
    pub database_queries: u64,
    /// The `product` namespace's hits and misses; `None` without a cache.
    pub product_hits_misses: Option<(u64, u64)>,
    pub cache: String,
    pub database: String,
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
        let product = &v["namespaces"]["product"];
        let product_hits_misses = match (product["hits"].as_u64(), product["misses"].as_u64()) {
            (Some(h), Some(m)) => Some((h, m)),
            _ => None,
        };
        Ok(ServerStats {
            database_queries,
            product_hits_misses,
            cache: v["cache"].as_str().unwrap_or("?").to_owned(),
            database: v["database"].as_str().unwrap_or("?").to_owned(),
        })
    }
}
