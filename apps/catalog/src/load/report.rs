//! Printing load results: one target, or two side by side.

use std::fmt::Write;

use super::{LoadResult, LoadSpec};

/// `1.23 ms`.
pub(crate) fn millis(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1_000.0)
}

/// `1,234,567` (rounded).
pub(crate) fn thousands(n: f64) -> String {
    let n = n.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn describe(spec: &LoadSpec) -> String {
    let what = match spec.hot {
        Some(id) => format!("GET /products/{id} only"),
        None => format!(
            "Zipf({}) product ids, writes {:.1}%, listings {:.1}%",
            spec.zipf,
            spec.write_ratio * 100.0,
            spec.list_ratio * 100.0
        ),
    };
    let pace = match spec.rate {
        Some(rate) => format!("{} req/s offered", thousands(rate)),
        None => "as fast as answered".to_owned(),
    };
    format!(
        "{what}; {} connections, {pace}; {:.0} s measured after {:.0} s warm-up",
        spec.concurrency,
        spec.duration.as_secs_f64(),
        spec.warmup.as_secs_f64()
    )
}

fn hit_rate(r: &LoadResult) -> String {
    r.hit_rate()
        .map(|h| format!("{:.1} %", h * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// One target's report.
pub fn print_one(spec: &LoadSpec, r: &LoadResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "target {} (cache: {}, database: {})",
        r.target, r.after.cache, r.after.database
    );
    let _ = writeln!(out, "load   {}", describe(spec));
    let _ = writeln!(
        out,
        "  requests/s     {:>10}   ({} requests, {} errors)",
        thousands(r.requests_per_second()),
        thousands(r.requests as f64),
        r.errors
    );
    let _ = writeln!(
        out,
        "  latency        p50 {}   p99 {}   max {}",
        millis(r.latency.value_at_quantile(0.50)),
        millis(r.latency.value_at_quantile(0.99)),
        millis(r.latency.max())
    );
    let _ = writeln!(
        out,
        "  hit rate       {:>10}   (product namespace)",
        hit_rate(r)
    );
    let _ = writeln!(
        out,
        "  db queries/s   {:>10}",
        thousands(r.db_queries_per_second())
    );
    out
}

/// Two targets under the same load, side by side; the second is the
/// baseline (`--no-cache`).
pub fn print_comparison(spec: &LoadSpec, cached: &LoadResult, baseline: &LoadResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "load: {}", describe(spec));
    let _ = writeln!(
        out,
        "{:<16}{:>16}{:>16}{:>12}",
        "",
        format!("cache: {}", cached.after.cache),
        format!("cache: {}", baseline.after.cache),
        "change"
    );
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "-".into()
        }
    };
    let _ = writeln!(
        out,
        "{:<16}{:>16}{:>16}{:>12}",
        "requests/s",
        thousands(cached.requests_per_second()),
        thousands(baseline.requests_per_second()),
        ratio(cached.requests_per_second(), baseline.requests_per_second())
    );
    for (name, q) in [("p50 latency", 0.50), ("p99 latency", 0.99)] {
        let (a, b) = (
            cached.latency.value_at_quantile(q),
            baseline.latency.value_at_quantile(q),
        );
        let _ = writeln!(
            out,
            "{:<16}{:>16}{:>16}{:>12}",
            name,
            millis(a),
            millis(b),
            ratio(a as f64, b as f64)
        );
    }
    let _ = writeln!(
        out,
        "{:<16}{:>16}{:>16}",
        "hit rate",
        hit_rate(cached),
        hit_rate(baseline)
    );
    let (qa, qb) = (
        cached.db_queries_per_second(),
        baseline.db_queries_per_second(),
    );
    let reduction = if qb > 0.0 {
        format!("-{:.1} %", (1.0 - qa / qb) * 100.0)
    } else {
        "-".into()
    };
    let _ = writeln!(
        out,
        "{:<16}{:>16}{:>16}{:>12}",
        "db queries/s",
        thousands(qa),
        thousands(qb),
        reduction
    );
    let per_request = |r: &LoadResult| {
        format!(
            "{:.4}",
            r.db_queries_per_second() / r.requests_per_second().max(1e-9)
        )
    };
    let _ = writeln!(
        out,
        "{:<16}{:>16}{:>16}",
        "db queries/req",
        per_request(cached),
        per_request(baseline)
    );
    let _ = writeln!(
        out,
        "{:<16}{:>16}{:>16}",
        "errors", cached.errors, baseline.errors
    );
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.4), "1,234,567");
    }
}
