//! Shared by the simulator's integration tests: brokers to run against (the gateway in-process,
//! with a look at the peers its sessions saw; Mosquitto as a child process killed by its PID),
//! and running the real `device-sim` binary with a JSON report to check.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gateway::{Broker, Config, Context};
use serde_json::Value;
use tokio::sync::oneshot;

/// Keys the issue fixes for `--report`; others rely on them.
pub const REPORT_KEYS: &[&str] = &[
    "devices_target",
    "devices_connected",
    "connect_failures",
    "messages_published",
    "messages_received",
    "lost",
    "duplicates",
    "out_of_order",
    "latency_ms",
    "connect_ms",
];

pub mod pki;

// The gateway's own test helper: a store directory per broker, removed on drop.
#[allow(clippy::duplicate_mod)]
#[path = "../../../gateway/tests/scratch/mod.rs"]
pub mod scratch;

pub struct Gateway {
    pub addr: SocketAddr,
    /// The `[[listeners]]` addresses, in configuration order.
    pub listeners: Vec<SocketAddr>,
    context: Arc<Context>,
    stop: Option<oneshot::Sender<()>>,
    _data: scratch::Scratch,
}

impl Gateway {
    /// The gateway in-process on a free port, after `tune` adjusts its defaults.
    pub async fn start(tune: impl FnOnce(&mut Config)) -> Gateway {
        let mut config = Config::default();
        let data = scratch::Scratch::new("store");
        config.storage.dir = data.path().to_owned();
        config.mqtt.listen = "127.0.0.1:0".parse().expect("literal address");
        config.http.listen = None;
        tune(&mut config);
        let broker = Broker::bind(config).await.expect("gateway binds");
        let addr = broker.local_addr();
        let listeners = broker.listener_addrs();
        let context = broker.context();
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(broker.run(async move {
            let _ = stopped.await;
        }));
        Gateway {
            addr,
            listeners,
            context,
            stop: Some(stop),
            _data: data,
        }
    }

    /// Sessions the gateway keeps for clients that are gone (persistent ones).
    pub fn offline_sessions(&self) -> usize {
        self.context.state().sessions_offline
    }

    /// Runs `until` while sampling, every 20 ms, the peer address of each session's connection
    /// as the gateway accepted it: client id -> every address it was seen from. Sampled during
    /// the run because a clean session leaves the registry when its client disconnects.
    pub async fn peers_during<T>(
        &self,
        until: impl Future<Output = T>,
    ) -> (T, BTreeMap<String, BTreeSet<IpAddr>>) {
        let mut peers: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tokio::pin!(until);
        loop {
            tokio::select! {
                out = &mut until => return (out, peers),
                _ = tick.tick() => {
                    for (client_id, connection) in self.context.connections() {
                        if let Some(connection) = connection {
                            peers
                                .entry(client_id.to_string())
                                .or_default()
                                .insert(connection.ip);
                        }
                    }
                }
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[path = "../../../gateway/tests/port/mod.rs"]
mod port;
pub use port::free_port;

/// A Mosquitto we started; killed by its own PID when dropped.
pub struct Mosquitto {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_with("")
    }

    /// Mosquitto whose listener has `listener_lines` (e.g. `certfile ...`) added.
    pub fn start_with(listener_lines: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\n{listener_lines}allow_anonymous true\nmax_queued_messages 0\npersistence false\n"),
        )
        .expect("writes config");
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts (apt install mosquitto)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            addr,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub report: Value,
}

pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/scenarios")
        .join(format!("{name}.toml"))
}

/// Runs `device-sim run ARGS --report <tmp>` and reads its report.
pub async fn simulate(args: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let report_path = dir.path().join("report.json");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_device-sim"));
    command
        .arg("run")
        .args(args)
        .arg("--report")
        .arg(&report_path)
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .expect("device-sim finishes in time")
        .expect("device-sim runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = std::fs::read_to_string(&report_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| panic!("no report; stdout:\n{stdout}\nstderr:\n{stderr}"));
    Run {
        success: output.status.success(),
        stdout,
        stderr,
        report,
    }
}

impl Run {
    pub fn n(&self, key: &str) -> u64 {
        self.report[key]
            .as_u64()
            .unwrap_or_else(|| panic!("report key {key} missing or not a count:\n{}", self.report))
    }

    /// All devices connected, nothing lost, duplicated or reordered, every key present.
    pub fn assert_clean(&self, devices: u64) {
        for key in REPORT_KEYS {
            assert!(
                self.report.get(*key).is_some(),
                "report lacks {key}: {}",
                self.report
            );
        }
        for key in ["latency_ms", "connect_ms"] {
            for q in ["p50", "p99", "p999", "max"] {
                assert!(
                    self.report[key][q].is_number(),
                    "{key}.{q} missing: {}",
                    self.report
                );
            }
        }
        let context = format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        assert!(self.success, "device-sim failed\n{context}");
        assert_eq!(self.n("devices_target"), devices, "{context}");
        assert_eq!(self.n("devices_connected"), devices, "{context}");
        assert_eq!(self.n("connect_failures"), 0, "{context}");
        assert!(self.n("messages_published") > devices, "{context}");
        assert_eq!(self.n("lost"), 0, "{context}");
        assert_eq!(self.n("duplicates"), 0, "{context}");
        assert_eq!(self.n("out_of_order"), 0, "{context}");
        assert_eq!(
            self.n("messages_received"),
            self.n("messages_published"),
            "{context}"
        );
    }
}

/// Persistent-session subscribers dropped for 1.5 s while 50 devices publish at QoS 1.
pub async fn persistent_offline(target: SocketAddr) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("offline.toml");
    // A fresh client id per run: a session left by an earlier run would replay old messages.
    let sub_id = format!("offline-sub-{}-{{id}}", std::process::id());
    std::fs::write(
        &file,
        format!(
            r#"targets = ["{target}"]
devices = 50
publish_interval = "100ms"
qos = 1
protocol = "5"
clean_session = false
session_expiry = "10m"
subscribers = 1
subscriber_client_id = "{sub_id}"
duration = "5s"
drain = "2s"

[disconnect]
at = "1500ms"
share = 1.0
who = "subscribers"
offline_for = "1500ms"
backoff_min = "50ms"
backoff_max = "100ms"
"#
        ),
    )
    .expect("writes scenario");
    simulate(&["--scenario", file.to_str().expect("utf-8 path")], &[]).await
}

/// `reconnect-storm.toml` in small: every device drops 1.5 s in and comes straight back.
pub fn tls_storm_scenario(dir: &Path, target: &str, ca: &Path, devices: u64) -> std::path::PathBuf {
    let file = dir.join("storm.toml");
    std::fs::write(
        &file,
        format!(
            r#"targets = ["{target}"]
devices = {devices}
connect_rate = 1000
topic = "storm/{{id}}/telemetry"
publish_interval = "250ms"
qos = 1
subscribers = 1
duration = "4s"
drain = "1s"
tls = true
cafile = "{ca}"

[disconnect]
at = "1500ms"
share = 1.0
who = "devices"
offline_for = "0s"
backoff_min = "20ms"
backoff_max = "300ms"
"#,
            ca = ca.display()
        ),
    )
    .expect("writes scenario");
    file
}
