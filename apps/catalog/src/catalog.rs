//! The catalog itself: products and category listings read through
//! cachette, updates written through it, and the same operations straight
//! from the database when the cache is off (`--no-cache`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cachette::store::Store;
use cachette::{Backplane, Cache, CacheBuilder, Json, Stats};

use crate::db::{Database, DbError};
use crate::product::{Product, ProductPatch, now_micros};
use crate::read_policy::ReadPolicy;

/// How long "no such product" is remembered, so a flood of requests for
/// missing ids does not reach the database.
pub const NOT_FOUND_TTL: Duration = Duration::from_secs(30);
/// How long a listing page is fresh. An update through the service orphans
/// its category's pages at once (a new generation), so this only bounds how
/// long a change made behind the service's back goes unseen. Past it,
/// pages are served stale and kept as a fail-safe fallback like products
/// (see [`ReadPolicy`]): the listing query is the heavier one, and a page
/// an hour old beats an error while the database is down.
pub const LISTING_TTL: Duration = Duration::from_secs(60);
/// How long a category's listing generation is kept. When it is gone a new
/// random one is drawn, which only costs misses.
pub const GENERATION_TTL: Duration = Duration::from_secs(24 * 3_600);

/// A failed catalog operation.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Cache(#[from] cachette::Error),
}

/// The product is not there (a PUT's source write found no row).
#[derive(Debug, thiserror::Error)]
#[error("no such product")]
struct Missing;

/// The caches the catalog reads through.
#[derive(Debug, Clone)]
struct Caches {
    products: Cache<Product>,
    listings: Cache<Vec<Product>>,
    /// Per category, a random generation that is part of every listing key
    /// of that category. Replacing it orphans all of the category's pages at
    /// once, whatever page and limit they were cached under, in one write.
    generations: Cache<u64>,
}

/// What a warm-up did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmSummary {
    /// Products written to the cache.
    pub loaded: u64,
    /// Ids in the range without a product.
    pub missing: u64,
    /// Products that could not be read or written.
    pub failed: u64,
    pub elapsed: Duration,
}

/// How the catalog caches.
#[derive(Debug, Clone)]
pub struct Caching {
    /// L2: the embedded store or Redis.
    pub store: Arc<dyn Store>,
    /// The in-process L1 tier's budget over all namespaces; 0 for none.
    pub l1_bytes: u64,
    /// Keeps the L1 tiers of instances sharing a Redis coherent.
    pub backplane: Option<Backplane>,
    /// Freshness, stale serving and timeouts of product and listing reads.
    pub read_policy: ReadPolicy,
}

impl Caching {
    /// The catalog's key prefix, the store, and L1 (with the backplane,
    /// read-your-writes when `read_your_writes`).
    fn tiers<V: cachette::Value>(
        &self,
        builder: CacheBuilder<V, Json>,
        l1_bytes: u64,
        read_your_writes: bool,
    ) -> CacheBuilder<V, Json> {
        let mut builder = builder.prefix("catalog").shared_store(self.store.clone());
        if self.l1_bytes > 0 && l1_bytes > 0 {
            builder = builder.l1(l1_bytes);
        }
        if let Some(backplane) = &self.backplane {
            builder = builder.backplane(backplane.clone());
            if read_your_writes {
                builder = builder.read_your_writes();
            }
        }
        builder
    }
}

/// The product catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    db: Database,
    caches: Option<Caches>,
    products: i64,
    categories: i64,
}

impl Catalog {
    /// A catalog over `db` that caches as `caching` says, or reads the
    /// database directly when it is `None`.
    ///
    /// With L1, products and category generations are read-your-writes
    /// across instances (a PUT returns only once no instance serves the
    /// old product or the old listings); listing pages are eventual, since
    /// each page lives under its generation's key and is never rewritten.
    pub fn new(
        db: Database,
        caching: Option<Caching>,
        products: i64,
        categories: i64,
    ) -> Result<Catalog, cachette::BuildError> {
        let caches = match caching {
            None => None,
            Some(caching) => {
                let policy = caching.read_policy;
                Some(Caches {
                    products: policy
                        .apply(caching.tiers(
                            Cache::builder("product"),
                            caching.l1_bytes / 4 * 3,
                            true,
                        ))
                        .ttl(policy.product_ttl)
                        .ttl_jitter(0.1)
                        .negative_ttl(NOT_FOUND_TTL)
                        .build()?,
                    listings: policy
                        .apply(caching.tiers(
                            Cache::builder("listing"),
                            caching.l1_bytes / 4,
                            false,
                        ))
                        .ttl(LISTING_TTL)
                        .build()?,
                    // No read policy and no early refresh: the loader draws
                    // a new random generation, so refreshing one early or
                    // serving it stale gains nothing, and it cannot fail.
                    generations: caching
                        .tiers(Cache::builder("category-generation"), 1 << 20, true)
                        .ttl(GENERATION_TTL)
                        .early_refresh(0.0)
                        .build()?,
                })
            }
        };
        Ok(Catalog {
            db,
            caches,
            products,
            categories,
        })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Products the database was seeded with.
    pub fn product_count(&self) -> i64 {
        self.products
    }

    pub fn category_count(&self) -> i64 {
        self.categories
    }

    pub fn is_cached(&self) -> bool {
        self.caches.is_some()
    }

    /// One product: cache-aside with single flight (concurrent misses of
    /// one id run one query, one per fleet under the fill lease) and
    /// negative caching of "not found". Past its TTL a product is served
    /// stale while it is refreshed, and while the database fails its last
    /// value is served (see [`ReadPolicy`]); only a product with no cached
    /// value (never read, or last read more than the fail-safe's hour ago)
    /// fails.
    pub async fn product(&self, id: i64) -> Result<Option<Arc<Product>>, CatalogError> {
        let Some(caches) = &self.caches else {
            return Ok(self.db.product(id).await?.map(Arc::new));
        };
        let db = self.db.clone();
        let found = caches
            .products
            .get_or_load_optional_shared(
                &id.to_string(),
                move || async move { db.product(id).await },
            )
            .await?;
        Ok(found)
    }

    /// One page of a category's listing, or `None` for an unknown category.
    pub async fn category_page(
        &self,
        category_id: i64,
        page: i64,
        limit: i64,
    ) -> Result<Option<Vec<Product>>, CatalogError> {
        if !(1..=self.categories).contains(&category_id) {
            return Ok(None);
        }
        let offset = (page - 1).saturating_mul(limit);
        let Some(caches) = &self.caches else {
            return Ok(Some(
                self.db.category_page(category_id, limit, offset).await?,
            ));
        };
        let generation = caches
            .generations
            .get_or_load(&category_id.to_string(), || async {
                Ok::<_, std::convert::Infallible>(rand::random::<u64>())
            })
            .await?;
        let key = format!("{category_id}:{generation:016x}:{page}:{limit}");
        let db = self.db.clone();
        let listing = caches
            .listings
            .get_or_load(&key, move || async move {
                db.category_page(category_id, limit, offset).await
            })
            .await?;
        Ok(Some(listing))
    }

    /// Applies `patch`: the database first, then the cached product is
    /// replaced (write-through) and the category's listings are orphaned,
    /// all before this returns, so the next read on any instance sharing
    /// the cache sees the change. `None` when there is no such product.
    pub async fn update(
        &self,
        id: i64,
        patch: &ProductPatch,
    ) -> Result<Option<Product>, CatalogError> {
        let Some(caches) = &self.caches else {
            return Ok(self.db.update_product(id, patch, now_micros()).await?);
        };
        let db = &self.db;
        let written = caches
            .products
            .write_through(&id.to_string(), async {
                match db.update_product(id, patch, now_micros()).await {
                    Ok(Some(product)) => Ok(product),
                    Ok(None) => Err(cachette::BoxError::from(Missing)),
                    Err(e) => Err(e.into()),
                }
            })
            .await;
        let product = match written {
            Ok(product) => product,
            Err(e) if e.write_error::<Missing>().is_some() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let category = product.category_id.to_string();
        if let Err(e) = caches
            .generations
            .set(&category, &rand::random::<u64>())
            .await
        {
            // The product itself is updated; the listing may lag until its
            // TTL. Counted in the namespace's store errors.
            tracing::warn!(category_id = product.category_id, error = %e, "could not invalidate the category's listings");
        }
        Ok(Some(product))
    }

    /// Puts the `count` hottest products (the lowest ids: the seed and the
    /// load generator rank popularity by id) in the cache, `batch` per
    /// database query and per cache pipeline, one batch at a time so the
    /// database sees one query in flight. What is written is what the
    /// database holds now, so a value another instance cached is replaced by
    /// one at least as new. `progress(done, total)` follows each batch.
    pub async fn warm(
        &self,
        count: i64,
        batch: i64,
        mut progress: impl FnMut(u64, u64),
    ) -> WarmSummary {
        let started = Instant::now();
        let mut summary = WarmSummary::default();
        let Some(caches) = &self.caches else {
            return summary;
        };
        let total = count.clamp(0, self.products);
        let batch = batch.max(1);
        let mut first = 1;
        while first <= total {
            let last = (first + batch - 1).min(total);
            let wanted = (last - first + 1) as u64;
            match self.warm_batch(caches, first, last).await {
                Ok(loaded) => {
                    summary.loaded += loaded;
                    // Ids with no row (none in a seeded catalog).
                    summary.missing += wanted.saturating_sub(loaded);
                }
                Err(e) => {
                    tracing::warn!(first, last, error = %e, "warming batch failed");
                    summary.failed += wanted;
                }
            }
            progress(last as u64, total as u64);
            first = last + 1;
        }
        summary.elapsed = started.elapsed();
        summary
    }

    async fn warm_batch(
        &self,
        caches: &Caches,
        first: i64,
        last: i64,
    ) -> Result<u64, CatalogError> {
        let rows = self.db.products_between(first, last).await?;
        let entries: Vec<(String, Product)> =
            rows.into_iter().map(|p| (p.id.to_string(), p)).collect();
        caches.products.set_many(&entries).await?;
        Ok(entries.len() as u64)
    }

    /// Per-namespace counters, empty without a cache.
    pub fn stats(&self) -> Vec<Stats> {
        match &self.caches {
            None => Vec::new(),
            Some(c) => vec![
                c.products.stats(),
                c.listings.stats(),
                c.generations.stats(),
            ],
        }
    }
}
