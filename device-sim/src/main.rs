//! `device-sim`: simulate MQTT device fleets against any broker and verify every message.

mod cli;
mod codec;
mod connection;
mod context;
mod device;
mod engine;
mod metrics;
mod payload;
mod plan;
mod progress;
mod reason;
mod report;
mod run;
mod scenario;
mod stats;
mod subscriber;
mod timer;
mod tls;
mod verify;
mod window;
mod workers;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("device-sim: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(run::run(*args)),
        Command::Worker => runtime
            .block_on(workers::worker_main())
            .map(|()| ExitCode::SUCCESS),
    };
    // Device tasks still parked at exit must not hold the process up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("device-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}
