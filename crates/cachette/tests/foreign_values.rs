//! Bytes under a cache key that are not a readable entry — another
//! application's value, a truncated write, a future format version — read
//! as a counted miss: never an error, never a panic. A load then replaces
//! them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use cachette::{Cache, Ttl, envelope};
use cachette_test::{Fixture, for_each_store};

for_each_store!(unreadable_bytes_read_as_a_counted_miss);

async fn unreadable_bytes_read_as_a_counted_miss(f: Fixture) {
    let c: Cache<String> = Cache::builder("foreign")
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    c.set("valid", &"hello".to_string()).await.unwrap();
    let valid = f
        .store
        .get(&c.store_key("valid").unwrap())
        .await
        .unwrap()
        .unwrap();

    let mut future_version = valid.to_vec();
    future_version[2] = envelope::FORMAT_VERSION + 1;
    let mut wrong_type = valid.to_vec();
    // A valid envelope whose payload is not a string for this value type.
    let payload_at = envelope::HEADER_BYTES;
    wrong_type.truncate(payload_at - 4);
    wrong_type.extend_from_slice(&2u32.to_le_bytes());
    wrong_type.extend_from_slice(b"42");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("json from another app", br#"{"name":"not ours"}"#.to_vec()),
        ("plain text", b"hello".to_vec()),
        ("empty", Vec::new()),
        ("truncated", valid[..valid.len() - 3].to_vec()),
        ("header only", valid[..10].to_vec()),
        ("future version", future_version),
        ("payload of another type", wrong_type),
    ];
    let ttl = Ttl::new(Duration::from_secs(60)).unwrap();
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let key = format!("k{i}");
        f.store
            .set(&c.store_key(&key).unwrap(), Bytes::from(bytes.clone()), ttl)
            .await
            .unwrap();
        assert_eq!(c.get(&key).await.unwrap(), None, "{what} was not a miss");
        let loaded = c
            .get_or_load(&key, || async {
                Ok::<_, std::io::Error>("fresh".to_string())
            })
            .await
            .unwrap();
        assert_eq!(loaded, "fresh", "{what}");
        assert_eq!(
            c.get(&key).await.unwrap().as_deref(),
            Some("fresh"),
            "{what} not replaced"
        );
    }
    // Each case was seen twice unreadable: by `get` and by `get_or_load`'s read.
    assert_eq!(c.stats().invalid_entries, 2 * cases.len() as u64);
}

/// The same, with the foreign value written by a plain Redis client, the
/// way another application sharing the Redis would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_written_by_another_redis_client_is_a_miss() {
    let f = Fixture::redis().await;
    let c: Cache<String> = Cache::builder("shared")
        .shared_store(f.store.clone())
        .build()
        .unwrap();
    let mut raw = f.server.as_ref().unwrap().connection().await;
    let key = c.store_key("42").unwrap();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("legacy string value")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(c.get("42").await.unwrap(), None);
    assert_eq!(c.stats().invalid_entries, 1);
}
