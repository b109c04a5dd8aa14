//! Gateway configuration: the typed settings, their defaults, and the TOML loader.
//!
//! This module owns what an operator may tune and how a mistake in it is reported. The file is
//! walked key by key instead of being handed to a derive, because every rejected file must produce
//! exactly one line that names the full dotted key and the value found there: an operator reading
//! a crash-looping service's log should see what to fix without reading a parser trace.
//!
//! The documented default file is `config/gateway.toml`; a test keeps it identical to
//! [`Config::default`].
//!
//! One concern a file: `settings` holds the types and their defaults; `load` turns file text and
//! command-line overrides into a [`Config`], walking it key by key; `values` turns one TOML value
//! into a typed one (integers in range, booleans, addresses, paths, seconds); `validate` owns the
//! ranges and the cross-field rules; `ingest` parses the `[[ingest]]` rules; `error` owns [`ConfigError`] and how a value is quoted in it.

mod error;
mod ingest;
mod load;
mod settings;
#[cfg(test)]
mod tests;
mod validate;
mod values;

pub use error::ConfigError;
pub use ingest::{IngestAck, IngestDiscard, IngestRetention, IngestRule, IngestStorage};
pub use settings::{
    AuthConfig, ClusterConfig, Config, HttpConfig, LimitsConfig, ListenerConfig, ListenerKind,
    LogConfig, MqttConfig, NatsConfig, StorageConfig, StorageSync, SysConfig,
};
pub use validate::log_filter;
