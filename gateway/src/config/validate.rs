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
pub(super) const MAX_INFLIGHT: Bounds = Bounds::new(1, u16::MAX as u64);
pub(super) const SESSION_EXPIRY_MAX: Bounds = Bounds::new(0, u32::MAX as u64);
pub(super) const RETAINED_MAX: Bounds = Bounds::new(0, UNBOUNDED);
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
        check("mqtt.max_inflight", m.max_inflight.into(), MAX_INFLIGHT)?;
        check(
            "mqtt.session_expiry_max",
            m.session_expiry_max.into(),
            SESSION_EXPIRY_MAX,
        )?;
        check("mqtt.retained_max", m.retained_max as u64, RETAINED_MAX)?;
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
        check_log_level("log.level", &self.log.level)
    }
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
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(drop)
        .map_err(|e| reject(format!("{LEVEL_HINT}: {e}")))
}
