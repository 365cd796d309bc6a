//! Compression of large payloads: LZ4, flagged in the envelope.
//!
//! Serialized JSON is repetitive (the same field names in every record of a
//! list), so a large value shrinks by half or more (51–65% from 4 KiB up
//! in the benchmark's product pages). That saves store
//! memory and bytes on the wire, at a CPU cost on every write and read. The
//! cost is fixed-heavy (LZ4's hash table is set up per call) and the saving
//! of a small value is a handful of bytes, so only payloads over a threshold
//! are compressed ([`DEFAULT_COMPRESS_ABOVE`]; `benches/benches/compression.rs`
//! measured where it starts to pay).
//!
//! # Format
//!
//! A compressed entry has the `COMPRESSED` flag set and its payload is the
//! uncompressed payload length (u32 LE) followed by one LZ4 block. The
//! header and extensions stay plain, so stores, sweeps and lease claims read
//! them as before. A reader decompresses whenever the flag is set, whatever
//! its own setting, so instances with compression on and off (a rollout)
//! read each other's entries. A build older than this one reads a
//! compressed entry as an unknown flag: a counted miss, never a wrong value.
//!
//! # Bounds
//!
//! The declared length is checked against the reader's
//! [`max_value_bytes`](crate::CacheBuilder::max_value_bytes) before
//! anything is allocated, and the block must decompress to exactly that
//! length. A corrupt or hostile entry is an [`InvalidEntry`] (a counted
//! miss): never a panic, never an allocation beyond the limit.
//!
//! # Rejected
//!
//! * zstd: better ratios on JSON, but several times slower to decompress
//!   (per the published benchmarks of both; not measured here), and a
//!   cache reads an entry far more often than it writes it; and the
//!   `zstd` crate binds the C library (a C toolchain at build time, `unsafe`
//!   underneath). `lz4_flex` is pure Rust, built here with its safe-only
//!   encoder and decoder (the workspace forbids `unsafe`).
//! * The LZ4 frame format: its checksums and block framing cost bytes and
//!   time for values that are already length-prefixed and size-limited.
//! * Compressing whatever the outcome: payloads that do not shrink by at
//!   least an eighth are stored plain, so random or already-compressed data
//!   costs one wasted compression on write and nothing on read.

use std::borrow::Cow;

use crate::envelope::{EntryRef, InvalidEntry, flags};

/// Payloads (serialized values, without the envelope) larger than this are
/// compressed, by default: 1 KiB. See `benches/benches/compression.rs` and
/// the README for the measurements behind it.
pub const DEFAULT_COMPRESS_ABOVE: usize = 1024;

/// A compressed payload is kept only if it saves at least this fraction
/// (1/8) of the raw payload: saving less is not worth a decompression on
/// every read.
const MIN_SAVING_DIVISOR: usize = 8;

/// The length prefix of a compressed payload.
const LEN_BYTES: usize = 4;

/// A cache's compression setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Compression {
    /// Payloads longer than this are compressed; `None`: never.
    pub(crate) above: Option<usize>,
}

/// What [`Compression::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Stored plain: under the threshold, or not worth it.
    Plain,
    /// Compressed, saving this many bytes.
    Compressed { saved: usize },
}

impl Compression {
    /// Compresses the payload of `entry` (just written by
    /// [`envelope::encode`](crate::envelope::encode), flag off) when it is
    /// over the threshold and shrinks by at least an eighth; otherwise
    /// returns `entry` unchanged.
    pub(crate) fn apply(self, entry: Vec<u8>) -> (Vec<u8>, Outcome) {
        let Some(above) = self.above else {
            return (entry, Outcome::Plain);
        };
        let Ok(parsed) = crate::envelope::decode(&entry) else {
            return (entry, Outcome::Plain);
        };
        let raw_len = parsed.payload.len();
        if raw_len <= above || parsed.meta.flags & flags::COMPRESSED != 0 {
            return (entry, Outcome::Plain);
        }
        let Ok(declared) = u32::try_from(raw_len) else {
            return (entry, Outcome::Plain);
        };
        // The payload is the last `raw_len` bytes; its length field the 4
        // before.
        let payload_at = entry.len() - raw_len;
        let mut out = Vec::with_capacity(
            payload_at + LEN_BYTES + lz4_flex::block::get_maximum_output_size(raw_len),
        );
        out.extend_from_slice(&entry[..payload_at]);
        out.extend_from_slice(&declared.to_le_bytes());
        let block_at = out.len();
        out.resize(
            block_at + lz4_flex::block::get_maximum_output_size(raw_len),
            0,
        );
        let Ok(block_len) =
            lz4_flex::block::compress_into(&entry[payload_at..], &mut out[block_at..])
        else {
            return (entry, Outcome::Plain);
        };
        out.truncate(block_at + block_len);
        let stored_len = LEN_BYTES + block_len;
        if stored_len > raw_len - raw_len / MIN_SAVING_DIVISOR {
            return (entry, Outcome::Plain);
        }
        let Ok(stored_len_field) = u32::try_from(stored_len) else {
            return (entry, Outcome::Plain);
        };
        out[payload_at - 4..payload_at].copy_from_slice(&stored_len_field.to_le_bytes());
        out[3] |= flags::COMPRESSED;
        let saved = entry.len() - out.len();
        (out, Outcome::Compressed { saved })
    }
}

/// The payload of `entry` as the codec wrote it: borrowed when stored
/// plain, decompressed when flagged. `max` bounds the declared length.
///
/// # Errors
/// [`InvalidEntry::TooLargeDecompressed`] when the declared length is over
/// `max`; [`InvalidEntry::CorruptCompression`] when the block is malformed
/// or does not decompress to exactly the declared length.
pub(crate) fn payload<'a>(entry: &EntryRef<'a>, max: usize) -> Result<Cow<'a, [u8]>, InvalidEntry> {
    if entry.meta.flags & flags::COMPRESSED == 0 {
        return Ok(Cow::Borrowed(entry.payload));
    }
    let (declared, block) = declared_len(entry.payload)?;
    if declared > max {
        return Err(InvalidEntry::TooLargeDecompressed { declared, max });
    }
    let mut out = vec![0u8; declared];
    match lz4_flex::block::decompress_into(block, &mut out) {
        Ok(n) if n == declared => Ok(Cow::Owned(out)),
        _ => Err(InvalidEntry::CorruptCompression),
    }
}

/// The entry's length with its payload uncompressed: what the size limit
/// and L1's weights count. `stored_len` is the length of the stored bytes
/// `entry` was parsed from.
pub(crate) fn raw_entry_len(entry: &EntryRef<'_>, stored_len: usize) -> usize {
    if entry.meta.flags & flags::COMPRESSED == 0 {
        return stored_len;
    }
    match declared_len(entry.payload) {
        Ok((declared, _)) => (stored_len - entry.payload.len()).saturating_add(declared),
        Err(_) => stored_len,
    }
}

/// Splits a compressed payload into its declared length and its block.
fn declared_len(payload: &[u8]) -> Result<(usize, &[u8]), InvalidEntry> {
    let (len, block) = payload
        .split_first_chunk::<LEN_BYTES>()
        .ok_or(InvalidEntry::CorruptCompression)?;
    let declared =
        usize::try_from(u32::from_le_bytes(*len)).map_err(|_| InvalidEntry::CorruptCompression)?;
    Ok((declared, block))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::envelope::{self, Meta};

    const ON: Compression = Compression { above: Some(256) };
    const MAX: usize = 1024 * 1024;

    fn entry(payload: &[u8]) -> Vec<u8> {
        let meta = Meta::new(0, Duration::from_secs(60));
        envelope::encode::<()>(meta, &["t"], |out| {
            out.extend_from_slice(payload);
            Ok(())
        })
        .unwrap_or_default()
    }

    /// Repetitive JSON, like a list of records.
    fn json(records: usize) -> Vec<u8> {
        let mut s = String::from("[");
        for i in 0..records {
            s.push_str(&format!(
                r#"{{"id":{i},"sku":"SKU-{i:06}","name":"Desk lamp {}","price_cents":{},"in_stock":true}},"#,
                i % 7,
                1000 + i * 37 % 500
            ));
        }
        s.push(']');
        s.into_bytes()
    }

    /// Deterministic noise: does not compress.
    fn noise(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn read(bytes: &[u8]) -> Result<Vec<u8>, InvalidEntry> {
        let e = envelope::decode(bytes)?;
        payload(&e, MAX).map(Cow::into_owned)
    }

    #[test]
    fn a_large_payload_round_trips_compressed() {
        let raw = json(100);
        let plain = entry(&raw);
        let (packed, outcome) = ON.apply(plain.clone());
        let Outcome::Compressed { saved } = outcome else {
            panic!("not compressed: {outcome:?}");
        };
        assert_eq!(saved, plain.len() - packed.len());
        assert!(
            packed.len() < plain.len() / 2,
            "{} of {}",
            packed.len(),
            plain.len()
        );
        let parsed = envelope::decode(&packed).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(parsed.meta.flags & flags::COMPRESSED, 0);
        assert_eq!(raw_entry_len(&parsed, packed.len()), plain.len());
        // Header, extensions and tags are untouched.
        let before = envelope::decode(&plain).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.tags, before.tags);
        assert_eq!(parsed.meta.fresh_until_ms, before.meta.fresh_until_ms);
        assert_eq!(read(&packed), Ok(raw));
    }

    #[test]
    fn small_or_incompressible_payloads_stay_plain() {
        let small = entry(&json(2));
        assert!(small.len() - envelope::HEADER_BYTES - 4 <= 256);
        assert_eq!(ON.apply(small.clone()), (small, Outcome::Plain));
        let random = entry(&noise(8 * 1024));
        assert_eq!(ON.apply(random.clone()), (random.clone(), Outcome::Plain));
        let off = Compression { above: None };
        let big = entry(&json(100));
        assert_eq!(off.apply(big.clone()), (big.clone(), Outcome::Plain));
        // A plain entry reads as is.
        let e = envelope::decode(&random).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(payload(&e, MAX), Ok(Cow::Borrowed(_))));
        assert_eq!(raw_entry_len(&e, random.len()), random.len());
    }

    #[test]
    fn a_payload_that_saves_under_an_eighth_stays_plain() {
        // Half noise, half zeros: about 50% smaller, kept. Mostly noise
        // with a short compressible tail: under 1/8 smaller, not kept.
        let mut half = noise(4096);
        half.extend(std::iter::repeat_n(0u8, 4096));
        assert!(matches!(
            ON.apply(entry(&half)).1,
            Outcome::Compressed { .. }
        ));
        let mut mostly = noise(8192);
        mostly.extend(std::iter::repeat_n(0u8, 512));
        assert_eq!(ON.apply(entry(&mostly)).1, Outcome::Plain);
    }

    /// Rewrites the compressed payload of `bytes` (declared length, block).
    fn with_payload(bytes: &[u8], declared: u32, block: &[u8]) -> Vec<u8> {
        let e = envelope::decode(bytes).unwrap_or_else(|e| panic!("{e}"));
        let at = bytes.len() - e.payload.len();
        let mut out = bytes[..at - 4].to_vec();
        out.extend_from_slice(&u32::try_from(4 + block.len()).unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&declared.to_le_bytes());
        out.extend_from_slice(block);
        out
    }

    #[test]
    fn corrupt_and_truncated_blocks_are_errors_not_panics() {
        let raw = json(50);
        let (packed, _) = ON.apply(entry(&raw));
        let e = envelope::decode(&packed).unwrap_or_else(|e| panic!("{e}"));
        let (declared, block) = declared_len(e.payload).unwrap_or((0, &[]));
        let declared = u32::try_from(declared).unwrap_or(0);
        // Every truncation of the block.
        for cut in 0..block.len() {
            let b = with_payload(&packed, declared, &block[..cut]);
            assert_eq!(read(&b), Err(InvalidEntry::CorruptCompression), "cut {cut}");
        }
        // A declared length off by one either way.
        for d in [declared - 1, declared + 1, 0] {
            let b = with_payload(&packed, d, block);
            assert_eq!(
                read(&b),
                Err(InvalidEntry::CorruptCompression),
                "declared {d}"
            );
        }
        // A payload too short to hold the length.
        let mut short = with_payload(&packed, 0, &[]);
        let n = short.len();
        short.truncate(n - 4);
        let len_at = short.len() - 4;
        short[len_at..].copy_from_slice(&2u32.to_le_bytes());
        short.extend_from_slice(&[1, 2]);
        assert_eq!(read(&short), Err(InvalidEntry::CorruptCompression));
        // Every byte value at every block offset: decodes or errs, no panic.
        for i in 0..block.len() {
            for v in [0u8, 0x0f, 0xf0, 0xff] {
                let mut bad = block.to_vec();
                bad[i] = v;
                if let Ok(out) = read(&with_payload(&packed, declared, &bad)) {
                    assert_eq!(out.len(), raw.len());
                }
            }
        }
    }

    #[test]
    fn a_declared_size_bomb_is_refused_before_allocating() {
        let (packed, _) = ON.apply(entry(&json(50)));
        let bomb = with_payload(&packed, u32::MAX, &[0x1f, 0, 1, 0, 0]);
        assert_eq!(
            read(&bomb),
            Err(InvalidEntry::TooLargeDecompressed {
                declared: u32::MAX as usize,
                max: MAX
            })
        );
        // A small block that legitimately expands far: refused by the
        // reader's limit, not by luck.
        let zeros = vec![0u8; 64 * 1024];
        let (packed, _) = ON.apply(entry(&zeros));
        let e = envelope::decode(&packed).unwrap_or_else(|e| panic!("{e}"));
        assert!(e.payload.len() < 1024);
        assert!(matches!(
            payload(&e, 60 * 1024),
            Err(InvalidEntry::TooLargeDecompressed {
                declared: 65536,
                ..
            })
        ));
        assert_eq!(payload(&e, 64 * 1024).map(|p| p.len()), Ok(64 * 1024));
    }
}
