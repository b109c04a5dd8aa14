//! Value parsing: one TOML value into the typed value its key holds (an integer within its
//! bounds, a boolean, a string, a socket address, an optional path, seconds), or an error that
//! names the key and the value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Value;

use super::error::{invalid, ConfigError};
use super::validate::{check, Bounds};

pub(super) const LISTEN_HINT: &str =
    "expected an IP address and port such as 127.0.0.1:1883 or [::]:1883";

pub(super) fn integer<T: TryFrom<u64>>(
    key: &str,
    value: &Value,
    bounds: Bounds,
) -> Result<T, ConfigError> {
    let Value::Integer(raw) = value else {
        return Err(invalid(key, value, "expected an integer"));
    };
    let out_of_range = || invalid(key, value, bounds.to_string());
    let n = u64::try_from(*raw).map_err(|_| out_of_range())?;
    check(key, n, bounds)?;
    // Bounds never exceed the field's type, but a 32-bit usize can still refuse a large value.
    T::try_from(n).map_err(|_| out_of_range())
}

pub(super) fn boolean(key: &str, value: &Value) -> Result<bool, ConfigError> {
    match value {
        Value::Boolean(b) => Ok(*b),
        _ => Err(invalid(key, value, "expected true or false")),
    }
}

pub(super) fn string<'v>(key: &str, value: &'v Value, hint: &str) -> Result<&'v str, ConfigError> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(invalid(key, value, format!("{hint}, as a string"))),
    }
}

pub(super) fn socket_addr(key: &str, value: &Value) -> Result<SocketAddr, ConfigError> {
    string(key, value, LISTEN_HINT)?
        .parse()
        .map_err(|_| invalid(key, value, LISTEN_HINT))
}

pub(super) fn optional_socket_addr(
    key: &str,
    value: &Value,
) -> Result<Option<SocketAddr>, ConfigError> {
    let hint = "expected an IP address and port such as 127.0.0.1:9883, or \"off\"";
    match string(key, value, hint)? {
        "off" | "" => Ok(None),
        text => text
            .parse()
            .map(Some)
            .map_err(|_| invalid(key, value, hint)),
    }
}

pub(super) fn optional_path(key: &str, value: &Value) -> Result<Option<PathBuf>, ConfigError> {
    let path = string(key, value, "expected a file path, or \"\" for none")?;
    Ok((!path.is_empty()).then(|| PathBuf::from(path)))
}

/// A string where `""` means "not set".
pub(super) fn optional_string(key: &str, value: &Value) -> Result<Option<String>, ConfigError> {
    let text = string(key, value, "expected a string, or \"\" for none")?;
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

/// Accepts integer or fractional seconds so sub-second timeouts can be set for tests and labs.
pub(super) fn seconds(key: &str, value: &Value) -> Result<Duration, ConfigError> {
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
pub(super) fn seconds_or_never(key: &str, value: &Value) -> Result<Option<Duration>, ConfigError> {
    match value {
        Value::Integer(0) => Ok(None),
        Value::Float(secs) if *secs == 0.0 => Ok(None),
        _ => seconds(key, value)
            .map(Some)
            .map_err(|_| invalid(key, value, "expected a number of seconds >= 0 (0: never)")),
    }
}
