//! The Redis store: one server, a Redis Cluster, or a master found through
//! Sentinel, behind one multiplexed connection that reconnects by itself.
//!
//! redis-rs's connections pipeline every caller's commands over one socket
//! per node and reconnect in the background after a socket drops. Three of
//! their defaults are wrong for a cache, so this module changes them:
//!
//! * TCP_NODELAY is off in redis-rs 1.x: small requests would wait for
//!   Nagle's algorithm. We turn it on.
//! * The command that hits a dead socket returns its error even though the
//!   connection is already reconnecting. Every command this store sends is
//!   idempotent (GET, MGET, SET with PX, UNLINK, the scripts), so a
//!   dropped-connection error is retried a bounded number of times with
//!   backoff — on Sentinel after finding the master again, on Cluster also
//!   after a slot moved (see `connection`).
//! * Timeouts are explicit: a connect timeout for each (re)connection and a
//!   per-command deadline enforced here as well as in the client, so no call
//!   waits longer than `command_timeout` per attempt, whatever the server
//!   does.
//!
//! Every command goes through [`RedisStore::run`], the one place that
//! applies the deadline and the retries.
//!
//! Credentials never appear in `Debug` output or in errors.
//!
//! Fill leases are Lua scripts (sent by SHA, loaded on `NOSCRIPT`), so each
//! check-then-act runs atomically in Redis. An entry and its lease key share
//! the entry's hash tag, so every script runs on Redis Cluster. Writes and
//! deletes end the lease *before* touching the entry: a fill that slips in
//! between finds no lease and is refused.
//!
//! # Redis Cluster
//!
//! * Redirects are followed by this store's connection handle, not by
//!   redis-rs's retries (`connection`): redis-rs sends `ASKING` and the
//!   command as two requests on a shared connection, so under load another
//!   caller's command takes the one-command `ASKING` flag and the redirect
//!   bounces back as `MOVED`, and each `MOVED` makes it refresh its slot map
//!   while every other command waits. Measured under a migration: ~2,000
//!   `MOVED` and calls timing out at 500 ms with redis-rs's retries; ~20
//!   `MOVED`, no timeout, three times the calls with the handle's. `ASK` is
//!   answered with `ASKING` and the command in one pipeline, `MOVED` by
//!   sending the command straight to the node named; `TRYAGAIN`, and a slot
//!   still on the move, are retried here within the retry budget.
//! * A pipeline across slots fails with `CROSSSLOT` (redis-rs refuses it
//!   before sending), so every pipeline here is cut into one per slot, sent
//!   all at once (`cluster::by_slot`); an entry and its lease share a slot,
//!   so a write's "end the lease, then write" stays one ordered pipeline.
//!   `get_many` sends one `MGET` per slot, all at once, rather than let
//!   redis-rs split it (its parts would follow redirects its own way).
//! * `ASKING` covers one command, so a pipeline that meets a slot being
//!   imported fails from its second command on; such a pipeline, and an
//!   `MGET` or a sweep that meets `TRYAGAIN` (keys of one slot split across
//!   two nodes mid-migration), is sent again one command at a time, in
//!   order, each following its own key.
//! * Scripts name keys of one slot only: an entry and its lease (a key
//!   without a hash tag is refused on Cluster, before Redis would answer
//!   `CROSSSLOT`), one mark, or the sweep's candidates of one slot. While a
//!   slot migrates, Redis refuses a two-key script whose keys are not all on
//!   one node (`TRYAGAIN`); a lease claim or fill then fails and the cache
//!   loads without a lease, or does not store the load, as when the store
//!   is down (counted in its store errors).
//! * `SCAN` walks every master, again when slots moved during the walk
//!   (`cluster::walk`).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::try_join_all;
use redis::cluster_routing::Slot;
use redis::{Cmd, ErrorKind, RedisError, ServerErrorKind, Value};

use super::lease::{Claim, LEASE_SUFFIX, Lease, LeaseToken, lease_key};
use super::{
    Breaker, Circuit, Deferred, MAX_SCAN_ROUNDS, Mark, Probe, Store, StoreEntry, StoreError,
    StoreKind,
};
use crate::Ttl;
use crate::glob;

mod cluster;
mod config;
mod connection;
mod scripts;

pub use self::config::RedisConfig;
pub use self::connection::RedisConnection;
use self::connection::node_may_have_moved;
pub(crate) use self::connection::{Connection, ensure_crypto_provider, pubsub_nodes};
use self::scripts::Scripts;

/// A [`Store`] on Redis: one server, a Redis Cluster or a master found
/// through Sentinel, as its [`RedisConfig`] says. Cheap to clone: clones
/// share one connection and one circuit breaker.
#[derive(Clone)]
pub struct RedisStore {
    conn: Connection,
    config: Arc<RedisConfig>,
    scripts: Arc<Scripts>,
    /// `None` only in the breaker's own probe, which must reach a store
    /// the breaker refuses.
    breaker: Option<Arc<Breaker>>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why an attempt failed.
enum Failure {
    Redis(RedisError),
    /// It did not answer within the command timeout.
    Timeout,
}

impl RedisStore {
    /// Connects, waiting at most the connect timeout (per node or sentinel
    /// tried).
    ///
    /// # Errors
    /// [`StoreError`] when Redis cannot be reached or refuses the handshake
    /// (a wrong password, say), or when no sentinel names a master.
    pub async fn connect(config: RedisConfig) -> Result<RedisStore, StoreError> {
        let conn = Connection::open(&config).await?;
        let unguarded = RedisStore {
            conn,
            config: Arc::new(config),
            scripts: Arc::new(Scripts::new()),
            breaker: None,
        };
        let probe: Probe = {
            let store = unguarded.clone();
            Arc::new(move |deferred: Arc<Deferred>| {
                let store = store.clone();
                Box::pin(async move { store.probe(&deferred).await })
            })
        };
        let breaker = Breaker::new(unguarded.config.breaker.clone(), StoreKind::Redis, probe);
        Ok(RedisStore {
            breaker: Some(Arc::new(breaker)),
            ..unguarded
        })
    }

    /// The breaker's probe: a `PING`, then the writes skipped during the
    /// outage undone (entries deleted with their leases, marks raised).
    /// True when all of it landed.
    async fn probe(&self, deferred: &Deferred) -> bool {
        let ping = self
            .run(|mut conn| async move { redis::cmd("PING").query_async::<()>(&mut conn).await })
            .await;
        if let Err(e) = ping {
            tracing::debug!(error = %e, "circuit probe: no answer");
            return false;
        }
        for key in &deferred.keys {
            if let Err(e) = self.delete(key).await {
                tracing::debug!(error = %e, "circuit probe: a skipped write could not be undone");
                return false;
            }
        }
        for (key, (mark, ttl)) in &deferred.marks {
            if let Err(e) = self.raise_mark(key, *mark, *ttl).await {
                tracing::debug!(error = %e, "circuit probe: a skipped mark could not be raised");
                return false;
            }
        }
        true
    }

    /// After a write the store did not take: the entry it would have
    /// replaced is deleted before the circuit closes.
    fn skipped<T>(&self, key: &str, result: &Result<T, StoreError>) {
        if let Some(breaker) = &self.breaker
            && result.as_ref().is_err_and(StoreError::is_unavailable)
        {
            breaker.defer_delete(key);
        }
    }

    /// The underlying connection, for commands cachette does not send
    /// itself. It is shared: do not issue blocking commands on it.
    pub fn connection(&self) -> RedisConnection {
        self.conn.handle()
    }

    /// Runs an idempotent command: the one place every command of this
    /// store goes through. Each attempt gets the command timeout; an
    /// attempt that met a dropped connection (or a slot on the move, or a
    /// demoted master) is retried, up to the configured retries, with
    /// backoff.
    ///
    /// The circuit breaker refuses it at once while open, and counts its
    /// outcome.
    async fn run<T, F, Fut>(&self, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut(RedisConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.run_as(false, attempt).await
    }

    /// [`RedisStore::run`] for a command that replaces or removes entries
    /// or raises a mark, which a closing circuit already lets through.
    async fn run_write<T, F, Fut>(&self, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut(RedisConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.run_as(true, attempt).await
    }

    async fn run_as<T, F, Fut>(&self, write: bool, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut(RedisConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let Some(breaker) = &self.breaker else {
            return self.run_with_retries(attempt).await;
        };
        breaker.admit(write)?;
        let result = self.run_with_retries(attempt).await;
        breaker.record(&result);
        result
    }

    async fn run_with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut(RedisConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let timeout = self.config.command_timeout;
        let mut backoff = Duration::from_millis(10);
        let mut tries_left = self.config.retries;
        loop {
            let conn = self.conn.handle();
            let result = tokio::time::timeout(timeout, attempt(conn.clone())).await;
            let failure = match result {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(err)) => Failure::Redis(err),
                Err(_) => Failure::Timeout,
            };
            let err = match failure {
                Failure::Timeout => {
                    // Not retried (that would multiply a hung server's
                    // latency), but a pinned connection looks for its node
                    // again, for the next command.
                    self.conn.recover(&conn, None, Duration::ZERO).await;
                    return Err(StoreError::Timeout {
                        store: StoreKind::Redis,
                        after: timeout,
                    });
                }
                Failure::Redis(err) => err,
            };
            if !self.retryable(&err) || tries_left == 0 {
                if node_may_have_moved(&err) {
                    self.conn.recover(&conn, Some(&err), Duration::ZERO).await;
                }
                return Err(classify(err, timeout));
            }
            tries_left -= 1;
            tracing::debug!(error = %err, "redis command failed; retrying");
            self.conn.recover(&conn, Some(&err), backoff).await;
            backoff *= 4;
        }
    }

    /// Whether an attempt that failed with `err` is worth another.
    fn retryable(&self, err: &RedisError) -> bool {
        err.is_connection_dropped()
            || err.is_connection_refusal()
            || match &self.conn {
                Connection::Cluster(_) => {
                    slot_in_flux(err)
                        || matches!(
                            err.kind(),
                            ErrorKind::ClusterConnectionNotFound
                                | ErrorKind::Server(
                                    ServerErrorKind::ClusterDown | ServerErrorKind::MasterDown
                                )
                        )
                }
                Connection::Pinned(_) => connection::is_readonly(err),
                Connection::Standalone(_) => false,
            }
    }

    /// The slot of `key` on Cluster (`None` elsewhere: one group).
    fn slot(&self, key: &str) -> Option<Slot> {
        self.conn.is_cluster().then(|| Slot::for_key(key))
    }

    /// On Cluster, refuses a script whose keys are in different slots
    /// before Redis answers `CROSSSLOT`.
    fn one_slot(&self, key: &str, lease: &str) -> Result<(), StoreError> {
        if self.conn.is_cluster() && Slot::for_key(key) != Slot::for_key(lease) {
            return Err(StoreError::Refused {
                store: StoreKind::Redis,
                source: "on Redis Cluster a key with a lease needs a hash tag ({…}) so that the lease shares its slot".into(),
            });
        }
        Ok(())
    }

    /// Writes only (it goes through [`RedisStore::run_write`]).
    ///
    /// Sends `cmds`, each with the slot of its key (see [`RedisStore::slot`]):
    /// one pipeline per slot, all at once (one pipeline off Cluster).
    /// Commands of one slot keep their order. Returns every reply, in the
    /// order of `cmds`, each with whether its command may have run before
    /// (a pipeline replayed one command at a time, see [`send_group`]): its
    /// reply then says what the replay found, not what the first run did.
    async fn send(&self, cmds: Vec<(Option<Slot>, Cmd)>) -> Result<Vec<(Value, bool)>, StoreError> {
        let count = cmds.len();
        let groups = cluster::by_slot(cmds);
        let sent = try_join_all(groups.iter().map(|(_, cmds)| {
            let pipe = pipeline_of(cmds);
            async move {
                let pipe = &pipe;
                self.run_write(|mut conn| async move { send_group(&mut conn, cmds, pipe).await })
                    .await
            }
        }))
        .await?;
        let mut replies = vec![(Value::Nil, false); count];
        for ((indexes, _), (values, replayed)) in groups.iter().zip(sent) {
            for (&i, value) in indexes.iter().zip(values) {
                if let Some(slot) = replies.get_mut(i) {
                    *slot = (value, replayed);
                }
            }
        }
        Ok(replies)
    }
}

fn pipeline_of(cmds: &[Cmd]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for cmd in cmds {
        pipe.add_command(cmd.clone());
    }
    pipe
}

/// `MOVED`, `ASK` or `TRYAGAIN`: a slot is moving.
fn slot_in_flux(err: &RedisError) -> bool {
    matches!(
        err.kind(),
        ErrorKind::Server(
            ServerErrorKind::Moved | ServerErrorKind::Ask | ServerErrorKind::TryAgain
        )
    )
}

/// Sends the commands of one slot in order: as one pipeline, or, on
/// Cluster when the slot is moving, one at a time (see the module docs);
/// true with the replies in that case. redis-rs has then replayed the
/// whole pipeline after the redirect, so some commands ran before their
/// replies here (all are idempotent).
async fn send_group(
    conn: &mut RedisConnection,
    cmds: &[Cmd],
    pipe: &redis::Pipeline,
) -> Result<(Vec<Value>, bool), RedisError> {
    if let [cmd] = cmds {
        return Ok((vec![cmd.query_async::<Value>(conn).await?], false));
    }
    match pipe.query_async::<Vec<Value>>(conn).await {
        Ok(replies) => Ok((replies, false)),
        Err(err) if conn.is_cluster() && slot_in_flux(&err) => {
            tracing::debug!(error = %err, "slot on the move: sending a pipeline one command at a time");
            let mut replies = Vec::with_capacity(cmds.len());
            for cmd in cmds {
                replies.push(cmd.query_async::<Value>(conn).await?);
            }
            Ok((replies, true))
        }
        Err(err) => Err(err),
    }
}

/// The values of `keys` (all of one slot on Cluster): one `MGET`; or, when
/// the slot is split across two nodes mid-migration (`TRYAGAIN`), one
/// `GET` each, which follow the keys wherever they are.
async fn mget(
    conn: &mut RedisConnection,
    keys: &[&String],
) -> Result<Vec<Option<Vec<u8>>>, RedisError> {
    if let [key] = keys {
        return Ok(vec![redis::cmd("GET").arg(key).query_async(conn).await?]);
    }
    match redis::cmd("MGET").arg(keys).query_async(conn).await {
        Err(err) if conn.is_cluster() && slot_in_flux(&err) => {
            try_join_all(keys.iter().map(|key| {
                let mut conn = conn.clone();
                async move { redis::cmd("GET").arg(key).query_async(&mut conn).await }
            }))
            .await
        }
        other => other,
    }
}

fn int(value: &Value) -> u64 {
    match value {
        Value::Int(n) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

pub(crate) fn classify(err: RedisError, timeout: Duration) -> StoreError {
    if err.is_timeout() {
        StoreError::Timeout {
            store: StoreKind::Redis,
            after: timeout,
        }
    } else if err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || matches!(err.kind(), ErrorKind::ClusterConnectionNotFound)
    {
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
        let Some(breaker) = &self.breaker else {
            return Circuit::default();
        };
        let (opened, refused) = breaker.counts();
        Circuit {
            state: breaker.state(),
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
        // On Cluster, one MGET per slot, all at once (see the module docs
        // for why not redis-rs's own split); one MGET elsewhere.
        let groups = cluster::indexes_by_slot(keys, |key| self.slot(key));
        let read = try_join_all(groups.iter().map(|indexes| {
            let keys: Vec<&String> = indexes.iter().filter_map(|&i| keys.get(i)).collect();
            async move {
                let keys = &keys;
                self.run(|mut conn| async move { mget(&mut conn, keys).await })
                    .await
            }
        }))
        .await?;
        let mut values = vec![None; keys.len()];
        for (indexes, read) in groups.iter().zip(read) {
            for (&i, value) in indexes.iter().zip(read) {
                if let Some(slot) = values.get_mut(i) {
                    *slot = value.map(Bytes::from);
                }
            }
        }
        Ok(values)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Ttl) -> Result<(), StoreError> {
        self.set_many(&[StoreEntry {
            key: key.to_owned(),
            value,
            ttl,
        }])
        .await
    }

    async fn set_many(&self, entries: &[StoreEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut cmds = Vec::with_capacity(entries.len() * 2);
        for entry in entries {
            let lease = lease_key(&entry.key);
            let mut unlink = redis::cmd("UNLINK");
            unlink.arg(&lease);
            let mut set = redis::cmd("SET");
            set.arg(&entry.key)
                .arg(&entry.value[..])
                .arg("PX")
                .arg(entry.ttl.as_millis());
            cmds.push((self.slot(&lease), unlink));
            cmds.push((self.slot(&entry.key), set));
        }
        let sent = self.send(cmds).await;
        for entry in entries {
            self.skipped(&entry.key, &sent);
        }
        sent.map(|_| ())
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        // UNLINK frees a large value off Redis's main thread.
        let lease = lease_key(key);
        let mut unlink_lease = redis::cmd("UNLINK");
        unlink_lease.arg(&lease);
        let mut unlink = redis::cmd("UNLINK");
        unlink.arg(key);
        let replies = self
            .send(vec![
                (self.slot(&lease), unlink_lease),
                (self.slot(key), unlink),
            ])
            .await;
        self.skipped(key, &replies);
        let replies = replies?;
        // Replayed during a slot migration, the UNLINK may have found
        // nothing left by its own first run: then this says false.
        Ok(replies.get(1).is_some_and(|(v, _)| int(v) > 0))
    }

    async fn claim(
        &self,
        key: &str,
        seen: Option<&[u8]>,
        token: &LeaseToken,
        ttl: Ttl,
    ) -> Result<Claim, StoreError> {
        let lease = lease_key(key);
        self.one_slot(key, &lease)?;
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
        self.one_slot(key, &lease)?;
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
            .run_write(|mut conn| {
                let mut call = self.scripts.raise_mark.key(key);
                call.arg(mark.removed_us)
                    .arg(mark.expired_us)
                    .arg(ttl.as_millis());
                async move { call.invoke_async::<String>(&mut conn).await }
            })
            .await;
        if let (Some(breaker), Err(e)) = (&self.breaker, &stored)
            && e.is_unavailable()
        {
            breaker.defer_mark(key, mark, ttl);
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
            let mut cmds = Vec::new();
            // Indexes of the replies that count entries deleted.
            let mut counted = Vec::new();
            for key in &keys {
                if glob::matches(pattern.as_bytes(), key.as_bytes()) {
                    let lease = lease_key(key);
                    let mut unlink_lease = redis::cmd("UNLINK");
                    unlink_lease.arg(&lease);
                    let mut unlink = redis::cmd("UNLINK");
                    unlink.arg(key);
                    cmds.push((self.slot(&lease), unlink_lease));
                    counted.push(cmds.len());
                    cmds.push((self.slot(key), unlink));
                } else if key
                    .strip_suffix(LEASE_SUFFIX)
                    .is_some_and(|entry| glob::matches(pattern.as_bytes(), entry.as_bytes()))
                {
                    let mut unlink = redis::cmd("UNLINK");
                    unlink.arg(key);
                    cmds.push((self.slot(key), unlink));
                }
            }
            if cmds.is_empty() {
                return Ok(0);
            }
            let replies = self.send(cmds).await?;
            // A replayed UNLINK of a key the walk just found counts: its
            // first run may have been the one that deleted it.
            Ok(counted
                .iter()
                .filter_map(|&i| replies.get(i))
                .map(|(v, replayed)| if *replayed { 1 } else { int(v) })
                .sum())
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
            // On Cluster, one script call per slot: a script's keys must
            // share one.
            let groups = cluster::keys_by_slot(keys, |key| self.slot(key));
            let swept = try_join_all(groups.iter().map(|keys| {
                self.run(move |mut conn| async move {
                    let swept = self.sweep_keys(&mut conn, keys, created_before_ms).await;
                    match swept {
                        Err(err) if conn.is_cluster() && slot_in_flux(&err) && keys.len() > 1 => {
                            let mut swept = 0;
                            for key in keys {
                                swept += self
                                    .sweep_keys(
                                        &mut conn,
                                        std::slice::from_ref(key),
                                        created_before_ms,
                                    )
                                    .await?;
                            }
                            Ok(swept)
                        }
                        other => other,
                    }
                })
            }))
            .await?;
            Ok(swept.iter().sum())
        })
        .await
    }
}

impl RedisStore {
    /// One call of the sweep script over `keys` (all of one slot).
    async fn sweep_keys(
        &self,
        conn: &mut RedisConnection,
        keys: &[String],
        created_before_ms: u64,
    ) -> Result<u64, RedisError> {
        let mut call = self.scripts.sweep.prepare_invoke();
        for key in keys {
            call.key(key);
        }
        call.arg(created_before_ms);
        let swept: i64 = call.invoke_async(conn).await?;
        Ok(u64::try_from(swept).unwrap_or(0))
    }

    /// Walks the keys matching `pattern` with `SCAN` (never `KEYS`, which
    /// blocks the server for the whole keyspace), handing each batch to
    /// `each`; returns the sum of what `each` returned. On Cluster, walks
    /// every master (`cluster::walk`).
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
        if self.conn.is_cluster() {
            return self.walk(pattern, batch, each).await;
        }
        self.scan_node(None, pattern, batch, &mut each).await
    }

    /// [`RedisStore::scan`] on one node: `node` on Cluster, else the server.
    async fn scan_node<F, Fut>(
        &self,
        node: Option<&str>,
        pattern: &str,
        batch: usize,
        each: &mut F,
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
                    let mut cmd = redis::cmd("SCAN");
                    cmd.arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(batch);
                    let reply = match node {
                        Some(node) => conn.on_node(cmd, node).await?,
                        None => cmd.query_async(&mut conn).await?,
                    };
                    Ok(redis::from_redis_value(reply)?)
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
