//! Parsing of path and query parameters, with messages that say what was
//! expected and what arrived.

use std::collections::HashMap;

use super::error::ApiError;

/// Highest page number accepted.
pub const MAX_PAGE: i64 = 1_000_000;
/// Largest page size accepted.
pub const MAX_LIMIT: i64 = 100;
pub const DEFAULT_LIMIT: i64 = 20;

/// A path id: any integer (an id that cannot exist is a 404, not a 400).
pub(super) fn id(what: &str, raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().map_err(|_| {
        ApiError::bad_request(format!(
            "{what} id must be an integer, got {:?}",
            shorten(raw)
        ))
    })
}

/// `page` and `limit` from a listing's query string.
pub(super) fn paging(query: &HashMap<String, String>) -> Result<(i64, i64), ApiError> {
    let page = bounded(query, "page", 1, 1, MAX_PAGE)?;
    let limit = bounded(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
    Ok((page, limit))
}

fn bounded(
    query: &HashMap<String, String>,
    name: &str,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, ApiError> {
    let Some(raw) = query.get(name) else {
        return Ok(default);
    };
    match raw.parse::<i64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(ApiError::bad_request(format!(
            "{name} must be an integer from {min} to {max}, got {:?}",
            shorten(raw)
        ))),
    }
}

/// Echoed input is cut, so a 1 MB id does not come back in the error.
fn shorten(raw: &str) -> String {
    const MAX: usize = 64;
    if raw.chars().count() <= MAX {
        raw.to_owned()
    } else {
        let head: String = raw.chars().take(MAX).collect();
        format!("{head}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn paging_defaults_and_bounds() {
        assert_eq!(paging(&q(&[])).ok(), Some((1, 20)));
        assert_eq!(
            paging(&q(&[("page", "3"), ("limit", "100")])).ok(),
            Some((3, 100))
        );
        for bad in [
            ("page", "0"),
            ("page", "-1"),
            ("page", "1000001"),
            ("page", "99999999999999999999999"),
            ("limit", "0"),
            ("limit", "101"),
            ("limit", "ten"),
            ("limit", ""),
        ] {
            let err = paging(&q(&[bad])).err();
            assert!(
                err.is_some_and(|e| e.status == 400 && e.message.contains(bad.0)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ids_must_be_integers() {
        assert_eq!(id("product", "42").ok(), Some(42));
        assert_eq!(id("product", "-3").ok(), Some(-3));
        assert!(id("product", "4x").is_err());
        assert!(id("product", "1.5").is_err());
        assert!(id("product", "99999999999999999999").is_err());
        let long = "x".repeat(10_000);
        assert!(id("product", &long).is_err_and(|e| e.message.len() < 200));
    }
}
