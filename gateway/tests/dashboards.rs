//! The Grafana dashboards, proven against a real Prometheus: Debian's `prometheus` binary,
//! started here on a free loopback port with a 1 s scrape interval, scrapes a gateway while real
//! clients (rumqttc) publish through it; then every panel's query of every dashboard in
//! `dashboards/` (and every template variable's query) goes through Prometheus's HTTP query API.
//! A query Prometheus rejects fails the test, and so does one that returns no series.
//!
//! The device-sim dashboard's queries are checked for validity only until device-sim exposes
//! its metrics (`device_sim_*`); this test says so loudly when it runs. Without a `prometheus`
//! binary the test is skipped with a loud message; `scripts/test.sh` installs it, so CI never
//! skips.

mod clients;
mod observe;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clients::{unique_id, v3, v5};
use observe::{repo_root, request, Observed};
use serde_json::Value;

/// How long scraped data may take to fill every query (rates need two scrapes in their window).
const FILL_DEADLINE: Duration = Duration::from_secs(60);

/// What feeds a dashboard's queries in this test.
#[derive(Clone, Copy, PartialEq)]
enum Feed {
    /// The gateway started here, under traffic: every query must return series.
    Gateway,
    /// Nothing yet (device-sim has no metrics endpoint): queries must be valid PromQL.
    ValidityOnly,
}

const DASHBOARDS: [(&str, Feed); 2] = [
    ("gateway-overview.json", Feed::Gateway),
    ("device-sim.json", Feed::ValidityOnly),
];

/// A Prometheus server of our own; killed (by its process handle) and its files removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(binary: &Path, targets: &[(&str, SocketAddr)]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "gateway-dashboards-{}-{}",
            std::process::id(),
            unique_id("prom")
        ));
        std::fs::create_dir_all(dir.join("data")).expect("temp dir");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"{addr}\"]\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).expect("write config");
        let addr = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        Prometheus { child, dir, addr }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok()
                && request(self.addr, "GET", "/-/ready", None).await.0 == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prometheus not ready within 30 s; its log:\n{}", self.log());
    }

    /// Runs an instant query: Ok(number of series) or Err(Prometheus's error).
    async fn query(&self, promql: &str) -> Result<usize, String> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let (status, body) = request(self.addr, "GET", &path, None).await;
        let reply: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if reply["status"] != "success" {
            return Err(format!(
                "{}: {}",
                reply["errorType"].as_str().unwrap_or("error"),
                reply["error"].as_str().unwrap_or(&body)
            ));
        }
        Ok(reply["data"]["result"].as_array().map_or(0, Vec::len))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

/// Percent-encodes a query parameter value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn prometheus_binary() -> Option<PathBuf> {
    observe::tool("prometheus").or_else(|| {
        let debian = PathBuf::from("/usr/bin/prometheus");
        debian.is_file().then_some(debian)
    })
}

/// One query to check: where it comes from and its PromQL with variables resolved.
struct Check {
    origin: String,
    promql: String,
}

/// Every panel query and variable query of a dashboard, with Grafana's variables replaced the way
/// Grafana would on first load (the variable's default, `allValue` for "All").
fn checks(dashboard: &Value) -> Vec<Check> {
    let mut vars: Vec<(String, String)> = vec![
        ("__rate_interval".to_owned(), "1m".to_owned()),
        ("__range".to_owned(), "5m".to_owned()),
    ];
    let templating = dashboard["templating"]["list"].as_array().cloned();
    for v in templating.iter().flatten() {
        let name = v["name"].as_str().unwrap_or_default().to_owned();
        let current = v["current"]["value"].as_str().unwrap_or_default();
        let value = if current == "$__all" {
            v["allValue"].as_str().unwrap_or(".*")
        } else {
            current
        };
        vars.push((name, value.to_owned()));
    }
    // Longest names first so that `$__range` never eats part of `$__rate_interval`.
    vars.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let resolve = |expr: &str| {
        vars.iter().fold(expr.to_owned(), |e, (name, value)| {
            e.replace(&format!("${{{name}}}"), value)
                .replace(&format!("${name}"), value)
        })
    };
    let mut out = Vec::new();
    for v in templating.iter().flatten() {
        let query = v["query"]["query"].as_str().unwrap_or_default();
        // label_values(SELECTOR, label): the selector must find series for the menu to fill.
        if let Some(inner) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.rsplit_once(','))
            .map(|(selector, _)| selector)
        {
            out.push(Check {
                origin: format!("variable `{}`", v["name"].as_str().unwrap_or("?")),
                promql: resolve(inner),
            });
        }
    }
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(Check {
                    origin: format!(
                        "panel `{}` query {}",
                        panel["title"].as_str().unwrap_or("?"),
                        target["refId"].as_str().unwrap_or("?")
                    ),
                    promql: resolve(expr),
                });
            }
        }
    }
    out
}

/// Publishes through the gateway until stopped: every QoS, a shared subscription, retained
/// messages and messages nobody subscribed to, so that every panel has data.
async fn traffic(addr: SocketAddr, stop: Arc<AtomicBool>) {
    let mut sub = v5::connect(addr, &unique_id("dash-sub")).await;
    sub.subscribe("dash/#", v5::QoS::ExactlyOnce).await;
    let mut member = v3::connect(addr, &unique_id("dash-member")).await;
    member
        .subscribe("$share/g/dash/shared", v3::QoS::AtLeastOnce)
        .await;
    let publ = v3::connect(addr, &unique_id("dash-pub")).await;
    let qos = [
        v3::QoS::AtMostOnce,
        v3::QoS::AtLeastOnce,
        v3::QoS::ExactlyOnce,
    ];
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        publ.publish("dash/a", qos[i % 3], false, format!("m{i}"))
            .await;
        publ.publish("dash/shared", v3::QoS::AtLeastOnce, false, "s")
            .await;
        publ.publish("dash/retained", v3::QoS::AtMostOnce, true, "r")
            .await;
        publ.publish("nobody/listens", v3::QoS::AtMostOnce, false, "x")
            .await;
        // Consume what arrived so the clients' event channels stay short.
        while sub.try_next_publish(Duration::ZERO).await.is_some() {}
        while member.try_next_publish(Duration::ZERO).await.is_some() {}
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_series_from_a_real_prometheus() {
    let Some(binary) = prometheus_binary() else {
        observe::loud(
            "SKIPPED: the dashboard test needs Debian's `prometheus` package \
             (`apt-get install prometheus`; scripts/test.sh installs it). No query was checked.",
        );
        return;
    };
    let obs = Observed::start(|_| {}).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(traffic(obs.mqtt, stop.clone()));
    let prometheus = Prometheus::start(&binary, &[("gateway", obs.http)]);
    prometheus.wait_ready().await;

    let mut pending = Vec::new();
    for (file, feed) in DASHBOARDS {
        let path = repo_root().join("dashboards").join(file);
        let text = std::fs::read_to_string(&path).expect("dashboard file");
        let dashboard: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: invalid JSON: {e}"));
        let checks = checks(&dashboard);
        assert!(checks.len() >= 5, "{file}: only {} queries", checks.len());
        if feed == Feed::ValidityOnly {
            observe::loud(&format!(
                "{file}: {} queries checked for validity only; device-sim does not \
                 expose its metrics yet, so they cannot return series here.",
                checks.len()
            ));
        }
        for check in checks {
            pending.push((file, feed, check));
        }
    }

    let deadline = Instant::now() + FILL_DEADLINE;
    loop {
        let mut empty = Vec::new();
        for (file, feed, check) in &pending {
            match prometheus.query(&check.promql).await {
                Err(e) => panic!(
                    "{file}: {} is rejected by Prometheus: {e}\n  {}",
                    check.origin, check.promql
                ),
                Ok(0) if *feed == Feed::Gateway => {
                    empty.push(format!("{file}: {}\n  {}", check.origin, check.promql))
                }
                Ok(_) => {}
            }
        }
        if empty.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let up = prometheus.query("up == 1").await;
            panic!(
                "queries returned no series after {FILL_DEADLINE:?} (targets up: {up:?}):\n{}\n\
                 prometheus log:\n{}",
                empty.join("\n"),
                prometheus.log()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    drop(prometheus);
    obs.shutdown().await;
}

#[test]
fn the_example_prometheus_config_is_valid() {
    let Some(promtool) = observe::tool("promtool") else {
        observe::loud("SKIPPED: `promtool` not found (Debian's `prometheus` package).");
        return;
    };
    let out = Command::new(promtool)
        .args(["check", "config"])
        .arg(repo_root().join("dashboards/prometheus.yml"))
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
