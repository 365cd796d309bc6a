//! Read-through binds the source to the cache; write-through persists to the
//! source first and only then updates the cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cachette::{Cache, Error, Loader, ReadThrough};
use cachette_test::{Fixture, for_each_store};

/// A tiny source of truth that counts its reads.
#[derive(Clone, Default)]
struct Db {
    rows: Arc<Mutex<HashMap<String, String>>>,
    reads: Arc<Mutex<usize>>,
}

impl Db {
    fn write(&self, key: &str, value: &str) -> Result<String, std::io::Error> {
        if value.is_empty() {
            return Err(std::io::Error::other("empty names are refused"));
        }
        self.rows.lock().unwrap().insert(key.into(), value.into());
        Ok(value.into())
    }
    fn reads(&self) -> usize {
        *self.reads.lock().unwrap()
    }
}

impl Loader<String> for Db {
    type Error = std::io::Error;
    async fn load(&self, key: &str) -> Result<Option<String>, Self::Error> {
        *self.reads.lock().unwrap() += 1;
        Ok(self.rows.lock().unwrap().get(key).cloned())
    }
}

fn cache(f: &Fixture) -> Cache<String> {
    Cache::builder("rt")
        .ttl(Duration::from_secs(60))
        .negative_ttl(Duration::from_secs(5))
        .shared_store(f.store.clone())
        .build()
        .unwrap()
}

for_each_store!(
    read_through_loads_once,
    write_through_updates_after_the_source
);

async fn read_through_loads_once(f: Fixture) {
    let db = Db::default();
    db.write("1", "Ada").unwrap();
    let users = ReadThrough::new(cache(&f), db.clone());
    assert_eq!(users.get("1").await.unwrap().as_deref(), Some("Ada"));
    assert_eq!(users.get("1").await.unwrap().as_deref(), Some("Ada"));
    assert_eq!(users.get("404").await.unwrap(), None);
    assert_eq!(users.get("404").await.unwrap(), None);
    assert_eq!(
        db.reads(),
        2,
        "one read for the hit key, one for the missing one"
    );
}

async fn write_through_updates_after_the_source(f: Fixture) {
    let db = Db::default();
    let users = ReadThrough::new(cache(&f), db.clone());
    db.write("1", "Ada").unwrap();
    assert_eq!(users.get("1").await.unwrap().as_deref(), Some("Ada"));

    let c = users.cache();
    let v = c
        .write_through("1", async { db.write("1", "Grace") })
        .await
        .unwrap();
    assert_eq!(v, "Grace");
    assert_eq!(c.get("1").await.unwrap().as_deref(), Some("Grace"));

    // The source refuses: the error comes back and the cache is untouched.
    let err = c
        .write_through("1", async { db.write("1", "") })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Write { .. }), "{err:?}");
    assert_eq!(c.get("1").await.unwrap().as_deref(), Some("Grace"));
    assert_eq!(db.reads(), 1);
}
