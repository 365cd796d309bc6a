//! The `catalog` command: the service, its load generator, its benchmarks.

/// A fast general-purpose allocator: the hot path allocates a few small
/// strings per request, and the system allocator showed up at ~7% of the
/// server's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use metrics_exporter_prometheus::PrometheusBuilder;
use tracing_subscriber::EnvFilter;

use catalog::bench::{self, HotBench, LoadReport, OutageReport, Phases};
use catalog::load::{self, LoadSpec};
use catalog::read_policy::{PRODUCT_TTL, ReadPolicy};
use catalog::server::{self, ServeConfig};

#[derive(Parser)]
#[command(
    name = "catalog",
    version,
    about = "The cachette reference service: a product catalog with a cache in front of its database"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the catalog (the default).
    Serve(ServeArgs),
    /// Drive a running catalog with a Zipf load and report what it did.
    Loadgen(LoadgenArgs),
    /// The same load against a cached and a --no-cache catalog, side by side
    /// (starts both).
    LoadReport(LoadReportArgs),
    /// Takes the database down under load and back up, with the fail-safe,
    /// with a TTL-only cache and without a cache, and reports what readers
    /// saw before, during and after (runs the catalogs in process).
    OutageReport(OutageReportArgs),
    /// Hot GET /products/{id} beside a bare axum handler with the same body
    /// (starts both).
    BenchHot(BenchHotArgs),
    /// A bare axum server answering every GET /products/{id} with a constant
    /// body (the baseline of bench-hot).
    Baseline(BaselineArgs),
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// sqlite://FILE (created when missing) or postgres://USER:PASSWORD@HOST/DB.
    #[arg(
        long = "database",
        env = "DATABASE_URL",
        default_value = "sqlite://catalog.db"
    )]
    database_url: String,
    /// Products to seed an empty database with (over 100 categories).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(i64).range(1..=100_000_000))]
    products: i64,
    /// Address to listen on (port 0: any free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Serve straight from the database, for comparison.
    #[arg(long)]
    no_cache: bool,
    /// Redis as the cache's store (default: the embedded in-process store).
    #[arg(long = "redis", env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Hottest products to put in the cache before listening.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(0..))]
    warm: i64,
    /// Warming's batch queries (1,000 products each) in flight at once, at
    /// most.
    #[arg(long, default_value_t = catalog::catalog::WARM_CONCURRENCY as u64, value_parser = clap::value_parser!(u64).range(1..=64))]
    warm_concurrency: u64,
    /// The embedded store's budget, in MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    cache_mb: u64,
    /// The in-process L1 tier's budget, in MiB (0: none). With Redis, the
    /// instances' L1 tiers are kept coherent through a Pub/Sub backplane.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    l1_mb: u64,
    /// Database connection pool size.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    db_connections: u32,
    /// Extra latency added to every database query, in milliseconds (to see
    /// what the cache saves when the database is slow or far away). Above
    /// the 3 s hard timeout every read the cache cannot answer fails.
    #[arg(long, default_value_t = 0)]
    db_latency_ms: u64,
    /// How long a cached product is fresh, in seconds. Past it, it is
    /// served stale while it is refreshed, and kept as the fail-safe
    /// fallback for an hour.
    #[arg(long, default_value_t = PRODUCT_TTL.as_secs(), value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    product_ttl_secs: u64,
}

#[derive(Args)]
struct LoadArgs {
    /// Simulated users, each on its own keep-alive connection.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Unmeasured seconds before the measurement.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Zipf exponent of product popularity (rank = id).
    #[arg(long, default_value_t = 0.99)]
    zipf: f64,
    /// Share of requests that are PUT /products/{id} (a new price).
    #[arg(long, default_value_t = 0.01)]
    write_ratio: f64,
    /// Share of requests that are category listings.
    #[arg(long, default_value_t = 0.0)]
    list_ratio: f64,
    /// Ask for this one product only (hot-key load).
    #[arg(long)]
    hot: Option<i64>,
    /// Seed of the request sequence.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Offered requests/s over all connections (default: as fast as the
    /// target answers).
    #[arg(long)]
    rate: Option<f64>,
}

impl LoadArgs {
    fn spec(&self) -> Result<LoadSpec, String> {
        let secs = |name: &str, v: f64| {
            Duration::try_from_secs_f64(v)
                .map_err(|_| format!("--{name} must be a number of seconds"))
        };
        if self.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        Ok(LoadSpec {
            concurrency: self.concurrency,
            duration: secs("duration", self.duration)?,
            warmup: secs("warmup", self.warmup)?,
            zipf: self.zipf,
            write_ratio: self.write_ratio,
            list_ratio: self.list_ratio,
            hot: self.hot,
            seed: self.seed,
            rate: self.rate,
        })
    }
}

#[derive(Args)]
struct LoadgenArgs {
    /// The catalog to drive.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    target: String,
    /// A second catalog (typically --no-cache) to run the same load against
    /// afterwards; both are printed side by side.
    #[arg(long)]
    compare: Option<String>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Args)]
struct LoadReportArgs {
    /// Database for both instances (default: a fresh SQLite file).
    #[arg(long = "database")]
    database_url: Option<String>,
    /// Redis for the cached instance (default: the embedded store).
    #[arg(long = "redis")]
    redis_url: Option<String>,
    #[arg(long, default_value_t = 100_000)]
    products: i64,
    /// Hottest products the cached instance warms on start.
    #[arg(long, default_value_t = 10_000)]
    warm: i64,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Args)]
struct OutageReportArgs {
    /// Products to seed (popularity falls with the id).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(i64).range(1..=100_000_000))]
    products: i64,
    /// Hottest products the cached catalogs warm on start.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(0..))]
    warm: i64,
    /// Simulated users, each on its own keep-alive connection.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// Offered requests/s over all connections (the same schedule for every
    /// catalog).
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    /// Zipf exponent of product popularity (rank = id).
    #[arg(long, default_value_t = 0.99)]
    zipf: f64,
    /// Seed of the request sequence.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Unmeasured seconds of load before the first phase.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Measured seconds before the outage.
    #[arg(long, default_value_t = 10.0)]
    before: f64,
    /// Seconds the database is down.
    #[arg(long, default_value_t = 30.0)]
    outage: f64,
    /// Measured seconds after the database is back.
    #[arg(long, default_value_t = 15.0)]
    after: f64,
    /// Product TTL of the cached catalogs during the report, in seconds
    /// (short, so that entries expire during the outage).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    product_ttl_secs: u64,
    /// The fail-safe catalog's stale-while-revalidate window, in seconds
    /// (production's is a fifth of the TTL).
    #[arg(long, default_value_t = 1.0)]
    stale_while_revalidate_secs: f64,
}

#[derive(Args)]
struct BenchHotArgs {
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

#[derive(Args)]
struct BaselineArgs {
    #[arg(long, default_value = "127.0.0.1:3001")]
    listen: SocketAddr,
    /// Size of the constant body.
    #[arg(long, default_value_t = 200)]
    body_bytes: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The outage report takes the database down on purpose: every read of a
    // product with nothing cached is then a 503 logged at error level, and
    // thousands of those lines a second would bury the report.
    let default_filter = match cli.command {
        Some(Command::OutageReport(_)) => "warn,catalog::http::error=off",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("catalog: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            None => serve(cli.serve).await,
            Some(Command::Serve(args)) => serve(args).await,
            Some(Command::Loadgen(args)) => loadgen(args).await,
            Some(Command::LoadReport(args)) => load_report(args).await,
            Some(Command::OutageReport(args)) => outage_report(args).await,
            Some(Command::BenchHot(args)) => bench_hot(args).await,
            Some(Command::Baseline(args)) => baseline(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("catalog: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("metrics: {e}"))?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let mut config =
        ServeConfig::new(args.database_url).db_latency(Duration::from_millis(args.db_latency_ms));
    config.products = args.products;
    config.listen = args.listen;
    config.no_cache = args.no_cache;
    config.redis_url = args.redis_url;
    config.warm = args.warm;
    config.warm_concurrency = usize::try_from(args.warm_concurrency).map_err(|e| e.to_string())?;
    config.cache_bytes = args.cache_mb * 1024 * 1024;
    config.l1_bytes = args.l1_mb * 1024 * 1024;
    config.db_connections = args.db_connections;
    config.read_policy =
        ReadPolicy::production().with_product_ttl(Duration::from_secs(args.product_ttl_secs));
    let ready = server::start(&config, Some(metrics))
        .await
        .map_err(|e| e.to_string())?;
    let state = &ready.state;
    tracing::info!(
        database = state.catalog.database().kind().name(),
        cache = state.cache_kind,
        products = state.catalog.product_count(),
        "catalog ready"
    );
    println!(
        "catalog {}{}",
        catalog::bench::instance::LISTENING,
        ready.addr
    );
    server::serve(ready, shutdown_signal())
        .await
        .map_err(|e| format!("server: {e}"))
}

async fn loadgen(args: LoadgenArgs) -> Result<(), String> {
    let spec = args.load.spec()?;
    let first = load::run(&args.target, &spec)
        .await
        .map_err(|e| e.to_string())?;
    match args.compare {
        None => print!("{}", load::print_one(&spec, &first)),
        Some(other) => {
            let second = load::run(&other, &spec).await.map_err(|e| e.to_string())?;
            print!("{}", load::print_comparison(&spec, &first, &second));
        }
    }
    Ok(())
}

fn this_program() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find the catalog binary: {e}"))
}

async fn load_report(args: LoadReportArgs) -> Result<(), String> {
    let report = LoadReport {
        database_url: args.database_url,
        redis_url: args.redis_url,
        products: args.products,
        warm: args.warm,
        spec: args.load.spec()?,
    };
    let out = bench::run_load_report(&this_program()?, &report)
        .await
        .map_err(|e| e.to_string())?;
    print!("{out}");
    Ok(())
}

async fn outage_report(args: OutageReportArgs) -> Result<(), String> {
    let secs = |name: &str, v: f64| {
        Duration::try_from_secs_f64(v).map_err(|_| format!("--{name} must be a number of seconds"))
    };
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err("--rate must be a positive number".into());
    }
    let report = OutageReport {
        products: args.products,
        warm: args.warm,
        concurrency: usize::try_from(args.concurrency).map_err(|e| e.to_string())?,
        rate: args.rate,
        zipf: args.zipf,
        seed: args.seed,
        phases: Phases {
            warmup: secs("warmup", args.warmup)?,
            before: secs("before", args.before)?,
            outage: secs("outage", args.outage)?,
            after: secs("after", args.after)?,
        },
        product_ttl: Duration::from_secs(args.product_ttl_secs),
        stale_while_revalidate: secs(
            "stale-while-revalidate-secs",
            args.stale_while_revalidate_secs,
        )?,
    };
    let out = bench::run_outage_report(&report)
        .await
        .map_err(|e| e.to_string())?;
    print!("{out}");
    Ok(())
}

async fn bench_hot(args: BenchHotArgs) -> Result<(), String> {
    let bench = HotBench {
        rounds: args.rounds,
        duration: Duration::try_from_secs_f64(args.duration)
            .map_err(|_| "--duration must be a number of seconds".to_owned())?,
        concurrency: args.concurrency.max(1),
        ..HotBench::default()
    };
    let out = bench::run_hot_bench(&this_program()?, &bench)
        .await
        .map_err(|e| e.to_string())?;
    print!("{out}");
    Ok(())
}

async fn baseline(args: BaselineArgs) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("baseline {}{addr}", catalog::bench::instance::LISTENING);
    bench::baseline::serve(
        listener,
        bench::baseline::constant_body(args.body_bytes),
        shutdown_signal(),
    )
    .await
    .map_err(|e| format!("server: {e}"))
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
