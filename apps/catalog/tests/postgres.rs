//! PostgreSQL as the catalog's database, with the catalog as separate
//! processes: concurrent first starts seed once, and two instances on one
//! Redis serve no stale product.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use cachette_test::{PostgresServer, RedisServer};
use catalog::bench::Instance;
use catalog::load::HttpClient;

fn program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_catalog"))
}

fn args(db: &str, redis: &str, products: i64) -> Vec<String> {
    [
        "serve",
        "--database",
        db,
        "--redis",
        redis,
        "--listen",
        "127.0.0.1:0",
        "--warm",
        "200",
        "--products",
        &products.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_postgres_seed_once_and_agree() {
    let postgres = PostgresServer::spawn();
    let redis = RedisServer::spawn();
    let (args_a, args_b) = (
        args(&postgres.url(), &redis.url(), 1_500),
        args(&postgres.url(), &redis.url(), 900),
    );
    let (a, b) = tokio::join!(
        Instance::start(program(), &args_a),
        Instance::start(program(), &args_b)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let (mut on_a, mut on_b) = (
        HttpClient::new(&a.url()).await.unwrap(),
        HttpClient::new(&b.url()).await.unwrap(),
    );
    let ha = on_a.get("/health").await.unwrap().json().unwrap();
    let hb = on_b.get("/health").await.unwrap().json().unwrap();
    assert_eq!(ha["database"], "postgres");
    assert_eq!(ha["products"], hb["products"], "one seed, used by both");

    let mut stale = 0;
    for i in 0..1_000_i64 {
        let id = 1 + (i * 7) % 900;
        let put = on_a
            .put_json(
                &format!("/products/{id}"),
                format!("{{\"price_cents\":{i}}}"),
            )
            .await
            .unwrap();
        assert_eq!(put.status, 200);
        let read = on_b.get(&format!("/products/{id}")).await.unwrap();
        if read.json().unwrap() != put.json().unwrap() {
            stale += 1;
        }
    }
    assert_eq!(stale, 0, "1,000 PUT-on-A / GET-on-B pairs over PostgreSQL");
    a.stop().await;
    b.stop().await;
}
