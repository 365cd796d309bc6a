//! The deterministic seed data: the same `--products N` gives the same rows
//! on every machine and either database, so figures are comparable.

/// 2026-01-01T00:00:00Z in microseconds since the Unix epoch.
const BASE_MICROS: i64 = 1_767_225_600_000_000;
/// Seeded `updated_at` values spread over 300 days after the base.
const SPREAD_MICROS: u64 = 300 * 24 * 3_600 * 1_000_000;

const ADJECTIVES: [&str; 16] = [
    "Sturdy", "Compact", "Classic", "Bright", "Quiet", "Rapid", "Gentle", "Solid", "Light",
    "Smart", "Rugged", "Sleek", "Warm", "Fresh", "Handy", "Prime",
];
const NOUNS: [&str; 16] = [
    "Kettle",
    "Lamp",
    "Backpack",
    "Chair",
    "Headphones",
    "Notebook",
    "Blender",
    "Jacket",
    "Monitor",
    "Bottle",
    "Speaker",
    "Desk",
    "Camera",
    "Toaster",
    "Keyboard",
    "Umbrella",
];

/// One seeded row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeedProduct {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) category_id: i64,
    pub(crate) price_cents: i64,
    pub(crate) description: String,
    pub(crate) updated_at_us: i64,
}

/// Product `id` (from 1) of a catalog with `categories` categories.
pub(crate) fn product(id: i64, categories: i64) -> SeedProduct {
    let h = splitmix64(id as u64);
    let adjective = ADJECTIVES[(h % 16) as usize];
    let noun = NOUNS[((h >> 8) % 16) as usize];
    let category_id = (id - 1).rem_euclid(categories) + 1;
    SeedProduct {
        id,
        name: format!("{adjective} {noun} {id}"),
        category_id,
        price_cents: 199 + ((h >> 16) % 99_800) as i64,
        description: format!(
            "A {} {} built for everyday use. Catalog item {id} in category {category_id}.",
            adjective.to_lowercase(),
            noun.to_lowercase()
        ),
        updated_at_us: BASE_MICROS + ((h >> 24) % SPREAD_MICROS) as i64,
    }
}

/// SplitMix64: a tiny, well-mixed, stable hash of the id.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_is_deterministic_and_spread_over_categories() {
        assert_eq!(product(7, 100), product(7, 100));
        assert_eq!(product(1, 100).category_id, 1);
        assert_eq!(product(100, 100).category_id, 100);
        assert_eq!(product(101, 100).category_id, 1);
        assert_ne!(product(1, 100).name, product(2, 100).name);
    }
}
