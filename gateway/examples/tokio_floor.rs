//! What tokio itself costs per idle connection, without any MQTT state: the floor under the
//! gateway's memory per idle session (one task per session awaiting its socket). Accepts COUNT
//! loopback connections (opened by a thread of this process with plain std sockets) and holds
//! each the way MODE says, then prints the growth of this process's RSS per connection:
//!
//! - `std`: the accepted socket as a std `TcpStream` (no reactor registration, no task);
//! - `registered`: a tokio `TcpStream` (registered with the reactor), no task;
//! - `task`: a tokio task per connection that holds a std socket and never wakes;
//! - `task-registered`: a tokio task per connection holding a registered tokio `TcpStream`,
//!   i.e. the shape of an idle gateway session with nothing of MQTT in it.
//!
//! The client sockets count in every mode alike, so differences between modes are tokio's.
//! `cargo run --release --example tokio_floor -- MODE COUNT` (COUNT up to about half the
//! open-file limit: both ends live in this process). The run stops by itself.

use std::net::TcpStream as StdStream;
use std::time::Duration;

use anyhow::{bail, Context};

fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("no VmRSS value")?
        .parse()?)
}

#[tokio::main(worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(count)) = (args.next(), args.next()) else {
        bail!("usage: tokio_floor std|registered|task|task-registered COUNT");
    };
    let count: usize = count.parse().context("COUNT")?;
    if !["std", "registered", "task", "task-registered"].contains(&mode.as_str()) {
        bail!("unknown mode {mode}");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let before = rss_kib()?;
    let clients = std::thread::spawn(move || -> std::io::Result<Vec<StdStream>> {
        (0..count).map(|_| StdStream::connect(addr)).collect()
    });
    let mut held_std = Vec::with_capacity(count);
    let mut held_tokio = Vec::with_capacity(count);
    for _ in 0..count {
        let (socket, _) = listener.accept().await?;
        match mode.as_str() {
            "std" => held_std.push(socket.into_std()?),
            "registered" => held_tokio.push(socket),
            "task" => {
                let socket = socket.into_std()?;
                tokio::spawn(async move {
                    std::future::pending::<()>().await;
                    drop(socket);
                });
            }
            _ => {
                tokio::spawn(async move {
                    std::future::pending::<()>().await;
                    drop(socket);
                });
            }
        }
    }
    let clients = clients
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib()?;
    println!(
        "{mode}: {} B of RSS per connection ({count} connections, client sockets included)",
        after.saturating_sub(before) * 1024 / count as u64
    );
    drop(clients);
    Ok(())
}
