//! The HTTP contract other tools drive: shapes, types, statuses, ordering,
//! paging, and that an update is visible at once — on the embedded store,
//! on Redis, without a cache, and over PostgreSQL instead of SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cachette_test::{PostgresServer, RedisServer};
use common::{Options, TestApp};
use serde_json::{Value, json};

async fn each_mode(test: impl AsyncFn(TestApp)) {
    test(TestApp::start(Options::default()).await).await;
    let redis = RedisServer::spawn();
    test(
        TestApp::start(Options {
            redis_url: Some(redis.url()),
            ..Options::default()
        })
        .await,
    )
    .await;
    test(
        TestApp::start(Options {
            no_cache: true,
            ..Options::default()
        })
        .await,
    )
    .await;
    // A Redis of its own: the first one still holds the SQLite catalog's
    // entries under the same keys.
    let postgres = PostgresServer::spawn();
    let redis = RedisServer::spawn();
    test(
        TestApp::start(Options {
            database_url: Some(postgres.url()),
            redis_url: Some(redis.url()),
            ..Options::default()
        })
        .await,
    )
    .await;
}

fn assert_product_shape(p: &Value) {
    let obj = p.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "category_id",
            "description",
            "id",
            "name",
            "price_cents",
            "updated_at"
        ]
    );
    assert!(p["id"].is_i64() && p["category_id"].is_i64() && p["price_cents"].is_i64());
    assert!(p["name"].is_string() && p["description"].is_string());
    let at = p["updated_at"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).is_ok(),
        "updated_at is not RFC 3339: {at}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_product_returns_the_contract() {
    each_mode(async |app| {
        let mut c = app.client().await;
        let r = c.get("/products/42").await.unwrap();
        assert_eq!(r.status, 200);
        let p = r.json().unwrap();
        assert_product_shape(&p);
        assert_eq!(p["id"], 42);
        assert_eq!(p["category_id"], 42);

        for missing in ["/products/1001", "/products/0", "/products/-7"] {
            let r = c.get(missing).await.unwrap();
            assert_eq!(r.status, 404, "{missing}");
            assert!(
                r.json().unwrap()["error"]
                    .as_str()
                    .unwrap()
                    .contains("not found")
            );
        }
        let r = c.get("/products/forty-two").await.unwrap();
        assert_eq!(r.status, 400);
        assert!(
            r.json().unwrap()["error"]
                .as_str()
                .unwrap()
                .contains("integer")
        );
        app.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_are_ordered_and_paged() {
    each_mode(async |app| {
        let mut c = app.client().await;
        let r = c.get("/categories/7/products").await.unwrap();
        assert_eq!(r.status, 200);
        let page: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            page.len(),
            10,
            "1,000 products over 100 categories, default limit 20"
        );
        for p in &page {
            assert_product_shape(p);
            assert_eq!(p["category_id"], 7);
        }
        let key = |p: &Value| {
            (
                p["updated_at"].as_str().unwrap().to_owned(),
                p["id"].as_i64().unwrap(),
            )
        };
        for pair in page.windows(2) {
            let (a, b) = (key(&pair[0]), key(&pair[1]));
            // Newest first; RFC 3339 UTC strings of equal precision sort
            // like the instants, so compare parsed times to be safe.
            let ta =
                time::OffsetDateTime::parse(&a.0, &time::format_description::well_known::Rfc3339)
                    .unwrap();
            let tb =
                time::OffsetDateTime::parse(&b.0, &time::format_description::well_known::Rfc3339)
                    .unwrap();
            assert!(ta > tb || (ta == tb && a.1 < b.1), "{a:?} before {b:?}");
        }
        let r = c
            .get("/categories/7/products?page=2&limit=3")
            .await
            .unwrap();
        let page2: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(page2, page[3..6].to_vec());
        let r = c
            .get("/categories/7/products?page=5&limit=3")
            .await
            .unwrap();
        assert_eq!(r.json().unwrap(), json!([]), "past the end: an empty page");
        let r = c.get("/categories/101/products").await.unwrap();
        assert_eq!(r.status, 404);
        app.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_updates_the_product_and_its_listing_at_once() {
    each_mode(async |app| {
        let mut c = app.client().await;
        // Cache the product and the listing pages first (read twice: the
        // second read is a hit), so a stale copy would show.
        let before = c.get("/products/205").await.unwrap().json().unwrap();
        let mut listed = Value::Null;
        for _ in 0..2 {
            let listing = c.get("/categories/5/products?limit=100").await.unwrap();
            assert_eq!(listing.status, 200);
            listed = listing.json().unwrap();
            c.get("/categories/5/products?limit=1").await.unwrap();
        }
        assert!(listed.as_array().unwrap().contains(&before));

        let r = c
            .put_json(
                "/products/205",
                r#"{"price_cents": 4321, "name": "Renamed"}"#,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let updated = r.json().unwrap();
        assert_product_shape(&updated);
        assert_eq!(updated["price_cents"], 4321);
        assert_eq!(updated["name"], "Renamed");
        assert_eq!(
            updated["description"], before["description"],
            "untouched fields stay"
        );
        assert_ne!(updated["updated_at"], before["updated_at"]);

        assert_eq!(
            c.get("/products/205").await.unwrap().json().unwrap(),
            updated
        );
        // The same page as before the PUT: its cached copy is gone (its
        // category's tag was invalidated), the new one has the new values.
        let listed = c
            .get("/categories/5/products?limit=100")
            .await
            .unwrap()
            .json()
            .unwrap();
        let listed = listed.as_array().unwrap();
        assert!(listed.contains(&updated), "the listing shows the update");
        assert!(!listed.contains(&before), "and not the old product");
        assert_eq!(listed.iter().filter(|p| p["id"] == 205).count(), 1);
        let first = c
            .get("/categories/5/products?limit=1")
            .await
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(
            first,
            json!([updated]),
            "the newest product heads its category"
        );

        let r = c
            .put_json("/products/5000", r#"{"price_cents": 1}"#)
            .await
            .unwrap();
        assert_eq!(r.status, 404);
        app.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stats_and_unknown_routes() {
    each_mode(async |app| {
        let mut c = app.client().await;
        let health = c.get("/health").await.unwrap();
        assert_eq!(health.status, 200);
        let h = health.json().unwrap();
        assert_eq!(h["status"], "ok");
        assert_eq!(h["products"], 1000);
        assert_eq!(h["categories"], 100);

        c.get("/products/1").await.unwrap();
        c.get("/products/1").await.unwrap();
        let s = app.stats().await;
        assert!(s["database_queries"].as_u64().unwrap() >= 1);
        if h["cache"] != "none" {
            let p = &s["namespaces"]["product"];
            for field in [
                "hits",
                "l1_hits",
                "misses",
                "loads",
                "stale_served",
                "stale_hits",
                "fail_safe_hits",
                "refreshes",
                "load_waits",
                "lease_waits",
                "fills_refused",
                "load_timeouts",
                "load_errors",
                "errors",
                "invalidations_sent",
                "invalidations_received",
            ] {
                assert!(p[field].is_u64(), "{field} in {p}");
            }
            assert!(s["namespaces"]["listing"]["fail_safe_hits"].is_u64());
            assert_eq!(
                s["namespaces"].as_object().unwrap().len(),
                2,
                "product and listing: {s}"
            );
            assert_eq!(p["hits"], 1);
            assert_eq!(p["misses"], 1);
            assert_eq!(p["stale_served"], 0, "nothing expired");
            assert_eq!(p["hit_rate"], 0.5);
        }

        let r = c.get("/nowhere").await.unwrap();
        assert_eq!(r.status, 404);
        assert!(r.json().unwrap()["error"].is_string());
        let r = c
            .send(hyper::Method::DELETE, "/products/1", None)
            .await
            .unwrap();
        assert_eq!(r.status, 405);
        assert!(r.json().unwrap()["error"].is_string());
        app.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_products_are_cached_as_missing() {
    let app = TestApp::start(Options::default()).await;
    let mut c = app.client().await;
    let before = app.db_queries().await;
    for _ in 0..50 {
        assert_eq!(c.get("/products/777777").await.unwrap().status, 404);
    }
    assert_eq!(
        app.db_queries().await - before,
        1,
        "one query, then the cached 404"
    );
    app.stop().await;
}

/// A PUT invalidates its category's pages, every page and limit of it,
/// and no other category's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_invalidates_its_categorys_pages_only() {
    each_mode(async |app| {
        if !app.state.catalog.is_cached() {
            return app.stop().await;
        }
        let mut c = app.client().await;
        let pages = [
            "/categories/5/products",
            "/categories/5/products?limit=3",
            "/categories/5/products?page=2&limit=2",
            "/categories/6/products",
        ];
        for _ in 0..2 {
            for page in pages {
                assert_eq!(c.get(page).await.unwrap().status, 200);
            }
        }
        let before = app.db_queries().await;
        for page in pages {
            c.get(page).await.unwrap();
        }
        assert_eq!(app.db_queries().await, before, "all four pages cached");

        // Product 105 is in category 5 (the seed puts product `id` in
        // category `(id - 1) % 100 + 1`).
        let r = c
            .put_json(
                "/products/105",
                r#"{"name": "Moved up", "price_cents": 17}"#,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let updated = r.json().unwrap();
        assert_eq!(updated["category_id"], 5);
        let after_put = app.db_queries().await;
        assert_eq!(after_put, before + 1, "the update's one query");

        c.get("/categories/6/products").await.unwrap();
        assert_eq!(
            app.db_queries().await,
            after_put,
            "category 6 is still cached"
        );
        let head = c
            .get("/categories/5/products?limit=3")
            .await
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(head[0], updated, "the newest product heads its category");
        c.get("/categories/5/products").await.unwrap();
        c.get("/categories/5/products?page=2&limit=2")
            .await
            .unwrap();
        assert_eq!(
            app.db_queries().await,
            after_put + 3,
            "each of category 5's pages is reloaded once"
        );
        app.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_loads_the_hottest_products() {
    let app = TestApp::start(Options {
        warm: 300,
        ..Options::default()
    })
    .await;
    let warmed = app.warmed.expect("a warm-up ran");
    assert_eq!(
        (
            warmed.done,
            warmed.loaded,
            warmed.skipped,
            warmed.not_found,
            warmed.failed
        ),
        (300, 300, 0, 0, 0)
    );
    let mut c = app.client().await;
    let before = app.db_queries().await;
    for id in 1..=300 {
        assert_eq!(c.get(&format!("/products/{id}")).await.unwrap().status, 200);
    }
    assert_eq!(
        app.db_queries().await,
        before,
        "all 300 were already cached"
    );
    c.get("/products/301").await.unwrap();
    assert_eq!(app.db_queries().await, before + 1, "301 was not warmed");
    app.stop().await;
}

/// A second instance warming over the first's Redis finds the products
/// cached and skips them; a warm-up past the catalog stops at its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_skips_what_is_cached_and_stops_at_the_catalogs_end() {
    let redis = RedisServer::spawn();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("catalog.db").display());
    let start = |warm| {
        TestApp::start(Options {
            database_url: Some(db.clone()),
            redis_url: Some(redis.url()),
            warm,
            ..Options::default()
        })
    };
    let first = start(2_500).await;
    let w = first.warmed.unwrap();
    assert_eq!(
        (w.done, w.loaded, w.skipped, w.not_found, w.failed),
        (1_000, 1_000, 0, 0, 0),
        "1,000 products, all warmed"
    );
    let second = start(1_200).await;
    let w = second.warmed.unwrap();
    assert_eq!(
        (w.done, w.loaded, w.skipped, w.not_found, w.failed),
        (1_000, 0, 1_000, 0, 0),
        "all in Redis already"
    );
    let before = second.db_queries().await;
    let mut c = second.client().await;
    for id in [1, 500, 1_000] {
        assert_eq!(c.get(&format!("/products/{id}")).await.unwrap().status, 200);
    }
    assert_eq!(second.db_queries().await, before);
    first.stop().await;
    second.stop().await;
}
