//! Memory report for the embedded store: does its byte budget bound the
//! process's resident memory, and what does one entry really cost?
//!
//! Run: `cargo run --release -p cachette-benches --bin embedded_memory`.
//!
//! Each scenario runs in a fresh child process (this binary re-executed
//! with `--scenario <name>`), so one scenario's freed-but-retained heap
//! cannot flatter or penalise the next. A scenario builds an
//! `EmbeddedStore`, reads the baseline RSS (`VmRSS` in `/proc/self/status`),
//! writes N entries through a `Cache` (the real write path: key layout,
//! envelope, JSON, `Bytes`), runs moka's pending maintenance (it evicts
//! lazily), and reads RSS again and the peak RSS (`VmHWM`).
//!
//! Why the figures are fair: the payload is computed from known sizes
//! (store key length + encoded entry length, identical for every entry by
//! construction), and everything else the process gained is charged to the
//! entries actually held — moka's nodes, hash table, timer wheel, frequency
//! sketch, the `Slot`, allocator rounding and spare `Vec` capacity. That
//! is exactly what `EmbeddedStore::ENTRY_OVERHEAD` has to cover for the
//! budget to bound memory.
//!
//! Scenarios: `sizing` (1M small entries, a budget that holds them all:
//! the per-entry cost with no eviction), `fill` (1M small entries into
//! 256 MiB), `overfill` (3M small entries into 256 MiB: RSS must stay
//! bounded while the store evicts), and two overfills with larger values,
//! `overfill-136` and `overfill-1026`, which check that one constant
//! overhead still bounds memory when a value's buffer has spare capacity
//! (the encoder's buffer starts at 128 bytes and doubles, so a 1,026-byte
//! entry sits in a 2,048-byte allocation).
//!
//! The bound checked: peak and final RSS of the whole process (not just
//! the delta) at most budget + 10%. The exit status is non-zero if any
//! scenario breaks it.

// A memory report, not library code: a failure to set up is a panic with
// the reason, which is the right failure for a measurement tool.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use cachette::Cache;
use cachette::envelope::HEADER_BYTES;
use cachette::store::EmbeddedStore;
use cachette_benches::{peak_rss_bytes, rss_bytes};

const MIB: u64 = 1024 * 1024;
/// How far above the budget RSS may go.
const SLACK: f64 = 1.10;
/// The first id: with ids from 1,000,000 to 9,999,999 every key and value
/// has the same length (7 digits), so the payload is exact.
const FIRST_ID: u64 = 1_000_000;

#[derive(Debug, Clone, Copy)]
enum Values {
    /// `Cache<u64>`: a 7-digit number, 41 bytes encoded.
    Small,
    /// `Cache<String>`: a string of this many ASCII characters, encoded in
    /// `36 + n` bytes (34 of envelope, 2 of JSON quotes).
    Text(usize),
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    what: &'static str,
    budget: u64,
    entries: u64,
    values: Values,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "sizing",
        what: "1M small entries, budget large enough to hold all (per-entry cost without eviction)",
        budget: 1024 * MIB,
        entries: 1_000_000,
        values: Values::Small,
    },
    Scenario {
        name: "fill",
        what: "1M small entries into 256 MiB",
        budget: 256 * MIB,
        entries: 1_000_000,
        values: Values::Small,
    },
    Scenario {
        name: "overfill",
        what: "3M small entries into 256 MiB (evicting)",
        budget: 256 * MIB,
        entries: 3_000_000,
        values: Values::Small,
    },
    Scenario {
        name: "overfill-136",
        what: "2M 100-char strings (136-byte entries) into 256 MiB (evicting)",
        budget: 256 * MIB,
        entries: 2_000_000,
        values: Values::Text(100),
    },
    Scenario {
        name: "overfill-1026",
        what: "600k 990-char strings (1,026-byte entries) into 256 MiB (evicting)",
        budget: 256 * MIB,
        entries: 600_000,
        values: Values::Text(990),
    },
];

#[derive(Debug)]
struct Report {
    inserted: u64,
    held: u64,
    weighted: u64,
    payload_per_entry: u64,
    rss_before: u64,
    rss_after: u64,
    rss_peak: u64,
    elapsed: Duration,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, name] = args.as_slice()
        && flag == "--scenario"
    {
        let scenario = SCENARIOS
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("unknown scenario {name}"));
        return run_scenario(scenario);
    }
    if args.len() > 1 {
        eprintln!("usage: embedded_memory [--scenario <name>]");
        return ExitCode::FAILURE;
    }

    let exe = std::env::current_exe().expect("path of this binary");
    println!(
        "cachette embedded store memory report (EmbeddedStore::ENTRY_OVERHEAD = {} bytes)\n",
        EmbeddedStore::ENTRY_OVERHEAD
    );
    let mut rows = Vec::new();
    let mut ok = true;
    for scenario in SCENARIOS {
        let output = Command::new(&exe)
            .arg("--scenario")
            .arg(scenario.name)
            .output()
            .expect("run a scenario");
        let stdout = String::from_utf8_lossy(&output.stdout);
        for line in stdout.lines() {
            match line.strip_prefix("ROW") {
                Some(row) => rows.push(row.to_owned()),
                None => println!("{line}"),
            }
        }
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            ok = false;
            println!("!! scenario {} failed ({})\n", scenario.name, output.status);
        }
    }
    println!(
        "| scenario | budget | inserted | held | weighted bytes | payload/entry | RSS before | RSS after | peak RSS | RSS delta | overhead/entry (measured) | peak RSS ≤ budget+10% |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|");
    for row in &rows {
        println!("{row}");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        println!("\nFAILED: at least one scenario broke the memory bound");
        ExitCode::FAILURE
    }
}

fn run_scenario(s: &Scenario) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let store = EmbeddedStore::new(s.budget);
    let report = match s.values {
        Values::Small => {
            let cache: Cache<u64> = Cache::builder("item")
                .ttl(Duration::from_secs(3600))
                .store(store.clone())
                .build()
                .expect("cache");
            fill(&rt, &store, &cache, s.entries, |id| id)
        }
        Values::Text(len) => {
            let cache: Cache<String> = Cache::builder("item")
                .ttl(Duration::from_secs(3600))
                .store(store.clone())
                .build()
                .expect("cache");
            // `len` ASCII characters, different per entry.
            fill(&rt, &store, &cache, s.entries, |id| format!("{id:0>len$}"))
        }
    };
    print_report(s, &report)
}

/// Writes `entries` values through `cache` and measures.
fn fill<V: cachette::Value>(
    rt: &tokio::runtime::Runtime,
    store: &EmbeddedStore,
    cache: &Cache<V>,
    entries: u64,
    value_of: impl Fn(u64) -> V,
) -> Report {
    let last = FIRST_ID + entries - 1;
    assert!(last < 10_000_000, "ids must all have 7 digits");
    let sample_key = FIRST_ID.to_string();
    let key_len = cache.store_key(&sample_key).expect("store key").len() as u64;
    let value_len =
        (HEADER_BYTES + serde_json::to_vec(&value_of(FIRST_ID)).expect("json").len()) as u64;

    let rss_before = rss_bytes().expect("VmRSS from /proc/self/status");
    let started = Instant::now();
    rt.block_on(async {
        for id in FIRST_ID..=last {
            let value = value_of(id);
            cache
                .set(&id.to_string(), &value)
                .await
                .expect("embedded set cannot fail");
        }
    });
    store.run_pending_tasks();
    let elapsed = started.elapsed();
    let rss_after = rss_bytes().expect("VmRSS");
    let rss_peak = peak_rss_bytes().expect("VmHWM");

    Report {
        inserted: entries,
        held: store.entry_count(),
        weighted: store.weighted_bytes(),
        payload_per_entry: key_len + value_len,
        rss_before,
        rss_after,
        rss_peak,
        elapsed,
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

fn print_report(s: &Scenario, r: &Report) -> ExitCode {
    let delta = r.rss_after.saturating_sub(r.rss_before);
    let payload = r.held * r.payload_per_entry;
    let overhead = if r.held == 0 {
        0.0
    } else {
        (delta as f64 - payload as f64) / r.held as f64
    };
    let bound = (s.budget as f64 * SLACK) as u64;
    let within = r.rss_peak <= bound && r.rss_after <= bound;

    println!("== {}: {} ==", s.name, s.what);
    println!(
        "  budget                     {} ({} bytes)",
        mib(s.budget),
        s.budget
    );
    println!("  entries inserted           {}", r.inserted);
    println!("  entries held               {}", r.held);
    println!(
        "  weighted bytes             {} ({})",
        r.weighted,
        mib(r.weighted)
    );
    println!(
        "  payload per entry          {} bytes (store key + encoded entry)",
        r.payload_per_entry
    );
    println!(
        "  payload bytes held         {} ({})",
        payload,
        mib(payload)
    );
    println!("  RSS before                 {}", mib(r.rss_before));
    println!("  RSS after                  {}", mib(r.rss_after));
    println!("  peak RSS (VmHWM)           {}", mib(r.rss_peak));
    println!("  RSS delta                  {}", mib(delta));
    println!(
        "  overhead per held entry    {overhead:.0} bytes measured (ENTRY_OVERHEAD charges {})",
        EmbeddedStore::ENTRY_OVERHEAD
    );
    println!(
        "  real bytes per held entry  {:.0} (charged: {})",
        delta as f64 / r.held.max(1) as f64,
        r.payload_per_entry + u64::from(EmbeddedStore::ENTRY_OVERHEAD)
    );
    println!("  bound (budget + 10%)       {}", mib(bound));
    println!(
        "  within bound               {} (peak {}, after {})",
        if within { "yes" } else { "NO" },
        mib(r.rss_peak),
        mib(r.rss_after)
    );
    println!("  insert time                {:.2?}\n", r.elapsed);
    println!(
        "ROW| {} | {} | {} | {} | {} | {} B | {} | {} | {} | {} | {:.0} B | {} |",
        s.name,
        mib(s.budget),
        r.inserted,
        r.held,
        r.weighted,
        r.payload_per_entry,
        mib(r.rss_before),
        mib(r.rss_after),
        mib(r.rss_peak),
        mib(delta),
        overhead,
        if within { "yes" } else { "**NO**" },
    );
    if within {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
