//! Bad input gets a 4xx with a clear JSON message — never a 5xx — and
//! nothing is written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{Options, TestApp};
use hyper::Method;

/// (method, path, content type, body, expected status, words the message must contain)
type Case = (
    Method,
    String,
    Option<&'static str>,
    Bytes,
    u16,
    &'static [&'static str],
);

fn get(path: &str, status: u16, words: &'static [&'static str]) -> Case {
    (
        Method::GET,
        path.to_owned(),
        None,
        Bytes::new(),
        status,
        words,
    )
}

fn put(body: &str, status: u16, words: &'static [&'static str]) -> Case {
    let json = Some("application/json");
    (
        Method::PUT,
        "/products/7".to_owned(),
        json,
        Bytes::from(body.to_owned()),
        status,
        words,
    )
}

fn cases() -> Vec<Case> {
    let json = Some("application/json");
    let mut cases: Vec<Case> = vec![
        get("/products/abc", 400, &["product id", "integer"]),
        get("/products/1.5", 400, &["integer"]),
        get("/products/1e3", 400, &["integer"]),
        get("/products/0x10", 400, &["integer"]),
        get("/products/99999999999999999999999", 400, &["integer"]),
        get("/products/%20", 400, &["integer"]),
        get("/products/%FF", 400, &[]),
        get(
            &format!("/products/{}", "9".repeat(5_000)),
            400,
            &["integer"],
        ),
        get("/categories/x/products", 400, &["category id"]),
        get("/categories/1/products?page=0", 400, &["page"]),
        get("/categories/1/products?page=-1", 400, &["page"]),
        get("/categories/1/products?page=1000001", 400, &["page"]),
        get(
            "/categories/1/products?page=99999999999999999999",
            400,
            &["page"],
        ),
        get("/categories/1/products?page=two", 400, &["page"]),
        get("/categories/1/products?limit=0", 400, &["limit"]),
        get("/categories/1/products?limit=-5", 400, &["limit"]),
        get("/categories/1/products?limit=101", 400, &["limit"]),
        get("/categories/1/products?limit=4294967296", 400, &["limit"]),
        get("/categories/1/products?limit=%zz", 400, &[]),
        put("{\"price_cents\": ", 400, &["JSON"]),
        put("not json", 400, &["JSON"]),
        put("", 400, &[]),
        put("[1, 2]", 422, &[]),
        put(
            "{\"price_cents\": 5, \"colour\": \"red\"}",
            422,
            &["unknown field", "colour"],
        ),
        put(
            "{\"category_id\": 3}",
            422,
            &["unknown field", "category_id"],
        ),
        put("{\"id\": 8}", 422, &["unknown field"]),
        put("{\"price_cents\": \"12\"}", 422, &["price_cents"]),
        put("{\"price_cents\": 1.5}", 422, &["price_cents"]),
        put(
            "{\"price_cents\": 99999999999999999999999}",
            422,
            &["price_cents"],
        ),
        put("{\"price_cents\": -1}", 422, &["price_cents"]),
        put("{\"name\": \"\"}", 422, &["name"]),
        put("{\"name\": 5}", 422, &["name"]),
        put(
            &format!("{{\"name\": \"{}\"}}", "n".repeat(201)),
            422,
            &["name"],
        ),
        put("{}", 422, &["at least one"]),
        put("{\"name\": null}", 422, &["at least one"]),
        put(
            &format!("{{\"description\": \"{}\"}}", "d".repeat(20_000)),
            413,
            &[],
        ),
        (
            Method::PUT,
            "/products/7".into(),
            None,
            Bytes::from("{\"price_cents\": 5}"),
            415,
            &["Content-Type"],
        ),
        (
            Method::PUT,
            "/products/7".into(),
            Some("text/plain"),
            Bytes::from("{\"price_cents\": 5}"),
            415,
            &["Content-Type"],
        ),
        (
            Method::PUT,
            "/products/seven".into(),
            json,
            Bytes::from("{\"price_cents\": 5}"),
            400,
            &["integer"],
        ),
        (
            Method::POST,
            "/products/7".into(),
            json,
            Bytes::from("{\"price_cents\": 5}"),
            405,
            &["POST"],
        ),
    ];
    cases.push(get("/categories/1/products?page=1&limit=100", 200, &[]));
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_4xx_and_writes_nothing() {
    for no_cache in [false, true] {
        let app = TestApp::start(Options {
            no_cache,
            ..Options::default()
        })
        .await;
        let mut c = app.client().await;
        let original = c.get("/products/7").await.unwrap().body;
        let writes = |stats: &serde_json::Value| stats["database_queries"].as_u64().unwrap();
        let before = writes(&app.stats().await);
        let mut queries_expected = 0;

        for (method, path, content_type, body, status, words) in cases() {
            let body = content_type.map(|ct| (ct, body.clone()));
            let r = c.send(method.clone(), &path, body).await.unwrap();
            let shown: String = path.chars().take(60).collect();
            assert_eq!(r.status.as_u16(), status, "{method} {shown}: {:?}", r.body);
            if status == 200 {
                queries_expected += 1;
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_else(|_| {
                panic!("{method} {shown}: error body is not JSON: {:?}", r.body)
            });
            let message = v["error"]
                .as_str()
                .unwrap_or_else(|| panic!("no error field: {v}"));
            assert!(!message.is_empty());
            assert!(
                message.len() < 500,
                "the message echoes the input: {} bytes",
                message.len()
            );
            for word in words {
                assert!(
                    message.contains(word),
                    "{method} {shown}: {message:?} lacks {word:?}"
                );
            }
        }

        assert_eq!(
            c.get("/products/7").await.unwrap().body,
            original,
            "nothing written"
        );
        let after = writes(&app.stats().await);
        // The valid listing, and the second read of product 7 when nothing
        // caches it: every bad request was refused before the database.
        assert_eq!(
            after - before,
            queries_expected + u64::from(no_cache),
            "no bad request reached the database"
        );
        app.stop().await;
    }
}
