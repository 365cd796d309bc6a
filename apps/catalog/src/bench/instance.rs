//! A catalog (or baseline) server in its own OS process, as the load
//! report, the hot-GET benchmark and the multi-instance tests run it.
//! It is ready when it prints its listening line; it is killed on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// What a server prints on stdout once it accepts connections.
pub const LISTENING: &str = "listening on http://";

/// Longest a server may take to become ready (seeding 100,000 products
/// into PostgreSQL included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// A failed start.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{0} exited before it was listening")]
    Exited(String),
    #[error("{0} was not listening within {READY_TIMEOUT:?}")]
    Timeout(String),
    #[error("{program} printed an unreadable address {line:?}")]
    Address { program: String, line: String },
}

/// A running server process.
#[derive(Debug)]
pub struct Instance {
    child: Child,
    addr: SocketAddr,
}

impl Instance {
    /// Starts `program args...` and waits for its listening line. The
    /// environment's `DATABASE_URL` and `REDIS_URL` are not passed on (say
    /// what you want in `args`); `RUST_LOG` defaults to `warn`.
    pub async fn start(program: &Path, args: &[String]) -> Result<Instance, InstanceError> {
        let name = program.display().to_string();
        let mut command = Command::new(program);
        command
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        let mut child = command.spawn().map_err(|source| InstanceError::Spawn {
            program: name.clone(),
            source,
        })?;
        let Some(stdout) = child.stdout.take() else {
            return Err(InstanceError::Exited(name));
        };
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some((_, addr)) = line.split_once(LISTENING) {
                    return Some(line.clone()).zip(Some(addr.trim().to_owned()));
                }
            }
            None
        })
        .await;
        let (line, addr) = match ready {
            Ok(Some(found)) => found,
            Ok(None) => return Err(InstanceError::Exited(name)),
            Err(_) => return Err(InstanceError::Timeout(name)),
        };
        let addr: SocketAddr = addr.parse().map_err(|_| InstanceError::Address {
            program: name,
            line,
        })?;
        // Keep reading so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Instance { child, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The OS process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the process and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
