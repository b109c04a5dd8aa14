//! Opens N idle MQTT 3.1.1 connections to a broker and holds them, to measure the broker's memory
//! per idle session: clean sessions, or persistent ones (clean session off, one QoS 1
//! subscription each, as a device listening for commands has). Spreads connections over source addresses 127.0.0.1..=127.0.0.N so ephemeral
//! ports never run out, prints one line once all are connected, then holds them for the given
//! number of seconds (a bounded run: it always stops by itself).
//!
//! `cargo run --release --example idle_connections -- ADDR COUNT HOLD_SECS [clean|persistent]`

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connections kept in flight while connecting.
const IN_FLIGHT: usize = 200;
/// Connections per source address.
const PER_SOURCE: usize = 20_000;

fn connect_packet(id: usize, persistent: bool) -> Vec<u8> {
    let client_id = format!("idle-{id}");
    let flags = if persistent { 0x00 } else { 0x02 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 0];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend_from_slice(&body);
    p
}

/// SUBSCRIBE (packet id 1) to `idle/ID/cmd` at QoS 1.
fn subscribe_packet(id: usize) -> Vec<u8> {
    let filter = format!("idle/{id}/cmd");
    let mut body = vec![0, 1];
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(1);
    let mut p = vec![0x82, body.len() as u8];
    p.extend_from_slice(&body);
    p
}

async fn open(addr: SocketAddr, id: usize, persistent: bool) -> anyhow::Result<TcpStream> {
    let source = Ipv4Addr::new(127, 0, 0, 1 + (id / PER_SOURCE) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let mut s = socket.connect(addr).await?;
    s.write_all(&connect_packet(id, persistent)).await?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await?;
    anyhow::ensure!(
        connack[0] == 0x20 && connack[3] == 0,
        "refused: {connack:?}"
    );
    if persistent {
        s.write_all(&subscribe_packet(id)).await?;
        let mut suback = [0u8; 5];
        s.read_exact(&mut suback).await?;
        anyhow::ensure!(
            suback[0] == 0x90 && suback[4] == 1,
            "subscription refused: {suback:?}"
        );
    }
    Ok(s)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:1883".into())
        .parse()?;
    let count: usize = args.next().unwrap_or_else(|| "1000".into()).parse()?;
    let hold: u64 = args.next().unwrap_or_else(|| "30".into()).parse()?;
    let persistent = match args.next().as_deref() {
        None | Some("clean") => false,
        Some("persistent") => true,
        Some(other) => anyhow::bail!("sessions: clean or persistent, not {other:?}"),
    };
    let started = Instant::now();
    let mut conns = Vec::with_capacity(count);
    let mut next = 0;
    while next < count {
        let batch: Vec<_> = (next..(next + IN_FLIGHT).min(count))
            .map(|id| tokio::spawn(open(addr, id, persistent)))
            .collect();
        next += batch.len();
        for t in batch {
            conns.push(t.await??);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "connected {} in {:.2} s ({:.0}/s)",
        conns.len(),
        secs,
        conns.len() as f64 / secs
    );
    tokio::time::sleep(Duration::from_secs(hold)).await;
    Ok(())
}
