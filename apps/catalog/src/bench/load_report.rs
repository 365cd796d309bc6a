//! `catalog load-report`: the same Zipf load against a cached catalog and
//! a `--no-cache` one on the same database, side by side.

use std::path::Path;

use super::{BenchError, Instance};
use crate::load::{self, LoadSpec, print_comparison};

/// What to start and how to load it.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// `None`: a fresh SQLite file in a temporary directory.
    pub database_url: Option<String>,
    /// Redis as the cached instance's store.
    pub redis_url: Option<String>,
    pub products: i64,
    /// Hottest products the cached instance warms.
    pub warm: i64,
    pub spec: LoadSpec,
}

/// Runs it with the `catalog` binary at `program`; returns the report.
pub async fn run_load_report(program: &Path, report: &LoadReport) -> Result<String, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| BenchError::Setup(e.to_string()))?;
    let db = match &report.database_url {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", dir.path().join("catalog.db").display()),
    };
    let products = report.products.to_string();
    let warm = report.warm.to_string();
    let mut cached_args: Vec<String> = [
        "serve",
        "--database",
        &db,
        "--products",
        &products,
        "--warm",
        &warm,
        "--listen",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Some(redis) = &report.redis_url {
        cached_args.extend(["--redis".to_owned(), redis.clone()]);
    }
    // The first instance seeds an empty database; the second finds it.
    let cached = Instance::start(program, &cached_args).await?;
    let uncached_args: Vec<String> = [
        "serve",
        "--database",
        &db,
        "--no-cache",
        "--listen",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let uncached = Instance::start(program, &uncached_args).await?;

    let with_cache = load::run(&cached.url(), &report.spec).await?;
    let without = load::run(&uncached.url(), &report.spec).await?;
    cached.stop().await;
    uncached.stop().await;
    Ok(print_comparison(&report.spec, &with_cache, &without))
}
