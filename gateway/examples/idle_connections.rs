//! Opens N idle MQTT 3.1.1 connections to a broker and holds them, to measure the broker's memory
//! per idle session: clean sessions, or persistent ones (clean session off, one QoS 1
//! subscription each, as a device listening for commands has). Spreads connections over source addresses 127.0.0.1..=127.0.0.N so ephemeral
//! ports never run out, prints one line once all are connected, then holds them for the given
//! number of seconds (a bounded run: it always stops by itself).
//!
//! The transport is plain TCP, TLS, WebSocket (`ws`, path `/mqtt`) or WebSocket on TLS (`wss`);
//! TLS verifies the broker against CA_FILE for `localhost` and always does a full handshake.
//!
//! `cargo run --release --example idle_connections -- ADDR COUNT HOLD_SECS [clean|persistent]
//!  [tcp|tls|ws|wss] [CA_FILE]`

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

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

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A connection held open: a byte stream, or a WebSocket carrying one in binary messages.
enum Conn {
    Bytes(Pin<Box<dyn Io>>),
    Ws(Box<WebSocketStream<Pin<Box<dyn Io>>>>),
}

impl Conn {
    async fn send(&mut self, packet: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Conn::Bytes(s) => s.write_all(&packet).await?,
            Conn::Ws(ws) => ws.send(Message::binary(packet)).await?,
        }
        Ok(())
    }

    /// The next `len` bytes of the MQTT stream (one packet: the broker sends nothing else here).
    async fn receive(&mut self, len: usize) -> anyhow::Result<Vec<u8>> {
        match self {
            Conn::Bytes(s) => {
                let mut packet = vec![0; len];
                s.read_exact(&mut packet).await?;
                Ok(packet)
            }
            Conn::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("closed"),
                }
            },
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Tcp,
    Tls,
    Ws,
    Wss,
}

async fn open(
    addr: SocketAddr,
    id: usize,
    persistent: bool,
    transport: Transport,
    tls: Option<Arc<ClientConfig>>,
) -> anyhow::Result<Conn> {
    let source = Ipv4Addr::new(127, 0, 0, 1 + (id / PER_SOURCE) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let tcp = socket.connect(addr).await?;
    let stream: Pin<Box<dyn Io>> = match tls {
        Some(config) => {
            let name = ServerName::try_from("localhost")?;
            Box::pin(
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?,
            )
        }
        None => Box::pin(tcp),
    };
    let mut s = if matches!(transport, Transport::Ws | Transport::Wss) {
        let scheme = if transport == Transport::Wss {
            "wss"
        } else {
            "ws"
        };
        let mut request =
            format!("{scheme}://localhost:{}/mqtt", addr.port()).into_client_request()?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "mqtt".parse()?);
        // tungstenite's default read buffer is 128 KiB per connection: too much for thousands.
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
        Conn::Ws(Box::new(ws))
    } else {
        Conn::Bytes(stream)
    };
    s.send(connect_packet(id, persistent)).await?;
    let connack = s.receive(4).await?;
    anyhow::ensure!(
        connack.len() == 4 && connack[0] == 0x20 && connack[3] == 0,
        "refused: {connack:?}"
    );
    if persistent {
        s.send(subscribe_packet(id)).await?;
        let suback = s.receive(5).await?;
        anyhow::ensure!(
            suback.len() == 5 && suback[0] == 0x90 && suback[4] == 1,
            "subscription refused: {suback:?}"
        );
    }
    Ok(s)
}

fn tls_config(ca: &str) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = tokio_rustls::rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
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
    let transport = match args.next().as_deref() {
        None | Some("tcp") => Transport::Tcp,
        Some("tls") => Transport::Tls,
        Some("ws") => Transport::Ws,
        Some("wss") => Transport::Wss,
        Some(other) => anyhow::bail!("transport: tcp, tls, ws or wss, not {other:?}"),
    };
    let tls = match transport {
        Transport::Tls | Transport::Wss => {
            let ca = args
                .next()
                .ok_or_else(|| anyhow::anyhow!("tls and wss need CA_FILE"))?;
            Some(tls_config(&ca)?)
        }
        Transport::Tcp | Transport::Ws => None,
    };
    let started = Instant::now();
    let mut conns = Vec::with_capacity(count);
    let mut next = 0;
    while next < count {
        let batch: Vec<_> = (next..(next + IN_FLIGHT).min(count))
            .map(|id| tokio::spawn(open(addr, id, persistent, transport, tls.clone())))
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
