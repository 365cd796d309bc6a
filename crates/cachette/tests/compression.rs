//! Compression of large values: stored smaller and flagged, read back by
//! every reader whatever its own setting, and bounded by the size limits
//! counted on the uncompressed entry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cachette::{Cache, DEFAULT_COMPRESS_ABOVE, Error, Value, envelope};
use cachette_test::{Fixture, for_each_store};
use serde::{Deserialize, Serialize};

/// Bit 1 of the envelope's flags byte (offset 3).
const COMPRESSED: u8 = 0b10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    id: u64,
    sku: String,
    name: String,
    price_cents: u32,
    in_stock: bool,
    tags: Vec<String>,
}

fn records(n: u64) -> Vec<Record> {
    (0..n)
        .map(|id| Record {
            id,
            sku: format!("SKU-{id:08}"),
            name: format!("Brushed steel desk lamp, model {}", id % 13),
            price_cents: 1_999 + (id as u32 * 37) % 5_000,
            in_stock: id % 3 != 0,
            tags: vec!["lighting".into(), format!("series-{}", id % 5)],
        })
        .collect()
}

fn json_len<V: Serialize>(value: &V) -> usize {
    serde_json::to_vec(value).unwrap().len()
}

fn cache<V: Value>(f: &Fixture, compress_above: Option<usize>) -> Cache<V> {
    Cache::builder("catalog")
        .ttl(Duration::from_secs(60))
        .compress_above(compress_above)
        .shared_store(f.store.clone())
        .build()
        .unwrap()
}

/// The stored bytes of `key`, read raw from the store.
async fn stored<V: Value>(f: &Fixture, c: &Cache<V>, key: &str) -> Vec<u8> {
    let skey = c.store_key(key).unwrap();
    f.store.get(&skey).await.unwrap().unwrap().to_vec()
}

for_each_store!(
    a_large_value_is_stored_compressed_and_flagged,
    a_reader_with_compression_off_reads_compressed_entries,
    small_and_incompressible_values_are_stored_plain,
    the_size_limit_counts_the_uncompressed_entry,
    a_reader_refuses_an_entry_that_expands_past_its_limit,
    l1_counts_the_uncompressed_size,
);

async fn a_large_value_is_stored_compressed_and_flagged(f: Fixture) {
    let c: Cache<Vec<Record>> = cache(&f, Some(DEFAULT_COMPRESS_ABOVE));
    let value = records(200);
    let plain = envelope::HEADER_BYTES + json_len(&value);
    c.set("page-1", &value).await.unwrap();

    let bytes = stored(&f, &c, "page-1").await;
    assert_ne!(bytes[3] & COMPRESSED, 0, "the flag is set");
    assert!(
        bytes.len() * 3 < plain,
        "stored {} bytes for a {plain}-byte entry",
        bytes.len()
    );
    assert_eq!(c.get("page-1").await.unwrap(), Some(value));
    let stats = c.stats();
    assert_eq!(stats.compressed_writes, 1);
    assert_eq!(stats.compression_saved_bytes, (plain - bytes.len()) as u64);
    assert_eq!(stats.invalid_entries, 0);
}

async fn a_reader_with_compression_off_reads_compressed_entries(f: Fixture) {
    let on: Cache<Vec<Record>> = cache(&f, Some(DEFAULT_COMPRESS_ABOVE));
    let off: Cache<Vec<Record>> = cache(&f, None);
    let value = records(100);

    on.set("k", &value).await.unwrap();
    assert_ne!(stored(&f, &on, "k").await[3] & COMPRESSED, 0);
    assert_eq!(off.get("k").await.unwrap(), Some(value.clone()));

    // And the other way: a plain entry written with compression off.
    off.set("k", &value).await.unwrap();
    let bytes = stored(&f, &off, "k").await;
    assert_eq!(bytes[3] & COMPRESSED, 0);
    assert_eq!(bytes.len(), envelope::HEADER_BYTES + json_len(&value));
    assert_eq!(on.get("k").await.unwrap(), Some(value));
    assert_eq!(off.stats().compressed_writes, 0);
    assert_eq!(on.stats().invalid_entries + off.stats().invalid_entries, 0);
}

async fn small_and_incompressible_values_are_stored_plain(f: Fixture) {
    // Under the threshold: a compressible value just below it.
    let small: Cache<Vec<Record>> = cache(&f, Some(DEFAULT_COMPRESS_ABOVE));
    let value = records(5);
    assert!(json_len(&value) <= DEFAULT_COMPRESS_ABOVE);
    small.set("small", &value).await.unwrap();
    let bytes = stored(&f, &small, "small").await;
    assert_eq!(bytes[3] & COMPRESSED, 0);
    assert_eq!(small.get("small").await.unwrap(), Some(value));

    // Over it but incompressible: random bytes, base64-like (a token, an
    // encrypted blob).
    let blobs: Cache<String> = cache(&f, Some(DEFAULT_COMPRESS_ABOVE));
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: String = (0..8 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(ALPHABET[(x >> 58) as usize])
        })
        .collect();
    blobs.set("noise", &noise).await.unwrap();
    let bytes = stored(&f, &blobs, "noise").await;
    assert_eq!(bytes[3] & COMPRESSED, 0, "kept plain: saves under 1/8");
    assert_eq!(bytes.len(), envelope::HEADER_BYTES + json_len(&noise));
    assert_eq!(blobs.get("noise").await.unwrap(), Some(noise));
    assert_eq!(blobs.stats().compressed_writes, 0);
    assert_eq!(small.stats().compressed_writes, 0);
}

async fn the_size_limit_counts_the_uncompressed_entry(f: Fixture) {
    let c: Cache<Vec<Record>> = Cache::builder("limited")
        .max_value_bytes(4 * 1024)
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    // About 15 KiB of JSON, a few KiB compressed: still too large.
    let value = records(100);
    let plain = envelope::HEADER_BYTES + json_len(&value);
    match c.set("k", &value).await.unwrap_err() {
        Error::ValueTooLarge { size, max, .. } => {
            assert_eq!(size, plain, "the uncompressed entry is reported");
            assert_eq!(max, 4 * 1024);
        }
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    assert_eq!(c.get("k").await.unwrap(), None);
    assert_eq!(c.stats().compressed_writes, 0, "not compressed in vain");
}

async fn a_reader_refuses_an_entry_that_expands_past_its_limit(f: Fixture) {
    let writer: Cache<Vec<Record>> = cache(&f, Some(DEFAULT_COMPRESS_ABOVE));
    let reader: Cache<Vec<Record>> = Cache::builder("catalog")
        .max_value_bytes(8 * 1024)
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    let value = records(200);
    writer.set("k", &value).await.unwrap();
    assert!(stored(&f, &writer, "k").await.len() < 8 * 1024);
    // The reader's limit, not the stored size, bounds decompression.
    assert_eq!(reader.get("k").await.unwrap(), None);
    assert_eq!(reader.stats().invalid_entries, 1);
    assert_eq!(writer.get("k").await.unwrap(), Some(value));
}

async fn l1_counts_the_uncompressed_size(f: Fixture) {
    let c: Cache<Vec<Record>> = Cache::builder("l1")
        .l1(1024 * 1024)
        .l1_max_entry_bytes(8 * 1024)
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    let big = records(200);
    c.set("big", &big).await.unwrap();
    assert!(stored(&f, &c, "big").await.len() < 8 * 1024);
    assert_eq!(c.get("big").await.unwrap(), Some(big));
    assert_eq!(
        c.l1_peek("big").unwrap(),
        None,
        "over L1's entry limit uncompressed, though not compressed"
    );
    let small = records(20);
    assert!(json_len(&small) > DEFAULT_COMPRESS_ABOVE);
    c.set("small", &small).await.unwrap();
    assert_ne!(stored(&f, &c, "small").await[3] & COMPRESSED, 0);
    assert_eq!(c.get("small").await.unwrap(), Some(small.clone()));
    let held = c.l1_peek("small").unwrap().flatten().unwrap();
    assert_eq!(*held, small);
}
