//! Printing the outage report: a header saying what ran, one table with a
//! column per variant and a block per phase, and a summary sentence.

use std::fmt::Write;

use super::traffic::{PhaseResult, Share};
use super::{OutageReport, Variant, VariantResult};
use crate::load::{millis, thousands};
use crate::read_policy::ReadPolicy;

const LABEL: usize = 26;
const COLUMN: usize = 20;

/// The whole report.
pub(super) fn report(report: &OutageReport, results: &[VariantResult]) -> String {
    let mut out = header(report);
    let _ = write!(out, "\n{:<LABEL$}", "");
    for r in results {
        let _ = write!(out, "{:>COLUMN$}", r.variant.name());
    }
    out.push('\n');
    let titles = ["before the outage", "database down", "after it is back"];
    for (phase, title) in titles.iter().enumerate() {
        let column = |f: &dyn Fn(&PhaseResult) -> String| -> Vec<String> {
            results.iter().map(|r| f(&r.phases[phase])).collect()
        };
        let length = results
            .first()
            .map_or(0.0, |r| r.phases[phase].length.as_secs_f64());
        let _ = writeln!(out, "{title} ({length:.0} s)");
        row(
            &mut out,
            "requests",
            column(&|p| thousands(p.requests as f64)),
        );
        row(
            &mut out,
            "5xx",
            column(&|p| {
                format!(
                    "{} ({:.2} %)",
                    thousands(p.server_errors as f64),
                    p.server_error_percent()
                )
            }),
        );
        if phase > 0 {
            row(&mut out, "  failed, seen ids", column(&|p| share(p.seen)));
            row(&mut out, "  failed, new ids", column(&|p| share(p.new)));
        }
        if results
            .iter()
            .any(|r| r.phases[phase].no_response + r.phases[phase].other_errors > 0)
        {
            row(
                &mut out,
                "no response / other",
                column(&|p| format!("{} / {}", p.no_response, p.other_errors)),
            );
        }
        for (name, q) in [("p50 latency", 0.50), ("p99 latency", 0.99)] {
            row(
                &mut out,
                name,
                column(&|p| millis(p.latency.value_at_quantile(q))),
            );
        }
        row(
            &mut out,
            "db queries/s attempted",
            column(&|p| thousands(p.db_queries_per_second())),
        );
        row(
            &mut out,
            "stale serves (SWR)",
            column(&|p| counter(p, |c| c.stale_hits)),
        );
        row(
            &mut out,
            "fail-safe serves",
            column(&|p| counter(p, |c| c.fail_safe_hits)),
        );
    }
    out.push_str(&summary(report, results));
    out
}

fn header(report: &OutageReport) -> String {
    let p = &report.phases;
    let mut out = String::new();
    let _ = writeln!(out, "catalog outage report (SQLite, in process)");
    let _ = writeln!(
        out,
        "load      GET /products/{{id}}, Zipf({}) over {} products; {} connections, {} req/s offered",
        report.zipf,
        thousands(report.products as f64),
        report.concurrency,
        thousands(report.rate)
    );
    let _ = writeln!(
        out,
        "phases    {:.0} s warm-up (unmeasured), {:.0} s up, {:.0} s with the database down, {:.0} s after",
        p.warmup.as_secs_f64(),
        p.before.as_secs_f64(),
        p.outage.as_secs_f64(),
        p.after.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "products  TTL {} (short, so entries expire during the outage); the {} hottest warmed at start",
        seconds(report.product_ttl.as_secs_f64()),
        thousands(report.warm as f64)
    );
    for variant in Variant::ALL {
        let what = match variant.read_policy(report) {
            Some(policy) if policy.fail_safe.is_some() => describe(&policy),
            Some(_) => "the same cache, TTL only: no stale serving, no timeouts".to_owned(),
            None => "--no-cache: every read goes to the database".to_owned(),
        };
        let _ = writeln!(out, "{:<10}{:<11}{what}", "", variant.name());
    }
    let _ = writeln!(
        out,
        "seen ids  the {} warmed ids and every id answered before the outage (a cache holds a value\n          for them); new ids: all others, first asked for during the outage (the Zipf tail)",
        thousands(report.warm as f64)
    );
    let _ = writeln!(
        out,
        "latency   from send to response, every answered request (5xx included)"
    );
    let _ = writeln!(
        out,
        "phase     a request counts in the phase it was sent in: one in flight when the switch flips
          can fail, or be served by the fail-safe, in the phase before"
    );
    out
}

/// The fail-safe variant's settings, in words.
fn describe(policy: &ReadPolicy) -> String {
    let mut parts = vec![format!(
        "stale-while-revalidate {}",
        seconds(policy.stale_while_revalidate.as_secs_f64())
    )];
    if let Some(fail_safe) = policy.fail_safe {
        parts.push(format!(
            "fail-safe {} (throttle {})",
            seconds(fail_safe.max_stale.as_secs_f64()),
            seconds(fail_safe.throttle.as_secs_f64())
        ));
    }
    if let Some(soft) = policy.soft_timeout {
        parts.push(format!("soft timeout {} ms", soft.as_millis()));
    }
    if let Some(hard) = policy.hard_timeout {
        parts.push(format!("hard timeout {}", seconds(hard.as_secs_f64())));
    }
    parts.join(", ")
}

/// `5 s`, `1 h`, `1.5 s`.
fn seconds(s: f64) -> String {
    if s >= 3_600.0 && s % 3_600.0 == 0.0 {
        format!("{:.0} h", s / 3_600.0)
    } else if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
}

fn row(out: &mut String, label: &str, values: Vec<String>) {
    let _ = write!(out, "  {label:<width$}", width = LABEL - 2);
    for v in values {
        let _ = write!(out, "{v:>COLUMN$}");
    }
    out.push('\n');
}

/// `0.00 % of 52,301`.
fn share(s: Share) -> String {
    format!(
        "{:.2} % of {}",
        s.failure_percent(),
        thousands(s.requests as f64)
    )
}

/// A product-namespace counter, or `-` without a cache.
fn counter(p: &PhaseResult, pick: fn(&crate::load::NamespaceCounters) -> u64) -> String {
    p.counters
        .as_ref()
        .map_or_else(|| "-".to_owned(), |c| thousands(pick(c) as f64))
}

/// The outage phase in one sentence.
fn summary(report: &OutageReport, results: &[VariantResult]) -> String {
    let outage = |variant: Variant| {
        results
            .iter()
            .find(|r| r.variant == variant)
            .map(|r| &r.phases[1])
    };
    let seen_failed = |variant: Variant| {
        outage(variant).map_or_else(
            || "-".to_owned(),
            |p| format!("{:.2} %", p.seen.failure_percent()),
        )
    };
    let Some(fail_safe) = outage(Variant::FailSafe) else {
        return String::new();
    };
    let new_share = if fail_safe.requests == 0 {
        0.0
    } else {
        fail_safe.new.requests as f64 * 100.0 / fail_safe.requests as f64
    };
    format!(
        "\nDuring the {} outage, requests for products seen before it failed {} of the time with the\n\
         fail-safe, {} with the TTL-only cache and {} without a cache. Products first asked for\n\
         during it ({:.1} % of its requests) had no value to fall back on: {} of them failed with the\n\
         fail-safe.\n",
        seconds(report.phases.outage.as_secs_f64()),
        seen_failed(Variant::FailSafe),
        seen_failed(Variant::TtlOnly),
        seen_failed(Variant::NoCache),
        new_share,
        format_args!("{:.2} %", fail_safe.new.failure_percent()),
    )
}
