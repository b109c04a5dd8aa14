//! Gateway configuration: the typed settings, their defaults, and the TOML loader.
//!
//! This module owns what an operator may tune and how a mistake in it is reported. The file is
//! walked key by key instead of being handed to a derive, because every rejected file must produce
//! exactly one line that names the full dotted key and the value found there: an operator reading
//! a crash-looping service's log should see what to fix without reading a parser trace.
//!
//! The documented default file is `config/gateway.toml`; a test keeps it identical to
//! [`Config::default`].

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

/// Everything the gateway can be told at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    pub sys: SysConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    /// `[[listeners]]`: listeners besides `mqtt.listen`, in file order.
    pub listeners: Vec<ListenerConfig>,
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
    /// Whether QoS 0 messages are queued for offline persistent sessions.
    pub queue_qos0_offline: bool,
    /// Outbound QoS 1/2 window per session.
    pub max_inflight: u16,
    /// Seconds; cap on v5 session expiry and the expiry given to 3.1.1 persistent sessions.
    pub session_expiry_max: u32,
    /// Maximum number of distinct retained topics.
    pub retained_max: usize,
    /// Time a new connection has to complete CONNECT.
    pub connect_timeout: Duration,
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
    /// Bytes; longest topic name or subscription filter accepted.
    pub max_topic_length: usize,
    /// Bytes of resident memory above which new connections are refused and QoS 0 is shed; 0
    /// disables the check.
    pub memory_high_water: u64,
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
            queue_qos0_offline: false,
            max_inflight: 32,
            session_expiry_max: 172_800,
            retained_max: 1_000_000,
            connect_timeout: Duration::from_secs(10),
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

/// Why a configuration was rejected. Each message is a single line naming the key and the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: cannot read {}: {}", path.display(), os_reason(source))]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("config: TOML syntax error at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("config: unknown key `{key}` (value: {value})")]
    UnknownKey { key: String, value: String },
    #[error("config: invalid value for `{key}`: {value} ({reason})")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
}

/// Inclusive range accepted for an integer key. Ranges are shared by the file parser and
/// [`Config::validate`] so both report the same limits.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    min: u64,
    max: u64,
}

/// TOML integers are i64, so this upper bound means "no limit beyond the file format's own".
const UNBOUNDED: u64 = i64::MAX as u64;

const MAX_KEEPALIVE: Bounds = Bounds::new(1, u16::MAX as u64);
const RECEIVE_MAXIMUM: Bounds = Bounds::new(1, u16::MAX as u64);
/// Below 64 bytes ordinary CONNECT and v5 CONNACK packets stop fitting; 268435455 is the largest
/// remaining length the MQTT variable-byte integer can express.
const MAX_PACKET_SIZE: Bounds = Bounds::new(64, 268_435_455);
const MAX_QUEUED_MESSAGES: Bounds = Bounds::new(1, UNBOUNDED);
const MAX_INFLIGHT: Bounds = Bounds::new(1, u16::MAX as u64);
const SESSION_EXPIRY_MAX: Bounds = Bounds::new(0, u32::MAX as u64);
const RETAINED_MAX: Bounds = Bounds::new(0, UNBOUNDED);
const MAX_TOPIC_LEVELS: Bounds = Bounds::new(1, UNBOUNDED);
const TOPIC_ALIAS_MAXIMUM: Bounds = Bounds::new(0, u16::MAX as u64);
const FD_RESERVE: Bounds = Bounds::new(0, u32::MAX as u64);
const MAX_CONNECTIONS: Bounds = Bounds::new(0, UNBOUNDED);
const CONNECT_RATE: Bounds = Bounds::new(0, u32::MAX as u64);
/// A burst of 0 would never admit anyone while pacing is on.
const CONNECT_BURST: Bounds = Bounds::new(1, u32::MAX as u64);
const MAX_HANDSHAKES: Bounds = Bounds::new(0, UNBOUNDED);
const MAX_PUBLISH_RATE: Bounds = Bounds::new(0, u32::MAX as u64);
const MAX_PUBLISH_BYTES_RATE: Bounds = Bounds::new(0, UNBOUNDED);
const MAX_SUBSCRIPTIONS: Bounds = Bounds::new(0, UNBOUNDED);
/// A topic of one byte must fit; 65535 is the longest an MQTT string can be.
const MAX_TOPIC_LENGTH: Bounds = Bounds::new(1, u16::MAX as u64);
const MEMORY_HIGH_WATER: Bounds = Bounds::new(0, UNBOUNDED);
/// A day: longer intervals would make the load averages and uptime meaningless.
const SYS_INTERVAL: Bounds = Bounds::new(0, 86_400);
/// Shorter tokens are guessable by brute force over the network.
const ADMIN_TOKEN_MIN_LEN: usize = 16;

impl Bounds {
    const fn new(min: u64, max: u64) -> Bounds {
        Bounds { min, max }
    }

    fn contains(self, n: u64) -> bool {
        (self.min..=self.max).contains(&n)
    }
}

impl fmt::Display for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.max == UNBOUNDED {
            write!(f, "must be >= {}", self.min)
        } else {
            write!(f, "must be {}..={}", self.min, self.max)
        }
    }
}

const LISTEN_HINT: &str = "expected an IP address and port such as 127.0.0.1:1883 or [::]:1883";
const LEVEL_HINT: &str = "expected error, warn, info, debug, trace or a tracing filter directive";

impl Config {
    /// Parses TOML text. Unknown sections/keys and bad values are errors.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let table: Table = text.parse().map_err(|e| syntax_error(text, &e))?;
        let mut config = Config::default();
        for (section, body) in &table {
            if section == "listeners" {
                config.listeners = listeners(body)?;
                continue;
            }
            if !matches!(
                section.as_str(),
                "mqtt" | "http" | "sys" | "log" | "auth" | "limits"
            ) {
                return Err(ConfigError::UnknownKey {
                    key: section.clone(),
                    value: render(body),
                });
            }
            let Value::Table(keys) = body else {
                return Err(invalid(section, body, "expected a table"));
            };
            for (key, value) in keys {
                config.set_value(section, key, value)?;
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a file; a read failure names the path and the OS reason.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Sets a string-valued key (`mqtt.listen`, `http.listen`, `log.level`) from its textual
    /// form, as command-line overrides do. The value is checked exactly as if the file held it,
    /// so a flag and a file line fail with the same message.
    pub fn set(&mut self, dotted_key: &str, value: &str) -> Result<(), ConfigError> {
        let value = Value::String(value.to_owned());
        match dotted_key.split_once('.') {
            Some((section, key)) => self.set_value(section, key, &value),
            None => Err(ConfigError::UnknownKey {
                key: dotted_key.to_owned(),
                value: render(&value),
            }),
        }
    }

    /// Checks every range rule (the same ones the parser applies, so configs built in code are
    /// held to them too) and the cross-field rules: the HTTP endpoint may not claim the MQTT
    /// listener's fixed address, and the log level must parse as a filter.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let m = &self.mqtt;
        check("mqtt.max_keepalive", m.max_keepalive.into(), MAX_KEEPALIVE)?;
        check(
            "mqtt.receive_maximum",
            m.receive_maximum.into(),
            RECEIVE_MAXIMUM,
        )?;
        check(
            "mqtt.max_packet_size",
            m.max_packet_size.into(),
            MAX_PACKET_SIZE,
        )?;
        check(
            "mqtt.max_queued_messages",
            m.max_queued_messages as u64,
            MAX_QUEUED_MESSAGES,
        )?;
        check("mqtt.max_inflight", m.max_inflight.into(), MAX_INFLIGHT)?;
        check(
            "mqtt.session_expiry_max",
            m.session_expiry_max.into(),
            SESSION_EXPIRY_MAX,
        )?;
        check("mqtt.retained_max", m.retained_max as u64, RETAINED_MAX)?;
        if m.connect_timeout.is_zero() {
            return Err(ConfigError::InvalidValue {
                key: "mqtt.connect_timeout".to_owned(),
                value: "0".to_owned(),
                reason: "must be > 0 seconds".to_owned(),
            });
        }
        check(
            "mqtt.max_topic_levels",
            m.max_topic_levels as u64,
            MAX_TOPIC_LEVELS,
        )?;
        check(
            "mqtt.topic_alias_maximum",
            m.topic_alias_maximum.into(),
            TOPIC_ALIAS_MAXIMUM,
        )?;
        check("mqtt.fd_reserve", m.fd_reserve.into(), FD_RESERVE)?;
        check("sys.interval", self.sys.interval.into(), SYS_INTERVAL)?;
        let l = &self.limits;
        check("limits.max_connections", l.max_connections, MAX_CONNECTIONS)?;
        check("limits.connect_rate", l.connect_rate.into(), CONNECT_RATE)?;
        check(
            "limits.connect_burst",
            l.connect_burst.into(),
            CONNECT_BURST,
        )?;
        check("limits.max_handshakes", l.max_handshakes, MAX_HANDSHAKES)?;
        check(
            "limits.max_publish_rate",
            l.max_publish_rate.into(),
            MAX_PUBLISH_RATE,
        )?;
        check(
            "limits.max_publish_bytes_rate",
            l.max_publish_bytes_rate,
            MAX_PUBLISH_BYTES_RATE,
        )?;
        check(
            "limits.max_subscriptions_per_client",
            l.max_subscriptions_per_client as u64,
            MAX_SUBSCRIPTIONS,
        )?;
        check(
            "limits.max_topic_length",
            l.max_topic_length as u64,
            MAX_TOPIC_LENGTH,
        )?;
        check(
            "limits.memory_high_water",
            l.memory_high_water,
            MEMORY_HIGH_WATER,
        )?;
        if let Some(token) = &self.http.admin_token {
            check_admin_token("http.admin_token", token)?;
        }
        // Port 0 asks the OS for distinct free ports, so only a fixed port can collide.
        if let Some(http) = self.http.listen {
            if http == m.listen && http.port() != 0 {
                return Err(ConfigError::InvalidValue {
                    key: "http.listen".to_owned(),
                    value: format!("\"{http}\""),
                    reason: "same address as mqtt.listen".to_owned(),
                });
            }
        }
        check_log_level("log.level", &self.log.level)
    }

    fn set_value(&mut self, section: &str, key: &str, value: &Value) -> Result<(), ConfigError> {
        let dotted = format!("{section}.{key}");
        let k = dotted.as_str();
        let m = &mut self.mqtt;
        match (section, key) {
            ("mqtt", "listen") => m.listen = socket_addr(k, value)?,
            ("mqtt", "max_keepalive") => m.max_keepalive = integer(k, value, MAX_KEEPALIVE)?,
            ("mqtt", "receive_maximum") => {
                m.receive_maximum = integer(k, value, RECEIVE_MAXIMUM)?;
            }
            ("mqtt", "max_packet_size") => {
                m.max_packet_size = integer(k, value, MAX_PACKET_SIZE)?;
            }
            ("mqtt", "max_queued_messages") => {
                m.max_queued_messages = integer(k, value, MAX_QUEUED_MESSAGES)?;
            }
            ("mqtt", "queue_qos0_offline") => m.queue_qos0_offline = boolean(k, value)?,
            ("mqtt", "max_inflight") => m.max_inflight = integer(k, value, MAX_INFLIGHT)?,
            ("mqtt", "session_expiry_max") => {
                m.session_expiry_max = integer(k, value, SESSION_EXPIRY_MAX)?;
            }
            ("mqtt", "retained_max") => m.retained_max = integer(k, value, RETAINED_MAX)?,
            ("mqtt", "connect_timeout") => m.connect_timeout = seconds(k, value)?,
            ("mqtt", "max_topic_levels") => {
                m.max_topic_levels = integer(k, value, MAX_TOPIC_LEVELS)?;
            }
            ("mqtt", "topic_alias_maximum") => {
                m.topic_alias_maximum = integer(k, value, TOPIC_ALIAS_MAXIMUM)?;
            }
            ("mqtt", "outbound_topic_aliases") => {
                m.outbound_topic_aliases = boolean(k, value)?;
            }
            ("mqtt", "fd_reserve") => m.fd_reserve = integer(k, value, FD_RESERVE)?,
            ("mqtt", "hibernate_after") => m.hibernate_after = seconds_or_never(k, value)?,
            ("http", "listen") => self.http.listen = optional_socket_addr(k, value)?,
            ("http", "admin_token") => {
                let token = string(k, value, ADMIN_TOKEN_HINT)?;
                self.http.admin_token = if token.is_empty() {
                    None
                } else {
                    check_admin_token(k, token)?;
                    Some(token.to_owned())
                };
            }
            ("sys", "interval") => self.sys.interval = integer(k, value, SYS_INTERVAL)?,
            ("limits", "max_connections") => {
                self.limits.max_connections = integer(k, value, MAX_CONNECTIONS)?;
            }
            ("limits", "connect_rate") => {
                self.limits.connect_rate = integer(k, value, CONNECT_RATE)?;
            }
            ("limits", "connect_burst") => {
                self.limits.connect_burst = integer(k, value, CONNECT_BURST)?;
            }
            ("limits", "max_handshakes") => {
                self.limits.max_handshakes = integer(k, value, MAX_HANDSHAKES)?;
            }
            ("limits", "max_publish_rate") => {
                self.limits.max_publish_rate = integer(k, value, MAX_PUBLISH_RATE)?;
            }
            ("limits", "max_publish_bytes_rate") => {
                self.limits.max_publish_bytes_rate = integer(k, value, MAX_PUBLISH_BYTES_RATE)?;
            }
            ("limits", "max_subscriptions_per_client") => {
                self.limits.max_subscriptions_per_client = integer(k, value, MAX_SUBSCRIPTIONS)?;
            }
            ("limits", "max_topic_length") => {
                self.limits.max_topic_length = integer(k, value, MAX_TOPIC_LENGTH)?;
            }
            ("limits", "memory_high_water") => {
                self.limits.memory_high_water = integer(k, value, MEMORY_HIGH_WATER)?;
            }
            ("auth", "allow_anonymous") => self.auth.allow_anonymous = boolean(k, value)?,
            ("auth", "password_file") => self.auth.password_file = optional_path(k, value)?,
            ("auth", "acl_file") => self.auth.acl_file = optional_path(k, value)?,
            ("log", "level") => {
                let level = string(k, value, LEVEL_HINT)?;
                check_log_level(k, level)?;
                self.log.level = level.to_owned();
            }
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: dotted,
                    value: render(value),
                })
            }
        }
        Ok(())
    }
}

/// Parses the `[[listeners]]` array; keys are reported as `listeners[INDEX].KEY`, from 0.
fn listeners(body: &Value) -> Result<Vec<ListenerConfig>, ConfigError> {
    let Value::Array(items) = body else {
        return Err(invalid(
            "listeners",
            body,
            "expected [[listeners]] tables (an array of tables)",
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Table(keys) = item else {
            return Err(invalid(
                &format!("listeners[{i}]"),
                item,
                "expected a table",
            ));
        };
        out.push(listener(i, keys)?);
    }
    Ok(out)
}

fn listener(i: usize, keys: &Table) -> Result<ListenerConfig, ConfigError> {
    let key = |name: &str| format!("listeners[{i}].{name}");
    let missing = |name: &str, why: &str| ConfigError::InvalidValue {
        key: key(name),
        value: "(missing)".to_owned(),
        reason: why.to_owned(),
    };
    let mut kind = None;
    let mut bind = None;
    let mut l = ListenerConfig::new(
        ListenerKind::Tcp,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    );
    for (name, value) in keys {
        let k = key(name);
        let k = k.as_str();
        match name.as_str() {
            "kind" => {
                let hint = "expected \"tcp\", \"tls\", \"ws\" or \"wss\"";
                kind = Some(match string(k, value, hint)? {
                    "tcp" => ListenerKind::Tcp,
                    "tls" => ListenerKind::Tls,
                    "ws" => ListenerKind::Ws,
                    "wss" => ListenerKind::Wss,
                    _ => return Err(invalid(k, value, hint)),
                });
            }
            "bind" => bind = Some(socket_addr(k, value)?),
            "cert" => l.cert = optional_path(k, value)?,
            "key" => l.key = optional_path(k, value)?,
            "ca" => l.ca = optional_path(k, value)?,
            "require_client_cert" => l.require_client_cert = boolean(k, value)?,
            "use_identity_as_username" => l.use_identity_as_username = boolean(k, value)?,
            "path" => {
                let hint = "expected an HTTP path starting with /";
                let path = string(k, value, hint)?;
                if !path.starts_with('/') || path.contains(char::is_whitespace) {
                    return Err(invalid(k, value, hint));
                }
                l.path = path.to_owned();
            }
            "max_connections" => l.max_connections = integer(k, value, MAX_CONNECTIONS)?,
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: k.to_owned(),
                    value: render(value),
                })
            }
        }
    }
    l.kind = kind.ok_or_else(|| {
        missing(
            "kind",
            "every listener needs kind = \"tcp\", \"tls\", \"ws\" or \"wss\"",
        )
    })?;
    l.bind = bind.ok_or_else(|| missing("bind", LISTEN_HINT))?;
    if l.kind.is_tls() {
        if l.cert.is_none() {
            return Err(missing(
                "cert",
                "a tls or wss listener needs a PEM certificate file",
            ));
        }
        if l.key.is_none() {
            return Err(missing(
                "key",
                "a tls or wss listener needs a PEM private key file",
            ));
        }
    } else {
        for (name, set) in [
            ("cert", l.cert.is_some()),
            ("key", l.key.is_some()),
            ("ca", l.ca.is_some()),
            ("require_client_cert", l.require_client_cert),
        ] {
            if set {
                return Err(ConfigError::InvalidValue {
                    key: key(name),
                    value: render(&keys[name]),
                    reason: format!("only for tls and wss listeners, not {}", l.kind.as_str()),
                });
            }
        }
    }
    if l.require_client_cert && l.ca.is_none() {
        return Err(missing(
            "ca",
            "require_client_cert = true needs the CA that signs client certificates",
        ));
    }
    if l.use_identity_as_username && !l.require_client_cert {
        return Err(ConfigError::InvalidValue {
            key: key("use_identity_as_username"),
            value: "true".to_owned(),
            reason: "needs require_client_cert = true".to_owned(),
        });
    }
    Ok(l)
}

fn invalid(key: &str, value: &Value, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_owned(),
        value: render(value),
        reason: reason.into(),
    }
}

fn check(key: &str, n: u64, bounds: Bounds) -> Result<(), ConfigError> {
    if bounds.contains(n) {
        Ok(())
    } else {
        Err(ConfigError::InvalidValue {
            key: key.to_owned(),
            value: n.to_string(),
            reason: bounds.to_string(),
        })
    }
}

fn integer<T: TryFrom<u64>>(key: &str, value: &Value, bounds: Bounds) -> Result<T, ConfigError> {
    let Value::Integer(raw) = value else {
        return Err(invalid(key, value, "expected an integer"));
    };
    let out_of_range = || invalid(key, value, bounds.to_string());
    let n = u64::try_from(*raw).map_err(|_| out_of_range())?;
    check(key, n, bounds)?;
    // Bounds never exceed the field's type, but a 32-bit usize can still refuse a large value.
    T::try_from(n).map_err(|_| out_of_range())
}

fn boolean(key: &str, value: &Value) -> Result<bool, ConfigError> {
    match value {
        Value::Boolean(b) => Ok(*b),
        _ => Err(invalid(key, value, "expected true or false")),
    }
}

fn string<'v>(key: &str, value: &'v Value, hint: &str) -> Result<&'v str, ConfigError> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(invalid(key, value, format!("{hint}, as a string"))),
    }
}

fn socket_addr(key: &str, value: &Value) -> Result<SocketAddr, ConfigError> {
    string(key, value, LISTEN_HINT)?
        .parse()
        .map_err(|_| invalid(key, value, LISTEN_HINT))
}

fn optional_socket_addr(key: &str, value: &Value) -> Result<Option<SocketAddr>, ConfigError> {
    let hint = "expected an IP address and port such as 127.0.0.1:9883, or \"off\"";
    match string(key, value, hint)? {
        "off" | "" => Ok(None),
        text => text
            .parse()
            .map(Some)
            .map_err(|_| invalid(key, value, hint)),
    }
}

fn optional_path(key: &str, value: &Value) -> Result<Option<PathBuf>, ConfigError> {
    let path = string(key, value, "expected a file path, or \"\" for none")?;
    Ok((!path.is_empty()).then(|| PathBuf::from(path)))
}

/// Accepts integer or fractional seconds so sub-second timeouts can be set for tests and labs.
fn seconds(key: &str, value: &Value) -> Result<Duration, ConfigError> {
    let not_positive = || invalid(key, value, "must be > 0 seconds");
    let duration = match value {
        Value::Integer(secs) => {
            Duration::from_secs(u64::try_from(*secs).map_err(|_| not_positive())?)
        }
        Value::Float(secs) if secs.is_nan() || *secs <= 0.0 => return Err(not_positive()),
        Value::Float(secs) => Duration::try_from_secs_f64(*secs)
            .map_err(|_| invalid(key, value, "too large for a duration"))?,
        _ => return Err(invalid(key, value, "expected a number of seconds")),
    };
    // A fraction too small for nanosecond resolution rounds to zero, which is as unusable as 0.
    if duration.is_zero() {
        return Err(not_positive());
    }
    Ok(duration)
}

/// Like `seconds`, with 0 meaning "never".
fn seconds_or_never(key: &str, value: &Value) -> Result<Option<Duration>, ConfigError> {
    match value {
        Value::Integer(0) => Ok(None),
        Value::Float(secs) if *secs == 0.0 => Ok(None),
        _ => seconds(key, value)
            .map(Some)
            .map_err(|_| invalid(key, value, "expected a number of seconds >= 0 (0: never)")),
    }
}

const ADMIN_TOKEN_HINT: &str =
    "expected at least 16 printable ASCII characters without spaces, or \"\" to disable the API";

/// The token travels in an `Authorization` header: it must be a valid header value and long
/// enough not to be guessed.
fn check_admin_token(key: &str, token: &str) -> Result<(), ConfigError> {
    let printable = token.bytes().all(|b| b.is_ascii_graphic());
    if printable && token.len() >= ADMIN_TOKEN_MIN_LEN {
        Ok(())
    } else {
        Err(ConfigError::InvalidValue {
            key: key.to_owned(),
            value: render(&Value::String(token.to_owned())),
            reason: ADMIN_TOKEN_HINT.to_owned(),
        })
    }
}

fn check_log_level(key: &str, level: &str) -> Result<(), ConfigError> {
    let reject = |reason: String| ConfigError::InvalidValue {
        key: key.to_owned(),
        value: render(&Value::String(level.to_owned())),
        reason,
    };
    // An empty filter parses but silences everything, which is never what was meant.
    if level.trim().is_empty() {
        return Err(reject(LEVEL_HINT.to_owned()));
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(drop)
        .map_err(|e| reject(format!("{LEVEL_HINT}: {e}")))
}

fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let offset = error.span().map_or(0, |span| span.start).min(text.len());
    // The span is a byte offset; walk back to a char boundary so slicing cannot panic.
    let offset = (0..=offset)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    ConfigError::Syntax {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
        message: one_line(error.message()),
    }
}

/// toml puts the expectation on a second line ("invalid string\nexpected ..."); keep both parts.
fn one_line(text: &str) -> String {
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    parts.join("; ")
}

/// The OS message without the " (os error N)" suffix that `io::Error` appends, which only
/// repeats the errno the message already explains.
fn os_reason(error: &io::Error) -> String {
    let text = error.to_string();
    match error.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .unwrap_or(&text)
            .to_owned(),
        None => text,
    }
}

/// Renders a TOML value on one line, in TOML-like syntax, for error messages. Strings use Rust
/// escaping so an embedded newline cannot split the message.
fn render(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Integer(i) => i.to_string(),
        Value::Float(x) => format!("{x:?}"),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => d.to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(render).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Table(table) => {
            let entries: Vec<String> = table
                .iter()
                .map(|(k, v)| format!("{} = {}", render_key(k), render(v)))
                .collect();
            if entries.is_empty() {
                "{}".to_owned()
            } else {
                format!("{{ {} }}", entries.join(", "))
            }
        }
    }
}

fn render_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        match Config::from_toml(text) {
            Ok(config) => panic!("accepted {text:?} as {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_text_gives_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
        assert_eq!(
            Config::from_toml("[mqtt]\n[http]\n[log]\n").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let c = Config::default();
        assert_eq!(c.mqtt.listen, "127.0.0.1:1883".parse().unwrap());
        assert_eq!(c.mqtt.max_keepalive, 65535);
        assert_eq!(c.mqtt.receive_maximum, 256);
        assert_eq!(c.mqtt.max_packet_size, 1_048_576);
        assert_eq!(c.mqtt.max_queued_messages, 1000);
        assert!(!c.mqtt.queue_qos0_offline);
        assert_eq!(c.mqtt.max_inflight, 32);
        assert_eq!(c.mqtt.session_expiry_max, 172_800);
        assert_eq!(c.mqtt.retained_max, 1_000_000);
        assert_eq!(c.mqtt.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.mqtt.max_topic_levels, 64);
        assert_eq!(c.mqtt.topic_alias_maximum, 64);
        assert!(c.mqtt.outbound_topic_aliases);
        assert_eq!(c.mqtt.fd_reserve, 64);
        assert_eq!(c.mqtt.hibernate_after, Some(Duration::from_secs(10)));
        let never = Config::from_toml("[mqtt]\nhibernate_after = 0").unwrap();
        assert_eq!(never.mqtt.hibernate_after, None);
        assert_eq!(c.http.listen, Some("127.0.0.1:9883".parse().unwrap()));
        assert_eq!(c.log.level, "info");
        assert_eq!(c.limits.max_connections, 0);
        assert_eq!(c.limits.connect_rate, 2000);
        assert_eq!(c.limits.connect_burst, 2000);
        assert_eq!(c.limits.max_handshakes, 10_000);
        assert_eq!(c.limits.max_publish_rate, 0);
        assert_eq!(c.limits.max_publish_bytes_rate, 0);
        assert_eq!(c.limits.max_subscriptions_per_client, 10_000);
        assert_eq!(c.limits.max_topic_length, 1024);
        assert_eq!(c.limits.memory_high_water, 0);
        c.validate().unwrap();
    }

    #[test]
    fn shipped_file_is_exactly_the_defaults_and_lists_every_key() {
        let text = include_str!("../../config/gateway.toml");
        assert_eq!(Config::from_toml(text).unwrap(), Config::default());
        // Parsing alone would accept a file that omits keys; the file is meant to document all.
        let table: Table = text.parse().unwrap();
        let count = |section: &str| table[section].as_table().unwrap().len();
        assert_eq!(table.len(), 6);
        assert_eq!(count("mqtt"), 15);
        assert_eq!(count("http"), 2);
        assert_eq!(count("sys"), 1);
        assert_eq!(count("log"), 1);
        assert_eq!(count("auth"), 3);
        assert_eq!(count("limits"), 9);
    }

    #[test]
    fn listeners_are_parsed_and_checked() {
        let text = r#"
            [[listeners]]
            kind = "tls"
            bind = "0.0.0.0:8883"
            cert = "server.pem"
            key = "server.key"
            ca = "ca.pem"
            require_client_cert = true
            use_identity_as_username = true
            max_connections = 10
            [[listeners]]
            kind = "ws"
            bind = "127.0.0.1:8080"
            path = "/ws"
        "#;
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listeners[0].kind, ListenerKind::Tls);
        assert!(c.listeners[0].use_identity_as_username);
        assert_eq!(c.listeners[0].max_connections, 10);
        assert_eq!(c.listeners[1].path, "/ws");
        let err = |t: &str| Config::from_toml(t).unwrap_err().to_string();
        assert_eq!(
            err("[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:1\"\n[[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:2\"\nkey = \"k\""),
            "config: invalid value for `listeners[1].cert`: (missing) (a tls or wss listener needs a PEM certificate file)"
        );
        assert!(
            err("[[listeners]]\nkind = \"quic\"\nbind = \"127.0.0.1:1\"")
                .starts_with("config: invalid value for `listeners[0].kind`: \"quic\"")
        );
        assert!(
            err("[[listeners]]\nkind = \"ws\"\nbind = \"127.0.0.1:1\"\npath = \"mqtt\"")
                .starts_with("config: invalid value for `listeners[0].path`: \"mqtt\"")
        );
        assert!(err("[[listeners]]\nkind = \"ws\"\nbind = \"x\"")
            .starts_with("config: invalid value for `listeners[0].bind`: \"x\""));
        assert!(
            err("[[listeners]]\nkind = \"ws\"\nbind = \"127.0.0.1:1\"\nport = 1")
                .starts_with("config: unknown key `listeners[0].port`")
        );
    }

    #[test]
    fn every_key_is_parsed() {
        let text = r#"
            [mqtt]
            listen = "[::]:8883"
            max_keepalive = 120
            receive_maximum = 10
            max_packet_size = 64
            max_queued_messages = 5
            queue_qos0_offline = true
            max_inflight = 7
            session_expiry_max = 0
            retained_max = 0
            connect_timeout = 2.5
            max_topic_levels = 8
            topic_alias_maximum = 0
            outbound_topic_aliases = false
            fd_reserve = 128
            hibernate_after = 0.5
            [http]
            listen = "0.0.0.0:8080"
            admin_token = "0123456789abcdef-token"
            [sys]
            interval = 0
            [log]
            level = "warn,gateway=debug"
            [auth]
            allow_anonymous = true
            password_file = "/etc/gateway/passwd"
            acl_file = "acl"
            [limits]
            max_connections = 5000
            connect_rate = 0
            connect_burst = 1
            max_handshakes = 0
            max_publish_rate = 50
            max_publish_bytes_rate = 100000
            max_subscriptions_per_client = 0
            max_topic_length = 65535
            memory_high_water = 1073741824
        "#;
        let expected = Config {
            mqtt: MqttConfig {
                listen: "[::]:8883".parse().unwrap(),
                max_keepalive: 120,
                receive_maximum: 10,
                max_packet_size: 64,
                max_queued_messages: 5,
                queue_qos0_offline: true,
                max_inflight: 7,
                session_expiry_max: 0,
                retained_max: 0,
                connect_timeout: Duration::from_millis(2500),
                max_topic_levels: 8,
                topic_alias_maximum: 0,
                outbound_topic_aliases: false,
                fd_reserve: 128,
                hibernate_after: Some(Duration::from_millis(500)),
            },
            http: HttpConfig {
                listen: Some("0.0.0.0:8080".parse().unwrap()),
                admin_token: Some("0123456789abcdef-token".to_owned()),
            },
            sys: SysConfig { interval: 0 },
            log: LogConfig {
                level: "warn,gateway=debug".to_owned(),
            },
            auth: AuthConfig {
                allow_anonymous: true,
                password_file: Some("/etc/gateway/passwd".into()),
                acl_file: Some("acl".into()),
            },
            limits: LimitsConfig {
                max_connections: 5000,
                connect_rate: 0,
                connect_burst: 1,
                max_handshakes: 0,
                max_publish_rate: 50,
                max_publish_bytes_rate: 100_000,
                max_subscriptions_per_client: 0,
                max_topic_length: 65535,
                memory_high_water: 1 << 30,
            },
            listeners: Vec::new(),
        };
        assert_eq!(Config::from_toml(text).unwrap(), expected);
    }

    #[test]
    fn range_edges_are_accepted() {
        let text = "[mqtt]\nmax_keepalive = 65535\nreceive_maximum = 1\n\
                    max_packet_size = 268435455\nsession_expiry_max = 4294967295\n\
                    fd_reserve = 4294967295\nconnect_timeout = 1\n";
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.mqtt.max_packet_size, 268_435_455);
        assert_eq!(c.mqtt.session_expiry_max, u32::MAX);
        assert_eq!(c.mqtt.connect_timeout, Duration::from_secs(1));
    }

    #[test]
    fn admin_token_and_sys_interval_are_checked_and_named_with_their_value() {
        assert_eq!(
            Config::from_toml("[http]\nadmin_token = \"\"")
                .unwrap()
                .http
                .admin_token,
            None
        );
        for token in [
            "short",
            "has a space in the token",
            "tab\tseparated-token-value",
        ] {
            assert_eq!(
                error(&format!("[http]\nadmin_token = {token:?}")),
                format!(
                    "config: invalid value for `http.admin_token`: {token:?} ({ADMIN_TOKEN_HINT})"
                )
            );
        }
        assert_eq!(
            error("[sys]\ninterval = 86401"),
            "config: invalid value for `sys.interval`: 86401 (must be 0..=86400)"
        );
        assert_eq!(
            error("[sys]\ninterval = \"10\""),
            "config: invalid value for `sys.interval`: \"10\" (expected an integer)"
        );
        let mut c = Config::default();
        c.http.admin_token = Some("x".to_owned());
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            format!("config: invalid value for `http.admin_token`: \"x\" ({ADMIN_TOKEN_HINT})")
        );
    }

    #[test]
    fn http_can_be_disabled() {
        for text in ["[http]\nlisten = \"off\"", "[http]\nlisten = \"\""] {
            assert_eq!(Config::from_toml(text).unwrap().http.listen, None);
        }
    }

    #[test]
    fn plain_levels_and_directives_are_accepted() {
        for level in [
            "error",
            "warn",
            "info",
            "debug",
            "trace",
            "gateway=trace,info",
        ] {
            let text = format!("[log]\nlevel = {level:?}");
            assert_eq!(Config::from_toml(&text).unwrap().log.level, level);
        }
    }

    #[test]
    fn unknown_keys_and_sections_are_named_with_their_value() {
        let cases = [
            (
                "[mqtt]\nmax_keepalvie = 30",
                "config: unknown key `mqtt.max_keepalvie` (value: 30)",
            ),
            (
                "[http]\nport = \"x\"",
                "config: unknown key `http.port` (value: \"x\")",
            ),
            (
                "[log]\nformat = [\"json\", 1]",
                "config: unknown key `log.format` (value: [\"json\", 1])",
            ),
            (
                "[mqqt]\nlisten = \"0.0.0.0:1883\"",
                "config: unknown key `mqqt` (value: { listen = \"0.0.0.0:1883\" })",
            ),
            (
                "verbose = true",
                "config: unknown key `verbose` (value: true)",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(error(text), message, "for {text:?}");
        }
    }

    #[test]
    fn wrong_types_are_named_with_their_value() {
        let cases = [
            (
                "mqtt = 5",
                "config: invalid value for `mqtt`: 5 (expected a table)",
            ),
            (
                "[mqtt]\nlisten = 1883",
                "config: invalid value for `mqtt.listen`: 1883 (expected an IP address and port \
                 such as 127.0.0.1:1883 or [::]:1883, as a string)",
            ),
            (
                "[mqtt]\nmax_inflight = \"32\"",
                "config: invalid value for `mqtt.max_inflight`: \"32\" (expected an integer)",
            ),
            (
                "[mqtt]\nmax_packet_size = 1.5",
                "config: invalid value for `mqtt.max_packet_size`: 1.5 (expected an integer)",
            ),
            (
                "[mqtt]\nqueue_qos0_offline = \"yes\"",
                "config: invalid value for `mqtt.queue_qos0_offline`: \"yes\" \
                 (expected true or false)",
            ),
            (
                "[mqtt]\noutbound_topic_aliases = 1",
                "config: invalid value for `mqtt.outbound_topic_aliases`: 1 \
                 (expected true or false)",
            ),
            (
                "[mqtt]\nconnect_timeout = \"10s\"",
                "config: invalid value for `mqtt.connect_timeout`: \"10s\" \
                 (expected a number of seconds)",
            ),
            (
                "[http]\nlisten = false",
                "config: invalid value for `http.listen`: false (expected an IP address and \
                 port such as 127.0.0.1:9883, or \"off\", as a string)",
            ),
            (
                "[log]\nlevel = 3",
                "config: invalid value for `log.level`: 3 (expected error, warn, info, debug, \
                 trace or a tracing filter directive, as a string)",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(error(text), message, "for {text:?}");
        }
    }

    #[test]
    fn out_of_range_values_are_named_with_their_value() {
        let cases = [
            (
                "max_keepalive = 0",
                "mqtt.max_keepalive",
                "0",
                "must be 1..=65535",
            ),
            (
                "max_keepalive = 65536",
                "mqtt.max_keepalive",
                "65536",
                "must be 1..=65535",
            ),
            (
                "receive_maximum = 0",
                "mqtt.receive_maximum",
                "0",
                "must be 1..=65535",
            ),
            (
                "max_packet_size = 63",
                "mqtt.max_packet_size",
                "63",
                "must be 64..=268435455",
            ),
            (
                "max_packet_size = 268435456",
                "mqtt.max_packet_size",
                "268435456",
                "must be 64..=268435455",
            ),
            (
                "max_queued_messages = 0",
                "mqtt.max_queued_messages",
                "0",
                "must be >= 1",
            ),
            (
                "max_inflight = 0",
                "mqtt.max_inflight",
                "0",
                "must be 1..=65535",
            ),
            (
                "session_expiry_max = 4294967296",
                "mqtt.session_expiry_max",
                "4294967296",
                "must be 0..=4294967295",
            ),
            (
                "retained_max = -1",
                "mqtt.retained_max",
                "-1",
                "must be >= 0",
            ),
            (
                "connect_timeout = 0",
                "mqtt.connect_timeout",
                "0",
                "must be > 0 seconds",
            ),
            (
                "connect_timeout = -2.5",
                "mqtt.connect_timeout",
                "-2.5",
                "must be > 0 seconds",
            ),
            (
                "connect_timeout = 1e-12",
                "mqtt.connect_timeout",
                "1e-12",
                "must be > 0 seconds",
            ),
            (
                "connect_timeout = nan",
                "mqtt.connect_timeout",
                "NaN",
                "must be > 0 seconds",
            ),
            (
                "hibernate_after = -1",
                "mqtt.hibernate_after",
                "-1",
                "expected a number of seconds >= 0 (0: never)",
            ),
            (
                "max_topic_levels = 0",
                "mqtt.max_topic_levels",
                "0",
                "must be >= 1",
            ),
            (
                "topic_alias_maximum = 65536",
                "mqtt.topic_alias_maximum",
                "65536",
                "must be 0..=65535",
            ),
            (
                "fd_reserve = -1",
                "mqtt.fd_reserve",
                "-1",
                "must be 0..=4294967295",
            ),
            (
                "listen = \"localhost:1883\"",
                "mqtt.listen",
                "\"localhost:1883\"",
                LISTEN_HINT,
            ),
        ];
        for (line, key, value, reason) in cases {
            let message = format!("config: invalid value for `{key}`: {value} ({reason})");
            assert_eq!(error(&format!("[mqtt]\n{line}")), message, "for {line:?}");
        }
    }

    #[test]
    fn bad_limits_are_named_with_their_value() {
        assert_eq!(
            error("[limits]\nconnect_burst = 0"),
            "config: invalid value for `limits.connect_burst`: 0 (must be 1..=4294967295)"
        );
        assert_eq!(
            error("[limits]\nmax_topic_length = 65536"),
            "config: invalid value for `limits.max_topic_length`: 65536 (must be 1..=65535)"
        );
        assert_eq!(
            error("[limits]\nmemory_high_water = \"1G\""),
            "config: invalid value for `limits.memory_high_water`: \"1G\" (expected an integer)"
        );
        assert_eq!(
            error("[limits]\nmax_publish_rate = -1"),
            "config: invalid value for `limits.max_publish_rate`: -1 (must be 0..=4294967295)"
        );
    }

    #[test]
    fn bad_http_listen_and_log_level_are_named_with_their_value() {
        assert_eq!(
            error("[http]\nlisten = \"nowhere\""),
            "config: invalid value for `http.listen`: \"nowhere\" (expected an IP address and \
             port such as 127.0.0.1:9883, or \"off\")"
        );
        assert_eq!(
            error("[log]\nlevel = \"\""),
            format!("config: invalid value for `log.level`: \"\" ({LEVEL_HINT})")
        );
        let message = error("[log]\nlevel = \"gateway=loud\"");
        assert!(
            message.starts_with(&format!(
                "config: invalid value for `log.level`: \"gateway=loud\" ({LEVEL_HINT}: "
            )),
            "{message}"
        );
        assert!(!message.contains('\n'));
    }

    #[test]
    fn validate_rejects_values_built_in_code() {
        let mut c = Config::default();
        c.mqtt.receive_maximum = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "config: invalid value for `mqtt.receive_maximum`: 0 (must be 1..=65535)"
        );
        let mut c = Config::default();
        c.mqtt.connect_timeout = Duration::ZERO;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "config: invalid value for `mqtt.connect_timeout`: 0 (must be > 0 seconds)"
        );
        let mut c = Config::default();
        c.log.level = "nope=nope".to_owned();
        assert!(c.validate().is_err());
    }

    #[test]
    fn http_and_mqtt_may_not_share_a_fixed_address() {
        assert_eq!(
            error("[mqtt]\nlisten = \"127.0.0.1:9883\""),
            "config: invalid value for `http.listen`: \"127.0.0.1:9883\" \
             (same address as mqtt.listen)"
        );
        let both_ephemeral = "[mqtt]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"";
        Config::from_toml(both_ephemeral).unwrap();
    }

    #[test]
    fn syntax_errors_are_one_line_with_a_position() {
        let message = error("[mqtt]\nlisten = \n");
        assert!(
            message.starts_with("config: TOML syntax error at line 2, column "),
            "{message}"
        );
        assert!(!message.contains('\n'));
        let message = error("[mqtt]\nmax_inflight = 1\nmax_inflight = 2\n");
        assert!(message.contains("line 3"), "{message}");
        assert!(message.contains("max_inflight"), "{message}");
    }

    #[test]
    fn set_applies_string_keys_like_the_file() {
        let mut c = Config::default();
        c.set("mqtt.listen", "0.0.0.0:1884").unwrap();
        c.set("http.listen", "off").unwrap();
        c.set("log.level", "debug").unwrap();
        assert_eq!(c.mqtt.listen, "0.0.0.0:1884".parse().unwrap());
        assert_eq!(c.http.listen, None);
        assert_eq!(c.log.level, "debug");
        assert_eq!(
            c.set("mqtt.listen", "garbage").unwrap_err().to_string(),
            format!("config: invalid value for `mqtt.listen`: \"garbage\" ({LISTEN_HINT})")
        );
        assert_eq!(
            c.set("listen", "x").unwrap_err().to_string(),
            "config: unknown key `listen` (value: \"x\")"
        );
    }

    #[test]
    fn load_reports_the_path_and_os_reason() {
        let path = std::env::temp_dir().join("gateway-config-test-does-not-exist.toml");
        assert_eq!(
            Config::load(&path).unwrap_err().to_string(),
            format!(
                "config: cannot read {}: No such file or directory",
                path.display()
            )
        );
    }
}
