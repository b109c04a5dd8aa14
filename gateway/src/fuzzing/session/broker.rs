//! The broker one input runs against: the shared `Context` as `Broker::bind` builds it, without
//! sockets, store, cluster or HTTP endpoint, its limits picked by the input; connections are
//! handed to `client::serve` over in-memory streams. Its counters are read back (panics caught by
//! `spawn_isolated`, messages dropped by reason) through a recorder of its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use parking_lot::Mutex;
use tokio::io::DuplexStream;

use super::super::input::Input;
use crate::admission::Admission;
use crate::auth::Security;
use crate::client::{serve, Opened};
use crate::config::Config;
use crate::connection::Connection;
use crate::context::{ConnectionSlot, Context};
use crate::hibernate::Parker;
use crate::limits::Handshake;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::registry::Registry;
use crate::router::Router;
use crate::session::QueueLimits;

/// Bytes either direction of a connection buffers before its writer waits: small enough that a
/// client that does not read makes the broker's write queue grow and its read pause.
const PIPE_BYTES: usize = 16 * 1024;

/// The limits an input runs under, small where the interesting edges are.
pub(super) fn config(input: &mut Input) -> Config {
    let mut config = Config::from_toml("").expect("the default configuration loads");
    let mqtt = &mut config.mqtt;
    mqtt.max_inflight = input.pick(&[1, 2, 3, 32]);
    mqtt.max_queued_messages = input.pick(&[1, 3, 8, 1000]);
    mqtt.max_queued_bytes = input.pick(&[0, 40, 16 << 20]);
    mqtt.receive_maximum = input.pick(&[1, 2, 256]);
    mqtt.topic_alias_maximum = input.pick(&[0, 2, 64]);
    mqtt.outbound_topic_aliases = input.byte() & 1 == 0;
    mqtt.max_packet_size = input.pick(&[128, 1024, 1 << 20]);
    mqtt.queue_qos0_offline = input.byte() & 1 == 1;
    mqtt.packet_timeout = Duration::from_secs(input.pick(&[1, 60]));
    let limits = &mut config.limits;
    limits.max_retained_backlog = input.pick(&[1, 3, 100_000]);
    limits.max_retained_backlog_bytes = input.pick(&[64, 16 << 20]);
    limits.max_subscriptions_per_client = input.pick(&[2, 10_000]);
    limits.max_publish_rate = input.pick(&[0, 0, 0, 20]);
    config.storage.enabled = false;
    config.http.listen = None;
    config.sys.interval = 0;
    config
}

/// Counters by name and labels, as the broker's `Metrics` handles update them.
#[derive(Default)]
pub(super) struct Counters(Mutex<HashMap<String, Arc<AtomicU64>>>);

impl Counters {
    /// The sum of every counter whose key (`name{label=value,...}`) starts with `prefix`.
    pub(super) fn sum(&self, prefix: &str) -> u64 {
        self.0
            .lock()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.load(Ordering::Relaxed))
            .sum()
    }
}

struct Counting(Arc<Counters>);

impl Recorder for Counting {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let cell = self.0 .0.lock().entry(name).or_default().clone();
        Counter::from_arc(cell)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// The broker's shared state for `config`, inside the (paused) runtime, with its counters.
pub(super) fn context(config: Config) -> (Arc<Context>, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let recorder = Counting(counters.clone());
    let metrics = Arc::new(metrics::with_local_recorder(&recorder, Metrics::new));
    let limits = QueueLimits {
        max_queued: config.mqtt.max_queued_messages,
        max_queued_bytes: config.mqtt.max_queued_bytes,
        queue_qos0_offline: config.mqtt.queue_qos0_offline,
    };
    let router = Router::new(
        limits,
        config.mqtt.retained_max,
        config.mqtt.max_topic_levels,
        metrics.clone(),
    );
    let ctx = Context {
        policy: Policy::new(&config),
        security: Security::load(&config).expect("no password or ACL file to load"),
        config,
        router: Arc::new(router),
        registry: Arc::new(Registry::new()),
        metrics,
        admission: Admission::new(usize::MAX),
        endpoints: Vec::new(),
        ready: AtomicBool::new(true),
        // The broker's clock reads tokio's (paused) one.
        started: tokio::time::Instant::now().into_std(),
        parker: Parker::new().expect("an epoll instance for the parker"),
        ingest: None,
    };
    (Arc::new(ctx), counters)
}

/// Serves a new client connection as the MQTT listener would; returns the client's end.
pub(super) fn connect(
    ctx: &Arc<Context>,
    port: u16,
) -> (DuplexStream, tokio::task::JoinHandle<()>) {
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    let slot = ConnectionSlot::new(ctx.clone(), None);
    let handshake = Handshake::new(ctx.clone(), None);
    let open = std::future::ready(Some(Opened {
        conn: Connection::stream(Box::new(theirs)),
        identity: None,
        default_listener: true,
    }));
    let peer = SocketAddr::from(([127, 0, 0, 1], port));
    let task = tokio::spawn(serve(slot, handshake, open, peer));
    (ours, task)
}
