//! Schema creation and first-start seeding, safe against two processes
//! starting on one empty database at the same moment.

use std::time::Instant;

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, Executor, Row};

use super::seed;
use super::{DbError, DbKind};

/// What the database holds after [`super::Database::prepare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    pub products: i64,
    pub categories: i64,
    /// True when this call created and seeded it.
    pub seeded: bool,
}

/// Rows per multi-row INSERT: 6 parameters each stays far below both
/// engines' parameter limits.
const INSERT_BATCH: i64 = 500;
/// Any value; it only has to be the same in every catalog process.
const SEED_LOCK_KEY: i64 = 0x0063_6174_616c_6f67;

fn ddl(kind: DbKind) -> [String; 4] {
    // SQLite's INTEGER PRIMARY KEY is the rowid itself (no second index);
    // PostgreSQL needs BIGINT for 64-bit ids. Everything else is shared.
    let id = match kind {
        DbKind::Sqlite => "INTEGER",
        DbKind::Postgres => "BIGINT",
    };
    [
        "CREATE TABLE IF NOT EXISTS catalog_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL)"
            .to_owned(),
        format!("CREATE TABLE IF NOT EXISTS categories (id {id} PRIMARY KEY, name TEXT NOT NULL)"),
        format!(
            "CREATE TABLE IF NOT EXISTS products (id {id} PRIMARY KEY, name TEXT NOT NULL, \
             category_id BIGINT NOT NULL REFERENCES categories (id), price_cents BIGINT NOT NULL, \
             description TEXT NOT NULL, updated_at_us BIGINT NOT NULL)"
        ),
        "CREATE INDEX IF NOT EXISTS products_by_category \
         ON products (category_id, updated_at_us DESC, id)"
            .to_owned(),
    ]
}

pub(super) async fn prepare(
    pool: &AnyPool,
    kind: DbKind,
    products: i64,
    categories: i64,
) -> Result<Prepared, DbError> {
    if products < 1 || categories < 1 {
        return Err(DbError::Config(
            "--products and the category count must be at least 1".into(),
        ));
    }
    let mut conn = pool.acquire().await?;
    // One writer at a time from here to COMMIT, across processes: SQLite's
    // IMMEDIATE transaction takes the write lock up front (a second process
    // waits on busy_timeout), PostgreSQL's transaction-scoped advisory lock
    // does the same. The second process then finds the rows and uses them.
    match kind {
        DbKind::Sqlite => {
            conn.execute("BEGIN IMMEDIATE").await?;
        }
        DbKind::Postgres => {
            conn.execute("BEGIN").await?;
            let lock = format!("SELECT pg_advisory_xact_lock({SEED_LOCK_KEY})");
            if let Err(e) = conn.execute(lock.as_str()).await {
                rollback(conn).await;
                return Err(e.into());
            }
        }
    }
    match create_and_seed(&mut conn, kind, products, categories).await {
        Ok(prepared) => {
            conn.execute("COMMIT").await?;
            Ok(prepared)
        }
        Err(e) => {
            rollback(conn).await;
            Err(e)
        }
    }
}

async fn rollback(mut conn: PoolConnection<Any>) {
    if conn.execute("ROLLBACK").await.is_err() {
        // Never hand a connection with an open transaction back to the pool.
        drop(conn.detach());
    }
}

async fn create_and_seed(
    conn: &mut PoolConnection<Any>,
    kind: DbKind,
    products: i64,
    categories: i64,
) -> Result<Prepared, DbError> {
    for statement in ddl(kind) {
        conn.execute(statement.as_str()).await?;
    }
    let rows = sqlx::query("SELECT name, value FROM catalog_meta")
        .fetch_all(&mut **conn)
        .await?;
    let meta = |key: &str| -> Option<i64> {
        rows.iter()
            .find(|r| r.try_get::<String, _>(0).is_ok_and(|n| n == key))
            .and_then(|r| r.try_get::<i64, _>(1).ok())
    };
    if let (Some(products), Some(categories)) = (meta("products"), meta("categories")) {
        return Ok(Prepared {
            products,
            categories,
            seeded: false,
        });
    }

    let started = Instant::now();
    tracing::info!(products, categories, "seeding an empty database");
    for chunk_start in (1..=categories).step_by(INSERT_BATCH as usize) {
        let chunk_end = (chunk_start + INSERT_BATCH - 1).min(categories);
        let mut sql = String::from("INSERT INTO categories (id, name) VALUES ");
        for (i, _) in (chunk_start..=chunk_end).enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("(${}, ${})", 2 * i + 1, 2 * i + 2));
        }
        let mut query = sqlx::query(&sql);
        for id in chunk_start..=chunk_end {
            query = query.bind(id).bind(format!("Category {id}"));
        }
        query.execute(&mut **conn).await?;
    }
    for chunk_start in (1..=products).step_by(INSERT_BATCH as usize) {
        let chunk_end = (chunk_start + INSERT_BATCH - 1).min(products);
        let mut sql = String::from(
            "INSERT INTO products (id, name, category_id, price_cents, description, updated_at_us) VALUES ",
        );
        for (i, _) in (chunk_start..=chunk_end).enumerate() {
            if i > 0 {
                sql.push(',');
            }
            let p = 6 * i;
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6
            ));
        }
        let mut query = sqlx::query(&sql);
        for id in chunk_start..=chunk_end {
            let row = seed::product(id, categories);
            query = query
                .bind(row.id)
                .bind(row.name)
                .bind(row.category_id)
                .bind(row.price_cents)
                .bind(row.description)
                .bind(row.updated_at_us);
        }
        query.execute(&mut **conn).await?;
    }
    sqlx::query("INSERT INTO catalog_meta (name, value) VALUES ($1, $2), ($3, $4)")
        .bind("products")
        .bind(products)
        .bind("categories")
        .bind(categories)
        .execute(&mut **conn)
        .await?;
    tracing::info!(
        products,
        categories,
        seconds = started.elapsed().as_secs_f64(),
        "seeded"
    );
    Ok(Prepared {
        products,
        categories,
        seeded: true,
    })
}
