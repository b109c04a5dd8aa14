//! Raw sockets with hand-encoded packets, and a reader that splits the broker's answers into
//! packets: for what a well-behaved library will not do (malformed input, withheld
//! acknowledgements, silence, a dropped socket).

use super::*;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// First bytes (packet type, flags 0) of what the broker sends.
pub const CONNACK: u8 = 0x20;
pub const PUBLISH: u8 = 0x30;
pub const PUBACK: u8 = 0x40;
pub const SUBACK: u8 = 0x90;
pub const PINGRESP: u8 = 0xD0;
pub const DISCONNECT: u8 = 0xE0;

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

/// Decodes the variable byte integer at the start of `b`: (value, bytes used), or None when
/// `b` ends first. Panics past four bytes, which no valid packet has.
pub fn decode_varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut n = 0usize;
    for (i, &byte) in b.iter().enumerate() {
        assert!(i < 4, "variable byte integer over 4 bytes: {b:02X?}");
        n |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((n, i + 1));
        }
    }
    None
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
    connect_packet(name, level, flags, 60, props, payload)
}

fn connect_packet(
    name: &[u8],
    level: u8,
    flags: u8,
    keep_alive: u16,
    props: Option<&[u8]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = string(name);
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if let Some(props) = props {
        body.extend(varint(props.len()));
        body.extend_from_slice(props);
    }
    body.extend_from_slice(payload);
    packet(0x10, &body)
}

/// A v5 four-byte-integer property.
pub fn prop_u32(id: u8, v: u32) -> Vec<u8> {
    let mut p = vec![id];
    p.extend_from_slice(&v.to_be_bytes());
    p
}

/// The two protocol versions the raw tests speak.
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

    /// Clean-session CONNECT for `client_id` (keep alive 60 s).
    pub fn connect(self, client_id: &str) -> Vec<u8> {
        encode_connect(&Connect::plain(self, client_id))
    }

    /// The property length byte(s) a v5 packet needs where 3.1.1 has nothing.
    pub fn no_props(self) -> &'static [u8] {
        match self {
            V::V311 => &[],
            V::V5 => &[0],
        }
    }

    /// A PUBLISH with the given first byte, topic bytes, packet id (QoS > 0), v5 property
    /// bytes (without their length; ignored for 3.1.1) and payload.
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

    /// A SUBSCRIBE for one filter with subscription `options` (QoS in the low bits),
    /// packet id 1.
    pub fn subscribe(self, filter: &str, options: u8) -> Vec<u8> {
        let mut body = vec![0, 1];
        body.extend_from_slice(self.no_props());
        body.extend(string(filter.as_bytes()));
        body.push(options);
        packet(0x82, &body)
    }
}

/// A will to put in a raw CONNECT.
pub struct Will<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
    /// v5 only: encoded will properties (without the length prefix).
    pub properties: Vec<u8>,
}

impl<'a> Will<'a> {
    /// A QoS 1 will, not retained, without properties.
    pub fn qos1(topic: &'a str, payload: &'a [u8]) -> Will<'a> {
        Will {
            topic,
            payload,
            qos: 1,
            retain: false,
            properties: Vec::new(),
        }
    }
}

/// What a raw CONNECT carries.
pub struct Connect<'a> {
    /// 4 for 3.1.1, 5 for 5.0.
    pub level: u8,
    pub client_id: &'a str,
    pub clean: bool,
    pub keep_alive: u16,
    pub will: Option<Will<'a>>,
    /// v5 only: encoded CONNECT properties (without the length prefix).
    pub properties: Vec<u8>,
}

impl<'a> Connect<'a> {
    pub fn v311(client_id: &'a str, clean: bool, keep_alive: u16) -> Connect<'a> {
        Connect {
            level: 4,
            client_id,
            clean,
            keep_alive,
            will: None,
            properties: Vec::new(),
        }
    }

    pub fn v5(client_id: &'a str, clean: bool, keep_alive: u16) -> Connect<'a> {
        Connect {
            level: 5,
            ..Connect::v311(client_id, clean, keep_alive)
        }
    }

    /// Clean session, keep alive 60 s, nothing else.
    pub fn plain(v: V, client_id: &'a str) -> Connect<'a> {
        match v {
            V::V311 => Connect::v311(client_id, true, 60),
            V::V5 => Connect::v5(client_id, true, 60),
        }
    }
}

pub fn encode_connect(c: &Connect) -> Vec<u8> {
    let v5 = c.level == 5;
    let mut flags = 0u8;
    if c.clean {
        flags |= 0x02;
    }
    let mut payload = string(c.client_id.as_bytes());
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos << 3);
        if w.retain {
            flags |= 0x20;
        }
        if v5 {
            payload.extend(varint(w.properties.len()));
            payload.extend_from_slice(&w.properties);
        }
        payload.extend(string(w.topic.as_bytes()));
        payload.extend(string(w.payload));
    }
    let props = v5.then_some(&c.properties[..]);
    connect_packet(b"MQTT", c.level, flags, c.keep_alive, props, &payload)
}

pub fn encode_puback(packet_id: u16) -> Vec<u8> {
    packet(0x40, &packet_id.to_be_bytes())
}

pub fn encode_pingreq() -> Vec<u8> {
    packet(0xC0, &[])
}

/// 3.1.1 DISCONNECT, or v5 DISCONNECT with a reason code.
pub fn encode_disconnect(v5_reason: Option<u8>) -> Vec<u8> {
    match v5_reason {
        Some(r) => packet(0xE0, &[r, 0]),
        None => packet(0xE0, &[]),
    }
}

/// One packet read from the broker: its first byte and what follows the remaining length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub first: u8,
    pub body: Vec<u8>,
}

impl Frame {
    /// The packet type in the high nibble, flags cleared (compare with `PUBLISH` etc.).
    pub fn kind(&self) -> u8 {
        self.first & 0xF0
    }
}

/// A decoded PUBLISH.
#[derive(Debug, Clone)]
pub struct Pub {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub packet_id: u16,
    pub payload: Vec<u8>,
}

pub fn publish_of(f: &Frame, v: V) -> Pub {
    assert_eq!(f.kind(), PUBLISH, "not a PUBLISH: {f:?}");
    let mut body = &f.body[..];
    let qos = (f.first >> 1) & 3;
    let len = usize::from(body.get_u16());
    let topic = String::from_utf8(body[..len].to_vec()).expect("UTF-8 topic");
    body.advance(len);
    let packet_id = if qos > 0 { body.get_u16() } else { 0 };
    if v.is_v5() {
        let (plen, used) = decode_varint(body).expect("property length");
        body.advance(used + plen);
    }
    Pub {
        dup: f.first & 0x08 != 0,
        qos,
        retain: f.first & 0x01 != 0,
        topic,
        packet_id,
        payload: body.to_vec(),
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
    buf: BytesMut,
    eof: bool,
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("TCP connect to {addr} timed out"))
            .unwrap_or_else(|e| panic!("TCP connect to {addr} failed: {e}"));
        Raw::from_stream(stream)
    }

    /// A socket the test connected itself (to set socket options first).
    pub fn from_stream(stream: TcpStream) -> Raw {
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            eof: false,
        }
    }

    /// Opens a socket and sends `first` (a CONNECT to be judged, or something else).
    pub async fn open_with(addr: SocketAddr, first: &[u8]) -> Raw {
        let mut raw = Raw::open(addr).await;
        raw.send(first).await;
        raw
    }

    /// Opens a socket, sends CONNECT and expects a successful CONNACK; returns session present.
    pub async fn connect(addr: SocketAddr, c: &Connect<'_>) -> (Raw, bool) {
        let mut raw = Raw::open_with(addr, &encode_connect(c)).await;
        let ack = raw.expect_packet("CONNACK").await;
        assert_eq!(ack.first, CONNACK, "expected CONNACK, got {ack:?}");
        assert_eq!(ack.body.get(1), Some(&0), "CONNACK not successful: {ack:?}");
        (raw, ack.body[0] & 1 == 1)
    }

    /// Opens a connection and completes a clean-session CONNECT/CONNACK exchange.
    pub async fn connected(addr: SocketAddr, v: V, client_id: &str) -> Raw {
        Raw::connect(addr, &Connect::plain(v, client_id)).await.0
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT, self.stream.write_all(bytes))
            .await
            .expect("write to the broker timed out")
            .expect("write to the broker failed");
    }

    /// Like `send`, but a broker that already closed the socket is not an error.
    pub async fn send_lenient(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(WAIT, self.stream.write_all(bytes)).await;
    }

    /// Writes without a deadline of its own (for bulk writes the caller bounds).
    pub async fn stream_write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("socket write");
    }

    fn split_frame(&mut self) -> Option<Frame> {
        let (len, used) = decode_varint(self.buf.get(1..)?)?;
        if self.buf.len() < 1 + used + len {
            return None;
        }
        let first = self.buf[0];
        self.buf.advance(1 + used);
        let body = self.buf.split_to(len).to_vec();
        Some(Frame { first, body })
    }

    /// Reads the next packet; None once the connection has closed (EOF, or a reset, which is
    /// how a close may look), whatever part of a packet is left unread.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.split_frame() {
                return Some(frame);
            }
            if self.eof {
                return None;
            }
            self.buf.reserve(64 * 1024);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => self.eof = true,
                Ok(_) => {}
            }
        }
    }

    /// The next packet within `within`, or why there is none. A close in the middle of a
    /// packet fails the test.
    pub async fn read_packet_within(&mut self, within: Duration) -> Result<Frame, End> {
        match tokio::time::timeout(within, self.read_frame()).await {
            Err(_) => Err(End::Silent),
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => {
                assert!(
                    self.buf.is_empty(),
                    "connection closed in the middle of a packet: {:02X?}",
                    &self.buf[..]
                );
                Err(End::Closed)
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

    /// Next frame of kind `kind`, skipping others.
    pub async fn expect_kind(&mut self, kind: u8, d: Duration) -> Frame {
        within(d, &format!("a packet of type 0x{kind:02x}"), async {
            loop {
                match self.read_frame().await {
                    Some(f) if f.kind() == kind => return f,
                    Some(_) => {}
                    None => {
                        panic!("connection closed while waiting for packet type 0x{kind:02x}")
                    }
                }
            }
        })
        .await
    }

    /// Subscribes to one filter (packet id 1) and expects a successful SUBACK.
    pub async fn subscribe(&mut self, v: V, filter: &str, options: u8) {
        self.send(&v.subscribe(filter, options)).await;
        let f = self.expect_kind(SUBACK, WAIT).await;
        let code = *f.body.last().expect("SUBACK code");
        assert!(
            code < 0x80,
            "subscription to {filter} refused: 0x{code:02x}"
        );
    }

    /// A PINGREQ answered by PINGRESP: the connection is alive and in sync.
    pub async fn ping(&mut self) {
        self.send(&encode_pingreq()).await;
        let frame = self.expect_packet("PINGRESP").await;
        assert_eq!(frame.first, PINGRESP, "expected PINGRESP, got {frame:?}");
    }

    /// Waits until the broker closes the connection, skipping any packets; returns them.
    pub async fn until_closed(&mut self, d: Duration) -> Vec<Frame> {
        within(d, "the broker to close the connection", async {
            let mut seen = Vec::new();
            while let Some(f) = self.read_frame().await {
                seen.push(f);
            }
            seen
        })
        .await
    }

    /// Asserts that the broker sends nothing more and closes the connection within `WAIT`.
    pub async fn expect_closed(&mut self, context: &str) {
        match self.read_packet().await {
            Err(End::Closed) => {}
            Err(End::Silent) => panic!("{context}: connection still open after {WAIT:?}"),
            Ok(frame) => panic!("{context}: expected the connection to close, got {frame:?}"),
        }
    }

    /// Asserts a v5 DISCONNECT with `code`, then the close.
    pub async fn expect_disconnect(&mut self, code: u8, context: &str) {
        let frame = self
            .expect_packet(&format!("DISCONNECT 0x{code:02X} ({context})"))
            .await;
        assert_eq!(
            frame.first, DISCONNECT,
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
            V::V311 => self.expect_closed(context).await,
        }
    }

    /// Asserts a CONNACK whose return/reason code (second body byte) is `code`, then the close.
    pub async fn expect_connack_refusal(&mut self, code: u8, context: &str) {
        let frame = self
            .expect_packet(&format!("CONNACK 0x{code:02X} ({context})"))
            .await;
        assert_eq!(
            frame.first, CONNACK,
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
}
