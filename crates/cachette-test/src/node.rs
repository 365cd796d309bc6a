//! Instances as separate OS processes, for tests that need them: a test
//! binary runs itself again as a *node* (an `#[ignore]`d test switched on
//! by an environment variable), drives it with line commands on stdin, and
//! reads answers from stdout lines prefixed `@ `.
//!
//! Node side: [`say`] answers, [`commands`] yields the lines sent. Test
//! side: [`NodeProcess`] starts a node, sends, waits (bounded) for answers,
//! and stops it when dropped; [`serial`] keeps such tests one at a time,
//! since they share the machine's cores with their nodes and servers.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a node may take to answer one command.
pub const ANSWER: Duration = Duration::from_secs(30);

/// Node side: writes one answer line.
pub fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@ {}", line.as_ref()).unwrap();
    out.flush().unwrap();
}

/// Node side: the command lines sent to this node, until `quit` or the end
/// of stdin.
pub fn commands() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line.trim() == "quit" || tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Test side: one running node.
#[derive(Debug)]
pub struct NodeProcess {
    child: Child,
    stdin: ChildStdin,
    /// Answers, stamped with the instant the reader thread got them (so a
    /// node's answer is timed even while the test reads another's).
    lines: mpsc::Receiver<(Instant, String)>,
    name: String,
}

impl NodeProcess {
    /// Starts this test binary's `node` test as a process with `NODE_ENV`
    /// switched on by `switch` and the extra environment `env`, and waits
    /// for its `ready` answer.
    pub fn start(switch: &str, name: &str, env: &[(&str, String)]) -> NodeProcess {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "node",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(switch, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print "test node ... " before the first answer.
                if let Some(at) = line.find("@ ")
                    && tx
                        .send((Instant::now(), line[at + 2..].to_owned()))
                        .is_err()
                {
                    break;
                }
            }
        });
        let mut node = NodeProcess {
            child,
            stdin,
            lines,
            name: name.to_owned(),
        };
        node.expect("ready");
        node
    }

    /// The name it was started with, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one command line.
    pub fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next answer, which must start with `word`: when it arrived, and
    /// the rest of it.
    pub fn expect_at(&mut self, word: &str) -> (Instant, String) {
        let (at, line) = self.lines.recv_timeout(ANSWER).unwrap_or_else(|_| {
            panic!(
                "no answer from {} (waiting for `{word}`) within {ANSWER:?}",
                self.name
            )
        });
        match line.strip_prefix(word) {
            Some(rest) => (at, rest.trim().to_owned()),
            None => panic!("expected `{word}` from {}, got `{line}`", self.name),
        }
    }

    /// The next answer, which must start with `word`; the rest of it.
    pub fn expect(&mut self, word: &str) -> String {
        self.expect_at(word).1
    }

    /// Sends `command` and waits for an answer starting with `word`.
    pub fn ask(&mut self, command: &str, word: &str) -> String {
        self.send(command);
        self.expect(word)
    }

    /// `name=` from the node's answer to `stats` (`stats k=v k=v …`).
    pub fn stat(&mut self, name: &str) -> u64 {
        let stats = self.ask("stats", "stats");
        stats
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
    }

    /// Polls [`NodeProcess::stat`] until `name` reaches `at_least`
    /// (bounded by [`ANSWER`]).
    pub fn await_stat(&mut self, name: &str, at_least: u64) {
        let deadline = Instant::now() + ANSWER;
        while self.stat(name) < at_least {
            assert!(
                Instant::now() < deadline,
                "{}: {name} never reached {at_least} within {ANSWER:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILL: the process dies where it stands.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held by each multi-process test: one at a time in a test binary.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
