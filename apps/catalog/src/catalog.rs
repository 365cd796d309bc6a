//! The catalog itself: products and category listings read through
//! cachette, updates written through it, and the same operations straight
//! from the database when the cache is off (`--no-cache`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cachette::store::{Store, StoreKind};
use cachette::{
    Backplane, Cache, CacheBuilder, Json, LoadLimit, Stats, Tagged, WarmOptions, WarmReport,
};

use crate::db::{Database, DbError};
use crate::product::{Product, ProductPatch, now_micros};
use crate::read_policy::ReadPolicy;

/// How long "no such product" is remembered, so a flood of requests for
/// missing ids does not reach the database.
pub const NOT_FOUND_TTL: Duration = Duration::from_secs(30);
/// How long a listing page is fresh. An update through the service removes
/// its category's pages at once (by their tag, see [`category_tag`]), so
/// this only bounds how long a change made behind the service's back goes
/// unseen. Past it, pages are served stale and kept as a fail-safe fallback
/// like products (see [`ReadPolicy`]): the listing query is the heavier
/// one, and a page an hour old beats an error while the database is down.
/// A page removed by its tag is never served again, not even as the
/// fail-safe fallback.
pub const LISTING_TTL: Duration = Duration::from_secs(60);
/// Products warmed per database query and cache pipeline.
pub const WARM_BATCH: usize = 1_000;
/// Warming batches in flight at once, at most: database queries running
/// together (of the pool's 8 connections by default), so the warm-up does
/// not starve a database other instances are already serving from.
pub const WARM_CONCURRENCY: usize = 4;

/// The tag every cached listing page of `category_id` carries: invalidating
/// it removes all of the category's pages, whatever page and limit they
/// were cached under, with one small store write.
pub fn category_tag(category_id: i64) -> String {
    format!("category:{category_id}")
}

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
    /// Pages keyed `{category_id}:{page}:{limit}`, each tagged with its
    /// category ([`category_tag`]).
    listings: Cache<Vec<Product>>,
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
    /// Loads both namespaces may run at once: the database pool's size, so
    /// a Redis outage queues requests here instead of at the database.
    pub load_limit: LoadLimit,
}

impl Caching {
    /// The catalog's key prefix, the store, and L1 (with the backplane,
    /// read-your-writes: writes and tag invalidations return once every
    /// instance has dropped its copies).
    fn tiers<V: cachette::Value>(
        &self,
        builder: CacheBuilder<V, Json>,
        l1_bytes: u64,
    ) -> CacheBuilder<V, Json> {
        let mut builder = builder
            .prefix("catalog")
            .shared_store(self.store.clone())
            .load_limit(self.load_limit.clone());
        if self.l1_bytes > 0 && l1_bytes > 0 {
            builder = builder.l1(l1_bytes);
        }
        if let Some(backplane) = &self.backplane {
            builder = builder.backplane(backplane.clone()).read_your_writes();
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
    /// With L1 (and so a backplane, on Redis), products and listings are
    /// read-your-writes across instances: a PUT returns only once every
    /// instance has dropped the old product and heard the category's tag
    /// invalidation, so none serves the old product or an old page.
    ///
    /// On Redis without a backplane (no L1), an instance learns of another's
    /// tag invalidation only by reading the tag's mark from Redis, so
    /// listings re-read marks on every read of a page (`mark_poll(ZERO)`:
    /// one more round trip, as the generation lookup used to cost) instead
    /// of trusting a fetched mark for the default second. The embedded
    /// store serves one process, which learns its own invalidations at once.
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
                let mut listings = policy
                    .apply(caching.tiers(Cache::builder("listing"), caching.l1_bytes / 4))
                    .ttl(LISTING_TTL);
                if caching.backplane.is_none() && caching.store.kind() != StoreKind::Embedded {
                    listings = listings.mark_poll(Duration::ZERO);
                }
                Some(Caches {
                    products: policy
                        .apply(caching.tiers(Cache::builder("product"), caching.l1_bytes / 4 * 3))
                        .ttl(policy.product_ttl)
                        .ttl_jitter(0.1)
                        .negative_ttl(NOT_FOUND_TTL)
                        .build()?,
                    listings: listings.build()?,
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
    ///
    /// Unknown categories are answered before the cache: the categories
    /// are `1..=categories` (the seed's, never changed through the API), so
    /// an id outside is `None` without a key, a load or a query, and the
    /// tagged loader only ever runs for a known category, where it always
    /// has a value (a page past the end is an empty one). No "not found"
    /// has to be cached, and none can be left behind by a tag.
    ///
    /// Each page is cached under `{category_id}:{page}:{limit}` with the
    /// category's tag, which [`Catalog::update`] invalidates.
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
        let key = format!("{category_id}:{page}:{limit}");
        let db = self.db.clone();
        let listing = caches
            .listings
            .get_or_load_tagged(&key, move || async move {
                let page = db.category_page(category_id, limit, offset).await?;
                Ok::<_, DbError>(Tagged::new(page).tag(category_tag(category_id)))
            })
            .await?;
        Ok(Some(listing))
    }

    /// Applies `patch`: the database first, then the cached product is
    /// replaced (write-through) and the category's listing pages are
    /// invalidated by its tag, all before this returns, so the next read on
    /// any instance sharing the cache sees the change. `None` when there is
    /// no such product.
    ///
    /// A patch cannot move a product to another category (it has no
    /// `category_id`, and the update leaves the column alone), so the
    /// product's one category is the only tag to invalidate. Should patches
    /// gain a category, the update must also return the old one, and both
    /// tags be invalidated.
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
        if let Err(e) = caches
            .listings
            .invalidate_tag(&category_tag(product.category_id))
            .await
        {
            // The product itself is updated; the category's pages may lag
            // until their TTL. Counted in the namespace's store errors.
            tracing::warn!(category_id = product.category_id, error = %e, "could not invalidate the category's listings");
        }
        Ok(Some(product))
    }

    /// Puts the `count` hottest products (the lowest ids: the seed and the
    /// load generator rank popularity by id) in the cache through
    /// [`Cache::warm`]: `options.batch` ids per database query (one range
    /// query per batch), at most `options.concurrency` queries at once.
    /// Ids already cached (another instance warmed or read them) are
    /// skipped, and every fill goes under its fill lease, so a PUT during
    /// the warm-up is never overwritten by the value read before it.
    /// `progress` follows each batch; the last report is returned (the
    /// default one without a cache).
    pub async fn warm(
        &self,
        count: i64,
        options: WarmOptions,
        progress: impl FnMut(&WarmReport),
    ) -> WarmReport {
        let Some(caches) = &self.caches else {
            return WarmReport::default();
        };
        let total = count.clamp(0, self.products);
        let ids = futures_util::stream::iter((1..=total).map(|id| id.to_string()));
        let db = self.db.clone();
        let loader = move |keys: Vec<String>| {
            let db = db.clone();
            async move { products_by_key(&db, &keys).await }
        };
        caches.products.warm(ids, loader, options, progress).await
    }

    /// Per-namespace counters, empty without a cache.
    pub fn stats(&self) -> Vec<Stats> {
        match &self.caches {
            None => Vec::new(),
            Some(c) => vec![c.products.stats(), c.listings.stats()],
        }
    }
}

/// The products of `keys` (ids) that exist, by key: one range query from
/// the lowest id to the highest, keeping the ids asked for. Warming's
/// batches are runs of consecutive ids (less those already cached), so the
/// range is at most a batch wide.
async fn products_by_key(
    db: &Database,
    keys: &[String],
) -> Result<HashMap<String, Product>, DbError> {
    let wanted: HashSet<i64> = keys.iter().filter_map(|k| k.parse().ok()).collect();
    let (Some(&first), Some(&last)) = (wanted.iter().min(), wanted.iter().max()) else {
        return Ok(HashMap::new());
    };
    let rows = db.products_between(first, last).await?;
    Ok(rows
        .into_iter()
        .filter(|p| wanted.contains(&p.id))
        .map(|p| (p.id.to_string(), p))
        .collect())
}
