//! [`ConfigError`], the one-line rejection of a configuration, and the wording it uses: a TOML
//! value rendered on one line, a syntax error's line and column, an OS error without its errno.

use std::io;
use std::path::PathBuf;

use toml::Value;

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
    #[error("config: unknown key `{}` (value: {value})", printable(key))]
    UnknownKey { key: String, value: String },
    #[error("config: invalid value for `{}`: {value} ({reason})", printable(key))]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
}

/// A key as written, on one line: a quoted TOML key may hold line breaks and other control
/// characters, shown escaped (found by the `config` fuzz target).
fn printable(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub(super) fn invalid(key: &str, value: &Value, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_owned(),
        value: render(value),
        reason: reason.into(),
    }
}

pub(super) fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
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
pub(super) fn render(value: &Value) -> String {
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
