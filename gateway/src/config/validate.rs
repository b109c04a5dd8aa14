//! The rules a configuration must satisfy: the range of every integer key (shared with the file
//! parser in `values`, so both report the same limits), the admin token and log level checks, and
//! [`Config::validate`], which also applies the cross-field rules to configs built in code.

use std::fmt;

use toml::Value;

use super::error::{render, ConfigError};
use super::settings::Config;

/// Inclusive range accepted for an integer key. Ranges are shared by the file parser and
/// [`Config::validate`] so both report the same limits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds {
    min: u64,
    max: u64,
}

/// TOML integers are i64, so this upper bound means "no limit beyond the file format's own".
const UNBOUNDED: u64 = i64::MAX as u64;

pub(super) const MAX_KEEPALIVE: Bounds = Bounds::new(1, u16::MAX as u64);
pub(super) const RECEIVE_MAXIMUM: Bounds = Bounds::new(1, u16::MAX as u64);
/// Below 64 bytes ordinary CONNECT and v5 CONNACK packets stop fitting; 268435455 is the largest
/// remaining length the MQTT variable-byte integer can express.
pub(super) const MAX_PACKET_SIZE: Bounds = Bounds::new(64, 268_435_455);
pub(super) const MAX_QUEUED_MESSAGES: Bounds = Bounds::new(1, UNBOUNDED);
/// A session counts its queue's bytes in 32 bits (every session carries the count).
pub(super) const MAX_QUEUED_BYTES: Bounds = Bounds::new(0, u32::MAX as u64);
pub(super) const MAX_INFLIGHT: Bounds = Bounds::new(1, u16::MAX as u64);
pub(super) const SESSION_EXPIRY_MAX: Bounds = Bounds::new(0, u32::MAX as u64);
pub(super) const RETAINED_MAX: Bounds = Bounds::new(0, UNBOUNDED);
pub(super) const RETAINED_MAX_BYTES: Bounds = Bounds::new(0, UNBOUNDED);
pub(super) const MAX_TOPIC_LEVELS: Bounds = Bounds::new(1, UNBOUNDED);
pub(super) const TOPIC_ALIAS_MAXIMUM: Bounds = Bounds::new(0, u16::MAX as u64);
pub(super) const FD_RESERVE: Bounds = Bounds::new(0, u32::MAX as u64);
pub(super) const MAX_CONNECTIONS: Bounds = Bounds::new(0, UNBOUNDED);
pub(super) const CONNECT_RATE: Bounds = Bounds::new(0, u32::MAX as u64);
/// A burst of 0 would never admit anyone while pacing is on.
pub(super) const CONNECT_BURST: Bounds = Bounds::new(1, u32::MAX as u64);
pub(super) const MAX_HANDSHAKES: Bounds = Bounds::new(0, UNBOUNDED);
pub(super) const MAX_PUBLISH_RATE: Bounds = Bounds::new(0, u32::MAX as u64);
pub(super) const MAX_PUBLISH_BYTES_RATE: Bounds = Bounds::new(0, UNBOUNDED);
pub(super) const MAX_SUBSCRIPTIONS: Bounds = Bounds::new(0, UNBOUNDED);
pub(super) const MAX_SUBSCRIPTION_BYTES: Bounds = Bounds::new(0, UNBOUNDED);
pub(super) const MAX_RETAINED_BACKLOG: Bounds = Bounds::new(0, UNBOUNDED);
pub(super) const MAX_RETAINED_BACKLOG_BYTES: Bounds = Bounds::new(0, UNBOUNDED);
/// A topic of one byte must fit; 65535 is the longest an MQTT string can be.
pub(super) const MAX_TOPIC_LENGTH: Bounds = Bounds::new(1, u16::MAX as u64);
pub(super) const MEMORY_HIGH_WATER: Bounds = Bounds::new(0, UNBOUNDED);
/// A day: longer intervals would make the load averages and uptime meaningless.
pub(super) const SYS_INTERVAL: Bounds = Bounds::new(0, 86_400);
/// A second: a longer wait would hold every stored message's PUBACK that long.
pub(super) const COMMIT_DELAY_MS: Bounds = Bounds::new(0, 1000);
/// Linux's limits on TCP_KEEPIDLE and TCP_KEEPINTVL (MAX_TCP_KEEPIDLE) and TCP_KEEPCNT
/// (MAX_TCP_KEEPCNT); an idle time of 0 turns TCP keepalive off.
pub(super) const TCP_KEEPALIVE_IDLE: Bounds = Bounds::new(0, 32_767);
pub(super) const TCP_KEEPALIVE_INTERVAL: Bounds = Bounds::new(1, 32_767);
pub(super) const TCP_KEEPALIVE_COUNT: Bounds = Bounds::new(1, 127);
/// Shorter tokens are guessable by brute force over the network.
const ADMIN_TOKEN_MIN_LEN: usize = 16;

impl Bounds {
    pub(super) const fn new(min: u64, max: u64) -> Bounds {
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

pub(super) const NATS_URL_HINT: &str =
    "expected a NATS server URL such as \"nats://127.0.0.1:4222\" or \"tls://nats.example:4222\"";

/// Longest node name or subject prefix: they are repeated in every control subject.
const TOKEN_MAX: usize = 64;

pub(super) const LEVEL_HINT: &str =
    "expected error, warn, info, debug, trace or a tracing filter directive";

pub(super) const ADMIN_TOKEN_HINT: &str =
    "expected at least 16 printable ASCII characters without spaces, or \"\" to disable the API";

impl Config {
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
        check(
            "mqtt.max_queued_bytes",
            m.max_queued_bytes.into(),
            MAX_QUEUED_BYTES,
        )?;
        check("mqtt.max_inflight", m.max_inflight.into(), MAX_INFLIGHT)?;
        check(
            "mqtt.session_expiry_max",
            m.session_expiry_max.into(),
            SESSION_EXPIRY_MAX,
        )?;
        check("mqtt.retained_max", m.retained_max as u64, RETAINED_MAX)?;
        check(
            "mqtt.retained_max_bytes",
            m.retained_max_bytes as u64,
            RETAINED_MAX_BYTES,
        )?;
        for (key, duration) in [
            ("mqtt.connect_timeout", m.connect_timeout),
            ("mqtt.packet_timeout", m.packet_timeout),
        ] {
            if duration.is_zero() {
                return Err(ConfigError::InvalidValue {
                    key: key.to_owned(),
                    value: "0".to_owned(),
                    reason: "must be > 0 seconds".to_owned(),
                });
            }
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
        check(
            "mqtt.tcp_keepalive_idle",
            m.tcp_keepalive_idle.into(),
            TCP_KEEPALIVE_IDLE,
        )?;
        check(
            "mqtt.tcp_keepalive_interval",
            m.tcp_keepalive_interval.into(),
            TCP_KEEPALIVE_INTERVAL,
        )?;
        check(
            "mqtt.tcp_keepalive_count",
            m.tcp_keepalive_count.into(),
            TCP_KEEPALIVE_COUNT,
        )?;
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
            "limits.max_subscription_bytes_per_client",
            l.max_subscription_bytes_per_client as u64,
            MAX_SUBSCRIPTION_BYTES,
        )?;
        check(
            "limits.max_retained_backlog",
            l.max_retained_backlog as u64,
            MAX_RETAINED_BACKLOG,
        )?;
        check(
            "limits.max_retained_backlog_bytes",
            l.max_retained_backlog_bytes as u64,
            MAX_RETAINED_BACKLOG_BYTES,
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
        check(
            "storage.commit_delay_ms",
            self.storage.commit_delay_ms.into(),
            COMMIT_DELAY_MS,
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
        self.validate_cluster()?;
        check_log_level("log.level", &self.log.level)
    }

    /// `[nats]` and `[cluster]`: what the parser checks key by key, and what needs two keys.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let n = &self.nats;
        let quoted = |s: &str| render(&Value::String(s.to_owned()));
        for url in &n.servers {
            check_nats_url("nats.servers", url)?;
        }
        let pair = |a: (&str, bool), b: (&str, bool)| {
            if a.1 != b.1 {
                let (set, unset) = if a.1 { (a.0, b.0) } else { (b.0, a.0) };
                return Err(ConfigError::InvalidValue {
                    key: unset.to_owned(),
                    value: "\"\"".to_owned(),
                    reason: format!("{set} is set: both or neither"),
                });
            }
            Ok(())
        };
        pair(
            ("nats.user", n.user.is_some()),
            ("nats.password", n.password.is_some()),
        )?;
        pair(
            ("nats.tls_cert", n.tls_cert.is_some()),
            ("nats.tls_key", n.tls_key.is_some()),
        )?;
        if let Some(token) = &n.token {
            if n.user.is_some() || n.creds_file.is_some() {
                return Err(ConfigError::InvalidValue {
                    key: "nats.token".to_owned(),
                    value: quoted(token),
                    reason: "a token excludes nats.user/password and nats.creds_file".to_owned(),
                });
            }
        }
        if !self.ingest.is_empty() && n.servers.is_empty() {
            return Err(ConfigError::InvalidValue {
                key: "nats.servers".to_owned(),
                value: "[]".to_owned(),
                reason: "[[ingest]] rules need at least one NATS server".to_owned(),
            });
        }
        let c = &self.cluster;
        check_token("cluster.subject_prefix", &c.subject_prefix)?;
        if !c.node_name.is_empty() {
            check_token("cluster.node_name", &c.node_name)?;
        }
        if c.enabled {
            if n.servers.is_empty() {
                return Err(ConfigError::InvalidValue {
                    key: "nats.servers".to_owned(),
                    value: "[]".to_owned(),
                    reason: "[cluster] enabled = true needs at least one NATS server".to_owned(),
                });
            }
            if c.node_name.is_empty() {
                return Err(ConfigError::InvalidValue {
                    key: "cluster.node_name".to_owned(),
                    value: "\"\"".to_owned(),
                    reason: "[cluster] enabled = true needs this node's name, unique in the \
                             cluster"
                        .to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// A NATS server URL: `nats://` or `tls://`, optional `user:password@`, a host, an optional
/// port; nothing after it. Checked here so that a typo stops the gateway at start instead of
/// leaving the cluster link retrying an address that can never work.
pub(super) fn check_nats_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let reject = || ConfigError::InvalidValue {
        key: key.to_owned(),
        value: render(&Value::String(url.to_owned())),
        reason: NATS_URL_HINT.to_owned(),
    };
    let rest = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
        .ok_or_else(reject)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if host_port.is_empty() || host_port.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(reject());
    }
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(reject)?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() || host.contains(['[', ']']) {
        return Err(reject());
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(reject()),
        }
    }
    Ok(())
}

/// A node name or subject prefix becomes one token of NATS subjects: no `.` (the separator),
/// no `*` or `>` (wildcards), no whitespace or control characters, not too long.
pub(super) fn check_token(key: &str, token: &str) -> Result<(), ConfigError> {
    check_name(key, token, TOKEN_MAX, " (it is a NATS subject token)")
}

/// Letters, digits, '-' and '_' only, 1..=`max` of them; `why` ends the refusal's reason.
fn check_name(key: &str, name: &str, max: usize, why: &str) -> Result<(), ConfigError> {
    let good = !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if good {
        return Ok(());
    }
    Err(ConfigError::InvalidValue {
        key: key.to_owned(),
        value: render(&Value::String(name.to_owned())),
        reason: format!("expected 1..={max} ASCII letters, digits, '-' or '_'{why}"),
    })
}

/// Longest JetStream stream name the gateway accepts (the server allows more; a stream name is
/// part of every JetStream API subject about it).
const STREAM_NAME_MAX: usize = 128;

/// A JetStream stream name: it becomes a token of the JetStream API's subjects, and a file name
/// on the server, so no `.`, wildcards, whitespace or path separators.
pub(super) fn check_stream_name(key: &str, name: &str) -> Result<(), ConfigError> {
    check_name(key, name, STREAM_NAME_MAX, "")
}

pub(super) fn check(key: &str, n: u64, bounds: Bounds) -> Result<(), ConfigError> {
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

/// The token travels in an `Authorization` header: it must be a valid header value and long
/// enough not to be guessed.
pub(super) fn check_admin_token(key: &str, token: &str) -> Result<(), ConfigError> {
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

pub(super) fn check_log_level(key: &str, level: &str) -> Result<(), ConfigError> {
    let reject = |reason: String| ConfigError::InvalidValue {
        key: key.to_owned(),
        value: render(&Value::String(level.to_owned())),
        reason,
    };
    // An empty filter parses but silences everything, which is never what was meant.
    if level.trim().is_empty() {
        return Err(reject(LEVEL_HINT.to_owned()));
    }
    log_filter(level)
        .map(drop)
        .map_err(|e| reject(format!("{LEVEL_HINT}: {e}")))
}

/// A log level or filter directive as tracing's filter. Only printable ASCII (and spaces) is
/// handed to its parser: tracing-subscriber 0.3.23 panics on some directives holding other
/// characters (it slices inside a multi-byte one; found by the `config` fuzz target), and no
/// level, target or span name needs one. A span field's value is matched as a literal, not as
/// the regular expression tracing would compile by default: a short value such as `a{9999}+`
/// compiles into gigabytes (found by the `config` fuzz target, which ran out of memory).
///
/// A directive given twice apart from its level is passed once, the last (the one tracing
/// would keep): tracing-subscriber 0.3.23 asserts, in debug builds, that two directives it
/// orders alike have equal field matches, and its equality never holds for literal values, so
/// `a[s{f=x}]=info,a[s{f=x}]=debug` panicked there (found by the `config` fuzz target).
pub fn log_filter(directives: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    if let Some(c) = directives
        .chars()
        .find(|c| !(c.is_ascii_graphic() || *c == ' '))
    {
        return Err(format!("{c:?} is not allowed: printable ASCII only"));
    }
    let builder = tracing_subscriber::EnvFilter::builder().with_regex(false);
    // tracing splits directives at every comma too.
    let mut kept: Vec<(String, &str)> = Vec::new();
    for one in directives.split(',').filter(|d| !d.is_empty()) {
        // Shown as tracing understood it: `target[span{field=value}]=level`, or a bare level.
        let shown = builder.parse(one).map_err(|e| e.to_string())?.to_string();
        let what = shown
            .rsplit_once('=')
            .map_or("", |(what, _)| what)
            .to_owned();
        kept.retain(|(other, _)| *other != what);
        kept.push((what, one));
    }
    let kept: Vec<&str> = kept.into_iter().map(|(_, one)| one).collect();
    builder.parse(kept.join(",")).map_err(|e| e.to_string())
}
