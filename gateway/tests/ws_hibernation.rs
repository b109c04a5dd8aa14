//! Hibernation of WebSocket sessions (`ws` and `wss` listeners, `mqtt.hibernate_after`): an idle
//! session parks with its framing state alone (no task, no buffer, socket off the reactor) and
//! comes back, unchanged to its client, on a packet, a delivery, a ping or a close; and the
//! WebSocket rules the broker's own frame decoder enforces, against a client it did not write
//! (tokio-tungstenite, over TCP and over a rustls client session): pings answered, fragmented
//! messages and packets cut across frames joined, a close answered with a close, a text frame,
//! an oversize frame and an unmasked one each refused with the RFC's close code.

mod clients;
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use clients::raw::{self, Connect, V};
use clients::{unique_id, v5, WAIT};
use common::pki::{rustls_client, temp_dir, Pki};
use common::{eventually, TestBroker};
use futures_util::{SinkExt, StreamExt};
use gateway::config::{ListenerConfig, ListenerKind};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const HIBERNATE_AFTER: Duration = Duration::from_millis(300);
/// The broker's packet bound: WebSocket frames are bounded by it plus 8 bytes.
const MAX_PACKET: u32 = 4096;

/// A broker with a `ws` listener (`listeners[0]`) and a `wss` one (`listeners[1]`).
async fn broker(pki: &Pki) -> TestBroker {
    let (cert, key) = pki.server();
    let ws = ListenerConfig::new(ListenerKind::Ws, "127.0.0.1:0".parse().expect("literal"));
    let wss = ListenerConfig {
        cert: Some(cert),
        key: Some(key),
        ..ListenerConfig::new(ListenerKind::Wss, "127.0.0.1:0".parse().expect("literal"))
    };
    TestBroker::with(move |c| {
        c.mqtt.hibernate_after = Some(HIBERNATE_AFTER);
        c.mqtt.max_packet_size = MAX_PACKET;
        c.auth.allow_anonymous = true;
        c.listeners = vec![ws, wss];
        c.http.listen = Some("127.0.0.1:0".parse().expect("literal"));
    })
    .await
}

/// The value of one sample of the broker's `/metrics`.
async fn metric(broker: &TestBroker, sample: &str) -> Option<f64> {
    use tokio::io::AsyncReadExt;
    let mut http = TcpStream::connect(broker.http.expect("HTTP on"))
        .await
        .expect("HTTP endpoint");
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut text = String::new();
    http.read_to_string(&mut text).await.expect("response");
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
}

fn hibernating(broker: &TestBroker) -> usize {
    broker.ctx.state().sessions_hibernating
}

async fn until_hibernating(broker: &TestBroker, n: usize, what: &str) {
    assert!(
        eventually(WAIT, || hibernating(broker) == n).await,
        "{what}: {} sessions hibernating, expected {n}",
        hibernating(broker)
    );
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// An MQTT client over tokio-tungstenite, on TCP or on a rustls session.
struct WsClient {
    ws: WebSocketStream<Box<dyn Io>>,
    /// MQTT bytes received and not yet split into packets.
    buf: BytesMut,
    pongs: Vec<Vec<u8>>,
}

/// What the broker sent that is not MQTT bytes.
#[derive(Debug, PartialEq)]
enum End {
    Close(Option<u16>),
    /// The stream ended without a close frame, or failed.
    Gone(String),
}

impl WsClient {
    async fn connect(addr: SocketAddr, tls: Option<&Arc<ClientConfig>>) -> WsClient {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (stream, scheme): (Box<dyn Io>, _) = match tls {
            Some(config) => {
                let name = ServerName::try_from("localhost").expect("name");
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = connector.connect(name, tcp).await.expect("TLS handshake");
                (Box::new(tls), "wss")
            }
            None => (Box::new(tcp), "ws"),
        };
        let mut request = format!("{scheme}://localhost:{}/mqtt", addr.port())
            .into_client_request()
            .expect("request");
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "mqtt".parse().expect("header"));
        let (ws, response) = tokio_tungstenite::client_async(request, stream)
            .await
            .expect("WebSocket handshake");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.as_bytes()),
            Some(&b"mqtt"[..])
        );
        WsClient {
            ws,
            buf: BytesMut::new(),
            pongs: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(bytes.to_vec().into()))
            .await
            .expect("send");
    }

    /// `bytes` in binary fragments of `size` bytes: a first binary frame, continuations, with a
    /// ping after the first fragment.
    async fn send_fragmented(&mut self, bytes: &[u8], size: usize) {
        let parts: Vec<&[u8]> = bytes.chunks(size).collect();
        for (i, part) in parts.iter().enumerate() {
            let opcode = if i == 0 {
                OpCode::Data(Data::Binary)
            } else {
                OpCode::Data(Data::Continue)
            };
            let header = FrameHeader {
                is_final: i + 1 == parts.len(),
                opcode,
                ..FrameHeader::default()
            };
            let frame = Frame::from_payload(header, part.to_vec().into());
            self.ws.send(Message::Frame(frame)).await.expect("fragment");
            if i == 0 {
                self.ws
                    .send(Message::Ping(b"mid".to_vec().into()))
                    .await
                    .expect("ping");
            }
        }
    }

    /// The next MQTT packet (first byte, body), or how the stream ended.
    async fn packet(&mut self) -> Result<(u8, Vec<u8>), End> {
        tokio::time::timeout(WAIT, async {
            loop {
                if self.buf.len() >= 2 {
                    if let Some((len, used)) = raw::decode_varint(&self.buf[1..]) {
                        if self.buf.len() > used + len {
                            let first = self.buf[0];
                            self.buf.advance(1 + used);
                            return Ok((first, self.buf.split_to(len).to_vec()));
                        }
                    }
                }
                match self.ws.next().await {
                    Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                    Some(Ok(Message::Pong(p))) => self.pongs.push(p.to_vec()),
                    Some(Ok(Message::Close(c))) => {
                        return Err(End::Close(c.map(|c| u16::from(c.code))))
                    }
                    Some(Ok(other)) => panic!("unexpected message {other:?}"),
                    Some(Err(e)) => return Err(End::Gone(e.to_string())),
                    None => return Err(End::Gone("end of stream".to_owned())),
                }
            }
        })
        .await
        .expect("a packet or the end in time")
    }

    async fn expect(&mut self, kind: u8, what: &str) -> Vec<u8> {
        match self.packet().await {
            Ok((first, body)) if first & 0xF0 == kind => body,
            other => panic!("expected {what}, got {other:?}"),
        }
    }

    /// The end of the stream after the broker's close frame; its code.
    async fn closed(&mut self) -> Option<u16> {
        match self.packet().await {
            Err(End::Close(code)) => code,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

fn tls_config(pki: &Pki) -> Arc<ClientConfig> {
    Arc::new(rustls_client(&pki.ca_path(), "1.3", None))
}

/// Over `ws` and `wss`: a session hibernates after SUBSCRIBE; a PUBLISH to itself wakes it (PUBACK
/// and the message come back), a delivery from a plain TCP publisher wakes it, a WebSocket ping
/// wakes it and is answered, a PUBLISH in fragments with a ping between them is understood, and
/// each time it hibernates again; a close frame wakes it and is answered with a close frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_and_wss_sessions_hibernate_and_wake_on_packets_deliveries_pings_and_close() {
    let dir = temp_dir("ws-hib");
    let pki = Pki::new(&dir, "ws hibernation CA");
    let broker = broker(&pki).await;
    let tls = tls_config(&pki);
    for secure in [false, true] {
        let case = if secure { "wss" } else { "ws" };
        let addr = broker.listeners[usize::from(secure)];
        let mut c = WsClient::connect(addr, secure.then_some(&tls)).await;
        let id = unique_id("ws-hib");
        let topic = format!("ws-hib/{id}");
        let mut hello = raw::encode_connect(&Connect::v311(&id, true, 30));
        hello.extend(V::V311.subscribe(&topic, 1));
        c.send(&hello).await;
        c.expect(raw::CONNACK, "CONNACK").await;
        c.expect(raw::SUBACK, "SUBACK").await;
        until_hibernating(&broker, 1, case).await;

        // A packet wakes it.
        c.send(&V::V311.publish(0x32, topic.as_bytes(), Some(7), &[], b"woken"))
            .await;
        let mut got = [
            c.packet().await.expect("packet"),
            c.packet().await.expect("packet"),
        ];
        got.sort_by_key(|(first, _)| first & 0xF0);
        assert!(
            got[0].0 & 0xF0 == raw::PUBLISH && got[0].1.ends_with(b"woken"),
            "{case}: {got:?}"
        );
        assert_eq!(
            (got[1].0 & 0xF0, got[1].1.as_slice()),
            (raw::PUBACK, &[0, 7][..]),
            "{case}"
        );
        until_hibernating(&broker, 1, case).await;

        // A delivery wakes it.
        let mut publ = v5::connect(broker.addr, &unique_id("ws-hib-pub")).await;
        until_hibernating(&broker, 2, case).await;
        publ.publish_confirmed(&topic, v5::QoS::AtLeastOnce, false, "delivered")
            .await;
        let body = c.expect(raw::PUBLISH, "the delivery").await;
        assert!(body.ends_with(b"delivered"), "{case}");
        drop(publ);
        until_hibernating(&broker, 1, case).await;

        // A ping wakes it and is answered; nothing else comes.
        c.ws.send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .expect("ping");
        c.send(&raw::encode_pingreq()).await;
        c.expect(raw::PINGRESP, "PINGRESP").await;
        assert_eq!(c.pongs, vec![b"are you there".to_vec()], "{case}");
        until_hibernating(&broker, 1, case).await;

        // A QoS 1 PUBLISH in 5-byte fragments, a ping after the first.
        let payload = vec![b'f'; 300];
        c.send_fragmented(
            &V::V311.publish(0x32, topic.as_bytes(), Some(8), &[], &payload),
            5,
        )
        .await;
        let mut got = [
            c.packet().await.expect("packet"),
            c.packet().await.expect("packet"),
        ];
        got.sort_by_key(|(first, _)| first & 0xF0);
        assert!(got[0].1.ends_with(&payload), "{case}");
        assert_eq!(
            (got[1].0 & 0xF0, got[1].1.as_slice()),
            (raw::PUBACK, &[0, 8][..]),
            "{case}"
        );
        assert_eq!(
            c.pongs.last().map(Vec::as_slice),
            Some(&b"mid"[..]),
            "{case}"
        );
        until_hibernating(&broker, 1, case).await;

        // A close frame wakes it: answered with its code, and the session ends.
        c.ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "bye".into(),
        })))
        .await
        .expect("close");
        assert_eq!(c.closed().await, Some(1001), "{case}");
        until_hibernating(&broker, 0, case).await;
        assert!(
            eventually(WAIT, || broker.ctx.state().sessions_online == 0).await,
            "{case}: the session ended"
        );
    }
    broker.shutdown().await;
}

/// Frames the broker refuses, each to a hibernating session: a text frame (close code 1003), a
/// frame beyond the packet bound (1009), an unmasked frame written under the client's WebSocket
/// (1002). Each is counted as malformed input (`websocket`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_refused_with_the_rfc_close_code_even_while_hibernating() {
    let dir = temp_dir("ws-bad");
    let pki = Pki::new(&dir, "ws bad frames CA");
    let broker = broker(&pki).await;
    let tls = tls_config(&pki);
    for secure in [false, true] {
        let case = if secure { "wss" } else { "ws" };
        let addr = broker.listeners[usize::from(secure)];
        for (bad, code) in [("text", 1003), ("oversize", 1009), ("unmasked", 1002)] {
            if bad == "unmasked" && secure {
                // Written under the WebSocket: the plain TCP case covers it.
                continue;
            }
            let mut c = WsClient::connect(addr, secure.then_some(&tls)).await;
            let id = unique_id("ws-bad");
            c.send(&raw::encode_connect(&Connect::v311(&id, true, 30)))
                .await;
            c.expect(raw::CONNACK, "CONNACK").await;
            until_hibernating(&broker, 1, case).await;
            match bad {
                "text" => c.ws.send(Message::text("hello")).await.expect("text"),
                "oversize" => c.send(&vec![0u8; MAX_PACKET as usize + 9]).await,
                _ => {
                    let mut tcp = c.ws.into_inner();
                    // FIN binary, 2 bytes, no mask bit.
                    tcp.write_all(&[0x82, 0x02, 0xC0, 0x00])
                        .await
                        .expect("write");
                    c = WsClient {
                        ws: WebSocketStream::from_raw_socket(
                            tcp,
                            tokio_tungstenite::tungstenite::protocol::Role::Client,
                            None,
                        )
                        .await,
                        buf: BytesMut::new(),
                        pongs: Vec::new(),
                    };
                }
            }
            assert_eq!(c.closed().await, Some(code), "{case} {bad}");
            until_hibernating(&broker, 0, case).await;
            assert!(
                eventually(WAIT, || broker.ctx.state().sessions_online == 0).await,
                "{case} {bad}: the session ended"
            );
        }
    }
    assert_eq!(
        metric(
            &broker,
            "gateway_malformed_packets_total{kind=\"websocket\"}"
        )
        .await,
        Some(5.0),
        "five refusals counted"
    );
    broker.shutdown().await;
}
