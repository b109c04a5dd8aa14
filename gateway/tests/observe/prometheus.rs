//! Debian's `prometheus` package in the tests: a Prometheus server of our own (loopback port,
//! 1 s scrape interval) and its HTTP query API, the proof that every query of a Grafana dashboard
//! in `dashboards/` is valid and returns series, and `promtool check metrics`.
//!
//! Shared by the gateway's tests and, through `#[path]`, device-sim's. Without the package a
//! test is skipped with a loud message, except under CI (`CI` set, as CI services do), where it
//! fails: `scripts/test.sh` installs the package, so CI never skips.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{loud, repo_root, request, tool};

/// How long scraped data may take to fill every query (rates need two scrapes in their window).
const FILL_DEADLINE: Duration = Duration::from_secs(60);

/// A tool of the `prometheus` package: `None` (after a loud message) when it is missing outside
/// CI; a panic when it is missing under CI.
pub fn required(name: &str) -> Option<PathBuf> {
    let found = tool(name).or_else(|| {
        let debian = Path::new("/usr/bin").join(name);
        debian.is_file().then_some(debian)
    });
    if found.is_none() {
        let missing = format!(
            "`{name}` not found: install Debian's `prometheus` package \
             (`apt-get install prometheus`; scripts/test.sh does)"
        );
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(!ci, "{missing}; CI must not skip this test");
        loud(&format!("SKIPPED: {missing}. Nothing was checked."));
    }
    found
}

/// Asserts that `promtool check metrics` accepts an exposition without a single remark.
/// Skipped loudly (outside CI) without promtool.
pub fn promtool_accepts(exposition: &str) {
    let Some(promtool) = required("promtool") else {
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics complained:\n{report}"
    );
}

/// A Prometheus server of our own; killed (by its process handle) and its files removed on drop.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts `prometheus` scraping each `(job, address)` every second and waits until it is
    /// ready; `None` when the binary is missing outside CI (see `required`).
    pub async fn start(targets: &[(&str, SocketAddr)]) -> Option<Prometheus> {
        let binary = required("prometheus")?;
        let addr = free_port();
        let dir = std::env::temp_dir().join(format!(
            "dashboards-prometheus-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(dir.join("data")).expect("temp dir");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        // One scrape config per job (Prometheus refuses a job name twice), with its targets.
        let mut jobs: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for (job, target) in targets {
            jobs.entry(job).or_default().push(format!("\"{target}\""));
        }
        for (job, targets) in jobs {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).expect("write config");
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
        let prometheus = Prometheus { child, dir, addr };
        prometheus.wait_ready().await;
        Some(prometheus)
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

    /// Waits until `promql` returns at least one series (a comparison such as `x > 0` returns
    /// none while it does not hold); panics after `FILL_DEADLINE`.
    pub async fn holds(&self, promql: &str) {
        let deadline = Instant::now() + FILL_DEADLINE;
        loop {
            match self.query(promql).await {
                Ok(n) if n > 0 => return,
                Err(e) => panic!("{promql} is rejected by Prometheus: {e}"),
                Ok(_) if Instant::now() > deadline => {
                    panic!("{promql} did not hold within {FILL_DEADLINE:?}")
                }
                Ok(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// Runs every panel and variable query of `dashboards/{file}` until each returns at least
    /// one series; panics at once on a query Prometheus rejects, and after `FILL_DEADLINE` on
    /// queries still empty.
    pub async fn prove_dashboard(&self, file: &str) {
        let path = repo_root().join("dashboards").join(file);
        let text = std::fs::read_to_string(&path).expect("dashboard file");
        let dashboard: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: invalid JSON: {e}"));
        let checks = checks(&dashboard);
        assert!(checks.len() >= 5, "{file}: only {} queries", checks.len());
        let deadline = Instant::now() + FILL_DEADLINE;
        loop {
            let mut empty = Vec::new();
            for check in &checks {
                match self.query(&check.promql).await {
                    Err(e) => panic!(
                        "{file}: {} is rejected by Prometheus: {e}\n  {}",
                        check.origin, check.promql
                    ),
                    Ok(0) => empty.push(format!("{file}: {}\n  {}", check.origin, check.promql)),
                    Ok(_) => {}
                }
            }
            if empty.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let up = self.query("up == 1").await;
                panic!(
                    "queries returned no series after {FILL_DEADLINE:?} (targets up: {up:?}):\n{}\n\
                     prometheus log:\n{}",
                    empty.join("\n"),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
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
    SocketAddr::from(([127, 0, 0, 1], super::port::free_port()))
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
