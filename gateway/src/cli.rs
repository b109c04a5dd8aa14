//! The binary's command line: a module of `main.rs`, not of the library. It holds only the clap
//! definitions, with no other dependency, because `xtask` includes this file to generate the man
//! pages and shell completions from the same definitions the binary parses.

use std::path::PathBuf;

use clap::Parser;

/// MQTT 3.1.1 / 5.0 ingestion gateway.
///
/// Without --config the built-in defaults apply (the same values config/gateway.toml documents).
/// Flags override the file.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
pub struct Cli {
    /// TOML configuration file
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// MQTT listen address, overrides mqtt.listen (e.g. 0.0.0.0:1883)
    #[arg(long, value_name = "ADDR")]
    pub mqtt_listen: Option<String>,
    /// HTTP endpoint address, overrides http.listen; "off" disables the endpoint
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// Log level or filter directive, overrides log.level (RUST_LOG still wins)
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Add or replace USER's entry (argon2id) in the password FILE (created with mode 0600).
    /// Prompts twice on a terminal; otherwise reads one line from stdin.
    Passwd {
        /// Password file (auth.password_file)
        file: PathBuf,
        /// User name
        user: String,
    },
    /// Inspect the store in DIR (`[storage] dir`) while no gateway uses it.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum StoreAction {
    /// Check that the store is sound and say what it holds: exit 0 when sound, 2 when not.
    Check {
        /// Store directory (storage.dir)
        dir: PathBuf,
    },
    /// Write everything in the store to stdout as JSON lines (payloads in base64).
    Export {
        /// Store directory (storage.dir)
        dir: PathBuf,
    },
    /// Rebuild a store the gateway refuses (truncated, damaged pages) from what still verifies;
    /// the damaged file is kept beside it as store.redb.damaged-SECONDS. A sound store is left
    /// alone. Exit 0 when the store is sound afterwards, 2 when it cannot be repaired (not a
    /// store, or a store of another format).
    Repair {
        /// Store directory (storage.dir)
        dir: PathBuf,
    },
}
