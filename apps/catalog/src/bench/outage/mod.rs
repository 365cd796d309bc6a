//! `catalog outage-report`: what readers see while the database is down
//! and after it comes back, with the fail-safe, with a plain TTL cache, and
//! without a cache.
//!
//! Each variant is a fresh catalog in this process (so that the report can
//! flip its [`Outage`] switch) over one SQLite file, warmed, under the same
//! open-loop Zipf load of `GET /products/{id}`; the database goes down
//! after the first phase and comes back after the second. Products get a
//! short TTL for the run, so that entries expire during the outage.

mod print;
mod traffic;

use std::time::Duration;

use tokio::sync::oneshot;

pub use traffic::{PhaseResult, Phases, Share};

use super::BenchError;
use crate::db::Outage;
use crate::read_policy::ReadPolicy;
use crate::server::{self, ServeConfig};
use traffic::{PHASES, Traffic};

/// How long a stopping catalog may take to finish its requests.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct OutageReport {
    /// Products to seed (ids 1..=products, popularity by id).
    pub products: i64,
    /// Hottest products the cached variants warm at start.
    pub warm: i64,
    /// Simulated users, each on its own keep-alive connection.
    pub concurrency: usize,
    /// Requests/s offered over all connections: the same schedule for
    /// every variant, so their phases see the same requests.
    pub rate: f64,
    pub zipf: f64,
    pub seed: u64,
    pub phases: Phases,
    /// The product TTL of the cached variants.
    pub product_ttl: Duration,
    /// The fail-safe variant's stale-while-revalidate window. Production's
    /// is a fifth of its TTL; with a TTL of seconds, the same fifth lets
    /// entries pass it during the outage and reach the fail-safe fallback.
    pub stale_while_revalidate: Duration,
}

/// One way of running the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Production's read policy (TTL and stale-while-revalidate
    /// shortened).
    FailSafe,
    /// The cache with a TTL and nothing else.
    TtlOnly,
    /// `--no-cache`.
    NoCache,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::FailSafe, Variant::TtlOnly, Variant::NoCache];

    pub fn name(self) -> &'static str {
        match self {
            Variant::FailSafe => "fail-safe",
            Variant::TtlOnly => "TTL only",
            Variant::NoCache => "no cache",
        }
    }

    /// Its read policy; `None` without a cache.
    fn read_policy(self, report: &OutageReport) -> Option<ReadPolicy> {
        match self {
            Variant::FailSafe => Some(ReadPolicy {
                stale_while_revalidate: report.stale_while_revalidate,
                ..ReadPolicy::production().with_product_ttl(report.product_ttl)
            }),
            Variant::TtlOnly => Some(ReadPolicy::ttl_only(report.product_ttl)),
            Variant::NoCache => None,
        }
    }
}

/// One variant's run.
#[derive(Debug, Clone)]
pub struct VariantResult {
    pub variant: Variant,
    /// Before the outage, during it, after it.
    pub phases: [PhaseResult; PHASES],
}

/// Runs every variant, one after the other; returns the report.
pub async fn run_outage_report(report: &OutageReport) -> Result<String, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| BenchError::Setup(e.to_string()))?;
    let database_url = format!("sqlite://{}", dir.path().join("catalog.db").display());
    let mut results = Vec::with_capacity(Variant::ALL.len());
    for variant in Variant::ALL {
        results.push(run_variant(report, variant, &database_url).await?);
    }
    Ok(print::report(report, &results))
}

/// Starts the variant's catalog, runs the traffic and the outage, stops it.
async fn run_variant(
    report: &OutageReport,
    variant: Variant,
    database_url: &str,
) -> Result<VariantResult, BenchError> {
    let outage = Outage::new();
    let policy = variant.read_policy(report);
    let mut config = ServeConfig::new(database_url);
    config.products = report.products;
    config.listen = ([127, 0, 0, 1], 0).into();
    config.no_cache = policy.is_none();
    config.warm = if policy.is_some() { report.warm } else { 0 };
    config.read_policy = policy.unwrap_or_default();
    config.db_hook = Some(outage.clone());
    config.progress = false;
    eprintln!(
        "outage-report: {}: starting (the first start seeds the database)",
        variant.name()
    );
    let ready = server::start(&config, None).await?;
    let target = format!("http://{}", ready.addr);
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server::serve(ready, async {
        let _ = stopped.await;
    }));
    let p = report.phases;
    eprintln!(
        "outage-report: {}: {:.0} s warm-up, {:.0} s up, {:.0} s down, {:.0} s back up",
        variant.name(),
        p.warmup.as_secs_f64(),
        p.before.as_secs_f64(),
        p.outage.as_secs_f64(),
        p.after.as_secs_f64()
    );
    let traffic = Traffic {
        products: report.products,
        // The same ids count as seen in every variant, warmed or not, so
        // that the columns compare the same requests.
        warmed: report.warm.min(report.products),
        zipf: report.zipf,
        concurrency: report.concurrency,
        rate: report.rate,
        seed: report.seed,
    };
    let measured = traffic::run(&target, traffic, report.phases, &outage).await;
    // Never leave the database down behind us, whatever happened.
    outage.bring_up();
    let _ = stop.send(());
    match tokio::time::timeout(STOP_TIMEOUT, serving).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(BenchError::Setup(format!("server: {e}"))),
        Ok(Err(e)) => return Err(BenchError::Setup(format!("server task: {e}"))),
        Err(_) => {
            return Err(BenchError::Setup(format!(
                "the {} catalog did not stop within {STOP_TIMEOUT:?}",
                variant.name()
            )));
        }
    }
    Ok(VariantResult {
        variant,
        phases: measured?,
    })
}
