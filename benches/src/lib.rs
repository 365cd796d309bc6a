//! Shared pieces of the cachette benchmarks and memory reports: the value
//! type every benchmark caches, and the process memory figures read from
//! `/proc/self/status`.
//!
//! The benchmarks live in `benches/benches/` (run with `cargo bench -p
//! cachette-benches`); the memory report is the `embedded_memory` binary
//! (`cargo run --release -p cachette-benches --bin embedded_memory`).

use serde::{Deserialize, Serialize};

/// A small, typical cached value: five fields, two of them short strings.
/// Its JSON encoding is about 100 bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    /// Primary key.
    pub id: u64,
    /// Stock-keeping unit.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Price in cents.
    pub price_cents: u32,
    /// Whether it can be ordered.
    pub in_stock: bool,
}

impl Product {
    /// A deterministic sample product.
    pub fn sample(id: u64) -> Product {
        Product {
            id,
            sku: format!("SKU-{id:08}"),
            name: "Brushed steel desk lamp".to_owned(),
            price_cents: 4_999,
            in_stock: true,
        }
    }
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`), in bytes.
/// `None` when `/proc` is unavailable (not Linux) or the field is missing.
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// Resident set size of this process now, in bytes.
pub fn rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS")
}

/// Peak resident set size of this process so far, in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM")
}
