//! Shared by the integration tests: a broker started in-process on a free loopback port, and the
//! plumbing to drive real clients (rumqttc) and raw sockets against it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use gateway::{Broker, Config};
use tokio::sync::oneshot;

// A test crate may include two of these helper modules; each brings its own copy.
#[allow(clippy::duplicate_mod)]
#[path = "../scratch/mod.rs"]
pub mod scratch;

pub mod nats;
// A test crate may include two of these helper modules; each brings its own copy.
pub mod pki;
#[allow(clippy::duplicate_mod)]
#[path = "../port/mod.rs"]
pub mod port;

pub struct TestBroker {
    pub addr: SocketAddr,
    /// The `[[listeners]]` addresses, in configuration order.
    pub listeners: Vec<SocketAddr>,
    /// The broker's shared state, to read what it holds (`state()`).
    pub ctx: std::sync::Arc<gateway::Context>,
    /// The HTTP endpoint, when a test turned it on (`http.listen`).
    pub http: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _data: scratch::Scratch,
}

impl TestBroker {
    /// Starts a broker on defaults (on an ephemeral port).
    pub async fn start() -> TestBroker {
        TestBroker::with(|_| {}).await
    }

    /// Starts a broker after `tune` adjusts the default configuration.
    pub async fn with(tune: impl FnOnce(&mut Config)) -> TestBroker {
        let mut config = Config::default();
        let data = scratch::Scratch::new("store");
        config.storage.dir = data.path().to_owned();
        config.mqtt.listen = "127.0.0.1:0".parse().expect("literal address");
        config.http.listen = None;
        // The broker's own $SYS messages would interleave with what the tests expect to receive.
        config.sys.interval = 0;
        tune(&mut config);
        let broker = Broker::bind(config).await.expect("broker binds");
        let addr = broker.local_addr();
        let listeners = broker.listener_addrs();
        let ctx = broker.context();
        let http = broker.http_addr();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(broker.run(async move {
            let _ = stopped.await;
        }));
        TestBroker {
            addr,
            listeners,
            ctx,
            http,
            stop: Some(stop),
            task: Some(task),
            _data: data,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Graceful shutdown, as on SIGTERM.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Waits up to `within` for `cond` to hold, polling.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}
