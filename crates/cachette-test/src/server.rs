//! A disposable `redis-server` process for tests.
//!
//! Tests talk to a real Redis rather than a mock so that protocol details
//! (scripts, expiry, auth, disconnects) behave exactly as in production. Each
//! [`RedisServer`] gets its own loopback port and temp dir, so tests can run in
//! parallel without sharing state, and the process is killed on drop so a
//! failing test cannot leak servers.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

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
/// Polling backoff: start small because redis usually starts in a few ms,
/// cap it so we notice readiness promptly on a slow machine.
const BACKOFF_START: Duration = Duration::from_millis(2);
const BACKOFF_MAX: Duration = Duration::from_millis(100);
/// Bound for waiting until SIGSTOP/SIGCONT have visibly taken effect.
const SIGNAL_SETTLE_DEADLINE: Duration = Duration::from_secs(1);

const LOG_FILE: &str = "redis.log";
/// Logged by redis only after its listening socket is set up. Requiring it in
/// *our* log (not just a PONG on the port) guarantees we are not talking to
/// some other process that grabbed the port while ours failed to bind.
const READY_LINE: &str = "Ready to accept connections";
const ADDR_IN_USE: &str = "Address already in use";

/// A real redis-server on a free loopback port, in its own temp dir, killed on Drop.
///
/// Persistence is disabled (`--save "" --appendonly no`), so [`restart`]
/// yields an empty server on the same URL, which is what "Redis lost its data"
/// tests need. The server's stdout/stderr and log all go to one file, see
/// [`log`]; it is printed to stderr automatically if the owning test panics.
///
/// [`restart`]: RedisServer::restart
/// [`log`]: RedisServer::log
#[derive(Debug)]
pub struct RedisServer {
    bin: PathBuf,
    port: u16,
    extra: Vec<OsString>,
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
        let bin = find_binary();
        let dir = tempfile::Builder::new()
            .prefix("cachette-redis-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for redis-server: {e}"));
        let mut server = RedisServer {
            bin,
            port: 0,
            extra: extra.iter().map(OsString::from).collect(),
            dir,
            child: None,
            paused: AtomicBool::new(false),
            log_reported: false,
            keys_calls: 0,
        };

        let deadline = Instant::now() + START_DEADLINE;
        for _ in 0..MAX_PORT_ATTEMPTS {
            server.port = free_port();
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
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connection URL without credentials: `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The loopback socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
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
    /// gone because persistence is off.
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
    /// credentials; for servers started with `--requirepass`, build a URL
    /// such as `redis://:secret@127.0.0.1:{port}` instead.
    ///
    /// # Panics
    ///
    /// If the URL is rejected by the `redis` crate (should not happen).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url())
            .unwrap_or_else(|e| panic!("invalid redis url {}: {e}", self.url()))
    }

    /// A raw multiplexed connection, so tests can inspect or tamper with
    /// Redis directly, behind the back of the code under test.
    ///
    /// Must be called inside a Tokio runtime with the time driver enabled.
    ///
    /// # Panics
    ///
    /// If connecting fails or takes longer than 10 seconds (e.g. while paused).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = self.client();
        match tokio::time::timeout(START_DEADLINE, client.get_multiplexed_async_connection()).await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => panic!("cannot connect to redis-server at {}: {e}", self.url()),
            Err(_) => panic!(
                "connecting to redis-server at {} timed out after {START_DEADLINE:?}",
                self.url()
            ),
        }
    }

    /// Closes the client connection whose address (as the client sees its
    /// own socket) is `addr`, as an operator's `CLIENT KILL ADDR` would.
    /// Returns whether one was closed.
    pub async fn kill_client(&self, addr: SocketAddr) -> bool {
        let mut conn = self.connection().await;
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
        let client = self.client();
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut conn)
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
        if let Ok(mut conn) = self
            .client()
            .get_connection_with_timeout(Duration::from_secs(1))
        {
            let _: redis::RedisResult<()> = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut conn);
        }
    }

    /// Contents of the server's log file, including anything it wrote to
    /// stdout/stderr, across all starts. Empty if nothing was written yet.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
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
        let mut args: Vec<OsString> = vec![
            "--port".into(),
            self.port.to_string().into(),
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
        ];
        args.extend(self.extra.iter().cloned());
        args
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
            if self.log_since(offset).contains(READY_LINE) && answers_ping(self.addr()) {
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

fn sleep_until_at_most(duration: Duration, deadline: Instant) {
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
}
