//! `catalog bench-hot`: hot `GET /products/{id}` on the catalog beside a
//! bare axum handler returning a constant body of the same size, measured
//! in alternating rounds in one run.

use std::path::Path;
use std::time::Duration;

use super::{BenchError, Instance};
use crate::load::{self, HttpClient, LoadResult, LoadSpec};

/// How to run the benchmark.
#[derive(Debug, Clone)]
pub struct HotBench {
    pub rounds: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub concurrency: usize,
    /// The product every request asks for.
    pub product: i64,
}

impl Default for HotBench {
    fn default() -> Self {
        HotBench {
            rounds: 3,
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            concurrency: 32,
            product: 1,
        }
    }
}

/// Runs it with the `catalog` binary at `program`; returns the report.
pub async fn run_hot_bench(program: &Path, bench: &HotBench) -> Result<String, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| BenchError::Setup(e.to_string()))?;
    let db = format!("sqlite://{}", dir.path().join("bench.db").display());
    let catalog = Instance::start(
        program,
        &strings(&[
            "serve",
            "--database",
            &db,
            "--products",
            "1000",
            "--warm",
            "1000",
            "--listen",
            "127.0.0.1:0",
        ]),
    )
    .await?;
    let path = format!("/products/{}", bench.product);
    let sample = HttpClient::new(&catalog.url()).await?.get(&path).await?;
    if !sample.status.is_success() {
        return Err(BenchError::Setup(format!(
            "GET {path} answered {}",
            sample.status
        )));
    }
    let size = sample.body.len();
    let bare = Instance::start(
        program,
        &strings(&[
            "baseline",
            "--body-bytes",
            &size.to_string(),
            "--listen",
            "127.0.0.1:0",
        ]),
    )
    .await?;

    let spec = LoadSpec {
        concurrency: bench.concurrency,
        duration: bench.duration,
        warmup: bench.warmup,
        zipf: 0.99,
        write_ratio: 0.0,
        list_ratio: 0.0,
        hot: Some(bench.product),
        seed: 1,
        rate: None,
    };
    let mut rounds: Vec<(LoadResult, LoadResult)> = Vec::new();
    for _ in 0..bench.rounds.max(1) {
        let c = load::run(&catalog.url(), &spec).await?;
        let b = load::run(&bare.url(), &spec).await?;
        rounds.push((c, b));
    }
    catalog.stop().await;
    bare.stop().await;

    let mut out = format!(
        "hot GET {path} ({size}-byte body), {} connections, {} rounds of {:.0} s each, alternating\n",
        bench.concurrency,
        rounds.len(),
        bench.duration.as_secs_f64()
    );
    out.push_str(&format!(
        "{:<8}{:>16}{:>12}{:>12}{:>16}{:>12}{:>12}{:>9}\n",
        "round", "catalog req/s", "p50", "p99", "bare req/s", "p50", "p99", "ratio"
    ));
    let ms =
        |r: &LoadResult, q: f64| format!("{:.3} ms", r.latency.value_at_quantile(q) as f64 / 1e3);
    let mut ratios = Vec::new();
    for (i, (c, b)) in rounds.iter().enumerate() {
        let ratio = c.requests_per_second() / b.requests_per_second().max(1e-9);
        ratios.push(ratio);
        out.push_str(&format!(
            "{:<8}{:>16.0}{:>12}{:>12}{:>16.0}{:>12}{:>12}{:>8.1}%\n",
            i + 1,
            c.requests_per_second(),
            ms(c, 0.5),
            ms(c, 0.99),
            b.requests_per_second(),
            ms(b, 0.5),
            ms(b, 0.99),
            ratio * 100.0
        ));
        if c.errors + b.errors > 0 {
            out.push_str(&format!(
                "        errors: catalog {}, bare {}\n",
                c.errors, b.errors
            ));
        }
    }
    let total_c: f64 = rounds.iter().map(|(c, _)| c.requests_per_second()).sum();
    let total_b: f64 = rounds.iter().map(|(_, b)| b.requests_per_second()).sum();
    ratios.sort_by(f64::total_cmp);
    out.push_str(&format!(
        "catalog / bare axum: {:.1}% over all rounds (median round {:.1}%)\n",
        total_c / total_b.max(1e-9) * 100.0,
        ratios[ratios.len() / 2] * 100.0
    ));
    Ok(out)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}
