//! What each simulated user asks for: product ids drawn from a Zipf
//! distribution (rank = id, so id 1 is the most popular), a share of
//! updates and a share of category listings.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// The mix of a load.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Products to draw ids from (1..=products).
    pub products: i64,
    pub categories: i64,
    /// Zipf exponent (0.99 is typical of web caches).
    pub zipf: f64,
    /// Share of requests that are `PUT /products/{id}`.
    pub write_ratio: f64,
    /// Share of requests that are category listings.
    pub list_ratio: f64,
    /// Every request is `GET /products/{hot}` (the hot-key benchmark).
    pub hot: Option<i64>,
}

/// One request to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Get(String),
    Put(String, Bytes),
    List(String),
}

/// A seeded generator of [`Op`]s.
#[derive(Debug)]
pub struct Workload {
    mix: Mix,
    zipf: Option<Zipf<f64>>,
    rng: StdRng,
}

impl Workload {
    pub fn new(mix: Mix, seed: u64) -> Result<Workload, String> {
        if !(0.0..=1.0).contains(&mix.write_ratio)
            || !(0.0..=1.0).contains(&mix.list_ratio)
            || mix.write_ratio + mix.list_ratio > 1.0
        {
            return Err("write and list ratios must be in 0..=1 and add up to at most 1".into());
        }
        let zipf = if mix.hot.is_some() {
            None
        } else {
            Some(
                Zipf::new(mix.products.max(1) as f64, mix.zipf)
                    .map_err(|e| format!("Zipf({}, {}): {e}", mix.products, mix.zipf))?,
            )
        };
        Ok(Workload {
            mix,
            zipf,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// The next product id alone (the outage report asks for products
    /// only, and needs the id of each request).
    pub fn next_product_id(&mut self) -> i64 {
        self.product_id()
    }

    fn product_id(&mut self) -> i64 {
        match (&self.zipf, self.mix.hot) {
            (_, Some(hot)) => hot,
            (Some(zipf), None) => (zipf.sample(&mut self.rng) as i64).clamp(1, self.mix.products),
            (None, None) => 1,
        }
    }

    pub fn next_op(&mut self) -> Op {
        let id = self.product_id();
        if self.mix.hot.is_some() {
            return Op::Get(format!("/products/{id}"));
        }
        let r: f64 = self.rng.random();
        if r < self.mix.write_ratio {
            let price: i64 = self.rng.random_range(100..100_000);
            Op::Put(
                format!("/products/{id}"),
                Bytes::from(format!("{{\"price_cents\":{price}}}")),
            )
        } else if r < self.mix.write_ratio + self.mix.list_ratio {
            // The popular product's category, first pages most often.
            let category = (id - 1).rem_euclid(self.mix.categories.max(1)) + 1;
            let page = 1 + (self.rng.random::<f64>().powi(3) * 5.0) as i64;
            Op::List(format!(
                "/categories/{category}/products?page={page}&limit=20"
            ))
        } else {
            Op::Get(format!("/products/{id}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix() -> Mix {
        Mix {
            products: 1_000,
            categories: 10,
            zipf: 0.99,
            write_ratio: 0.1,
            list_ratio: 0.1,
            hot: None,
        }
    }

    #[test]
    fn the_mix_is_respected_and_ids_are_skewed() {
        let Ok(mut w) = Workload::new(mix(), 7) else {
            panic!("valid mix")
        };
        let (mut gets, mut puts, mut lists, mut id1) = (0, 0, 0, 0);
        for _ in 0..20_000 {
            match w.next_op() {
                Op::Get(p) => {
                    gets += 1;
                    id1 += usize::from(p == "/products/1");
                }
                Op::Put(..) => puts += 1,
                Op::List(..) => lists += 1,
            }
        }
        assert!((1_600..2_400).contains(&puts), "{puts}");
        assert!((1_600..2_400).contains(&lists), "{lists}");
        // Zipf(0.99) over 1,000: id 1 alone is ~13% of draws; uniform would be 0.1%.
        assert!(id1 * 20 > gets, "{id1} of {gets}");
    }

    #[test]
    fn bad_ratios_are_refused() {
        let mut m = mix();
        m.write_ratio = 0.8;
        m.list_ratio = 0.3;
        assert!(Workload::new(m, 1).is_err());
    }
}
