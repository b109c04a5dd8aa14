//! Hibernation of TLS sessions (`mqtt.hibernate_after`): an idle TLS session parks with its keys
//! alone (no task, no record buffers, socket off the reactor) and comes back, unchanged to its
//! client, on a packet, a delivery or its keep-alive deadline; TLS 1.3 and 1.2, with and
//! without a client certificate. Clients: mosquitto_sub (OpenSSL) and a rustls client
//! (tokio-rustls) that also resumes its session by ticket after reconnecting and rotates its
//! keys (TLS 1.3 KeyUpdate) while the broker's side sleeps.

mod clients;
mod common;
mod observe;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use clients::raw::{self, Connect, V};
use clients::{unique_id, v5, WAIT};
use common::pki::{rustls_client, temp_dir, Pki};
use common::{eventually, TestBroker};
use gateway::config::{ListenerConfig, ListenerKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, HandshakeKind};

const HIBERNATE_AFTER: Duration = Duration::from_millis(300);

/// A broker with a TLS listener (`listeners[0]`) and a mutual TLS one (`listeners[1]`).
async fn broker(pki: &Pki) -> TestBroker {
    let (cert, key) = pki.server();
    let tls = ListenerConfig {
        cert: Some(cert),
        key: Some(key),
        ..ListenerConfig::new(ListenerKind::Tls, "127.0.0.1:0".parse().expect("literal"))
    };
    let mut mutual = tls.clone();
    mutual.ca = Some(pki.ca_path());
    mutual.require_client_cert = true;
    TestBroker::with(move |c| {
        c.mqtt.hibernate_after = Some(HIBERNATE_AFTER);
        c.auth.allow_anonymous = true;
        c.listeners = vec![tls, mutual];
        c.http.listen = Some("127.0.0.1:0".parse().expect("literal"));
    })
    .await
}

fn hibernating(broker: &TestBroker) -> usize {
    broker.ctx.state().sessions_hibernating
}

async fn until_hibernating(broker: &TestBroker, n: usize) {
    assert!(
        eventually(WAIT, || hibernating(broker) == n).await,
        "{} sessions hibernating, expected {n}",
        hibernating(broker)
    );
}

/// mosquitto_sub over TLS 1.3 and 1.2, without and with a client certificate: its session
/// hibernates, and each of two QoS 1 deliveries (from a plain TCP publisher) wakes it, goes out
/// through the session's TLS keys, and lets it hibernate again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_sessions_hibernate_and_wake_on_deliveries() {
    let dir = temp_dir("hib-mosquitto");
    let pki = Pki::new(&dir, "hibernation CA");
    let (dev_cert, dev_key) = pki.issue("device", Some("device"), &[]);
    let broker = broker(&pki).await;
    let ca = pki.ca_path();
    for version in ["tlsv1.3", "tlsv1.2"] {
        for mutual in [false, true] {
            let case = format!("{version} client-cert={mutual}");
            let topic = format!("hib/{version}/{mutual}");
            let port = broker.listeners[usize::from(mutual)].port().to_string();
            let mut args = vec![
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "--cafile",
                ca.to_str().expect("path"),
                "--tls-version",
                version,
                "-t",
                &topic,
                "-q",
                "1",
                "-C",
                "2",
                "-W",
                "20",
            ];
            if mutual {
                args.extend([
                    "--cert",
                    dev_cert.to_str().expect("path"),
                    "--key",
                    dev_key.to_str().expect("path"),
                ]);
            }
            let sub = tokio::process::Command::new("mosquitto_sub")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("mosquitto_sub runs (apt install mosquitto-clients)");
            until_hibernating(&broker, 1).await;
            let mut publ = v5::connect(broker.addr, &unique_id("hib-tls-pub")).await;
            for payload in ["one", "two"] {
                // Both idle: the TLS subscriber parked when the message is published.
                until_hibernating(&broker, 2).await;
                publ.publish_confirmed(&topic, v5::QoS::AtLeastOnce, false, payload)
                    .await;
            }
            let out = tokio::time::timeout(Duration::from_secs(25), sub.wait_with_output())
                .await
                .expect("mosquitto_sub ends")
                .expect("mosquitto_sub output");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "one\ntwo\n",
                "{case}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            drop(publ);
            until_hibernating(&broker, 0).await;
        }
    }
    broker.shutdown().await;
}

/// A record forged on the wire after the handshake (the right shape, a tag that cannot match),
/// TLS 1.3 and 1.2: that session alone ends, with a bad_record_mac alert to its client, and
/// `gateway_tls_record_failures_total` counts it; a parked TLS subscriber on the same listener
/// still gets what is published afterwards (woken, its keys built again from its secrets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_record_ends_its_own_session_answered_and_counted() {
    let dir = temp_dir("tls-forged");
    let pki = Pki::new(&dir, "forged-record CA");
    let broker = broker(&pki).await;
    let ca = pki.ca_path();
    let addr = broker.listeners[0];
    let http = broker.http.expect("HTTP on");
    let failures = || async {
        let (status, text) = observe::request(http, "GET", "/metrics", None).await;
        assert_eq!(status, 200);
        observe::total(
            &observe::samples(&text),
            "gateway_tls_record_failures_total",
            &[],
        )
    };
    let topic = format!("forged/{}", unique_id("t"));
    let mut sub = TlsClient::connect(addr, &Arc::new(rustls_client(&ca, "1.3", None))).await;
    let mut hello = raw::encode_connect(&Connect::v311(&unique_id("forged-sub"), true, 60));
    hello.extend(V::V311.subscribe(&topic, 1));
    sub.send(&hello).await;
    sub.expect(raw::CONNACK, "CONNACK").await;
    sub.expect(raw::SUBACK, "SUBACK").await;
    for (n, version) in ["1.3", "1.2"].into_iter().enumerate() {
        let config = Arc::new(rustls_client(&ca, version, None));
        let mut victim = TlsClient::connect(addr, &config).await;
        victim
            .send(&raw::encode_connect(&Connect::v311(
                &unique_id("forged"),
                true,
                60,
            )))
            .await;
        victim.expect(raw::CONNACK, "CONNACK").await;
        let mut forged = vec![23, 3, 3, 0, 48];
        forged.extend_from_slice(&[0x5c; 48]);
        victim
            .stream
            .get_mut()
            .0
            .write_all(&forged)
            .await
            .expect("raw write");
        let mut buf = [0u8; 64];
        let answer = tokio::time::timeout(WAIT, victim.stream.read(&mut buf))
            .await
            .expect("an answer in time");
        assert!(
            format!("{answer:?}").contains("BadRecordMac"),
            "TLS {version}: {answer:?}"
        );
        assert!(
            eventually(WAIT, || broker.ctx.state().sessions_hibernating == 1).await,
            "TLS {version}: the forged session gone, the subscriber parked"
        );
        assert_eq!(failures().await, (n + 1) as f64, "TLS {version}");
    }
    let mut publ = v5::connect(broker.addr, &unique_id("forged-pub")).await;
    publ.publish_confirmed(&topic, v5::QoS::AtLeastOnce, false, "after")
        .await;
    let body = sub
        .expect(raw::PUBLISH, "the message published after")
        .await;
    assert!(body.ends_with(b"after"), "{body:?}");
    broker.shutdown().await;
}

/// A raw MQTT client over a rustls client stream.
struct TlsClient {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
}

impl TlsClient {
    async fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> TlsClient {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let stream = tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .expect("handshake in time")
            .expect("handshake");
        TlsClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    fn handshake(&self) -> HandshakeKind {
        self.stream.get_ref().1.handshake_kind().expect("done")
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// The next packet (first byte, body) within `within`; `None` at the end of the stream,
    /// which must be a TLS close_notify.
    async fn packet(&mut self, within: Duration) -> Option<(u8, Vec<u8>)> {
        tokio::time::timeout(within, async {
            loop {
                if self.buf.len() >= 2 {
                    if let Some((len, used)) = raw::decode_varint(&self.buf[1..]) {
                        if self.buf.len() >= 1 + used + len {
                            let first = self.buf[0];
                            self.buf.advance(1 + used);
                            return Some((first, self.buf.split_to(len).to_vec()));
                        }
                    }
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) => return None,
                    // tokio-rustls reports a TCP end without close_notify as an error.
                    Err(e) => panic!("the stream ended without close_notify: {e}"),
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a packet or the end in time")
    }

    async fn expect(&mut self, kind: u8, what: &str) -> Vec<u8> {
        match self.packet(WAIT).await {
            Some((first, body)) if first & 0xF0 == kind => body,
            other => panic!("expected {what}, got {other:?}"),
        }
    }
}

/// A rustls client over TLS 1.3 and 1.2, without and with a client certificate: its session
/// hibernates after SUBSCRIBE; a PUBLISH to itself wakes it (PUBACK and the message come back);
/// on TLS 1.3 the client then rotates its keys (KeyUpdate, answered by the broker's own) and is
/// still understood; it hibernates again and is closed at its keep-alive while hibernating,
/// with a TLS close_notify.
/// Reconnecting resumes its TLS session from the ticket or session id it got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rustls_sessions_wake_on_a_packet_survive_key_update_close_at_keep_alive_and_resume() {
    let dir = temp_dir("hib-rustls");
    let pki = Pki::new(&dir, "hibernation CA");
    let (dev_cert, dev_key) = pki.issue("device", Some("device"), &[]);
    let broker = broker(&pki).await;
    let ca = pki.ca_path();
    for version in ["1.3", "1.2"] {
        for mutual in [false, true] {
            let case = format!("TLS {version} client-cert={mutual}");
            let client_cert = mutual.then_some((dev_cert.as_path(), dev_key.as_path()));
            let addr = broker.listeners[usize::from(mutual)];
            let config = resuming(&ca, version, client_cert);
            one_session(&broker, addr, &config, &case, HandshakeKind::Full).await;
            one_session(&broker, addr, &config, &case, HandshakeKind::Resumed).await;
        }
    }
    broker.shutdown().await;
}

fn resuming(ca: &Path, version: &str, client: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
    let mut config = rustls_client(ca, version, client);
    config.resumption = Resumption::in_memory_sessions(16);
    Arc::new(config)
}

async fn one_session(
    broker: &TestBroker,
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    case: &str,
    handshake: HandshakeKind,
) {
    let mut c = TlsClient::connect(addr, config).await;
    assert_eq!(c.handshake(), handshake, "{case}");
    let id = unique_id("hib-tls");
    let topic = format!("hib/{id}");
    let mut hello = raw::encode_connect(&Connect::v311(&id, true, 1));
    hello.extend(V::V311.subscribe(&topic, 1));
    c.send(&hello).await;
    c.expect(raw::CONNACK, "CONNACK").await;
    c.expect(raw::SUBACK, "SUBACK").await;
    until_hibernating(broker, 1).await;

    c.send(&V::V311.publish(0x32, topic.as_bytes(), Some(7), &[], b"woken"))
        .await;
    let mut got = Vec::new();
    for _ in 0..2 {
        match c.packet(WAIT).await {
            Some((first, body)) => got.push((first & 0xF0, body)),
            None => panic!("{case}: closed after a packet woke the session"),
        }
    }
    got.sort_by_key(|(kind, _)| *kind);
    assert!(
        got[0].0 == raw::PUBLISH && got[0].1.ends_with(b"woken"),
        "{case}: {got:?}"
    );
    assert_eq!(got[1], (raw::PUBACK, vec![0, 7]), "{case}");
    let mut last_sent = Instant::now();

    until_hibernating(broker, 1).await;
    if c.stream.get_ref().1.protocol_version()
        == Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_3)
    {
        c.stream
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("KeyUpdate");
        c.send(&raw::encode_pingreq()).await;
        last_sent = Instant::now();
        c.expect(raw::PINGRESP, "PINGRESP after KeyUpdate").await;
        until_hibernating(broker, 1).await;
    }

    // Silent from here: keep-alive 1 s allows 1.5 s after the last packet.
    assert_eq!(c.packet(Duration::from_secs(4)).await, None, "{case}");
    let after = last_sent.elapsed();
    assert!(
        after >= Duration::from_millis(1400) && after < Duration::from_millis(2500),
        "{case}: closed after {after:?}"
    );
    until_hibernating(broker, 0).await;
}
