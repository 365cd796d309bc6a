//! A disposable `redis-server` process for tests.
//!
//! Tests talk to a real Redis rather than a mock so that protocol details
//! (scripts, expiry, auth, disconnects) behave exactly as in production. Each
//! [`RedisServer`] gets its own loopback port and temp dir, so tests can run in
//! parallel without sharing state, and the process is killed on drop so a
//! failing test cannot leak servers.
//!
//! The same machinery runs cluster nodes ([`RedisCluster`](crate::RedisCluster)),
//! sentinels ([`SentinelGroup`](crate::SentinelGroup)), servers with an ACL
//! user and TLS servers (see [`RedisServerBuilder`]).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::IntoConnectionInfo;
use tempfile::TempDir;

use crate::tls::TlsFiles;

/// Environment variable that overrides which `redis-server` binary is run.
const BIN_ENV: &str = "CACHETTE_REDIS_SERVER";
const BIN_NAME: &str = "redis-server";
const NOT_FOUND: &str = "redis-server not found: install it (apt-get install -y redis-server) or set CACHETTE_REDIS_SERVER";

/// Upper bound for one `spawn`/`start` call, retries included. Generous so a
/// loaded CI machine does not cause flakes, yet bounded so a broken setup
/// fails the test instead of hanging it.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// How many fresh ports `spawn` tries: the port is only free when we probe
/// it, so a parallel test may grab it before redis binds it.
const MAX_PORT_ATTEMPTS: usize = 5;
/// Connect/read/write timeout for one readiness probe, so a single probe (for
/// instance against a process that is not ours) can never stall the loop.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// A TLS probe also does a handshake (and maybe AUTH), so allow it longer.
const TLS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Timeout of [`RedisServer::query_blocking`] (connect, and each reply).
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Polling backoff: start small because redis usually starts in a few ms,
/// cap it so we notice readiness promptly on a slow machine.
pub(crate) const BACKOFF_START: Duration = Duration::from_millis(2);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_millis(100);
/// Bound for waiting until SIGSTOP/SIGCONT have visibly taken effect.
const SIGNAL_SETTLE_DEADLINE: Duration = Duration::from_secs(1);

const LOG_FILE: &str = "redis.log";
/// Where a sentinel's config file goes in its temp dir. Sentinel rewrites it
/// (its ID, the replicas and sentinels it discovered), so it must be ours.
const SENTINEL_CONFIG_FILE: &str = "sentinel.conf";
/// The cluster state file of a cluster node, relative to its temp dir.
const CLUSTER_CONFIG_FILE: &str = "nodes.conf";
/// Logged by redis only after its listening socket is set up. Requiring it in
/// *our* log (not just a PONG on the port) guarantees we are not talking to
/// some other process that grabbed the port while ours failed to bind.
const READY_LINE: &str = "Ready to accept connections";
/// A sentinel never logs [`READY_LINE`]; it logs its ID once its listening
/// socket is set up and it has loaded its (rewritten) config.
const SENTINEL_READY_LINE: &str = "Sentinel ID is";
const ADDR_IN_USE: &str = "Address already in use";

/// A real redis-server on a free loopback port, in its own temp dir, killed on Drop.
///
/// Persistence is disabled (`--save "" --appendonly no`), so [`restart`]
/// yields an empty server on the same URL, which is what "Redis lost its data"
/// tests need. The server's stdout/stderr and log all go to one file, see
/// [`log`]; it is printed to stderr automatically if the owning test panics.
///
/// Servers needing credentials or TLS come from [`RedisServer::builder`]
/// (or [`spawn_with_acl`]/[`spawn_tls`]); the server's own probes (readiness,
/// the `KEYS` check) authenticate and speak TLS as needed.
///
/// [`restart`]: RedisServer::restart
/// [`log`]: RedisServer::log
/// [`spawn_with_acl`]: RedisServer::spawn_with_acl
/// [`spawn_tls`]: RedisServer::spawn_tls
#[derive(Debug)]
pub struct RedisServer {
    bin: PathBuf,
    port: u16,
    /// The cluster bus port of a cluster node (`--cluster-port`), chosen
    /// with `port` and kept across restarts.
    bus_port: Option<u16>,
    opts: Options,
    /// Certificates of a TLS server, written into `dir`.
    tls: Option<TlsFiles>,
    /// Kept alive for the server's lifetime: it holds the log and redis's
    /// working directory, and is deleted when the server is dropped.
    dir: TempDir,
    /// `None` while stopped.
    child: Option<Child>,
    /// Atomic (not a plain bool) because `pause`/`resume` take `&self`, so
    /// tests can pause a server they have shared by reference.
    paused: AtomicBool,
    /// Set when a start failure already put the log into its panic message,
    /// so `Drop` does not print it a second time.
    log_reported: bool,
    /// `KEYS` commands the server ran, summed over its restarts (its
    /// counters reset with each start). `Drop` fails the test if any.
    keys_calls: u64,
}

/// How a server is launched; fixed for its lifetime.
#[derive(Debug, Clone, Default)]
struct Options {
    extra: Vec<OsString>,
    /// ACL user (name, password) with all permissions; the default user is off.
    acl: Option<(String, String)>,
    tls: bool,
    /// Run as a sentinel with this initial config file.
    sentinel_config: Option<String>,
    /// Run as a cluster node (`--cluster-enabled yes` and a bus port).
    cluster: bool,
}

/// Builds a [`RedisServer`] with credentials, TLS or extra arguments.
///
/// ```no_run
/// # use cachette_test::RedisServer;
/// let server = RedisServer::builder()
///     .acl_user("app", "s3cret")
///     .tls()
///     .arg("--maxmemory")
///     .arg("64mb")
///     .spawn();
/// let url = server.authenticated_url(); // rediss://app:s3cret@127.0.0.1:{port}
/// ```
#[derive(Debug, Clone, Default)]
pub struct RedisServerBuilder {
    opts: Options,
}

impl RedisServerBuilder {
    /// Appends one command-line argument, after the defaults (so it
    /// overrides them).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.opts.extra.push(arg.into());
        self
    }

    /// Appends command-line arguments, see [`arg`](RedisServerBuilder::arg).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.opts.extra.extend(args.into_iter().map(Into::into));
        self
    }

    /// Creates ACL user `user` with password `password` and every
    /// permission (`on >password ~* &* +@all`), and disables the `default`
    /// user, so unauthenticated connections get `NOAUTH`. The password must
    /// not contain whitespace or quotes (it goes on the command line).
    pub fn acl_user(mut self, user: &str, password: &str) -> Self {
        assert!(
            !user.is_empty() && !password.is_empty(),
            "ACL user and password must not be empty"
        );
        assert!(
            !user
                .chars()
                .chain(password.chars())
                .any(|c| c.is_whitespace() || c == '"' || c == '\''),
            "ACL user and password must not contain whitespace or quotes"
        );
        self.opts.acl = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Serves TLS only (`--port 0 --tls-port {port}`), with a server
    /// certificate for `127.0.0.1` and `localhost` issued by a throwaway CA
    /// generated now (see [`RedisServer::ca_cert_pem`]). Client
    /// certificates are not required (`--tls-auth-clients no`).
    pub fn tls(mut self) -> Self {
        self.opts.tls = true;
        self
    }

    /// Runs `redis-server <config> --sentinel`, `config` being the initial
    /// contents of its (writable) config file.
    pub(crate) fn sentinel(mut self, config: String) -> Self {
        self.opts.sentinel_config = Some(config);
        self
    }

    /// Runs a cluster node: `--cluster-enabled yes`, its own state file and
    /// a bus port of its own (`--cluster-port`).
    pub(crate) fn cluster_node(mut self) -> Self {
        self.opts.cluster = true;
        self
    }

    /// Starts the server and waits until it is ready.
    ///
    /// # Panics
    ///
    /// As for [`RedisServer::spawn`].
    pub fn spawn(self) -> RedisServer {
        RedisServer::spawn_with_options(self.opts)
    }
}

/// Why a single launch attempt did not produce a ready server.
#[derive(Debug)]
enum StartError {
    /// The port was taken; worth retrying.
    AddrInUse,
    /// Redis exited for another reason (bad arguments, ...); retrying won't help.
    Exited(ExitStatus),
    /// Still running but not ready by the deadline; it has been killed.
    TimedOut,
}

impl RedisServer {
    /// Starts a redis-server with the default test configuration and waits
    /// until it answers `PING`.
    ///
    /// # Panics
    ///
    /// If the binary cannot be found or the server does not become ready
    /// within 10 seconds; the panic message includes the server log.
    pub fn spawn() -> RedisServer {
        Self::spawn_with_args(&[])
    }

    /// Like [`spawn`](RedisServer::spawn), with extra command-line arguments
    /// appended after the defaults (so they override them), e.g.
    /// `["--requirepass", "secret"]`.
    ///
    /// # Panics
    ///
    /// As for [`spawn`](RedisServer::spawn).
    pub fn spawn_with_args(extra: &[&str]) -> RedisServer {
        Self::builder().args(extra).spawn()
    }

    /// A server whose only usable account is ACL user `user` with
    /// `password` (the default user is disabled). See
    /// [`RedisServerBuilder::acl_user`] and [`authenticated_url`].
    ///
    /// [`authenticated_url`]: RedisServer::authenticated_url
    ///
    /// # Panics
    ///
    /// As for [`spawn`](RedisServer::spawn).
    pub fn spawn_with_acl(user: &str, password: &str) -> RedisServer {
        Self::builder().acl_user(user, password).spawn()
    }

    /// A server that only speaks TLS, on `rediss://127.0.0.1:{port}`,
    /// with a certificate issued by a throwaway CA: trust
    /// [`ca_cert_pem`](RedisServer::ca_cert_pem) (or use
    /// [`client`](RedisServer::client), which does). See
    /// [`RedisServerBuilder::tls`].
    ///
    /// # Panics
    ///
    /// As for [`spawn`](RedisServer::spawn).
    pub fn spawn_tls() -> RedisServer {
        Self::builder().tls().spawn()
    }

    /// A builder for servers with credentials, TLS or extra arguments.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    fn spawn_with_options(opts: Options) -> RedisServer {
        let bin = find_binary();
        let prefix = if opts.sentinel_config.is_some() {
            "cachette-sentinel-"
        } else {
            "cachette-redis-"
        };
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for redis-server: {e}"));
        if let Some(config) = &opts.sentinel_config {
            let path = dir.path().join(SENTINEL_CONFIG_FILE);
            fs::write(&path, config)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        let tls = opts.tls.then(|| TlsFiles::generate(dir.path()));
        let mut server = RedisServer {
            bin,
            port: 0,
            bus_port: None,
            opts,
            tls,
            dir,
            child: None,
            paused: AtomicBool::new(false),
            log_reported: false,
            keys_calls: 0,
        };

        let deadline = Instant::now() + START_DEADLINE;
        for _ in 0..MAX_PORT_ATTEMPTS {
            server.port = free_port();
            if server.opts.cluster {
                server.bus_port = Some(free_port_other_than(server.port));
            }
            match server.launch(deadline) {
                Ok(child) => {
                    server.child = Some(child);
                    return server;
                }
                // Someone took the port between our probe and redis's bind:
                // pick another one. Tests only see the final port.
                Err(StartError::AddrInUse) if Instant::now() < deadline => continue,
                Err(e) => server.fail(&e, "spawn"),
            }
        }
        server.fail(&StartError::AddrInUse, "spawn")
    }

    /// The TCP port the server listens on (stable across [`restart`](RedisServer::restart)).
    /// For a TLS server, its TLS port (it has no plain one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connection URL without credentials: `redis://127.0.0.1:{port}`, or
    /// `rediss://127.0.0.1:{port}` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Like [`url`](RedisServer::url), with the server's credentials (ACL
    /// user and password, or the `--requirepass` password) percent-encoded
    /// into it, e.g. `redis://app:s3cret@127.0.0.1:{port}`. Same as `url()`
    /// for a server without credentials.
    pub fn authenticated_url(&self) -> String {
        let url = self.url();
        let (user, password) = self.credentials();
        let Some(password) = password else {
            return url;
        };
        let (scheme, rest) = url.split_once("://").unwrap_or(("redis", &url));
        format!(
            "{scheme}://{}:{}@{rest}",
            percent_encode(user.unwrap_or("")),
            percent_encode(password)
        )
    }

    /// The ACL user of a server built with
    /// [`acl_user`](RedisServerBuilder::acl_user).
    pub fn username(&self) -> Option<&str> {
        self.opts.acl.as_ref().map(|(user, _)| user.as_str())
    }

    /// The password clients need: the ACL user's, or the last
    /// `--requirepass` argument.
    pub fn password(&self) -> Option<&str> {
        self.credentials().1
    }

    /// Whether the server speaks TLS (see [`spawn_tls`](RedisServer::spawn_tls)).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// PEM of the throwaway CA that issued a TLS server's certificate;
    /// `None` for a plain server.
    pub fn ca_cert_pem(&self) -> Option<&[u8]> {
        self.tls.as_ref().map(|tls| tls.ca_pem.as_slice())
    }

    /// What a `redis` client needs to trust a TLS server, for
    /// `redis::Client::build_with_tls`; `None` for a plain server.
    pub fn tls_certificates(&self) -> Option<redis::TlsCertificates> {
        self.tls.as_ref().map(|tls| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(tls.ca_pem.clone()),
        })
    }

    /// The loopback socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The cluster bus port of a cluster node, `None` otherwise.
    pub fn cluster_bus_port(&self) -> Option<u16> {
        self.bus_port
    }

    /// Whether the process is running: started, not stopped and not
    /// exited on its own (e.g. after `SHUTDOWN`). A paused server counts as
    /// running.
    pub fn is_running(&self) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        match process_state(child.id()) {
            // A process that exited on its own is a zombie until reaped.
            Some(state) => !matches!(state, 'Z' | 'X'),
            // Our unreaped child always has an entry where /proc exists;
            // without /proc, assume it runs.
            None => !Path::new("/proc/self/stat").exists(),
        }
    }

    /// Whether the server is frozen by [`pause`](RedisServer::pause).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Kills the server (SIGKILL, so nothing is flushed or shut down
    /// gracefully, like a crash) and waits for it to exit. Once this returns,
    /// connections to [`addr`](RedisServer::addr) are refused.
    ///
    /// Idempotent: stopping a stopped server does nothing.
    pub fn stop(&mut self) {
        if self.child.is_some() && !self.paused.load(Ordering::SeqCst) {
            self.keys_calls += self.calls("keys").unwrap_or(0);
        }
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a stopped process; the SIGCONT just keeps the
            // paused flag truthful and avoids relying on that corner case.
            if self.paused.swap(false, Ordering::SeqCst) {
                let _ = send_signal(child.id(), "-CONT");
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and temp dir (after
    /// [`stop`](RedisServer::stop)) and waits until it is ready. The data is
    /// gone because persistence is off (a cluster node keeps its identity
    /// and slots, a sentinel its config: those live in files in its temp dir).
    ///
    /// Does nothing if the server is already running. The port is never
    /// changed, since tests keep using the old URL; if it is briefly
    /// unavailable, starting is retried until the 10 second deadline.
    ///
    /// # Panics
    ///
    /// If the server cannot be started within the deadline.
    pub fn start(&mut self) {
        if let Some(child) = &mut self.child {
            if matches!(child.try_wait(), Ok(None)) {
                return;
            }
            // It died on its own (e.g. a test sent SHUTDOWN): reaped, start anew.
            self.child = None;
        }
        self.paused.store(false, Ordering::SeqCst);

        let deadline = Instant::now() + START_DEADLINE;
        let mut backoff = BACKOFF_START;
        loop {
            match self.launch(deadline) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(StartError::AddrInUse) if Instant::now() < deadline => {
                    sleep_until_at_most(backoff, deadline);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(e) => self.fail(&e, "start"),
            }
        }
    }

    /// [`stop`](RedisServer::stop) followed by [`start`](RedisServer::start):
    /// same URL, empty data set, and existing connections are broken.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Freezes the server with SIGSTOP: connections stay open but nothing is
    /// answered, which simulates a hung or partitioned Redis. Returns once
    /// the process is observed stopped (on Linux).
    ///
    /// # Panics
    ///
    /// If the server is not running or the signal cannot be sent.
    pub fn pause(&self) {
        let pid = self.running_pid("pause");
        send_signal(pid, "-STOP").unwrap_or_else(|e| panic!("cannot pause redis-server: {e}"));
        self.paused.store(true, Ordering::SeqCst);
        wait_for_process_state(pid, true);
    }

    /// Undoes [`pause`](RedisServer::pause) with SIGCONT. Harmless if the
    /// server is not paused.
    ///
    /// # Panics
    ///
    /// If the server is not running or the signal cannot be sent.
    pub fn resume(&self) {
        let pid = self.running_pid("resume");
        send_signal(pid, "-CONT").unwrap_or_else(|e| panic!("cannot resume redis-server: {e}"));
        self.paused.store(false, Ordering::SeqCst);
        wait_for_process_state(pid, false);
    }

    /// A `redis` client for [`url`](RedisServer::url). It carries no
    /// credentials (use [`authenticated_client`] for that); for a TLS
    /// server it trusts the server's CA.
    ///
    /// [`authenticated_client`]: RedisServer::authenticated_client
    ///
    /// # Panics
    ///
    /// If the URL is rejected by the `redis` crate (should not happen).
    pub fn client(&self) -> redis::Client {
        self.make_client(false)
    }

    /// Like [`client`](RedisServer::client), with the server's credentials
    /// (ACL user or `--requirepass` password).
    ///
    /// # Panics
    ///
    /// As for [`client`](RedisServer::client).
    pub fn authenticated_client(&self) -> redis::Client {
        self.make_client(true)
    }

    fn make_client(&self, authenticated: bool) -> redis::Client {
        let url = self.url();
        let mut info = url
            .as_str()
            .into_connection_info()
            .unwrap_or_else(|e| panic!("invalid redis url {url}: {e}"));
        let (user, password) = self.credentials();
        if authenticated && let Some(password) = password {
            let mut settings = info.redis_settings().clone().set_password(password);
            if let Some(user) = user {
                settings = settings.set_username(user);
            }
            info = info.set_redis_settings(settings);
        }
        let client = match self.tls_certificates() {
            Some(certs) => {
                crate::tls::install_crypto_provider();
                redis::Client::build_with_tls(info, certs)
            }
            None => redis::Client::open(info),
        };
        client.unwrap_or_else(|e| panic!("cannot build a redis client for {url}: {e}"))
    }

    /// A raw multiplexed connection, so tests can inspect or tamper with
    /// Redis directly, behind the back of the code under test. It is not
    /// authenticated: see [`authenticated_connection`].
    ///
    /// Must be called inside a Tokio runtime with the time driver enabled.
    ///
    /// [`authenticated_connection`]: RedisServer::authenticated_connection
    ///
    /// # Panics
    ///
    /// If connecting fails or takes longer than 10 seconds (e.g. while paused).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        connect_async(&self.client(), &self.url()).await
    }

    /// Like [`connection`](RedisServer::connection), authenticated with the
    /// server's credentials.
    ///
    /// # Panics
    ///
    /// As for [`connection`](RedisServer::connection), or if authentication fails.
    pub async fn authenticated_connection(&self) -> redis::aio::MultiplexedConnection {
        connect_async(&self.authenticated_client(), &self.url()).await
    }

    /// Runs one command on a fresh, authenticated, blocking connection with
    /// 5 second timeouts: handy for admin commands from synchronous code.
    /// Inside an async test it blocks the runtime thread while it runs.
    pub fn query_blocking<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        self.query_within(cmd, QUERY_TIMEOUT)
    }

    pub(crate) fn query_within<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> redis::RedisResult<T> {
        let mut conn = self
            .authenticated_client()
            .get_connection_with_timeout(timeout)?;
        conn.set_read_timeout(Some(timeout))?;
        conn.set_write_timeout(Some(timeout))?;
        cmd.query(&mut conn)
    }

    /// Closes the client connection whose address (as the client sees its
    /// own socket) is `addr`, as an operator's `CLIENT KILL ADDR` would.
    /// Returns whether one was closed.
    pub async fn kill_client(&self, addr: SocketAddr) -> bool {
        let mut conn = self.authenticated_connection().await;
        let killed: redis::RedisResult<i64> = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ADDR")
            .arg(addr.to_string())
            .arg("SKIPME")
            .arg("yes")
            .query_async(&mut conn)
            .await;
        matches!(killed, Ok(n) if n > 0)
    }

    /// How many times the server ran `command` since it started (or since
    /// [`reset_stats`](RedisServer::reset_stats)), from `INFO
    /// commandstats`; `None` if the server did not answer within a second.
    pub fn calls(&self, command: &str) -> Option<u64> {
        let info: String = self
            .query_within(
                redis::cmd("INFO").arg("commandstats"),
                Duration::from_secs(1),
            )
            .ok()?;
        let field = format!("cmdstat_{}:calls=", command.to_ascii_lowercase());
        Some(
            info.lines()
                .find_map(|line| line.strip_prefix(&field))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        )
    }

    /// Resets the server's command counters (`CONFIG RESETSTAT`), keeping
    /// the `KEYS` count for the check at drop.
    pub fn reset_stats(&mut self) {
        self.keys_calls += self.calls("keys").unwrap_or(0);
        let _: redis::RedisResult<()> = self.query_within(
            redis::cmd("CONFIG").arg("RESETSTAT"),
            Duration::from_secs(1),
        );
    }

    /// Contents of the server's log file, including anything it wrote to
    /// stdout/stderr, across all starts. Empty if nothing was written yet.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// The server's temp dir (log, config and state files, certificates).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    /// (user, password) for the server's own connections.
    fn credentials(&self) -> (Option<&str>, Option<&str>) {
        if let Some((user, password)) = &self.opts.acl {
            return (Some(user), Some(password));
        }
        let requirepass = self
            .opts
            .extra
            .windows(2)
            .filter(|pair| pair[0] == "--requirepass")
            .filter_map(|pair| pair[1].to_str())
            .next_back()
            .filter(|password| !password.is_empty());
        (None, requirepass)
    }

    /// The log written after byte `offset`, i.e. by the current launch only.
    fn log_since(&self, offset: u64) -> String {
        let bytes = fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    fn args(&self) -> Vec<OsString> {
        let dir = self.dir.path();
        let mut args: Vec<OsString> = Vec::new();
        if self.opts.sentinel_config.is_some() {
            // The config file must be the first argument.
            args.push(dir.join(SENTINEL_CONFIG_FILE).into());
            args.push("--sentinel".into());
        }
        let port = self.port.to_string();
        match &self.tls {
            // TLS only: no plain port at all.
            Some(tls) => args.extend::<[OsString; 12]>([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.into(),
                "--tls-cert-file".into(),
                tls.cert.clone().into(),
                "--tls-key-file".into(),
                tls.key.clone().into(),
                "--tls-ca-cert-file".into(),
                tls.ca.clone().into(),
                "--tls-auth-clients".into(),
                "no".into(),
            ]),
            None => args.extend(["--port".into(), port.into()]),
        }
        args.extend::<[OsString; 14]>([
            "--bind".into(),
            "127.0.0.1".into(),
            // No RDB snapshots and no AOF: tests must start from, and restart
            // into, an empty server, and must not write outside the temp dir.
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.into(),
            "--logfile".into(),
            dir.join(LOG_FILE).into(),
            // We own the process: it must stay our child so kill/wait work.
            "--daemonize".into(),
            "no".into(),
            "--protected-mode".into(),
            "no".into(),
        ]);
        if let Some(bus_port) = self.bus_port {
            args.extend::<[OsString; 8]>([
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                dir.join(CLUSTER_CONFIG_FILE).into(),
                "--cluster-port".into(),
                bus_port.to_string().into(),
                // What the node tells clients and peers: never a guess.
                "--cluster-announce-ip".into(),
                "127.0.0.1".into(),
            ]);
        }
        if let Some((user, password)) = &self.opts.acl {
            // One `--user` directive per user; redis joins the following
            // arguments into the directive's line.
            args.extend::<[OsString; 10]>([
                "--user".into(),
                user.into(),
                "on".into(),
                format!(">{password}").into(),
                "~*".into(),
                "&*".into(),
                "+@all".into(),
                "--user".into(),
                "default".into(),
                "off".into(),
            ]);
        }
        args.extend(self.opts.extra.iter().cloned());
        args
    }

    fn ready_line(&self) -> &'static str {
        if self.opts.sentinel_config.is_some() {
            SENTINEL_READY_LINE
        } else {
            READY_LINE
        }
    }

    /// Whether the server answers a `PING` (a `NOAUTH` refusal counts).
    fn answers(&self) -> bool {
        if self.tls.is_none() {
            return answers_ping(self.addr());
        }
        // TLS needs a real client; it also authenticates, if needed.
        self.query_within::<String>(&redis::cmd("PING"), TLS_PROBE_TIMEOUT)
            .is_ok_and(|reply| reply == "PONG")
    }

    /// One attempt to run redis on `self.port` and wait until it is ready.
    fn launch(&self, deadline: Instant) -> Result<Child, StartError> {
        let log_path = self.log_path();
        // The log is appended to across restarts; only judge the new part.
        let offset = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        // Early failures (bad arguments) go to stderr before redis opens its
        // logfile, so send stdout/stderr to the same file. Both redis and we
        // open it in append mode, so the writers don't clobber each other.
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone handle of {}: {e}", log_path.display()));

        let mut child = Command::new(&self.bin)
            .args(self.args())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| match e.kind() {
                ErrorKind::NotFound => panic!("{NOT_FOUND} (tried {})", self.bin.display()),
                _ => panic!("cannot run {}: {e}", self.bin.display()),
            });

        let mut backoff = BACKOFF_START;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(if self.log_since(offset).contains(ADDR_IN_USE) {
                        StartError::AddrInUse
                    } else {
                        StartError::Exited(status)
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    kill_and_reap(&mut child);
                    panic!("cannot query redis-server process status: {e}");
                }
            }
            if self.log_since(offset).contains(self.ready_line()) && self.answers() {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                kill_and_reap(&mut child);
                return Err(StartError::TimedOut);
            }
            sleep_until_at_most(backoff, deadline);
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Panics with everything needed to diagnose a failed start.
    fn fail(&mut self, error: &StartError, what: &str) -> ! {
        let reason = match error {
            StartError::AddrInUse => format!("port {} stayed in use", self.port),
            StartError::Exited(status) => format!("it exited before becoming ready ({status})"),
            StartError::TimedOut => {
                format!("it was not ready within {START_DEADLINE:?}")
            }
        };
        let attempts = if what == "spawn" && matches!(error, StartError::AddrInUse) {
            format!(" after up to {MAX_PORT_ATTEMPTS} port attempts")
        } else {
            String::new()
        };
        self.log_reported = true;
        panic!(
            "redis-server {what} failed{attempts}: {reason}\n  binary: {}\n  args: {:?}\n--- redis-server log ({}) ---\n{}--- end of log ---",
            self.bin.display(),
            self.args(),
            self.log_path().display(),
            self.log(),
        );
    }

    fn running_pid(&self, what: &str) -> u32 {
        match &self.child {
            Some(child) => child.id(),
            None => panic!(
                "cannot {what} redis-server on port {}: it is stopped",
                self.port
            ),
        }
    }
}

async fn connect_async(client: &redis::Client, url: &str) -> redis::aio::MultiplexedConnection {
    match tokio::time::timeout(START_DEADLINE, client.get_multiplexed_async_connection()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!("cannot connect to redis-server at {url}: {e}"),
        Err(_) => panic!("connecting to redis-server at {url} timed out after {START_DEADLINE:?}"),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for
/// credentials in a URL.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Errors are ignored: Drop must not panic, least of all while unwinding.
        self.stop();
        // The one exception: KEYS walks the whole keyspace while every other
        // client waits, and cachette must never send it. Every test with a
        // server checks this when the server goes.
        if self.keys_calls > 0 && !std::thread::panicking() {
            panic!(
                "redis-server on port {} ran KEYS {} time(s): use SCAN",
                self.port, self.keys_calls
            );
        }
        // Printed after stop() so the log is complete. Test harnesses capture
        // stderr per test, so this only shows up for the failing test.
        if std::thread::panicking() && !self.log_reported {
            eprintln!(
                "--- redis-server log (port {}, {}) ---\n{}--- end of log ---",
                self.port,
                self.log_path().display(),
                self.log()
            );
        }
    }
}

/// `$CACHETTE_REDIS_SERVER` (a path, or a bare name looked up in `PATH`),
/// else `redis-server` from `PATH`.
fn find_binary() -> PathBuf {
    if let Some(value) = std::env::var_os(BIN_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(&value);
        let found = if path.components().count() == 1 {
            search_path(&value)
        } else {
            path.is_file().then_some(path)
        };
        return found.unwrap_or_else(|| {
            panic!(
                "{NOT_FOUND} ({BIN_ENV}={} does not name an existing file)",
                value.display()
            )
        });
    }
    search_path(BIN_NAME.as_ref()).unwrap_or_else(|| panic!("{NOT_FOUND}"))
}

fn search_path(name: &std::ffi::OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A port that was free a moment ago. The listener is dropped before
/// returning, so the port can be taken by someone else before redis binds it;
/// callers handle that by retrying.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("cannot find a free loopback port: {e}"))
}

/// A free port (see [`free_port`]) that is not `other`.
pub(crate) fn free_port_other_than(other: u16) -> u16 {
    loop {
        let port = free_port();
        if port != other {
            return port;
        }
    }
}

/// Sends a raw RESP `PING` over a plain socket and checks the reply. Uses std
/// I/O rather than the `redis` crate so readiness checks work outside any
/// async runtime and have strictly bounded timeouts.
fn answers_ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else {
        return false;
    };
    if stream.set_read_timeout(Some(PROBE_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(PROBE_TIMEOUT)).is_err()
        || stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err()
    {
        return false;
    }
    // The reply is one short line; stop at its newline, when the buffer is
    // full, or after a hard time limit so a trickling peer cannot stall us.
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let mut len = 0;
    while len < buf.len() && !buf[..len].contains(&b'\n') && started.elapsed() < PROBE_TIMEOUT * 2 {
        match stream.read(&mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    let reply = &buf[..len];
    // With --requirepass an unauthenticated PING gets NOAUTH, which still
    // proves the server is up and serving commands.
    reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH")
}

/// Runs `kill <signal> <pid>`; the external command keeps this crate free of
/// `unsafe` and of a libc dependency.
fn send_signal(pid: u32, signal: &str) -> Result<(), String> {
    let output = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `kill {signal} {pid}`: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`kill {signal} {pid}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Signals are delivered asynchronously; wait (bounded) until `/proc` shows
/// the process stopped or running, so a test's next request really meets a
/// frozen (or live) server. Best effort: without `/proc` it returns at once.
fn wait_for_process_state(pid: u32, stopped: bool) {
    let deadline = Instant::now() + SIGNAL_SETTLE_DEADLINE;
    let mut backoff = BACKOFF_START;
    loop {
        match process_state(pid) {
            Some(state) if (state == 'T') != stopped => {}
            _ => return,
        }
        if Instant::now() >= deadline {
            return;
        }
        sleep_until_at_most(backoff, deadline);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The state letter from `/proc/<pid>/stat` (`R`, `S`, `T`, ...).
fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // The command name in parentheses may itself contain spaces or ')', so
    // the state is the first field after the *last* ')'.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn sleep_until_at_most(duration: Duration, deadline: Instant) {
    let remaining = deadline.saturating_duration_since(Instant::now());
    std::thread::sleep(duration.min(remaining));
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ping(conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<String> {
        redis::cmd("PING").query_async(conn).await
    }

    #[tokio::test]
    async fn spawn_answers_ping_through_client() {
        let server = RedisServer::spawn();
        assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
        assert_eq!(
            server.addr(),
            SocketAddr::from(([127, 0, 0, 1], server.port()))
        );

        let mut conn = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        assert_eq!(ping(&mut conn).await.unwrap(), "PONG");

        let mut raw = server.connection().await;
        assert_eq!(ping(&mut raw).await.unwrap(), "PONG");
        assert!(server.log().contains(READY_LINE), "log: {}", server.log());
    }

    #[test]
    fn two_spawns_get_different_ports() {
        let a = RedisServer::spawn();
        let b = RedisServer::spawn();
        assert_ne!(a.port(), b.port());
        assert!(answers_ping(a.addr()));
        assert!(answers_ping(b.addr()));
    }

    #[tokio::test]
    #[should_panic(expected = "ran KEYS")]
    async fn a_server_that_ran_keys_fails_the_test() {
        let server = RedisServer::spawn();
        let mut conn = server.connection().await;
        let _: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        drop(server);
    }

    #[tokio::test]
    async fn stop_refuses_connections_and_is_idempotent() {
        let mut server = RedisServer::spawn();
        server.stop();
        server.stop();
        assert!(TcpStream::connect_timeout(&server.addr(), PROBE_TIMEOUT).is_err());
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            server.client().get_multiplexed_async_connection(),
        )
        .await;
        assert!(
            matches!(result, Ok(Err(_))),
            "connected to a stopped server"
        );
    }

    #[tokio::test]
    async fn restart_keeps_port_and_loses_data() {
        let mut server = RedisServer::spawn();
        let port = server.port();
        let mut conn = server.connection().await;
        let () = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query_async(&mut conn)
            .await
            .unwrap();

        server.restart();
        assert_eq!(server.port(), port);
        let mut conn = server.connection().await;
        let value: Option<String> = redis::cmd("GET")
            .arg("k")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(value, None, "data survived a restart");

        // stop + start (the pieces of restart) also works, and start on a
        // running server is a no-op.
        server.stop();
        server.start();
        server.start();
        assert_eq!(server.port(), port);
        assert!(answers_ping(server.addr()));
    }

    #[tokio::test]
    async fn requirepass_server_becomes_ready() {
        let server = RedisServer::spawn_with_args(&["--requirepass", "secret"]);

        // Without credentials commands are refused...
        let mut anon = server.connection().await;
        let err = ping(&mut anon).await.unwrap_err();
        assert!(
            err.to_string().contains("NOAUTH"),
            "unexpected error: {err}"
        );

        // ...and with them they work.
        let url = format!("redis://:secret@127.0.0.1:{}", server.port());
        let mut conn = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    }

    #[test]
    fn pause_freezes_and_resume_thaws() {
        let server = RedisServer::spawn();
        server.pause();
        assert!(!answers_ping(server.addr()), "paused server answered");
        server.resume();
        assert!(answers_ping(server.addr()));
    }

    #[test]
    fn drop_kills_even_a_paused_server() {
        let server = RedisServer::spawn();
        let addr = server.addr();
        let pid = server.running_pid("test");
        server.pause();
        drop(server);
        assert!(TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_err());
        assert_eq!(process_state(pid), None, "redis-server {pid} still exists");
    }

    #[test]
    #[should_panic(expected = "Bad directive")]
    fn bad_arguments_panic_with_the_log() {
        let _server = RedisServer::spawn_with_args(&["--no-such-directive", "1"]);
    }

    #[test]
    fn start_waits_for_its_port_to_become_free() {
        let mut server = RedisServer::spawn();
        let port = server.port();
        server.stop();
        // Squat on the port so the first launches fail with "Address already
        // in use"; start() must keep retrying the same port, not pick another.
        let squatter = TcpListener::bind(server.addr()).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(squatter);
        });
        server.start();
        release.join().unwrap();
        assert_eq!(server.port(), port);
        assert!(answers_ping(server.addr()));
        assert!(server.log().contains(ADDR_IN_USE), "log: {}", server.log());
    }

    #[tokio::test]
    async fn acl_server_refuses_anonymous_and_accepts_the_user() {
        let server = RedisServer::spawn_with_acl("app", "pa:ss/w%rd");
        assert_eq!(server.username(), Some("app"));
        assert_eq!(server.password(), Some("pa:ss/w%rd"));
        assert_eq!(
            server.authenticated_url(),
            format!("redis://app:pa%3Ass%2Fw%25rd@127.0.0.1:{}", server.port())
        );

        let mut anon = server.connection().await;
        let err = ping(&mut anon).await.unwrap_err();
        assert!(
            err.to_string().contains("NOAUTH"),
            "unexpected error: {err}"
        );

        // The default user is off, so `AUTH default <anything>` fails too.
        let wrong = format!("redis://default:pa:ss@127.0.0.1:{}", server.port());
        let refused = redis::Client::open(wrong)
            .unwrap()
            .get_multiplexed_async_connection()
            .await;
        assert!(refused.is_err(), "the default user could log in");

        let mut conn = redis::Client::open(server.authenticated_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
        let mut admin = server.authenticated_connection().await;
        assert_eq!(ping(&mut admin).await.unwrap(), "PONG");

        // The server's own bookkeeping authenticates too.
        assert!(server.calls("ping").unwrap() >= 2);
    }

    #[tokio::test]
    #[should_panic(expected = "ran KEYS")]
    async fn keys_check_works_with_acl() {
        let server = RedisServer::spawn_with_acl("app", "secret");
        let mut conn = server.authenticated_connection().await;
        let _: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .unwrap();
        drop(server);
    }

    #[tokio::test]
    async fn tls_server_accepts_a_client_trusting_the_ca() {
        let mut server = RedisServer::spawn_tls();
        assert!(server.is_tls());
        assert_eq!(
            server.url(),
            format!("rediss://127.0.0.1:{}", server.port())
        );
        let ca = server.ca_cert_pem().unwrap().to_vec();
        assert!(String::from_utf8_lossy(&ca).starts_with("-----BEGIN CERTIFICATE-----"));

        // A client built from the URL and the CA alone, as an application would.
        let client = redis::Client::build_with_tls(
            server.url(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca),
            },
        )
        .unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        assert_eq!(ping(&mut conn).await.unwrap(), "PONG");

        // Plain text on the TLS port gets nowhere.
        let plain = redis::Client::open(format!("redis://127.0.0.1:{}", server.port())).unwrap();
        let plain = tokio::time::timeout(Duration::from_secs(5), async {
            let mut conn = plain.get_multiplexed_async_connection().await?;
            ping(&mut conn).await
        })
        .await;
        assert!(
            !matches!(plain, Ok(Ok(_))),
            "plain text worked on the TLS port"
        );

        // A client that does not trust the CA is refused.
        let untrusting = redis::Client::open(server.url()).unwrap();
        assert!(untrusting.get_multiplexed_async_connection().await.is_err());

        // Bookkeeping and restarts work over TLS.
        assert!(server.calls("ping").unwrap() >= 1);
        server.restart();
        let mut conn = server.connection().await;
        assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    }

    #[tokio::test]
    async fn tls_with_acl() {
        let server = RedisServer::builder()
            .tls()
            .acl_user("app", "secret")
            .spawn();
        assert_eq!(
            server.authenticated_url(),
            format!("rediss://app:secret@127.0.0.1:{}", server.port())
        );
        let mut anon = server.connection().await;
        assert!(
            ping(&mut anon)
                .await
                .unwrap_err()
                .to_string()
                .contains("NOAUTH")
        );
        let mut conn = server.authenticated_connection().await;
        assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    }

    #[tokio::test]
    #[should_panic(expected = "ran KEYS")]
    async fn keys_check_works_with_requirepass() {
        let server = RedisServer::spawn_with_args(&["--requirepass", "secret"]);
        let mut conn = server.authenticated_connection().await;
        let _: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .unwrap();
        drop(server);
    }

    #[test]
    fn is_running_follows_the_process() {
        let mut server = RedisServer::spawn();
        assert!(server.is_running());
        server.pause();
        assert!(server.is_running() && server.is_paused());
        server.resume();
        let _: redis::RedisResult<()> = server.query_blocking(redis::cmd("SHUTDOWN").arg("NOSAVE"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.is_running() && Instant::now() < deadline {
            sleep_until_at_most(Duration::from_millis(10), deadline);
        }
        assert!(!server.is_running());
        server.start();
        assert!(server.is_running());
        server.stop();
        assert!(!server.is_running());
    }
}
