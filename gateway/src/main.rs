//! The `gateway` binary: turns the command line and an optional config file into a [`Config`],
//! sets up logging and the tokio runtime, and runs the broker until SIGINT or SIGTERM.
//!
//! Everything about MQTT lives in the library; this file only owns process concerns: exit codes
//! (2 for any configuration mistake, so supervisors can tell "fix the config" from a crash),
//! the allocator, the log filter and signal handling (SIGHUP reloads the password and ACL files),
//! telling systemd when it is ready (`Type=notify`), the `gateway passwd FILE USER` subcommand
//! that writes password file entries, and `gateway store check|export DIR` for the store. The
//! command line itself is declared in `cli.rs`.

use std::io::IsTerminal as _;
use std::num::NonZeroUsize;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use gateway::config::{log_filter, Config};
use gateway::Broker;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{Cli, Command, StoreAction};

mod cli;

/// Exit code for configuration mistakes, matching clap's code for usage errors.
const EXIT_CONFIG: u8 = 2;

impl Cli {
    /// Flag values are kept as text and handed to the config layer so that a bad flag is
    /// reported with the same one-line message as the equivalent file entry.
    fn config(&self) -> Result<Config, gateway::config::ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let overrides = [
            ("mqtt.listen", &self.mqtt_listen),
            ("http.listen", &self.http_listen),
            ("log.level", &self.log_level),
        ];
        for (key, value) in overrides {
            if let Some(value) = value {
                config.set(key, value)?;
            }
        }
        // Overrides can break cross-field rules the file alone satisfied (e.g. equal addresses).
        config.validate()?;
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Passwd { file, user }) => return passwd(file, user),
        Some(Command::Store { action }) => return store(action),
        None => {}
    }
    let config = match cli.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = init_tracing(&config.log.level) {
        eprintln!("{e:#}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        // A bad password or ACL file is found while starting, but is a configuration mistake;
        // so is a store that cannot be read: it is never reset behind the operator's back.
        Err(e) => {
            if let Some(config) = e.downcast_ref::<gateway::config::ConfigError>() {
                eprintln!("{config}");
                ExitCode::from(EXIT_CONFIG)
            } else if let Some(store) = e.downcast_ref::<gateway::StoreError>() {
                eprintln!("{store}");
                ExitCode::from(EXIT_CONFIG)
            } else {
                eprintln!("gateway: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}

/// `gateway store check DIR` and `gateway store export DIR`.
fn store(action: &StoreAction) -> ExitCode {
    let outcome = match action {
        StoreAction::Check { dir } => gateway::check_store(dir).map(|s| {
            println!(
                "store {} is sound: {} sessions, {} messages, {} retained",
                dir.display(),
                s.sessions,
                s.messages,
                s.retained
            );
        }),
        StoreAction::Export { dir } => gateway::export_store(dir, &mut std::io::stdout().lock()),
        StoreAction::Repair { dir } => {
            gateway::repair_store(dir).map(|r| {
                let s = r.summary;
                let holds = format!(
                    "{} sessions, {} messages, {} retained",
                    s.sessions, s.messages, s.retained
                );
                let Some(kept) = r.damaged_kept_as else {
                    println!("store {} is sound, left as it is: {holds}", dir.display());
                    return;
                };
                println!("store {} repaired: {holds}", dir.display());
                match r.found {
                    gateway::Found::Tree {
                        lost_pages,
                        older_commit,
                        loose,
                        versions,
                    } => {
                        println!(
                    "read from its last intact commit{}: {lost_pages} damaged pages left out",
                    if older_commit { " (the newest was damaged)" } else { "" }
                );
                        if !loose.is_empty() {
                            println!(
                                "the tree lost the root of {}: rebuilt from every page that \
                             still decodes as one; entries settled or removed just before the \
                             damage may be back ({versions} keys had several versions, one kept)",
                                loose.join(", ")
                            );
                        }
                    }
                    gateway::Found::Loose { versions } => println!(
                        "no commit led to its tables: rebuilt from every page that still decodes; \
                     messages settled or removed just before the damage may be back \
                     ({versions} keys had several versions, one kept)"
                    ),
                    gateway::Found::Sound => {}
                }
                if r.skipped_entries > 0 {
                    println!(
                        "{} entries did not decode and were left out",
                        r.skipped_entries
                    );
                }
                println!("the damaged file is kept as {}", kept.display());
            })
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `gateway passwd FILE USER`: the password comes from a prompt (typed twice) on a terminal, so
/// a typo is caught, or from one line of stdin for scripts.
fn passwd(file: &std::path::Path, user: &str) -> ExitCode {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ");
        let second = rpassword::prompt_password("Reenter password: ");
        match (first, second) {
            (Ok(a), Ok(b)) if a == b => a,
            (Ok(_), Ok(_)) => {
                eprintln!("gateway passwd: passwords do not match");
                return ExitCode::FAILURE;
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("gateway passwd: cannot read the password: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            eprintln!("gateway passwd: cannot read the password from stdin: {e}");
            return ExitCode::FAILURE;
        }
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    match gateway::auth::set_password(file, user, &password) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway passwd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// RUST_LOG, when set, wins over the configured level so a single run can be debugged without
/// editing the deployed file.
fn init_tracing(level: &str) -> anyhow::Result<()> {
    // The parse error's message already embeds its cause, so it is formatted inline rather than
    // chained, which would print the cause twice.
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => log_filter(&directives)
            .map_err(|e| anyhow::anyhow!("invalid RUST_LOG {directives:?}: {e}"))?,
        // log.level was validated by the config layer, so this parse cannot fail in practice.
        _ => log_filter(level).map_err(|e| anyhow::anyhow!("invalid log level {level:?}: {e}"))?,
    };
    // Logs go to stderr, keeping stdout free and matching where configuration errors go; colour
    // only on a terminal so journald and log files get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

fn run(config: Config) -> anyhow::Result<()> {
    let workers = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Handlers are installed before binding so a signal sent as soon as the listener is up
    // (by a supervisor or a test) is never lost to the default disposition.
    let shutdown = shutdown_signal()?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;
    let broker = Broker::bind(config)
        .await
        .context("cannot start the MQTT listener")?;
    match broker.http_addr() {
        Some(http) => tracing::info!(mqtt = %broker.local_addr(), %http, "gateway listening"),
        None => tracing::info!(mqtt = %broker.local_addr(), http = "off", "gateway listening"),
    }
    // Listeners are bound and the store is loaded: a client connecting now is served.
    notify_service_manager("READY=1");
    let ctx = broker.context();
    // Aborted with the runtime when `serve` returns.
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            ctx.reload();
        }
    });
    broker.run(shutdown).await?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// A future that resolves on the first SIGINT or SIGTERM.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal = name, "shutting down, draining sessions");
        notify_service_manager("STOPPING=1");
    })
}

/// Tells the service manager the gateway's state (sd_notify(3)) when it started the gateway with
/// NOTIFY_SOCKET set: a `Type=notify` systemd unit is then "started" only once clients can
/// connect, so units ordered after it, and `systemctl start` itself, wait for that. Failing to
/// tell is logged, never fatal: the gateway serves either way.
fn notify_service_manager(state: &str) {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        // A leading '@' names a socket in the abstract namespace.
        let addr = match target.as_bytes().strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&target)?,
        };
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        tracing::warn!(socket = ?target, state, "cannot notify the service manager: {e}");
    }
}
