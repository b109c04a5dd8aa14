//! A real `nats-server` for the cluster tests: Debian's 2.9 (`/usr/sbin/nats-server`, or one on
//! PATH), on free loopback ports, JetStream on with a store in a temporary directory, its
//! monitoring endpoint (`-m`) on for `/varz`. Killed (by its own child handle) and its files
//! removed on drop; `kill` and `start_again` stop it and bring it back with its store.
//!
//! Without the binary a test is skipped with a loud message, except under CI (`CI` set), where
//! it fails: `scripts/test.sh` installs the `nats-server` package.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::port::free_port;
use super::scratch::Scratch;

pub struct NatsServer {
    child: Child,
    pub port: u16,
    pub monitor: SocketAddr,
    dir: Scratch,
}

/// The binary, or `None` (after a loud message) when it is missing outside CI.
fn binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    let found = on_path.or_else(|| {
        let debian = PathBuf::from("/usr/sbin/nats-server");
        debian.is_file().then_some(debian)
    });
    if found.is_none() {
        let missing = "`nats-server` not found: install Debian's `nats-server` package \
                       (`apt-get install nats-server`; scripts/test.sh does)";
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(!ci, "{missing}; CI must not skip this test");
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!! SKIPPED: {missing}. Nothing was checked. !!!!!\n"
        );
    }
    found
}

impl NatsServer {
    /// Starts a server on a free port; `None` when the binary is missing outside CI.
    pub async fn start() -> Option<NatsServer> {
        NatsServer::start_on(free_port()).await
    }

    /// Starts a server on `port` (to bring one back where nodes expect it).
    pub async fn start_on(port: u16) -> Option<NatsServer> {
        NatsServer::start_with(port, &[]).await
    }

    /// Starts a server on `port` with more command-line options (credentials, TLS).
    pub async fn start_with(port: u16, extra: &[&str]) -> Option<NatsServer> {
        let binary = binary()?;
        let dir = Scratch::new("nats");
        let monitor_port = free_port();
        let child = spawn(&binary, port, monitor_port, &dir, extra);
        let server = NatsServer {
            child,
            port,
            monitor: SocketAddr::from(([127, 0, 0, 1], monitor_port)),
            dir,
        };
        server.wait_ready().await;
        Some(server)
    }

    /// Starts the (killed) server again on its port with its JetStream store, as a restart
    /// after a crash would: what it acknowledged is still there.
    pub async fn start_again(&mut self) {
        let binary = binary().expect("nats-server ran before");
        self.child = spawn(&binary, self.port, self.monitor.port(), &self.dir, &[]);
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.try_varz().await.is_some()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "nats-server not ready within 10 s; its log:\n{}",
            self.log()
        );
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    async fn try_varz(&self) -> Option<serde_json::Value> {
        let mut stream = tokio::net::TcpStream::connect(self.monitor).await.ok()?;
        let head = format!(
            "GET /varz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.monitor
        );
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }

    /// nats-server's own count of messages it received from clients (`/varz` `in_msgs`).
    pub async fn in_msgs(&self) -> u64 {
        let varz = self.try_varz().await.expect("GET /varz");
        varz["in_msgs"].as_u64().expect("in_msgs in /varz")
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: its connections stay open, nothing is
    /// answered meanwhile. A stop returns only once every thread of it has stopped: kill(2)
    /// returns before that, and on a busy machine its threads went on answering for a few
    /// milliseconds (JetStream acks a test took for the gateway's own).
    pub fn pause(&self, paused: bool) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signals our own child process.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal nats-server");
        if !paused {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "nats-server did not stop within 10 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops the server (as a crash would: SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether every thread of `pid` is in the stopped state (`T` in /proc/PID/task/TID/stat).
fn all_threads_stopped(pid: libc::pid_t) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the parenthesised command name, which may hold spaces.
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
        state == Some(Some('T'))
    })
}

/// Runs the server with its store under `dir`, its log appended to `dir`'s `nats.log`.
fn spawn(binary: &Path, port: u16, monitor_port: u16, dir: &Scratch, extra: &[&str]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("nats.log"))
        .expect("log file");
    Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", &monitor_port.to_string()])
        .arg("-js")
        .arg("-sd")
        .arg(dir.path().join("js"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("nats-server starts")
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
