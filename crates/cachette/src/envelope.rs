//! The stored entry format: a small versioned binary envelope around the
//! serialized value.
//!
//! Raw serialized values cannot tell a cached `""` from a missing key, carry
//! no times for stale-while-revalidate, and give no way to recognise another
//! application's value under the same key. So every value is wrapped:
//!
//! ```text
//! offset  size  field
//!      0     2  magic 0xCA 0xC7
//!      2     1  format version (1)
//!      3     1  flags: bit 0 NEGATIVE (a cached "not found", empty payload);
//!               bit 1 COMPRESSED (payload is LZ4, see below); other bits
//!               must be 0
//!      4     8  created_at   unix ms, u64 little endian
//!     12     8  fresh_until  unix ms: served as fresh until then
//!     20     8  stale_until  unix ms: kept as a stale fallback until then
//!                            (stale-while-revalidate, fail-safe)
//!     28     2  extensions length E, u16 LE
//!     30     E  extensions: records of [type u8][len u16 LE][len bytes]
//!   30+E     4  payload length P, u32 LE
//!   34+E     P  payload: the value as written by the codec (JSON by default)
//! ```
//!
//! With COMPRESSED set, the payload is the uncompressed payload length U
//! (u32 LE) and then one LZ4 block that decompresses to exactly U bytes.
//! A reader refuses a U over its `max_value_bytes` before allocating. The
//! flag is set only on payloads over the writer's threshold that shrank by
//! an eighth or more; see `compress.rs`.
//!
//! Extensions are the room later capabilities need. Defined so far:
//!
//! ```text
//! type  len  field
//! 0x01    4  load_us: the load that produced the value took this many
//!            microseconds (u32 LE), for early refresh; absent when unknown
//! 0x02    8  as_of_us: unix µs (u64 LE) the value reflects the source as of:
//!            a load's start, a write's time. Tag and namespace
//!            invalidations at or after it void the entry. Absent in older
//!            entries: created_at stands in.
//! 0x82    n  tags (critical): count u8, then per tag its length u8 and its
//!            UTF-8 bytes. A reader that ignored it would serve entries
//!            whose tag was invalidated.
//! ```
//!
//! A type
//! with the high bit set is *critical*: a reader that does not know it must
//! treat the entry as unreadable, because ignoring it could serve a value
//! that should not be served (say, one whose tag was invalidated). Unknown
//! non-critical types are skipped.
//!
//! Bytes that do not parse (another application's value, a truncated write,
//! a future format version, unknown flags) decode to an [`InvalidEntry`],
//! which the cache counts and treats as a miss: never a panic, never an
//! error to the caller.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// First two bytes of every entry. Not valid UTF-8, so no text value starts so.
pub const MAGIC: [u8; 2] = [0xCA, 0xC7];
/// The format version written by this build.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes this build writes around an empty payload: the fixed header, the
/// payload length and the `as_of_us` extension (no tags, no load time).
pub const HEADER_BYTES: usize = 45;

/// Entry flags.
pub(crate) mod flags {
    /// A cached "not found": the payload is empty.
    pub(crate) const NEGATIVE: u8 = 0b0000_0001;
    /// The payload is compressed (length-prefixed LZ4 block).
    pub(crate) const COMPRESSED: u8 = 0b0000_0010;
    /// Flags this build understands.
    pub(crate) const KNOWN: u8 = NEGATIVE | COMPRESSED;
}

/// Extension types with the high bit set must be understood to read the entry.
const CRITICAL: u8 = 0x80;
/// Extension: the duration of the load that produced the value.
const EXT_LOAD_US: u8 = 0x01;
/// Extension: the time the value reflects the source as of.
const EXT_AS_OF_US: u8 = 0x02;
/// Extension: the entry's tags.
const EXT_TAGS: u8 = 0x82;

/// Tags one entry may carry at most.
pub const MAX_TAGS: usize = 32;
/// The longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 128;

/// The leading bytes that tell one written entry from another (magic,
/// version, flags, created_at, fresh_until): what a lease claim compares to
/// know whether the entry changed since it was read.
pub(crate) const IDENTITY_BYTES: usize = 20;

/// Why stored bytes could not be read as an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEntry {
    /// Not a cachette entry (no magic bytes): another application's value.
    #[error("not a cachette entry")]
    Foreign,
    /// Shorter than its own header or length fields say.
    #[error("truncated entry")]
    Truncated,
    /// Bytes after the payload.
    #[error("trailing bytes after the payload")]
    Trailing,
    /// Written by a newer (or unknown) format version.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// Flags this build does not know.
    #[error("unknown flags {0:#010b}")]
    UnknownFlags(u8),
    /// A critical extension this build does not know.
    #[error("unknown critical extension {0:#04x}")]
    UnknownCriticalExtension(u8),
    /// The payload did not deserialize into the cache's value type.
    #[error("payload does not decode as the value type")]
    Undecodable,
    /// A compressed payload that is malformed or does not decompress to
    /// its declared length.
    #[error("corrupt compressed payload")]
    CorruptCompression,
    /// A compressed payload declaring an uncompressed length over the
    /// reader's `max_value_bytes`; refused before decompressing.
    #[error("compressed payload declares {declared} bytes, over the limit of {max}")]
    TooLargeDecompressed {
        /// The declared uncompressed length.
        declared: usize,
        /// The reader's `max_value_bytes`.
        max: usize,
    },
}

/// The header fields of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) flags: u8,
    pub(crate) created_at_ms: u64,
    pub(crate) fresh_until_ms: u64,
    pub(crate) stale_until_ms: u64,
    /// How long the load that produced the value took (µs); 0 if unknown.
    pub(crate) load_us: u32,
    /// The source as of this time (unix µs); see the extension table.
    pub(crate) as_of_us: u64,
}

impl Meta {
    /// Header for an entry written now that is fresh for `ttl`, with no
    /// stale window.
    #[cfg(test)]
    pub(crate) fn new(flags: u8, ttl: Duration) -> Meta {
        Meta::with_stale(flags, ttl, Duration::ZERO, 0)
    }

    /// Header for an entry written now, fresh for `ttl` and then kept
    /// `stale` longer as a fallback; `load_us` as in [`Meta::load_us`].
    pub(crate) fn with_stale(flags: u8, ttl: Duration, stale: Duration, load_us: u32) -> Meta {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let now_us = now_us();
        let now = now_us / 1000;
        let fresh_until = now.saturating_add(ms(ttl));
        Meta {
            flags,
            created_at_ms: now,
            fresh_until_ms: fresh_until,
            stale_until_ms: fresh_until.saturating_add(ms(stale)),
            load_us,
            as_of_us: now_us,
        }
    }

    /// This header with the source as of `as_of_us` (a load's start)
    /// instead of now.
    pub(crate) fn as_of(mut self, as_of_us: u64) -> Meta {
        self.as_of_us = as_of_us.min(self.as_of_us);
        self
    }

    pub(crate) fn is_negative(&self) -> bool {
        self.flags & flags::NEGATIVE != 0
    }
}

/// A parsed entry borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryRef<'a> {
    pub(crate) meta: Meta,
    /// The tags record's body (count, then the tags), empty without tags.
    pub(crate) tags: &'a [u8],
    pub(crate) payload: &'a [u8],
}

impl EntryRef<'_> {
    /// The entry's tags (already validated by [`decode`]).
    pub(crate) fn tags(&self) -> Option<Tags> {
        let body = self.tags.get(1..)?;
        let mut out = Vec::with_capacity(usize::from(self.tags[0]));
        let mut at = 0;
        while let Some(&len) = body.get(at) {
            let tag = body.get(at + 1..at + 1 + usize::from(len))?;
            out.push(Box::from(std::str::from_utf8(tag).ok()?));
            at += 1 + usize::from(len);
        }
        Some(Tags(out.into()))
    }
}

/// The tags of an entry, shared by its copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tags(pub(crate) std::sync::Arc<[Box<str>]>);

/// Checks tags for an entry: at most [`MAX_TAGS`], each 1 to
/// [`MAX_TAG_BYTES`] bytes. Duplicates are dropped.
pub(crate) fn check_tags<S: AsRef<str>>(tags: &[S]) -> Result<Vec<&str>, &'static str> {
    let mut out: Vec<&str> = Vec::with_capacity(tags.len());
    for tag in tags {
        let tag = tag.as_ref();
        if tag.is_empty() || tag.len() > MAX_TAG_BYTES {
            return Err("a tag must be 1 to 128 bytes");
        }
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    if out.len() > MAX_TAGS {
        return Err("an entry carries at most 32 tags");
    }
    Ok(out)
}

/// Writes an envelope whose payload is produced by `write_payload`.
///
/// The payload is serialized straight into the output buffer, then its
/// length is patched in: one allocation per entry.
/// `tags` must have passed [`check_tags`].
pub(crate) fn encode<E>(
    meta: Meta,
    tags: &[&str],
    write_payload: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<Vec<u8>, E> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(meta.flags);
    out.extend_from_slice(&meta.created_at_ms.to_le_bytes());
    out.extend_from_slice(&meta.fresh_until_ms.to_le_bytes());
    out.extend_from_slice(&meta.stale_until_ms.to_le_bytes());
    let ext_at = out.len();
    out.extend_from_slice(&0u16.to_le_bytes());
    if meta.load_us != 0 {
        out.push(EXT_LOAD_US);
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&meta.load_us.to_le_bytes());
    }
    out.push(EXT_AS_OF_US);
    out.extend_from_slice(&8u16.to_le_bytes());
    out.extend_from_slice(&meta.as_of_us.to_le_bytes());
    if !tags.is_empty() {
        let len: usize = 1 + tags.iter().map(|t| 1 + t.len()).sum::<usize>();
        out.push(EXT_TAGS);
        out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_le_bytes());
        out.push(u8::try_from(tags.len()).unwrap_or(u8::MAX));
        for tag in tags {
            out.push(u8::try_from(tag.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(tag.as_bytes());
        }
    }
    let ext_len = u16::try_from(out.len() - ext_at - 2).unwrap_or(u16::MAX);
    out[ext_at..ext_at + 2].copy_from_slice(&ext_len.to_le_bytes());
    let len_at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    write_payload(&mut out)?;
    let payload_len = out.len() - len_at - 4;
    // A payload over 4 GiB cannot be described; callers cap sizes far below.
    let len = u32::try_from(payload_len).unwrap_or(u32::MAX);
    out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

/// Parses an envelope. Never panics, whatever the bytes.
pub(crate) fn decode(bytes: &[u8]) -> Result<EntryRef<'_>, InvalidEntry> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(2).map_err(|_| InvalidEntry::Foreign)? != MAGIC {
        return Err(InvalidEntry::Foreign);
    }
    let version = r.u8()?;
    if version != FORMAT_VERSION {
        return Err(InvalidEntry::UnsupportedVersion(version));
    }
    let flags = r.u8()?;
    if flags & !flags::KNOWN != 0 {
        return Err(InvalidEntry::UnknownFlags(flags));
    }
    let mut meta = Meta {
        flags,
        created_at_ms: r.u64()?,
        fresh_until_ms: r.u64()?,
        stale_until_ms: r.u64()?,
        load_us: 0,
        as_of_us: 0,
    };
    let mut tags: &[u8] = &[];
    let ext_len = usize::from(r.u16()?);
    let mut ext = Reader {
        bytes: r.take(ext_len)?,
        at: 0,
    };
    while ext.at < ext.bytes.len() {
        let kind = ext.u8()?;
        let len = usize::from(ext.u16()?);
        let body = ext.take(len)?;
        if kind == EXT_LOAD_US {
            let bytes: [u8; 4] = body.try_into().map_err(|_| InvalidEntry::Truncated)?;
            meta.load_us = u32::from_le_bytes(bytes);
        } else if kind == EXT_AS_OF_US {
            let bytes: [u8; 8] = body.try_into().map_err(|_| InvalidEntry::Truncated)?;
            meta.as_of_us = u64::from_le_bytes(bytes);
        } else if kind == EXT_TAGS {
            check_tags_record(body)?;
            tags = body;
        } else if kind & CRITICAL != 0 {
            return Err(InvalidEntry::UnknownCriticalExtension(kind));
        }
    }
    let payload_len = usize::try_from(r.u32()?).map_err(|_| InvalidEntry::Truncated)?;
    let payload = r.take(payload_len)?;
    if r.at != bytes.len() {
        return Err(InvalidEntry::Trailing);
    }
    if meta.as_of_us == 0 {
        meta.as_of_us = meta.created_at_ms.saturating_mul(1000);
    }
    Ok(EntryRef {
        meta,
        tags,
        payload,
    })
}

/// A tags record must hold exactly its count of non-empty UTF-8 tags.
fn check_tags_record(body: &[u8]) -> Result<(), InvalidEntry> {
    let mut r = Reader { bytes: body, at: 0 };
    let count = r.u8()?;
    for _ in 0..count {
        let len = usize::from(r.u8()?);
        let tag = r.take(len)?;
        if len == 0 || std::str::from_utf8(tag).is_err() {
            return Err(InvalidEntry::Truncated);
        }
    }
    if r.at != body.len() {
        return Err(InvalidEntry::Trailing);
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], InvalidEntry> {
        let end = self.at.checked_add(n).ok_or(InvalidEntry::Truncated)?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or(InvalidEntry::Truncated)?;
        self.at = end;
        Ok(slice)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], InvalidEntry> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, InvalidEntry> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, InvalidEntry> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, InvalidEntry> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, InvalidEntry> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

/// A copy of the entry `bytes` with its freshness moved to `fresh_until_ms`
/// (the fail-safe re-serves a stale value as fresh for a throttle period);
/// `None` if the bytes are not an entry. Its load duration is cleared, so
/// early refresh leaves the copy alone: the throttle period, not a draw,
/// decides when the source is tried again.
pub(crate) fn refreshed_until(bytes: &[u8], fresh_until_ms: u64) -> Option<Vec<u8>> {
    decode(bytes).ok()?;
    let mut out = bytes.to_vec();
    out.get_mut(12..20)?
        .copy_from_slice(&fresh_until_ms.to_le_bytes());
    // Walk the extension records (already validated by `decode`).
    let ext_len = usize::from(u16::from_le_bytes(out.get(28..30)?.try_into().ok()?));
    let mut at = 30;
    while at + 3 <= 30 + ext_len {
        let kind = *out.get(at)?;
        let len = usize::from(u16::from_le_bytes(
            out.get(at + 1..at + 3)?.try_into().ok()?,
        ));
        if kind == EXT_LOAD_US {
            out.get_mut(at + 3..at + 3 + len)?.fill(0);
        }
        at += 3 + len;
    }
    Some(out)
}

/// The current time in Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// The current time in Unix microseconds.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(flags: u8, payload: &[u8]) -> Vec<u8> {
        let meta = Meta::new(flags, Duration::from_secs(60));
        encode::<()>(meta, &[], |out| {
            out.extend_from_slice(payload);
            Ok(())
        })
        .unwrap_or_default()
    }

    #[test]
    fn round_trips_header_and_payload() {
        let bytes = sample(0, b"\"\"");
        assert_eq!(bytes.len(), HEADER_BYTES + 2);
        let entry = decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(entry.payload, b"\"\"");
        assert!(!entry.meta.is_negative());
        assert_eq!(entry.meta.fresh_until_ms - entry.meta.created_at_ms, 60_000);
        let neg = sample(flags::NEGATIVE, b"");
        assert!(decode(&neg).map(|e| e.meta.is_negative()).unwrap_or(false));
    }

    #[test]
    fn load_duration_and_stale_window_round_trip() {
        let meta = Meta::with_stale(0, Duration::from_secs(1), Duration::from_secs(9), 1234);
        let bytes = encode::<()>(meta, &[], |out| {
            out.push(b'1');
            Ok(())
        })
        .unwrap_or_default();
        let entry = decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(entry.meta, meta);
        assert_eq!(entry.meta.stale_until_ms - entry.meta.fresh_until_ms, 9_000);
        let moved = refreshed_until(&bytes, 42).unwrap_or_default();
        let entry = decode(&moved).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(entry.meta.fresh_until_ms, 42);
        assert_eq!(
            entry.meta.load_us, 0,
            "no early refresh of a fail-safe copy"
        );
        assert_eq!(entry.payload, b"1");
        assert!(refreshed_until(b"not an entry", 1).is_none());
    }

    #[test]
    fn every_truncation_is_invalid_not_a_panic() {
        let bytes = sample(0, b"{\"a\":1}");
        for cut in 0..bytes.len() {
            assert!(
                decode(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes parsed"
            );
        }
    }

    #[test]
    fn foreign_future_and_unknown_are_rejected() {
        assert_eq!(decode(b"{\"json\":true}"), Err(InvalidEntry::Foreign));
        assert_eq!(decode(b""), Err(InvalidEntry::Foreign));
        let mut future = sample(0, b"1");
        future[2] = 2;
        assert_eq!(decode(&future), Err(InvalidEntry::UnsupportedVersion(2)));
        let mut flagged = sample(0, b"1");
        flagged[3] = 0b0000_0100;
        assert_eq!(decode(&flagged), Err(InvalidEntry::UnknownFlags(0b100)));
        let mut trailing = sample(0, b"1");
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(InvalidEntry::Trailing));
    }

    #[test]
    fn unknown_extensions_are_skipped_unless_critical() {
        let with_ext = |kind: u8| {
            let mut b = sample(0, b"7");
            // Splice one 2-byte extension record in at offset 30.
            let len = u16::from_le_bytes([b[28], b[29]]) + 5;
            b[28..30].copy_from_slice(&len.to_le_bytes());
            let rec = [kind, 2, 0, 0xAA, 0xBB];
            b.splice(30..30, rec);
            b
        };
        assert_eq!(decode(&with_ext(0x03)).map(|e| e.payload), Ok(&b"7"[..]));
        assert_eq!(
            decode(&with_ext(0x81)),
            Err(InvalidEntry::UnknownCriticalExtension(0x81))
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every byte value at every offset of a
        // valid entry, plus pseudo-random buffers.
        let base = sample(0, b"[1,2,3]");
        for i in 0..base.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut b = base.clone();
                b[i] = v;
                let _ = decode(&b);
            }
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..200 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode(&buf);
        }
    }
}
