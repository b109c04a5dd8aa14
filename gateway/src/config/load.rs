//! Loading: TOML text or a file into a [`Config`], walked section by section and key by key
//! (`[[listeners]]` and `[[ingest]]` included), and the command-line overrides applied through [`Config::set`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use toml::{Table, Value};

use super::error::{invalid, render, syntax_error, ConfigError};
use super::settings::{Config, ListenerConfig, ListenerKind, StorageSync};
use super::validate::{
    check_admin_token, check_log_level, check_nats_url, check_token, ADMIN_TOKEN_HINT,
    COMMIT_DELAY_MS, CONNECT_BURST, CONNECT_RATE, FD_RESERVE, LEVEL_HINT, MAX_CONNECTIONS,
    MAX_HANDSHAKES, MAX_INFLIGHT, MAX_KEEPALIVE, MAX_PACKET_SIZE, MAX_PUBLISH_BYTES_RATE,
    MAX_PUBLISH_RATE, MAX_QUEUED_BYTES, MAX_QUEUED_MESSAGES, MAX_RETAINED_BACKLOG,
    MAX_RETAINED_BACKLOG_BYTES, MAX_SUBSCRIPTIONS, MAX_SUBSCRIPTION_BYTES, MAX_TOPIC_LENGTH,
    MAX_TOPIC_LEVELS, MEMORY_HIGH_WATER, NATS_URL_HINT, RECEIVE_MAXIMUM, RETAINED_MAX,
    RETAINED_MAX_BYTES, SESSION_EXPIRY_MAX, SYS_INTERVAL, TCP_KEEPALIVE_COUNT, TCP_KEEPALIVE_IDLE,
    TCP_KEEPALIVE_INTERVAL, TOPIC_ALIAS_MAXIMUM,
};
use super::values::{
    boolean, integer, optional_path, optional_socket_addr, optional_string, seconds,
    seconds_or_never, socket_addr, string, LISTEN_HINT,
};

impl Config {
    /// Parses TOML text. Unknown sections/keys and bad values are errors.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let table: Table = text.parse().map_err(|e| syntax_error(text, &e))?;
        let mut config = Config::default();
        let mut ingest = None;
        for (section, body) in &table {
            if section == "listeners" {
                config.listeners = listeners(body)?;
                continue;
            }
            if section == "ingest" {
                // After the loop: its filters are checked against mqtt.max_topic_levels.
                ingest = Some(body);
                continue;
            }
            if !matches!(
                section.as_str(),
                "mqtt"
                    | "http"
                    | "sys"
                    | "log"
                    | "auth"
                    | "limits"
                    | "storage"
                    | "nats"
                    | "cluster"
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
        if let Some(body) = ingest {
            config.ingest = super::ingest::rules(body, config.mqtt.max_topic_levels)?;
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
            ("mqtt", "max_queued_bytes") => {
                m.max_queued_bytes = integer(k, value, MAX_QUEUED_BYTES)?;
            }
            ("mqtt", "queue_qos0_offline") => m.queue_qos0_offline = boolean(k, value)?,
            ("mqtt", "max_inflight") => m.max_inflight = integer(k, value, MAX_INFLIGHT)?,
            ("mqtt", "session_expiry_max") => {
                m.session_expiry_max = integer(k, value, SESSION_EXPIRY_MAX)?;
            }
            ("mqtt", "retained_max") => m.retained_max = integer(k, value, RETAINED_MAX)?,
            ("mqtt", "retained_max_bytes") => {
                m.retained_max_bytes = integer(k, value, RETAINED_MAX_BYTES)?;
            }
            ("mqtt", "connect_timeout") => m.connect_timeout = seconds(k, value)?,
            ("mqtt", "packet_timeout") => m.packet_timeout = seconds(k, value)?,
            ("mqtt", "idle_timeout") => m.idle_timeout = seconds_or_never(k, value)?,
            ("mqtt", "tcp_keepalive_idle") => {
                m.tcp_keepalive_idle = integer(k, value, TCP_KEEPALIVE_IDLE)?;
            }
            ("mqtt", "tcp_keepalive_interval") => {
                m.tcp_keepalive_interval = integer(k, value, TCP_KEEPALIVE_INTERVAL)?;
            }
            ("mqtt", "tcp_keepalive_count") => {
                m.tcp_keepalive_count = integer(k, value, TCP_KEEPALIVE_COUNT)?;
            }
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
            ("limits", "max_subscription_bytes_per_client") => {
                self.limits.max_subscription_bytes_per_client =
                    integer(k, value, MAX_SUBSCRIPTION_BYTES)?;
            }
            ("limits", "max_retained_backlog") => {
                self.limits.max_retained_backlog = integer(k, value, MAX_RETAINED_BACKLOG)?;
            }
            ("limits", "max_retained_backlog_bytes") => {
                self.limits.max_retained_backlog_bytes =
                    integer(k, value, MAX_RETAINED_BACKLOG_BYTES)?;
            }
            ("limits", "max_topic_length") => {
                self.limits.max_topic_length = integer(k, value, MAX_TOPIC_LENGTH)?;
            }
            ("limits", "memory_high_water") => {
                self.limits.memory_high_water = integer(k, value, MEMORY_HIGH_WATER)?;
            }
            ("storage", "enabled") => self.storage.enabled = boolean(k, value)?,
            ("storage", "dir") => {
                let dir = string(k, value, "expected a directory path")?;
                if dir.is_empty() {
                    return Err(invalid(k, value, "expected a directory path, not empty"));
                }
                self.storage.dir = dir.into();
            }
            ("storage", "commit_delay_ms") => {
                self.storage.commit_delay_ms = integer(k, value, COMMIT_DELAY_MS)?;
            }
            ("storage", "sync") => {
                const HINT: &str = "expected \"always\" or \"batched\"";
                self.storage.sync = match string(k, value, HINT)? {
                    "always" => StorageSync::Always,
                    "batched" => StorageSync::Batched,
                    _ => return Err(invalid(k, value, HINT)),
                };
            }
            ("nats", "servers") => {
                let Value::Array(items) = value else {
                    return Err(invalid(
                        k,
                        value,
                        format!("expected a list of {NATS_URL_HINT}"),
                    ));
                };
                let mut servers = Vec::with_capacity(items.len());
                for item in items {
                    let url = string(k, item, NATS_URL_HINT)?;
                    check_nats_url(k, url)?;
                    servers.push(url.to_owned());
                }
                self.nats.servers = servers;
            }
            ("nats", "user") => self.nats.user = optional_string(k, value)?,
            ("nats", "password") => self.nats.password = optional_string(k, value)?,
            ("nats", "token") => self.nats.token = optional_string(k, value)?,
            ("nats", "creds_file") => self.nats.creds_file = optional_path(k, value)?,
            ("nats", "tls_ca") => self.nats.tls_ca = optional_path(k, value)?,
            ("nats", "tls_cert") => self.nats.tls_cert = optional_path(k, value)?,
            ("nats", "tls_key") => self.nats.tls_key = optional_path(k, value)?,
            ("cluster", "enabled") => self.cluster.enabled = boolean(k, value)?,
            ("cluster", "node_name") => {
                let name = string(k, value, "expected a node name")?;
                // Empty is allowed here (the default); `validate` refuses it when enabled.
                if !name.is_empty() {
                    check_token(k, name)?;
                }
                self.cluster.node_name = name.to_owned();
            }
            ("cluster", "subject_prefix") => {
                let prefix = string(k, value, "expected a NATS subject token")?;
                check_token(k, prefix)?;
                self.cluster.subject_prefix = prefix.to_owned();
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
