//! Raw-socket MQTT for tests that must control every byte: packet builders written by hand, a
//! reader that splits the broker's answers into packets, and a well-behaved rumqttc client used
//! to prove that other sessions keep working while one misbehaves.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Upper bound on any single wait for the broker.
pub const WAIT: Duration = Duration::from_secs(5);

/// A variable byte integer (remaining length, property length).
pub fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

/// A whole packet: first byte, remaining length, body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// A two-byte length followed by the bytes.
pub fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A CONNECT with protocol `name`/`level`, `flags`, keep alive 60 s, `props` (v5 only: the
/// property bytes without their length) and `payload` (client id and what follows it).
pub fn connect_raw(
    name: &[u8],
    level: u8,
    flags: u8,
    props: Option<&[u8]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = string(name);
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&[0, 60]);
    if let Some(props) = props {
        body.extend(varint(props.len()));
        body.extend_from_slice(props);
    }
    body.extend_from_slice(payload);
    packet(0x10, &body)
}

/// The two protocol versions the gateway's tests cover on raw sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V {
    V311,
    V5,
}

impl V {
    pub const BOTH: [V; 2] = [V::V311, V::V5];

    pub fn is_v5(self) -> bool {
        self == V::V5
    }

    /// Clean-session CONNECT for `client_id`.
    pub fn connect(self, client_id: &str) -> Vec<u8> {
        match self {
            V::V311 => connect_raw(b"MQTT", 4, 0x02, None, &string(client_id.as_bytes())),
            V::V5 => connect_raw(b"MQTT", 5, 0x02, Some(&[]), &string(client_id.as_bytes())),
        }
    }

    /// The property length byte(s) a v5 packet needs where 3.1.1 has nothing.
    pub fn no_props(self) -> &'static [u8] {
        match self {
            V::V311 => &[],
            V::V5 => &[0],
        }
    }

    /// A PUBLISH with the given first byte, topic bytes, packet id (QoS > 0), v5 property bytes
    /// (without their length; ignored for 3.1.1) and payload.
    pub fn publish(
        self,
        first: u8,
        topic: &[u8],
        packet_id: Option<u16>,
        props: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        let mut body = string(topic);
        if let Some(id) = packet_id {
            body.extend_from_slice(&id.to_be_bytes());
        }
        if self.is_v5() {
            body.extend(varint(props.len()));
            body.extend_from_slice(props);
        }
        body.extend_from_slice(payload);
        packet(first, &body)
    }

    /// A SUBSCRIBE for one filter at `qos`, packet id 1.
    pub fn subscribe(self, filter: &str, qos: u8) -> Vec<u8> {
        let mut body = vec![0, 1];
        body.extend_from_slice(self.no_props());
        body.extend(string(filter.as_bytes()));
        body.push(qos);
        packet(0x82, &body)
    }
}

/// One packet read from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub first: u8,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }
}

/// How reading a packet ended when no packet came.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Orderly close or reset by the broker.
    Closed,
    /// Nothing within the wait.
    Silent,
}

/// A client on a raw socket.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("TCP connect to {addr} timed out"))
            .unwrap_or_else(|e| panic!("TCP connect to {addr} failed: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Opens a connection and completes a successful CONNECT/CONNACK exchange.
    pub async fn connected(addr: SocketAddr, v: V, client_id: &str) -> Raw {
        let mut raw = Raw::open(addr).await;
        raw.send(&v.connect(client_id)).await;
        let ack = raw.expect_packet("CONNACK").await;
        assert_eq!(ack.first, 0x20, "expected CONNACK, got {ack:?}");
        assert_eq!(ack.body.get(1), Some(&0), "CONNACK not successful: {ack:?}");
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        timeout(WAIT, self.stream.write_all(bytes))
            .await
            .expect("write to the broker timed out")
            .expect("write to the broker failed");
    }

    /// Like `send`, but a broker that already closed the socket is not an error.
    pub async fn send_lenient(&mut self, bytes: &[u8]) {
        let _ = timeout(WAIT, self.stream.write_all(bytes)).await;
    }

    /// The next packet within `within`, or why there is none.
    pub async fn read_packet_within(&mut self, within: Duration) -> Result<Frame, End> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(frame) = self.split_frame() {
                return Ok(frame);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(End::Silent),
                Ok(Ok(0)) | Ok(Err(_)) => {
                    assert!(
                        self.buf.is_empty(),
                        "connection closed in the middle of a packet: {:02X?}",
                        self.buf
                    );
                    return Err(End::Closed);
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub async fn read_packet(&mut self) -> Result<Frame, End> {
        self.read_packet_within(WAIT).await
    }

    /// The next packet; fails the test if the connection closes or stays silent.
    pub async fn expect_packet(&mut self, what: &str) -> Frame {
        match self.read_packet().await {
            Ok(frame) => frame,
            Err(End::Closed) => panic!("expected {what}, but the broker closed the connection"),
            Err(End::Silent) => panic!("expected {what}, but nothing came within {WAIT:?}"),
        }
    }

    /// Asserts that the broker sends nothing more and closes the connection within the wait.
    pub async fn expect_closed(&mut self, context: &str) {
        match self.read_packet().await {
            Err(End::Closed) => {}
            Err(End::Silent) => panic!("{context}: connection still open after {WAIT:?}"),
            Ok(frame) => panic!("{context}: expected the connection to close, got {frame:?}"),
        }
    }

    /// Asserts the broker answers nothing and closes: what a 3.1.1 client gets for bad input.
    pub async fn expect_closed_silently(&mut self, context: &str) {
        self.expect_closed(context).await;
    }

    /// Asserts a v5 DISCONNECT with `code`, then the close.
    pub async fn expect_disconnect(&mut self, code: u8, context: &str) {
        let frame = self
            .expect_packet(&format!("DISCONNECT 0x{code:02X} ({context})"))
            .await;
        assert_eq!(
            frame.first, 0xE0,
            "{context}: expected DISCONNECT, got {frame:?}"
        );
        assert_eq!(
            frame.body.first(),
            Some(&code),
            "{context}: DISCONNECT reason 0x{:02X?} instead of 0x{code:02X}",
            frame.body.first()
        );
        self.expect_closed(context).await;
    }

    /// The answer bad input deserves: v5 DISCONNECT with `code` then close; 3.1.1 close alone.
    pub async fn expect_rejected(&mut self, v: V, code: u8, context: &str) {
        match v {
            V::V5 => self.expect_disconnect(code, context).await,
            V::V311 => self.expect_closed_silently(context).await,
        }
    }

    /// Asserts a CONNACK whose return/reason code (second body byte) is `code`, then the close.
    pub async fn expect_connack_refusal(&mut self, code: u8, context: &str) {
        let frame = self
            .expect_packet(&format!("CONNACK 0x{code:02X} ({context})"))
            .await;
        assert_eq!(
            frame.first, 0x20,
            "{context}: expected CONNACK, got {frame:?}"
        );
        assert_eq!(
            frame.body.get(1),
            Some(&code),
            "{context}: CONNACK code {:02X?} instead of 0x{code:02X} ({frame:?})",
            frame.body.get(1)
        );
        self.expect_closed(context).await;
    }

    /// A PINGREQ answered by PINGRESP: the connection is alive and in sync.
    pub async fn ping(&mut self) {
        self.send(&[0xC0, 0x00]).await;
        let frame = self.expect_packet("PINGRESP").await;
        assert_eq!(frame.first, 0xD0, "expected PINGRESP, got {frame:?}");
    }

    fn split_frame(&mut self) -> Option<Frame> {
        let mut len = 0usize;
        let mut i = 1;
        loop {
            let byte = *self.buf.get(i)?;
            len |= usize::from(byte & 0x7F) << (7 * (i - 1));
            i += 1;
            if byte & 0x80 == 0 {
                break;
            }
            assert!(
                i <= 4,
                "broker sent a remaining length over 4 bytes: {:02X?}",
                self.buf
            );
        }
        if self.buf.len() < i + len {
            return None;
        }
        let frame = Frame {
            first: self.buf[0],
            body: self.buf[i..i + len].to_vec(),
        };
        self.buf.drain(..i + len);
        Some(frame)
    }
}

/// What a well-behaved client's event loop reports.
#[derive(Debug)]
pub enum Ev {
    SubAck,
    Message(String, Vec<u8>),
    Failed(String),
}

/// A well-behaved rumqttc (3.1.1) client subscribed to a topic of its own.
pub struct Healthy {
    pub client: AsyncClient,
    pub events: mpsc::UnboundedReceiver<Ev>,
    topic: String,
    task: tokio::task::JoinHandle<()>,
    round: u32,
}

/// Starts a rumqttc event loop on its own task; the loop stops at the first error (so a
/// dropped connection is reported, not silently re-established).
pub fn spawn_client(
    opts: MqttOptions,
) -> (
    AsyncClient,
    mpsc::UnboundedReceiver<Ev>,
    tokio::task::JoinHandle<()>,
) {
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send(Ev::SubAck);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Ev::Message(p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Ev::Failed(e.to_string()));
                    return;
                }
            }
        }
    });
    (client, rx, task)
}

/// Waits for the next SUBACK on `events`; fails on anything else that matters.
pub async fn wait_suback(events: &mut mpsc::UnboundedReceiver<Ev>, who: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => panic!("{who}: no SUBACK within {WAIT:?}"),
            Ok(None) => panic!("{who}: event loop ended before SUBACK"),
            Ok(Some(Ev::SubAck)) => return,
            Ok(Some(Ev::Failed(e))) => panic!("{who}: connection failed before SUBACK: {e}"),
            Ok(Some(Ev::Message(..))) => {}
        }
    }
}

impl Healthy {
    pub async fn start(addr: SocketAddr, id: &str) -> Healthy {
        let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut events, task) = spawn_client(opts);
        let topic = format!("healthy/{id}");
        client
            .subscribe(topic.clone(), QoS::AtLeastOnce)
            .await
            .expect("queue SUBSCRIBE");
        wait_suback(&mut events, id).await;
        let mut healthy = Healthy {
            client,
            events,
            topic,
            task,
            round: 0,
        };
        healthy.round_trip().await;
        healthy
    }

    /// Publishes to its own topic and waits for the message to come back.
    pub async fn round_trip(&mut self) {
        self.round += 1;
        let payload = format!("round {}", self.round).into_bytes();
        self.client
            .publish(self.topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .await
            .expect("queue PUBLISH");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => panic!(
                    "healthy client on {}: message {:?} not received within {WAIT:?}",
                    self.topic,
                    String::from_utf8_lossy(&payload)
                ),
                Ok(None) => panic!("healthy client's event loop ended"),
                Ok(Some(Ev::Failed(e))) => panic!("healthy client lost its connection: {e}"),
                Ok(Some(Ev::Message(_, p))) if p == payload => return,
                Ok(Some(_)) => {}
            }
        }
    }
}

impl Drop for Healthy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
