//! The command line: `device-sim run` with flags that override a scenario file, and the hidden
//! `worker` subcommand the coordinator starts copies of itself with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "device-sim",
    version,
    about = "Simulate MQTT device fleets against any broker and verify every message"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a load scenario (flags override the scenario file).
    Run(Box<RunArgs>),
    /// Internal: one worker process of a multi-process run; reads its plan on stdin.
    #[command(hide = true)]
    Worker,
}

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

#[derive(Args, Debug, Default, Clone)]
pub struct RunArgs {
    /// Scenario file (TOML, see config/scenarios/).
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Broker address; repeat it to spread devices evenly across brokers.
    #[arg(long = "target", value_name = "HOST:PORT")]
    pub targets: Vec<String>,
    /// Number of publishing devices.
    #[arg(long, value_name = "N")]
    pub devices: Option<u64>,
    /// New connections per second across the whole fleet.
    #[arg(long, value_name = "PER_SEC")]
    pub connect_rate: Option<f64>,
    /// At most N first handshakes (TCP connect to CONNACK) in flight across the fleet, on top
    /// of the rate; 0 for no bound.
    #[arg(long, value_name = "N")]
    pub connect_window: Option<u32>,
    /// Client identifier template; `{id}` is the device number.
    #[arg(long, value_name = "TEMPLATE")]
    pub client_id: Option<String>,
    /// Topic template; `{id}` is the device number.
    #[arg(long, value_name = "TEMPLATE")]
    pub topic: Option<String>,
    /// Payload: a size in bytes (binary header plus padding) or a JSON template with `{id}`,
    /// `{seq}`, `{ts}`, `{rand:MIN..MAX}` and `{randint:MIN..MAX}`.
    #[arg(long, value_name = "SIZE|JSON")]
    pub payload: Option<String>,
    /// Time between two messages of one device; 0 means the devices only keep alive (with
    /// `--window`: publish whenever the window has room).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub publish_interval: Option<Duration>,
    /// Closed loop: each device keeps at most N messages outstanding (QoS 1/2: not yet
    /// acknowledged; QoS 0: not yet seen by the subscribers, which must run in the devices'
    /// process) and, with `--publish-interval 0`, sends the next as soon as one completes.
    #[arg(long, value_name = "N")]
    pub window: Option<u32>,
    /// Each interval varies uniformly by up to plus or minus this much.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub jitter: Option<Duration>,
    /// QoS of publications and subscriptions.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: Option<u8>,
    /// MQTT protocol version: 3.1.1 or 5.
    #[arg(long, value_name = "3.1.1|5")]
    pub protocol: Option<String>,
    /// Clean session (3.1.1) / clean start (5); `--clean-session=false` for persistent sessions.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub clean_session: Option<bool>,
    /// MQTT 5 session expiry interval.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub session_expiry: Option<Duration>,
    /// Clean session for the subscribers alone (default: as `--clean-session`):
    /// `--subscriber-clean-session=false` puts a persistent subscriber beside clean devices.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub subscriber_clean_session: Option<bool>,
    /// MQTT 5 session expiry of the subscribers alone (default: as `--session-expiry`).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub subscriber_session_expiry: Option<Duration>,
    /// Keep-alive interval sent in CONNECT (PINGREQ when nothing else was sent).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub keep_alive: Option<Duration>,
    /// Verifying subscriber clients (wildcard over the topic template, or `$share`).
    #[arg(long, value_name = "N")]
    pub subscribers: Option<u32>,
    /// Subscribe through `$share/GROUP/...`: each message goes to one subscriber.
    #[arg(long, value_name = "GROUP")]
    pub share_group: Option<String>,
    /// Subscription filter (default: the topic template with `{id}` replaced by `+`).
    #[arg(long, value_name = "FILTER")]
    pub subscribe_filter: Option<String>,
    /// The targets are nodes of one cluster: every subscriber sees every device's messages, and a
    /// client whose node refuses or is gone fails over to the next target.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub cluster: Option<bool>,
    /// With `--cluster`: the subscribers connect to these nodes (repeat it; subscriber K goes to
    /// the K-th mod their count) instead of to `--target`, so that every message they verify
    /// crossed from another node. Not with `--tls`.
    #[arg(long = "subscriber-target", value_name = "HOST:PORT")]
    pub subscriber_targets: Vec<String>,
    /// Length of the run from the first connection until publishing stops.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub duration: Option<Duration>,
    /// Time to wait for messages still in flight after publishing stops; then they count as lost.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub drain: Option<Duration>,
    /// TCP connect plus CONNACK deadline.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub connect_timeout: Option<Duration>,
    /// Source addresses to bind, e.g. `127.0.0.2-127.0.0.60` or a comma-separated list.
    #[arg(long, value_name = "RANGE")]
    pub source_ips: Option<String>,
    /// Connect over TLS (rustls, TLS 1.3 and 1.2).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub tls: Option<bool>,
    /// PEM CA certificates the broker's certificate must chain to (with `--tls`).
    #[arg(long, value_name = "FILE")]
    pub cafile: Option<PathBuf>,
    /// PEM client certificate for mutual TLS; `%i` in the path becomes the device number
    /// (`sub-K` for subscriber K), for one certificate per device.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<String>,
    /// PEM private key of `--cert`; `%i` as there.
    #[arg(long, value_name = "FILE")]
    pub key: Option<String>,
    /// Accept any broker certificate (tests, lab brokers): no verification.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub insecure: Option<bool>,
    /// The name the broker's certificate is verified against and sent as SNI (default: the
    /// target's host when it is a name; an IP literal is verified as an address, without SNI).
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Resume TLS sessions on reconnect (tickets kept per device); `=false` for full handshakes.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub tls_resumption: Option<bool>,
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long)]
    pub password: Option<String>,
    /// Write the final report as JSON.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// Exit non-zero when more than N messages are lost.
    #[arg(long, value_name = "N")]
    pub max_loss: Option<u64>,
    /// Exit non-zero when the end-to-end p99 latency exceeds this.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub max_p99: Option<Duration>,
    /// Connections one process may hold (default: open-file limit minus a reserve).
    #[arg(long, hide = true, env = "DEVICE_SIM_MAX_PER_PROCESS")]
    pub max_per_process: Option<u64>,
}
