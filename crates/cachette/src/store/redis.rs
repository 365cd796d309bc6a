//! The Redis store: one multiplexed connection that reconnects by itself.
//!
//! redis-rs's `ConnectionManager` pipelines every caller's commands over one
//! socket and reconnects in the background after the socket drops. Three of
//! its defaults are wrong for a cache, so this module changes them:
//!
//! * TCP_NODELAY is off in redis-rs 1.x: small requests would wait for
//!   Nagle's algorithm. We turn it on.
//! * The command that hits a dead socket returns its error even though the
//!   manager is already reconnecting. Every command this store sends is
//!   idempotent (GET, MGET, SET with PX, UNLINK), so a dropped-connection
//!   error is retried a bounded number of times with backoff.
//! * Timeouts are explicit: a connect timeout for each (re)connection and a
//!   per-command deadline enforced here as well as in the client, so no call
//!   waits longer than `command_timeout` per attempt, whatever the server
//!   does.
//!
//! Credentials never appear in `Debug` output or in errors.
//!
//! Fill leases are Lua scripts (sent by SHA, loaded on `NOSCRIPT`), so each
//! check-then-act runs atomically in Redis. An entry and its lease key share
//! the entry's hash tag, so every script runs on Redis Cluster. Writes and
//! deletes end the lease *before* touching the entry: a fill that slips in
//! between finds no lease and is refused.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{
    Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, RedisError,
    Script,
};

use super::lease::{Claim, LEASE_SUFFIX, Lease, LeaseToken, lease_key};
use super::{
    Breaker, BreakerConfig, Circuit, Deferred, MAX_SCAN_ROUNDS, Mark, Probe, Store, StoreEntry,
    StoreError, StoreKind,
};
use crate::glob;
use crate::{BuildError, Ttl};

/// How to reach Redis. Built from a URL or from the environment.
///
/// ```
/// use std::time::Duration;
/// use cachette::store::RedisConfig;
///
/// let config = RedisConfig::from_url("redis://:s3cret@127.0.0.1:6379/2")
///     .unwrap()
///     .command_timeout(Duration::from_millis(250));
/// // The password never shows.
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    info: ConnectionInfo,
    connect_timeout: Duration,
    command_timeout: Duration,
    retries: u32,
    breaker: BreakerConfig,
}

impl RedisConfig {
    /// Parses a `redis://` or `rediss://` (TLS) URL:
    /// `redis[s]://[[user]:password@]host[:port][/db]`.
    ///
    /// # Errors
    /// [`BuildError::Redis`] when the URL does not parse. The message never
    /// repeats the URL, which may hold a password.
    pub fn from_url(url: &str) -> Result<RedisConfig, BuildError> {
        let info = url.into_connection_info().map_err(|_| BuildError::Redis {
            reason: "the Redis URL does not parse (expected redis[s]://[[user]:password@]host[:port][/db])".into(),
        })?;
        Ok(RedisConfig::from_info(info))
    }

    /// Reads `REDIS_URL` when set; otherwise `REDIS_HOST` (default
    /// `127.0.0.1`), `REDIS_PORT` (default `6379`), `REDIS_USERNAME`,
    /// `REDIS_PASSWORD` and `REDIS_DB` (default `0`).
    ///
    /// # Errors
    /// [`BuildError::Redis`] when a variable does not parse.
    pub fn from_env() -> Result<RedisConfig, BuildError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(url) = var("REDIS_URL") {
            return RedisConfig::from_url(&url);
        }
        let host = var("REDIS_HOST").unwrap_or_else(|| "127.0.0.1".into());
        let port = match var("REDIS_PORT") {
            None => 6379,
            Some(p) => p.parse::<u16>().map_err(|_| BuildError::Redis {
                reason: format!("REDIS_PORT `{p}` is not a port number"),
            })?,
        };
        let db = match var("REDIS_DB") {
            None => 0,
            Some(d) => d.parse::<i64>().map_err(|_| BuildError::Redis {
                reason: format!("REDIS_DB `{d}` is not a database number"),
            })?,
        };
        let mut redis = RedisConnectionInfo::default().set_db(db);
        if let Some(user) = var("REDIS_USERNAME") {
            redis = redis.set_username(user);
        }
        if let Some(password) = var("REDIS_PASSWORD") {
            redis = redis.set_password(password);
        }
        let info = ConnectionAddr::Tcp(host, port)
            .into_connection_info()
            .map_err(|_| BuildError::Redis {
                reason: "REDIS_HOST/REDIS_PORT do not form an address".into(),
            })?
            .set_redis_settings(redis);
        Ok(RedisConfig::from_info(info))
    }

    fn from_info(info: ConnectionInfo) -> RedisConfig {
        RedisConfig {
            info: info.set_tcp_settings(TcpSettings::default().set_nodelay(true)),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_millis(500),
            retries: 2,
            breaker: BreakerConfig::default(),
        }
    }

    /// The circuit breaker around this store: by default it opens after 5
    /// consecutive failed or timed-out commands and probes every 250 ms.
    #[must_use]
    pub fn circuit_breaker(mut self, breaker: BreakerConfig) -> RedisConfig {
        self.breaker = breaker;
        self
    }

    /// The deadline of each connection attempt. By default, 1 s.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> RedisConfig {
        self.connect_timeout = timeout;
        self
    }

    /// The deadline of each command attempt. By default, 500 ms.
    #[must_use]
    pub fn command_timeout(mut self, timeout: Duration) -> RedisConfig {
        self.command_timeout = timeout;
        self
    }

    /// How often a command that met a dropped connection is retried (all
    /// commands this store sends are idempotent). By default, 2.
    #[must_use]
    pub fn retries(mut self, retries: u32) -> RedisConfig {
        self.retries = retries;
        self
    }
}

impl RedisConfig {
    pub(crate) fn client(&self) -> Result<Client, StoreError> {
        Client::open(self.info.clone()).map_err(classify_with(self))
    }

    pub(crate) fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    pub(crate) fn connect_timeout_value(&self) -> Duration {
        self.connect_timeout
    }

    pub(crate) fn command_timeout_value(&self) -> Duration {
        self.command_timeout
    }

    /// A multiplexed, self-reconnecting connection with this configuration's
    /// timeouts, waiting at most the connect timeout.
    pub(crate) async fn connection_manager(&self) -> Result<ConnectionManager, StoreError> {
        let client = self.client()?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout))
            // Few, quick reconnect attempts: a cache call should fail fast
            // and fall back to its loader rather than queue behind a long
            // backoff; the next call starts a new reconnect anyway.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        tokio::time::timeout(
            self.connect_timeout,
            client.get_connection_manager_with_config(manager_config),
        )
        .await
        .map_err(|_| StoreError::Timeout {
            store: StoreKind::Redis,
            after: self.connect_timeout,
        })?
        .map_err(classify_with(self))
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (host, port, tls) = match self.info.addr() {
            ConnectionAddr::Tcp(host, port) => (host.as_str(), *port, false),
            ConnectionAddr::TcpTls { host, port, .. } => (host.as_str(), *port, true),
            _ => ("<unix socket>", 0, false),
        };
        let redis = self.info.redis_settings();
        f.debug_struct("RedisConfig")
            .field("host", &host)
            .field("port", &port)
            .field("tls", &tls)
            .field("db", &redis.db())
            .field("username", &redis.username())
            .field("password", &redis.password().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("retries", &self.retries)
            .field("breaker", &self.breaker)
            .finish()
    }
}

/// A [`Store`] on Redis. Cheap to clone: clones share one connection and
/// one circuit breaker.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    config: Arc<RedisConfig>,
    scripts: Arc<Scripts>,
    breaker: Arc<Breaker>,
}

/// The lease scripts. KEYS[1] is the entry, KEYS[2] its lease.
struct Scripts {
    claim: Script,
    fill: Script,
    extend: Script,
    release: Script,
    raise_mark: Script,
    sweep: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            // ARGV: token, lease ms, '1' if the caller saw an entry, the
            // start of that entry. Returns {entry, granted, lease ms left}.
            claim: Script::new(
                r"
local v = redis.call('GET', KEYS[1])
local seen = ARGV[4]
if v and (ARGV[3] == '0' or string.sub(v, 1, #seen) ~= seen) then
  return {v, 0, 0}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {v, 1, 0}
end
return {v, 0, redis.call('PTTL', KEYS[2])}
",
            ),
            // ARGV: token, value, ttl ms.
            fill: Script::new(
                r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
",
            ),
            // KEYS[1] is the lease. ARGV: token, ttl ms.
            extend: Script::new(
                r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
            ),
            // KEYS[1] is the mark. ARGV: removed µs, expired µs, ttl ms.
            // Lua numbers are doubles: exact for µs times until 2255.
            raise_mark: Script::new(
                r"
local r, e = tonumber(ARGV[1]), tonumber(ARGV[2])
local cur = redis.call('GET', KEYS[1])
if cur then
  local cr, ce = string.match(cur, '^(%d+) (%d+)$')
  if cr then
    r = math.max(r, tonumber(cr))
    e = math.max(e, tonumber(ce))
  end
end
local v = string.format('%d %d', r, e)
redis.call('SET', KEYS[1], v, 'PX', ARGV[3])
return v
",
            ),
            // KEYS: candidates. ARGV: created-before ms. Unlinks the
            // entries (magic bytes, then created_at u64 LE at offset 4)
            // created before it; leaves everything else.
            sweep: Script::new(
                r"
local n = 0
local before = tonumber(ARGV[1])
for _, k in ipairs(KEYS) do
  local h = redis.call('GETRANGE', k, 0, 11)
  if #h == 12 and string.byte(h, 1) == 202 and string.byte(h, 2) == 199 then
    local t = 0
    for j = 12, 5, -1 do t = t * 256 + string.byte(h, j) end
    if t < before then
      redis.call('UNLINK', k)
      n = n + 1
    end
  end
end
return n
",
            ),
            // KEYS[1] is the lease. ARGV: token.
            release: Script::new(
                r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
            ),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects, waiting at most the connect timeout.
    ///
    /// # Errors
    /// [`StoreError`] when Redis cannot be reached or refuses the handshake
    /// (a wrong password, say).
    pub async fn connect(config: RedisConfig) -> Result<RedisStore, StoreError> {
        let conn = config.connection_manager().await?;
        let config = Arc::new(config);
        let scripts = Arc::new(Scripts::new());
        let probe: Probe = {
            let (conn, config, scripts) = (conn.clone(), Arc::clone(&config), Arc::clone(&scripts));
            Arc::new(move |deferred: Arc<Deferred>| {
                let (conn, config, scripts) =
                    (conn.clone(), Arc::clone(&config), Arc::clone(&scripts));
                Box::pin(async move { probe(conn, &config, &scripts, &deferred).await })
            })
        };
        let breaker = Arc::new(Breaker::new(
            config.breaker.clone(),
            StoreKind::Redis,
            probe,
        ));
        Ok(RedisStore {
            conn,
            config,
            scripts,
            breaker,
        })
    }

    /// The underlying connection, for commands cachette does not send
    /// itself. It is shared: do not issue blocking commands on it.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Runs an idempotent command through the circuit breaker, retrying
    /// after a dropped connection.
    async fn run<T, F, Fut>(&self, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.breaker.admit()?;
        let result = run_with_retries(&self.conn, &self.config, attempt).await;
        self.breaker.record(&result);
        result
    }

    /// After a write the store did not take: the entry it would have
    /// replaced is deleted when the circuit closes.
    fn skipped<T>(&self, key: &str, result: &Result<T, StoreError>) {
        if result.as_ref().is_err_and(StoreError::is_unavailable) {
            self.breaker.defer_delete(key);
        }
    }
}

/// Runs an idempotent command on `conn`, each attempt bounded by the
/// command timeout, retrying after a dropped connection.
async fn run_with_retries<T, F, Fut>(
    conn: &ConnectionManager,
    config: &RedisConfig,
    mut attempt: F,
) -> Result<T, StoreError>
where
    F: FnMut(ConnectionManager) -> Fut,
    Fut: Future<Output = Result<T, RedisError>>,
{
    let timeout = config.command_timeout;
    let mut backoff = Duration::from_millis(10);
    let mut tries_left = config.retries;
    loop {
        let result = tokio::time::timeout(timeout, attempt(conn.clone())).await;
        let err = match result {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) => err,
            Err(_) => {
                return Err(StoreError::Timeout {
                    store: StoreKind::Redis,
                    after: timeout,
                });
            }
        };
        let retryable = err.is_connection_dropped() || err.is_connection_refusal();
        if !retryable || tries_left == 0 {
            return Err(classify(err, timeout));
        }
        tries_left -= 1;
        tracing::debug!(error = %err, "redis connection dropped; retrying");
        tokio::time::sleep(backoff).await;
        backoff *= 4;
    }
}

/// The breaker's probe: a PING, then the writes skipped during the outage
/// undone (entries deleted with their leases, marks raised). True when all
/// of it landed.
async fn probe(
    conn: ConnectionManager,
    config: &RedisConfig,
    scripts: &Scripts,
    deferred: &Deferred,
) -> bool {
    let ping = run_with_retries(&conn, config, |mut conn| async move {
        redis::cmd("PING").query_async::<()>(&mut conn).await
    })
    .await;
    if ping.is_err() {
        return false;
    }
    for key in &deferred.keys {
        let lease = lease_key(key);
        let deleted = run_with_retries(&conn, config, |mut conn| {
            let mut pipe = redis::pipe();
            pipe.cmd("UNLINK").arg(&lease).ignore();
            pipe.cmd("UNLINK").arg(key).ignore();
            async move { pipe.query_async::<()>(&mut conn).await }
        })
        .await;
        if deleted.is_err() {
            return false;
        }
    }
    for (key, (mark, ttl)) in &deferred.marks {
        let raised = run_with_retries(&conn, config, |mut conn| {
            let mut call = scripts.raise_mark.key(key);
            call.arg(mark.removed_us)
                .arg(mark.expired_us)
                .arg(ttl.as_millis());
            async move { call.invoke_async::<String>(&mut conn).await }
        })
        .await;
        if raised.is_err() {
            return false;
        }
    }
    true
}

fn classify_with(config: &RedisConfig) -> impl Fn(RedisError) -> StoreError + '_ {
    move |err| classify(err, config.connect_timeout)
}

pub(crate) fn classify(err: RedisError, timeout: Duration) -> StoreError {
    if err.is_timeout() {
        StoreError::Timeout {
            store: StoreKind::Redis,
            after: timeout,
        }
    } else if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
        StoreError::Unavailable {
            store: StoreKind::Redis,
            source: Box::new(err),
        }
    } else {
        StoreError::Refused {
            store: StoreKind::Redis,
            source: Box::new(err),
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Redis
    }

    fn circuit(&self) -> Circuit {
        let (opened, refused) = self.breaker.counts();
        Circuit {
            state: self.breaker.state(),
            opened,
            refused,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let value: Option<Vec<u8>> = self
            .run(|mut conn| async move { redis::cmd("GET").arg(key).query_async(&mut conn).await })
            .await?;
        Ok(value.map(Bytes::from))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<Vec<u8>>> = self
            .run(
                |mut conn| async move { redis::cmd("MGET").arg(keys).query_async(&mut conn).await },
            )
            .await?;
        Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Ttl) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("UNLINK").arg(lease_key(key)).ignore();
        pipe.cmd("SET")
            .arg(key)
            .arg(&value[..])
            .arg("PX")
            .arg(ttl.as_millis())
            .ignore();
        let pipe = &pipe;
        let written = self
            .run(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await;
        self.skipped(key, &written);
        written
    }

    async fn set_many(&self, entries: &[StoreEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for entry in entries {
            pipe.cmd("UNLINK").arg(lease_key(&entry.key)).ignore();
            pipe.cmd("SET")
                .arg(&entry.key)
                .arg(&entry.value[..])
                .arg("PX")
                .arg(entry.ttl.as_millis())
                .ignore();
        }
        let pipe = &pipe;
        let written = self
            .run(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await;
        for entry in entries {
            self.skipped(&entry.key, &written);
        }
        written
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        // UNLINK frees a large value off Redis's main thread.
        let mut pipe = redis::pipe();
        pipe.cmd("UNLINK").arg(lease_key(key)).ignore();
        pipe.cmd("UNLINK").arg(key);
        let pipe = &pipe;
        let removed = self
            .run(|mut conn| async move { pipe.query_async::<(i64,)>(&mut conn).await })
            .await;
        self.skipped(key, &removed);
        Ok(removed?.0 > 0)
    }

    async fn claim(
        &self,
        key: &str,
        seen: Option<&[u8]>,
        token: &LeaseToken,
        ttl: Ttl,
    ) -> Result<Claim, StoreError> {
        let lease = lease_key(key);
        let (value, granted, left): (Option<Vec<u8>>, i64, i64) = self
            .run(|mut conn| {
                let mut call = self.scripts.claim.key(key);
                call.key(&lease)
                    .arg(token.as_str())
                    .arg(ttl.as_millis())
                    .arg(if seen.is_some() { "1" } else { "0" })
                    .arg(seen.unwrap_or_default());
                async move { call.invoke_async(&mut conn).await }
            })
            .await?;
        let value = value.map(Bytes::from);
        let lease = if granted == 1 {
            Lease::Granted
        } else if left != 0 {
            // -1 (no expiry) cannot happen; -2 (gone meanwhile) means free.
            Lease::Held {
                expires_in: Duration::from_millis(u64::try_from(left).unwrap_or(0)),
            }
        } else {
            Lease::Changed
        };
        Ok(Claim { value, lease })
    }

    async fn fill(
        &self,
        key: &str,
        token: &LeaseToken,
        value: Bytes,
        ttl: Ttl,
    ) -> Result<bool, StoreError> {
        let lease = lease_key(key);
        let stored: i64 = self
            .run(|mut conn| {
                let mut call = self.scripts.fill.key(key);
                call.key(&lease)
                    .arg(token.as_str())
                    .arg(&value[..])
                    .arg(ttl.as_millis());
                async move { call.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(stored == 1)
    }

    async fn extend_lease(
        &self,
        key: &str,
        token: &LeaseToken,
        ttl: Ttl,
    ) -> Result<bool, StoreError> {
        let lease = lease_key(key);
        let extended: i64 = self
            .run(|mut conn| {
                let mut call = self.scripts.extend.key(&lease);
                call.arg(token.as_str()).arg(ttl.as_millis());
                async move { call.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(extended == 1)
    }

    async fn release_lease(&self, key: &str, token: &LeaseToken) -> Result<bool, StoreError> {
        let lease = lease_key(key);
        let released: i64 = self
            .run(|mut conn| {
                let mut call = self.scripts.release.key(&lease);
                call.arg(token.as_str());
                async move { call.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(released == 1)
    }

    async fn raise_mark(&self, key: &str, mark: Mark, ttl: Ttl) -> Result<Mark, StoreError> {
        let stored = self
            .run(|mut conn| {
                let mut call = self.scripts.raise_mark.key(key);
                call.arg(mark.removed_us)
                    .arg(mark.expired_us)
                    .arg(ttl.as_millis());
                async move { call.invoke_async::<String>(&mut conn).await }
            })
            .await;
        if stored.as_ref().is_err_and(StoreError::is_unavailable) {
            self.breaker.defer_mark(key, mark, ttl);
        }
        let stored = stored?;
        // The script writes what it returns; anything else is a bug there.
        Mark::parse(stored.as_bytes()).ok_or_else(|| StoreError::Refused {
            store: StoreKind::Redis,
            source: format!("unexpected mark {stored:?}").into(),
        })
    }

    async fn delete_matching(&self, pattern: &str, batch: usize) -> Result<u64, StoreError> {
        // `pattern*` also finds the leases (`{key}:lease`) of matching keys,
        // whose entries may not exist yet: a load in flight must not fill
        // after this. Each key found is then matched exactly.
        let walk = format!("{pattern}*");
        self.scan(&walk, batch, |keys| async move {
            let mut pipe = redis::pipe();
            for key in &keys {
                if glob::matches(pattern.as_bytes(), key.as_bytes()) {
                    pipe.cmd("UNLINK").arg(lease_key(key)).ignore();
                    pipe.cmd("UNLINK").arg(key);
                } else if key
                    .strip_suffix(LEASE_SUFFIX)
                    .is_some_and(|entry| glob::matches(pattern.as_bytes(), entry.as_bytes()))
                {
                    pipe.cmd("UNLINK").arg(key).ignore();
                }
            }
            if pipe.is_empty() {
                return Ok(0);
            }
            let pipe = &pipe;
            let removed: Vec<i64> = self
                .run(|mut conn| async move { pipe.query_async(&mut conn).await })
                .await?;
            Ok(removed.iter().map(|n| u64::try_from(*n).unwrap_or(0)).sum())
        })
        .await
    }

    async fn sweep(
        &self,
        pattern: &str,
        created_before_ms: u64,
        batch: usize,
    ) -> Result<u64, StoreError> {
        self.scan(pattern, batch, |keys| async move {
            let swept: i64 = self
                .run(|mut conn| {
                    let mut call = self.scripts.sweep.prepare_invoke();
                    for key in &keys {
                        call.key(key);
                    }
                    call.arg(created_before_ms);
                    async move { call.invoke_async(&mut conn).await }
                })
                .await?;
            Ok(u64::try_from(swept).unwrap_or(0))
        })
        .await
    }
}

impl RedisStore {
    /// Walks the keys matching `pattern` with `SCAN` (never `KEYS`, which
    /// blocks the server for the whole keyspace), handing each batch to
    /// `each`; returns the sum of what `each` returned.
    async fn scan<F, Fut>(
        &self,
        pattern: &str,
        batch: usize,
        mut each: F,
    ) -> Result<u64, StoreError>
    where
        F: FnMut(Vec<String>) -> Fut,
        Fut: Future<Output = Result<u64, StoreError>>,
    {
        let batch = batch.max(1);
        let mut cursor: u64 = 0;
        let mut total = 0;
        for _ in 0..MAX_SCAN_ROUNDS {
            let (next, keys): (u64, Vec<String>) = self
                .run(|mut conn| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(batch)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            if !keys.is_empty() {
                total += each(keys).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(total)
    }
}
