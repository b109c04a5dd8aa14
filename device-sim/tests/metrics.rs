//! device-sim's own metrics (`--http-listen`) while it publishes through the gateway: every
//! series `dashboards/device-sim.json` queries exists from the first scrape (at 0 until it moves),
//! `promtool check metrics` reports nothing on the exposition, and the dashboard is proven
//! against a real Prometheus (Debian's package, loopback port, 1 s scrapes) scraping the gateway
//! and device-sim: every panel and variable query must be valid and return series.
//!
//! The Prometheus support is the gateway tests' (`gateway/tests/observe`); without the
//! `prometheus` package these tests skip loudly, and fail under CI.

#[path = "../../gateway/tests/observe/mod.rs"]
mod observe;

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::{free_port, Gateway};
use observe::prometheus::{promtool_accepts, Prometheus};
use observe::{repo_root, request, samples, total, Observed};
use tokio::time::Instant;

const DASHBOARD: &str = "device-sim.json";

/// A `device-sim run` publishing through a broker for up to two minutes, its metrics on a free
/// loopback port; killed (through its own process handle) when dropped.
struct Sim {
    http: SocketAddr,
    child: tokio::process::Child,
    dir: tempfile::TempDir,
}

impl Sim {
    fn start(target: SocketAddr) -> Sim {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(dir.path().join("stderr")).expect("log file");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_device-sim"))
            .arg("run")
            .args(["--target", &target.to_string()])
            .args([
                "--devices",
                "20",
                "--publish-interval",
                "100ms",
                "--qos",
                "1",
            ])
            .args(["--duration", "120s", "--http-listen", &http.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("device-sim starts");
        Sim { http, child, dir }
    }

    /// The exposition, as soon as the endpoint answers.
    async fn metrics(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self.dir.path().join("stderr"));
                panic!(
                    "device-sim exited ({status}); its stderr:\n{}",
                    log.unwrap_or_default()
                );
            }
            if tokio::net::TcpStream::connect(self.http).await.is_ok() {
                let (status, body) = request(self.http, "GET", "/metrics", None).await;
                assert_eq!(status, 200, "GET /metrics: {body}");
                return body;
            }
            assert!(Instant::now() < deadline, "no metrics endpoint within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The metric names the dashboard's queries use (histograms as their `_bucket` series).
fn dashboard_metrics() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("dashboards").join(DASHBOARD))
        .expect("dashboard file");
    let mut names: Vec<String> = text
        .match_indices("device_sim_")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_series_exists_from_the_start_and_promtool_accepts_the_exposition() {
    let gateway = Gateway::start(|_| {}).await;
    let mut sim = Sim::start(gateway.addr);
    let first = sim.metrics().await;
    let at_start = samples(&first);
    let names = dashboard_metrics();
    assert!(names.len() >= 10, "{DASHBOARD}: only {names:?}");
    for name in &names {
        assert!(
            at_start
                .keys()
                .any(|series| series.split('{').next() == Some(name.as_str())),
            "{name} (queried by {DASHBOARD}) is missing from the first exposition:\n{first}"
        );
    }
    for series in [
        "device_sim_messages_lost_total",
        "device_sim_connect_failures_total{reason=\"refused\"}",
        "device_sim_connect_failures_total{reason=\"timeout\"}",
        "device_sim_disconnects_total{reason=\"closed_by_broker\"}",
        "device_sim_disconnects_total{reason=\"reset\"}",
    ] {
        assert_eq!(at_start.get(series), Some(&0.0), "{series} at 0:\n{first}");
    }
    promtool_accepts(&first);

    // Again under traffic, when the histograms have samples and the counters have moved.
    let deadline = Instant::now() + Duration::from_secs(30);
    let later = loop {
        let text = sim.metrics().await;
        let now = samples(&text);
        if total(&now, "device_sim_messages_received_total", &[]) > 0.0
            && total(&now, "device_sim_latency_seconds_count", &[]) > 0.0
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no deliveries within 30 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    promtool_accepts(&later);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_series_from_a_real_prometheus() {
    let gateway = Observed::start(|_| {}).await;
    let mut sim = Sim::start(gateway.mqtt);
    sim.metrics().await;
    let targets = [("gateway", gateway.http), ("device-sim", sim.http)];
    if let Some(prometheus) = Prometheus::start(&targets).await {
        prometheus.prove_dashboard(DASHBOARD).await;
    }
    drop(sim);
    gateway.shutdown().await;
}
