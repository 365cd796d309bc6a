//! Credentials and transport security: ACL users, TLS, and passwords that
//! never leak.
//!
//! Every test here runs against a real redis-server started with an ACL
//! user (the default user off) or TLS on loopback, with a throwaway CA.
//! The password check reads everything the library can say: errors with
//! their whole source chain, `Debug` output of every configuration and
//! handle, and every log line it emits at any level while connecting,
//! failing and recovering.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cachette::store::{BreakerConfig, RedisConfig, RedisStore, StoreError};
use cachette::{Backplane, BackplaneConfig, Cache};
use cachette_test::RedisServer;

const USER: &str = "cachette-app";
const PASSWORD: &str = "pw-7f3a9c1e-never-printed";
const WRONG: &str = "pw-wrong-0b5d-never-printed";

/// Everything every test in this binary logs, at every level.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buffer
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An error as a user would print it: Display, Debug, and every source.
fn everything_said(err: &(dyn std::error::Error + 'static)) -> String {
    let mut said = format!("{err} {err:?}");
    let mut source = err.source();
    while let Some(e) = source {
        said.push_str(&format!(" | {e} {e:?}"));
        source = e.source();
    }
    said
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [PASSWORD, WRONG] {
        assert!(!text.contains(secret), "{what} shows a password: {text}");
    }
}

fn config(url: &str) -> RedisConfig {
    RedisConfig::from_url(url)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .command_timeout(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_connects_and_a_wrong_password_says_so_without_the_password() {
    logs();
    let server = RedisServer::spawn_with_acl(USER, PASSWORD);
    let port = server.port();

    let good = config(&format!("redis://{USER}:{PASSWORD}@127.0.0.1:{port}"));
    assert_no_secret("RedisConfig Debug", &format!("{good:?}"));
    let store = RedisStore::connect(good.clone()).await.unwrap();
    assert_no_secret("RedisStore Debug", &format!("{store:?}"));
    let cache: Cache<String> = Cache::builder("acl").store(store).build().unwrap();
    assert_no_secret("Cache Debug", &format!("{cache:?}"));
    cache.set("k", &"v".to_string()).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some("v"));
    // The backplane authenticates as the same user.
    let backplane = Backplane::connect(BackplaneConfig::new(good))
        .await
        .unwrap();
    assert_no_secret("Backplane Debug", &format!("{backplane:?}"));

    // A wrong password: refused, and the error says why, not what.
    let wrong = config(&format!("redis://{USER}:{WRONG}@127.0.0.1:{port}"));
    let err = RedisStore::connect(wrong.clone()).await.unwrap_err();
    let said = everything_said(&err);
    assert!(matches!(err, StoreError::Refused { .. }), "{said}");
    assert_no_secret("a wrong password's error", &said);
    let err = Backplane::connect(BackplaneConfig::new(wrong))
        .await
        .unwrap_err();
    assert_no_secret("the backplane's error", &everything_said(&err));

    // No credentials at all: the default user is off.
    let anonymous = RedisStore::connect(config(&format!("redis://127.0.0.1:{port}")))
        .await
        .map(|_| ());
    let err = match anonymous {
        Ok(()) => {
            // Connecting may succeed without AUTH; the first command fails.
            let store = RedisStore::connect(config(&format!("redis://127.0.0.1:{port}")))
                .await
                .unwrap();
            let cache: Cache<String> = Cache::builder("anon").store(store).build().unwrap();
            cache.get("k").await.unwrap_err().to_string()
        }
        Err(e) => everything_said(&e),
    };
    assert!(!err.is_empty());

    // Parse errors never echo the URL.
    for url in [
        format!("redis://{USER}:{PASSWORD}@127.0.0.1:notaport"),
        format!("redis+cluster://{USER}:{PASSWORD}@"),
        format!("redis+sentinel://{USER}:{PASSWORD}@127.0.0.1:26379"),
    ] {
        let err = RedisConfig::from_url(&url).unwrap_err();
        assert_no_secret("a URL parse error", &everything_said(&err));
    }
    // Nor does any Debug output of a parsed configuration.
    for url in [
        format!("rediss://{USER}:{PASSWORD}@127.0.0.1:6380/1"),
        format!("redis+cluster://{USER}:{PASSWORD}@127.0.0.1:7000,127.0.0.1:7001"),
        format!(
            "redis+sentinel://{USER}:{PASSWORD}@127.0.0.1:26379/main/0?sentinel_password={WRONG}"
        ),
    ] {
        let parsed = RedisConfig::from_url(&url).unwrap();
        assert_no_secret("RedisConfig Debug", &format!("{parsed:?}"));
        assert_no_secret(
            "BackplaneConfig Debug",
            &format!("{:?}", BackplaneConfig::new(parsed)),
        );
    }
    assert_no_secret(
        "the logs",
        &String::from_utf8_lossy(&logs().lock().unwrap()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_works_and_an_untrusted_server_is_refused() {
    logs();
    let server = RedisServer::builder()
        .acl_user(USER, PASSWORD)
        .tls()
        .spawn();
    let ca = server.ca_cert_pem().unwrap().to_vec();
    let url = format!("rediss://{USER}:{PASSWORD}@127.0.0.1:{}", server.port());

    let trusted = config(&url).tls_ca_pem(ca.clone()).unwrap();
    assert_no_secret("RedisConfig Debug", &format!("{trusted:?}"));
    let store = RedisStore::connect(trusted.clone()).await.unwrap();
    let cache: Cache<String> = Cache::builder("tls").store(store).build().unwrap();
    cache.set("k", &"over tls".to_string()).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some("over tls"));
    let backplane = Backplane::connect(BackplaneConfig::new(trusted)).await;
    assert!(backplane.is_ok(), "the backplane connects over TLS too");

    // The public roots do not include the test CA: the handshake fails,
    // as an error, not a panic.
    let err = RedisStore::connect(config(&url)).await.unwrap_err();
    assert!(err.is_unavailable() || matches!(err, StoreError::Refused { .. }));
    assert_no_secret("a TLS failure's error", &everything_said(&err));

    // Certificates on a plain URL are a configuration error.
    let err = config(&format!("redis://127.0.0.1:{}", server.port()))
        .tls_ca_pem(ca)
        .unwrap_err();
    assert!(err.to_string().contains("TLS URL"), "{err}");
    assert_no_secret(
        "the logs",
        &String::from_utf8_lossy(&logs().lock().unwrap()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_with_credentials_logs_no_password() {
    logs();
    let mut server = RedisServer::spawn_with_acl(USER, PASSWORD);
    let url = format!("redis://{USER}:{PASSWORD}@127.0.0.1:{}", server.port());
    let store = RedisStore::connect(
        RedisConfig::from_url(&url)
            .unwrap()
            .command_timeout(Duration::from_millis(200))
            .circuit_breaker(BreakerConfig::default().probe_every(Duration::from_millis(50))),
    )
    .await
    .unwrap();
    let cache: Cache<String> = Cache::builder("outage")
        .store(store.clone())
        .build()
        .unwrap();
    server.stop();
    // Fails, opens the circuit, probes: every path that logs an error.
    for _ in 0..50 {
        let v = cache
            .get_or_load("k", || async { Ok::<_, std::io::Error>("v".to_string()) })
            .await
            .unwrap();
        assert_eq!(v, "v");
    }
    server.start();
    let mut closed = false;
    for _ in 0..400 {
        if cache.stats().circuit.state == cachette::store::CircuitState::Closed {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed);
    let logged = String::from_utf8_lossy(&logs().lock().unwrap()).to_string();
    // Logged once per transition, not once per call: one outage, one
    // opening and one closing, however many calls it refused.
    assert_eq!(logged.matches("circuit opened").count(), 1, "{logged}");
    assert_eq!(logged.matches("circuit closed").count(), 1, "{logged}");
    assert!(
        cache.stats().store_skipped > 0,
        "calls were refused meanwhile"
    );
    assert_no_secret("the logs", &logged);
}
