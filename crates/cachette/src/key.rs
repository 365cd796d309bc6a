//! The key layout in the store.
//!
//! ```text
//! [prefix:]namespace:v<schema>:{key}
//! [prefix:]namespace:v<schema>:{#<sha256 of key, hex>}     key too long, or starting with '#'
//! ```
//!
//! * The schema-version segment (`user:v2:`) lets a deploy that changes the
//!   value's shape start on fresh keys instead of reading old ones.
//! * The user key sits in a Redis Cluster hash tag (`{…}`), so every key that
//!   belongs to one entry (later: its lease, its version) lands in one slot
//!   and one script can touch them all.
//! * Keys longer than the limit are replaced by their SHA-256: Redis keeps
//!   every key byte in memory and ships it on every call. A key that starts
//!   with `#` is hashed too, so a raw key can never equal a hashed one.
//!
//! Namespaces and prefixes are restricted to `A-Z a-z 0-9 _ - .` so they can
//! never open a hash tag or forge a segment.

use sha2::{Digest, Sha256};

use crate::{BuildError, Error};

/// The longest user key kept as is, by default.
pub const DEFAULT_MAX_KEY_BYTES: usize = 200;

/// Maps user keys to store keys for one namespace.
#[derive(Debug, Clone)]
pub(crate) struct KeySpace {
    /// `[prefix:]namespace:v<schema>:` — fixed at build time.
    head: String,
    max_key_bytes: usize,
}

impl KeySpace {
    pub(crate) fn new(
        prefix: Option<&str>,
        namespace: &str,
        schema_version: u32,
        max_key_bytes: usize,
    ) -> Result<KeySpace, BuildError> {
        check_name("namespace", namespace)?;
        let mut head = String::new();
        if let Some(prefix) = prefix {
            check_name("prefix", prefix)?;
            head.push_str(prefix);
            head.push(':');
        }
        head.push_str(namespace);
        head.push_str(&format!(":v{schema_version}:"));
        Ok(KeySpace {
            head,
            max_key_bytes,
        })
    }

    /// The store key for a user key.
    pub(crate) fn store_key(&self, key: &str) -> Result<String, Error> {
        let mut out = String::with_capacity(self.head.len() + key.len().min(66) + 2);
        self.write_store_key(key, &mut out)?;
        Ok(out)
    }

    /// [`KeySpace::store_key`] into a caller's buffer (appended), so a hot
    /// path can reuse one allocation.
    pub(crate) fn write_store_key(&self, key: &str, out: &mut String) -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::InvalidKey {
                reason: "a key must not be empty",
            });
        }
        out.push_str(&self.head);
        out.push('{');
        if key.len() > self.max_key_bytes || key.starts_with('#') {
            out.push('#');
            for byte in Sha256::digest(key.as_bytes()) {
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0xf)]));
            }
        } else {
            out.push_str(key);
        }
        out.push('}');
        Ok(())
    }

    /// The part every key of this namespace starts with.
    pub(crate) fn head(&self) -> &str {
        &self.head
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub(crate) fn check_name(what: &'static str, value: &str) -> Result<(), BuildError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(BuildError::InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> KeySpace {
        KeySpace::new(Some("shop"), "user", 2, 16).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn short_keys_are_kept_inside_a_hash_tag() {
        assert_eq!(
            space().store_key("42").ok(),
            Some("shop:user:v2:{42}".into())
        );
    }

    #[test]
    fn long_keys_and_hash_lookalikes_are_hashed_apart() {
        let s = space();
        let long = "x".repeat(17);
        let hashed = s.store_key(&long).unwrap_or_default();
        assert!(hashed.starts_with("shop:user:v2:{#"));
        assert_eq!(hashed.len(), "shop:user:v2:{#}".len() + 64);
        // A raw key that looks like a hashed one is hashed as well, so it
        // cannot collide with the hashed form of another key.
        let forged = &hashed["shop:user:v2:{".len()..hashed.len() - 1];
        assert_ne!(s.store_key(forged).unwrap_or_default(), hashed);
        assert_eq!(s.store_key(&long).unwrap_or_default(), hashed);
    }

    #[test]
    fn empty_keys_and_bad_names_are_refused() {
        assert!(space().store_key("").is_err());
        assert!(KeySpace::new(None, "us{er", 1, 16).is_err());
        assert!(KeySpace::new(Some("a:b"), "user", 1, 16).is_err());
        assert!(KeySpace::new(None, "", 1, 16).is_err());
    }
}
