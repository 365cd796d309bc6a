//! A disposable PostgreSQL server for tests.
//!
//! Like [`crate::RedisServer`]: a real `postgres` process on a free loopback
//! port, its data directory in a temp dir, stopped on drop. `initdb` runs
//! with trust authentication for one superuser, and durability is switched
//! off (`fsync=off`), since test data is thrown away.
//!
//! PostgreSQL refuses to run as root. When the tests run as root (CI
//! containers), the server runs as the `postgres` user that Debian's package
//! creates, via `setpriv` (which execs, so the process we kill is the
//! server itself).

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::server::free_port;

/// Environment variable naming the directory of `initdb` and `postgres`.
const BIN_ENV: &str = "CACHETTE_POSTGRES_BIN";
const NOT_FOUND: &str = "PostgreSQL not found: install it (apt-get install -y postgresql) or set CACHETTE_POSTGRES_BIN to the directory holding initdb and postgres";
/// Bound for initdb plus start-up.
const START_DEADLINE: Duration = Duration::from_secs(60);
const READY_LINE: &str = "database system is ready to accept connections";
const USER: &str = "cachette";
const LOG_FILE: &str = "postgres.log";

/// A real PostgreSQL server on a free loopback port, killed on drop.
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl PostgresServer {
    /// Runs `initdb` in a temp dir and starts the server; returns once it
    /// accepts connections.
    ///
    /// # Panics
    /// If PostgreSQL is not installed or does not start within 60 s; the
    /// message includes the server's log.
    pub fn spawn() -> PostgresServer {
        let bin = find_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("cachette-postgres-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for postgres: {e}"));
        let as_root = is_root();
        if as_root {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()));
        }
        let data = dir.path().join("data");
        let mut initdb = command(as_root, &bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ]);
        run(&mut initdb);

        let deadline = Instant::now() + START_DEADLINE;
        let mut server = PostgresServer {
            port: 0,
            dir,
            child: None,
        };
        // The port is free when probed; retry with another if the server
        // loses it to a parallel test.
        for _ in 0..5 {
            server.port = free_port();
            let log_path = server.dir.path().join(LOG_FILE);
            let log = File::create(&log_path)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
            let err = log
                .try_clone()
                .unwrap_or_else(|e| panic!("cannot share the log file: {e}"));
            if as_root {
                run(Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&log_path));
            }
            let child = command(as_root, &bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(server.port.to_string())
                .arg("-k")
                .arg(server.dir.path())
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ])
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start postgres: {e}"));
            server.child = Some(child);
            match server.wait_ready(deadline) {
                Ok(()) => return server,
                Err(retry) => {
                    server.kill();
                    if !retry || Instant::now() >= deadline {
                        panic!("postgres did not start:\n{}", server.log());
                    }
                }
            }
        }
        panic!("postgres found no free port:\n{}", server.log())
    }

    /// `postgres://cachette@127.0.0.1:{port}/postgres`
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join(LOG_FILE)).unwrap_or_default()
    }

    /// Ok when ready; Err(true) when worth retrying on another port.
    fn wait_ready(&mut self, deadline: Instant) -> Result<(), bool> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut backoff = Duration::from_millis(10);
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(_)) = child.try_wait()
            {
                return Err(self.log().contains("could not bind"));
            }
            if self.log().contains(READY_LINE)
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(false);
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- postgres log ---\n{}", self.log());
        }
        self.kill();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn command(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `CACHETTE_POSTGRES_BIN`, else the newest `/usr/lib/postgresql/*/bin`
/// (Debian keeps the server binaries off the PATH), else the PATH.
fn find_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
        })
        .unwrap_or_else(|| panic!("{NOT_FOUND}"))
}
