//! The typed settings: [`Config`], its section tables, the `[[listeners]]` entries, and the
//! defaults they take when the file leaves a key out (the values `config/gateway.toml` documents).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Everything the gateway can be told at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    pub sys: SysConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub storage: StorageConfig,
    /// `[nats]`: how to reach NATS (the cluster's transport, and where `[[ingest]]` writes).
    pub nats: NatsConfig,
    /// `[cluster]`: this node as one of many forming one broker over NATS.
    pub cluster: ClusterConfig,
    /// `[[listeners]]`: listeners besides `mqtt.listen`, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// `[[ingest]]`: rules writing published messages into JetStream streams, in file order.
    pub ingest: Vec<super::IngestRule>,
}

/// What a `[[listeners]]` entry speaks on its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl ListenerKind {
    /// The `kind` value, also the `listener` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

/// One `[[listeners]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub kind: ListenerKind,
    pub bind: SocketAddr,
    /// PEM certificate chain (tls, wss).
    pub cert: Option<PathBuf>,
    /// PEM private key (tls, wss).
    pub key: Option<PathBuf>,
    /// PEM CA certificates that client certificates must chain to.
    pub ca: Option<PathBuf>,
    /// Mutual TLS: a client without a certificate signed by `ca` fails the handshake.
    pub require_client_cert: bool,
    /// The client certificate's subject CN (or first DNS SAN) is the username; no password check.
    pub use_identity_as_username: bool,
    /// HTTP path of the WebSocket upgrade (ws, wss).
    pub path: String,
    /// Open connections on this listener at most; 0: only the global limits.
    pub max_connections: u64,
}

impl ListenerConfig {
    /// A listener of `kind` on `bind` with every other key at its documented default.
    pub fn new(kind: ListenerKind, bind: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            kind,
            bind,
            cert: None,
            key: None,
            ca: None,
            require_client_cert: false,
            use_identity_as_username: false,
            path: "/mqtt".to_owned(),
            max_connections: 0,
        }
    }
}

/// The `[mqtt]` section: the listener and the per-connection and per-session limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// Address the MQTT listener binds.
    pub listen: SocketAddr,
    /// Seconds; cap on the keep-alive a client asks for, announced to v5 clients as Server Keep
    /// Alive when it lowers theirs.
    pub max_keepalive: u16,
    /// Inbound QoS 1/2 window advertised to v5 clients.
    pub receive_maximum: u16,
    /// Bytes; largest packet accepted from or sent to a client.
    pub max_packet_size: u32,
    /// Bound of each session's outbound queue.
    pub max_queued_messages: usize,
    /// Bytes (topics, payloads, properties) each session's queue in memory may hold; 0: none.
    pub max_queued_bytes: u32,
    /// Whether QoS 0 messages are queued for offline persistent sessions.
    pub queue_qos0_offline: bool,
    /// Outbound QoS 1/2 window per session.
    pub max_inflight: u16,
    /// Seconds; cap on v5 session expiry and the expiry given to 3.1.1 persistent sessions.
    pub session_expiry_max: u32,
    /// Maximum number of distinct retained topics.
    pub retained_max: usize,
    /// Bytes the retained messages may hold: topic, payload and properties, with what the
    /// message and its place in the retained store cost besides.
    pub retained_max_bytes: usize,
    /// Time a new connection has from accept (or its connect_rate slot) to CONNACK: reading
    /// CONNECT, the password check and taking its session over.
    pub connect_timeout: Duration,
    /// Time a packet may take to arrive whole once its first bytes came.
    pub packet_timeout: Duration,
    /// How long a client without keep-alive (keep-alive 0) may go without traffic either way
    /// before it is closed; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Seconds an accepted socket may be silent before the kernel starts TCP keepalive probes; 0
    /// disables TCP keepalive.
    pub tcp_keepalive_idle: u32,
    /// Seconds between TCP keepalive probes.
    pub tcp_keepalive_interval: u32,
    /// Unanswered TCP keepalive probes after which the kernel drops the connection.
    pub tcp_keepalive_count: u32,
    /// Maximum number of `/`-separated levels in a topic name or filter.
    pub max_topic_levels: usize,
    /// Inbound topic aliases accepted from a v5 client; 0 disables them.
    pub topic_alias_maximum: u16,
    /// Whether topic aliases are used towards v5 clients that allow them.
    pub outbound_topic_aliases: bool,
    /// File descriptors kept free below RLIMIT_NOFILE; connections are refused past that point.
    pub fd_reserve: u32,
    /// Silence after which a session hibernates (its task ends, its socket leaves tokio's
    /// reactor); a new session also hibernates at once when it has nothing to do. `None`: never.
    pub hibernate_after: Option<Duration>,
}

/// The `[http]` section: the health, metrics and admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Address the HTTP endpoint binds; `None` when disabled (`"off"` or `""` in the file).
    pub listen: Option<SocketAddr>,
    /// Bearer token of the admin API; `None` (`""` in the file) disables the API.
    pub admin_token: Option<String>,
}

/// The `[sys]` section: the broker's `$SYS/` status topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysConfig {
    /// Seconds between publications of the `$SYS/` topics; 0 disables them.
    pub interval: u32,
}

/// The `[auth]` section: who may connect, and the rules on what they may read and write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// Whether clients without a (verified) username are accepted; they also are when no
    /// password file is set and the MQTT listener is on a loopback address (see `auth`).
    pub allow_anonymous: bool,
    /// Mosquitto-style password file (`$7$` PBKDF2-SHA512 and argon2 entries).
    pub password_file: Option<PathBuf>,
    /// Mosquitto-style ACL file; `None` allows every client everything.
    pub acl_file: Option<PathBuf>,
}

/// The `[limits]` section: overload protection. Per-listener connection limits come with the
/// listeners work (issue 7); `[mqtt] max_topic_levels` stays where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Open connections (handshakes included) beyond which new ones are closed at once; 0 leaves
    /// only the open-file limit.
    pub max_connections: u64,
    /// New connections served per second; 0 disables pacing.
    pub connect_rate: u32,
    /// Connections served at once before `connect_rate` paces them.
    pub connect_burst: u32,
    /// Connections accepted and not yet answered with CONNACK; 0 means no limit.
    pub max_handshakes: u64,
    /// PUBLISH packets per second per client; 0 means no limit.
    pub max_publish_rate: u32,
    /// PUBLISH payload and topic bytes per second per client; 0 means no limit.
    pub max_publish_bytes_rate: u64,
    /// Subscriptions one session may hold; 0 means no limit.
    pub max_subscriptions_per_client: usize,
    /// Bytes one session's subscriptions may cost: each its filter twice and a fixed part (see
    /// `session::subscription_bytes`); 0 means no limit.
    pub max_subscription_bytes_per_client: usize,
    /// Retained messages queued for one session by its SUBSCRIBEs and not yet sent; 0 means no
    /// limit.
    pub max_retained_backlog: usize,
    /// Bytes (topic and payload) of the retained messages queued for one session by its
    /// SUBSCRIBEs and not yet sent; 0 means no limit.
    pub max_retained_backlog_bytes: usize,
    /// Bytes; longest topic name or subscription filter accepted.
    pub max_topic_length: usize,
    /// Bytes of resident memory above which new connections are refused and QoS 0 is shed; 0
    /// disables the check.
    pub memory_high_water: u64,
}

/// The `[storage]` section: what outlives the process, and when PUBACK may be sent for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Persistent sessions, their messages and retained messages kept on disk; `false` keeps
    /// everything in memory only (a restart starts empty).
    pub enabled: bool,
    /// Directory of the store file, relative to the working directory unless absolute.
    pub dir: PathBuf,
    /// Milliseconds a commit waits to gather more writes: at most this is added to a PUBACK
    /// of a stored message, and one fsync covers everything gathered.
    pub commit_delay_ms: u32,
    pub sync: StorageSync,
}

/// When a stored message is acknowledged to its publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageSync {
    /// PUBACK / PUBREC only once the message is on disk (fsynced): nothing acknowledged is lost.
    Always,
    /// PUBACK / PUBREC at once; writes reach the disk every `commit_delay_ms`: a crash loses
    /// at most that much of what was acknowledged.
    Batched,
}

impl StorageSync {
    /// The `sync` value.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageSync::Always => "always",
            StorageSync::Batched => "batched",
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            enabled: true,
            dir: PathBuf::from("data"),
            commit_delay_ms: 2,
            sync: StorageSync::Always,
        }
    }
}

/// The `[nats]` section: the NATS servers and how to log in to them. Used only by what needs
/// NATS (`[cluster] enabled`, `[[ingest]]` rules); a node without them never connects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsConfig {
    /// `nats://host:port` or `tls://host:port` URLs; the client fails over between them.
    pub servers: Vec<String>,
    /// User name and password (`user`, `password`), both or neither.
    pub user: Option<String>,
    pub password: Option<String>,
    /// Authentication token.
    pub token: Option<String>,
    /// A NATS `.creds` file (user JWT and NKey seed).
    pub creds_file: Option<PathBuf>,
    /// PEM CA certificates the servers' certificates must chain to; setting it requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate and key, for servers that verify clients (both or neither).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl NatsConfig {
    /// Whether the connection must use TLS: a `tls://` URL or any TLS file asks for it.
    pub fn tls_required(&self) -> bool {
        self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.servers.iter().any(|s| s.starts_with("tls://"))
    }
}

/// The `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Whether this node joins a cluster over `[nats]`; false: a standalone broker.
    pub enabled: bool,
    /// This node's name, unique within the cluster (one NATS subject token).
    pub node_name: String,
    /// First token of every NATS subject the cluster uses, so that several clusters (or other
    /// applications) can share one NATS without seeing each other's traffic.
    pub subject_prefix: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            node_name: String::new(),
            subject_prefix: "gateway".to_owned(),
        }
    }
}

/// The `[log]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A level name or a `tracing_subscriber::EnvFilter` directive string.
    pub level: String,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 1883)),
            max_keepalive: 65535,
            receive_maximum: 256,
            max_packet_size: 1_048_576,
            max_queued_messages: 1000,
            max_queued_bytes: 16 << 20,
            queue_qos0_offline: false,
            max_inflight: 32,
            session_expiry_max: 172_800,
            retained_max: 1_000_000,
            retained_max_bytes: 1 << 30,
            connect_timeout: Duration::from_secs(10),
            packet_timeout: Duration::from_secs(60),
            idle_timeout: Some(Duration::from_secs(3600)),
            tcp_keepalive_idle: 300,
            tcp_keepalive_interval: 30,
            tcp_keepalive_count: 4,
            max_topic_levels: 64,
            topic_alias_maximum: 64,
            outbound_topic_aliases: true,
            fd_reserve: 64,
            hibernate_after: Some(Duration::from_secs(10)),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 0,
            connect_rate: 2000,
            connect_burst: 2000,
            max_handshakes: 10_000,
            max_publish_rate: 0,
            max_publish_bytes_rate: 0,
            max_subscriptions_per_client: 10_000,
            max_subscription_bytes_per_client: 8 << 20,
            max_retained_backlog: 100_000,
            max_retained_backlog_bytes: 16 << 20,
            max_topic_length: 1024,
            memory_high_water: 0,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9883))),
            admin_token: None,
        }
    }
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig { interval: 10 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
        }
    }
}
