//! Shared by the observability tests: a broker with its HTTP endpoint on a free loopback port, a
//! minimal HTTP/1.1 client (the tests need GET/POST with a header, nothing more), a parser for
//! the Prometheus text format, and the metric list of `docs/operations.md` (its `## Metrics`
//! section); a real Prometheus and promtool in `prometheus`. device-sim's tests include this
//! module too.

#![allow(dead_code)]

pub mod prometheus;
// A test crate may include two of these helper modules; each brings its own copy.
#[allow(clippy::duplicate_mod)]
#[path = "../port/mod.rs"]
pub mod port;
// A test crate may include two of these helper modules; each brings its own copy.
#[allow(clippy::duplicate_mod)]
#[path = "../scratch/mod.rs"]
pub mod scratch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gateway::{Broker, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub const TOKEN: &str = "test-admin-token-0123456789";

pub struct Observed {
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _data: scratch::Scratch,
}

/// A broker bound and not yet running, with its store's directory.
pub struct Bound {
    pub broker: Broker,
    data: scratch::Scratch,
}

impl Observed {
    /// A running broker with HTTP, the admin API (`TOKEN`) and `$SYS` every second.
    /// Returns once `/readyz` no longer says the broker is starting (it may still say another
    /// reason, such as NATS being unreachable): `run` marks it ready on a task of its own.
    pub async fn start(tune: impl FnOnce(&mut Config)) -> Observed {
        let broker = Observed::bind(tune).await;
        let observed = Observed::run(broker);
        for _ in 0..500 {
            let (_, body) = request(observed.http, "GET", "/readyz", None).await;
            if !body.contains("starting") {
                return observed;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the broker still says it is starting after 5 s");
    }

    /// A cluster node named `name` on the NATS server at `nats_url` (no `$SYS`), with the rest
    /// of its configuration as `tune` leaves it.
    pub async fn cluster_node(
        nats_url: &str,
        name: &str,
        tune: impl FnOnce(&mut Config),
    ) -> Observed {
        let url = nats_url.to_owned();
        let name = name.to_owned();
        Observed::start(move |c| {
            c.sys.interval = 0;
            c.nats.servers = vec![url];
            c.cluster.enabled = true;
            c.cluster.node_name = name;
            tune(c);
        })
        .await
    }

    /// Binds without running, to observe the endpoint while the broker is starting.
    pub async fn bind(tune: impl FnOnce(&mut Config)) -> Bound {
        let mut config = Config::default();
        let data = scratch::Scratch::new("store");
        config.storage.dir = data.path().to_owned();
        config.mqtt.listen = "127.0.0.1:0".parse().expect("literal address");
        config.http.listen = Some("127.0.0.1:0".parse().expect("literal address"));
        config.http.admin_token = Some(TOKEN.to_owned());
        config.sys.interval = 1;
        tune(&mut config);
        let broker = Broker::bind(config).await.expect("broker binds");
        Bound { broker, data }
    }

    pub fn run(bound: Bound) -> Observed {
        let Bound { broker, data } = bound;
        let mqtt = broker.local_addr();
        let http = broker.http_addr().expect("HTTP endpoint on");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(broker.run(async move {
            let _ = stopped.await;
        }));
        Observed {
            mqtt,
            http,
            stop: Some(stop),
            task: Some(task),
            _data: data,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        request(self.http, "GET", path, Some(TOKEN)).await
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = request(self.http, "GET", "/metrics", None).await;
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn shutdown(mut self) {
        self.stop();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns status code and body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("HTTP connect");
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("HTTP write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("HTTP read");
        String::from_utf8(raw).expect("UTF-8 response")
    };
    let text = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("HTTP response within 10 s");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Whether `path` answers `want` within two seconds (polled).
pub async fn eventually_status(http: SocketAddr, path: &str, want: u16) -> bool {
    for _ in 0..200 {
        if request(http, "GET", path, None).await.0 == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Samples of a text exposition: series (name with labels, as written) -> value.
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of every sample of a metric name whose label text contains each of `labels`.
pub fn total(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name && labels.iter().all(|l| rest.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Metric families declared by `# TYPE` lines, with their type.
pub fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_owned(), kind.to_owned()))
        })
        .collect()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// The metric names of `docs/operations.md`: the first code span of each table row whose first
/// cell is a metric name, within the `## Metrics` section of `markdown`.
pub fn listed_metrics(markdown: &str) -> Vec<String> {
    let Some(start) = markdown.find("\n## Metrics\n") else {
        return Vec::new();
    };
    let section = &markdown[start + 4..];
    let section = section.find("\n## ").map_or(section, |end| &section[..end]);
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(name, _)| name.to_owned()))
        .filter(|name| name.starts_with("gateway_") || name.starts_with("process_"))
        .collect()
}

/// `promtool`, if installed (Debian's `prometheus` package); `scripts/test.sh` installs it.
pub fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Prints past the test harness's output capture, so that a skipped check is seen even when the
/// test passes.
pub fn loud(message: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "\n!!!!! {message} !!!!!\n");
}
