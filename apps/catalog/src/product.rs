//! The catalog's data: a product as the API shows it, and the partial
//! update a `PUT` may carry.

use serde::{Deserialize, Serialize};

/// Longest product name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest description accepted, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 4_000;
/// Highest price accepted, in cents (one billion units of currency).
pub const MAX_PRICE_CENTS: i64 = 100_000_000_000;

/// A product, exactly as `GET /products/{id}` returns it. It is also the
/// cached value, so a cache hit is served without touching the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub category_id: i64,
    pub price_cents: i64,
    pub description: String,
    /// RFC 3339, UTC, microsecond precision.
    pub updated_at: String,
}

/// The body of `PUT /products/{id}`: every field optional, nothing else
/// allowed. A `null` field is the same as an absent one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    pub name: Option<String>,
    pub price_cents: Option<i64>,
    pub description: Option<String>,
}

impl ProductPatch {
    /// Checks the patch before anything is written; the message says what
    /// is wrong in terms the client can act on.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_none() && self.price_cents.is_none() && self.description.is_none() {
            return Err("the body must set at least one of name, price_cents, description".into());
        }
        if let Some(name) = &self.name {
            if name.trim().is_empty() {
                return Err("name must not be empty".into());
            }
            if name.chars().count() > MAX_NAME_CHARS {
                return Err(format!("name must be at most {MAX_NAME_CHARS} characters"));
            }
        }
        if let Some(description) = &self.description
            && description.chars().count() > MAX_DESCRIPTION_CHARS
        {
            return Err(format!(
                "description must be at most {MAX_DESCRIPTION_CHARS} characters"
            ));
        }
        if let Some(price) = self.price_cents
            && !(0..=MAX_PRICE_CENTS).contains(&price)
        {
            return Err(format!(
                "price_cents must be between 0 and {MAX_PRICE_CENTS}, got {price}"
            ));
        }
        Ok(())
    }
}

/// Microseconds since the Unix epoch as RFC 3339 (`2026-01-01T00:00:00.000001Z`).
pub fn format_timestamp(micros: i64) -> String {
    let nanos = i128::from(micros) * 1_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(at) => at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| micros.to_string()),
        // Out of the calendar's range: only a hand-edited row can get here.
        Err(_) => micros.to_string(),
    }
}

/// Now, in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_timestamp(1_767_225_600_000_001),
            "2026-01-01T00:00:00.000001Z"
        );
    }

    #[test]
    fn patches_are_checked() {
        let ok = ProductPatch {
            price_cents: Some(5),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        assert!(ProductPatch::default().validate().is_err());
        for bad in [
            ProductPatch {
                name: Some("  ".into()),
                ..Default::default()
            },
            ProductPatch {
                name: Some("x".repeat(MAX_NAME_CHARS + 1)),
                ..Default::default()
            },
            ProductPatch {
                price_cents: Some(-1),
                ..Default::default()
            },
            ProductPatch {
                price_cents: Some(MAX_PRICE_CENTS + 1),
                ..Default::default()
            },
            ProductPatch {
                description: Some("d".repeat(MAX_DESCRIPTION_CHARS + 1)),
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
