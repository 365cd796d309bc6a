//! The catalog's database: SQLite (a local file, the default) or
//! PostgreSQL, chosen by URL, behind one small API.
//!
//! Both engines go through sqlx's `Any` driver with `$N` placeholders, which
//! both accept, so every statement is written once. Timestamps are stored as
//! microseconds since the Unix epoch (`BIGINT`) for the same reason: `Any`
//! has no portable timestamp type. Every query is counted; `/stats` reports
//! the count and the load generator turns it into database queries/s.

mod hook;
mod outage;
mod schema;
mod seed;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

pub use hook::{FixedLatency, QueryHook};
pub use outage::Outage;
pub use schema::Prepared;

use crate::product::{Product, ProductPatch, format_timestamp};

/// Which engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

impl DbKind {
    /// The engine named by `url`'s scheme.
    pub fn from_url(url: &str) -> Result<DbKind, DbError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(DbKind::Sqlite),
            "postgres" | "postgresql" => Ok(DbKind::Postgres),
            _ => Err(DbError::Config(format!(
                "unsupported database URL {:?}: use sqlite://FILE or postgres://USER@HOST/DB",
                redact(url)
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DbKind::Sqlite => "sqlite",
            DbKind::Postgres => "postgres",
        }
    }
}

/// A database failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database configuration: {0}")]
    Config(String),
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database holds an unreadable row: {0}")]
    BadRow(String),
}

/// How to connect.
#[derive(Clone)]
pub struct DbOptions {
    /// Pool size.
    pub max_connections: u32,
    /// Runs before every query (see [`QueryHook`]).
    pub hook: Option<Arc<dyn QueryHook>>,
}

impl fmt::Debug for DbOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbOptions")
            .field("max_connections", &self.max_connections)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            max_connections: 8,
            hook: None,
        }
    }
}

/// The catalog's database. Cheap to clone.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    kind: DbKind,
    queries: AtomicU64,
    hook: Option<Arc<dyn QueryHook>>,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("kind", &self.inner.kind)
            .field("queries", &self.queries())
            .finish()
    }
}

const PRODUCT_COLUMNS: &str = "id, name, category_id, price_cents, description, updated_at_us";

impl Database {
    /// Connects to `url` (`sqlite://catalog.db`, `postgres://user@host/db`).
    /// A SQLite file is created when missing.
    pub async fn connect(url: &str, options: DbOptions) -> Result<Database, DbError> {
        sqlx::any::install_default_drivers();
        let kind = DbKind::from_url(url)?;
        let url = match kind {
            DbKind::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if kind == DbKind::Sqlite {
                        // WAL lets readers run beside the writer (and beside a
                        // second catalog process on the same file);
                        // synchronous=NORMAL is durable across process crashes
                        // in WAL mode; the busy timeout makes a second process
                        // wait for the first one's seeding instead of failing.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 30000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        Ok(Database {
            inner: Arc::new(Inner {
                pool,
                kind,
                queries: AtomicU64::new(0),
                hook: options.hook,
            }),
        })
    }

    pub fn kind(&self) -> DbKind {
        self.inner.kind
    }

    /// Queries attempted since start (seeding excluded; queries a hook
    /// refused included).
    pub fn queries(&self) -> u64 {
        self.inner.queries.load(Ordering::Relaxed)
    }

    /// Creates the schema and seeds `products` products over `categories`
    /// categories when the database is empty; otherwise reports what is
    /// there. Safe to run from several processes at once: one seeds, the
    /// others wait and then use its rows.
    pub async fn prepare(&self, products: i64, categories: i64) -> Result<Prepared, DbError> {
        schema::prepare(&self.inner.pool, self.inner.kind, products, categories).await
    }

    /// Counts a query (attempted: one the hook then refuses is counted
    /// too) and runs the hook before it.
    async fn query(&self, name: &'static str) -> Result<(), DbError> {
        self.inner.queries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("catalog_db_queries_total", "query" => name).increment(1);
        match &self.inner.hook {
            Some(hook) => hook.before(name).await,
            None => Ok(()),
        }
    }

    /// One product, or `None`.
    pub async fn product(&self, id: i64) -> Result<Option<Product>, DbError> {
        self.query("product").await?;
        let sql = format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.inner.pool)
            .await?;
        row.map(|r| to_product(&r)).transpose()
    }

    /// Products with ids in `first..=last`, by id (for warming).
    pub async fn products_between(&self, first: i64, last: i64) -> Result<Vec<Product>, DbError> {
        self.query("products_between").await?;
        let sql = format!(
            "SELECT {PRODUCT_COLUMNS} FROM products WHERE id >= $1 AND id <= $2 ORDER BY id"
        );
        let rows = sqlx::query(&sql)
            .bind(first)
            .bind(last)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter().map(to_product).collect()
    }

    /// One page of a category, newest first, then by id.
    pub async fn category_page(
        &self,
        category_id: i64,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Product>, DbError> {
        self.query("category_page").await?;
        let sql = format!(
            "SELECT {PRODUCT_COLUMNS} FROM products WHERE category_id = $1 \
             ORDER BY updated_at_us DESC, id LIMIT $2 OFFSET $3"
        );
        let rows = sqlx::query(&sql)
            .bind(category_id)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter().map(to_product).collect()
    }

    /// Applies `patch` in one statement and returns the updated row, or
    /// `None` when there is no such product (nothing written).
    pub async fn update_product(
        &self,
        id: i64,
        patch: &ProductPatch,
        now_us: i64,
    ) -> Result<Option<Product>, DbError> {
        self.query("update_product").await?;
        let sql = format!(
            "UPDATE products SET name = COALESCE($2, name), \
             price_cents = COALESCE($3, price_cents), \
             description = COALESCE($4, description), updated_at_us = $5 \
             WHERE id = $1 RETURNING {PRODUCT_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(patch.name.clone())
            .bind(patch.price_cents)
            .bind(patch.description.clone())
            .bind(now_us)
            .fetch_optional(&self.inner.pool)
            .await?;
        row.map(|r| to_product(&r)).transpose()
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }
}

fn to_product(row: &AnyRow) -> Result<Product, DbError> {
    let bad = |e: sqlx::Error| DbError::BadRow(e.to_string());
    Ok(Product {
        id: row.try_get(0).map_err(bad)?,
        name: row.try_get(1).map_err(bad)?,
        category_id: row.try_get(2).map_err(bad)?,
        price_cents: row.try_get(3).map_err(bad)?,
        description: row.try_get(4).map_err(bad)?,
        updated_at: format_timestamp(row.try_get(5).map_err(bad)?),
    })
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_the_engine_and_hide_passwords() {
        assert_eq!(DbKind::from_url("sqlite://x.db").ok(), Some(DbKind::Sqlite));
        assert_eq!(
            DbKind::from_url("postgres://u@h/d").ok(),
            Some(DbKind::Postgres)
        );
        assert_eq!(
            DbKind::from_url("postgresql://u@h/d").ok(),
            Some(DbKind::Postgres)
        );
        assert!(
            DbKind::from_url("mysql://u:secret@h/d")
                .is_err_and(|e| !e.to_string().contains("secret"))
        );
        assert_eq!(redact("postgres://u:secret@h/d"), "postgres://u:***@h/d");
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
    }
}
