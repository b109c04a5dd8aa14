//! The `[[listeners]]` with real clients: `mosquitto_pub`/`mosquitto_sub` over TLS and mutual TLS
//! (the certificate's CN as the username, proven through an ACL `%u` pattern), a client without a
//! certificate refused where one is required, rumqttc over TLS, per-listener `max_connections`,
//! and certificates rotated on SIGHUP while an established TLS session keeps working, and
//! packets pipelined behind CONNECT over TLS and WebSocket (the TLS stream ended by close_notify).
//! mosquitto (OpenSSL) and rumqttc (rustls) by IP literal and by name, TLS 1.2 and 1.3, with and
//! without a client certificate; TLS session resumption (1.3 ticket, 1.2 ticket, 1.2 session id).
//! TCP keepalive on the accepted sockets of every listener kind. Certificates are generated here
//! with rcgen. WebSocket clients are in `interop/test_paho.py`,
//! Python ssl and MQTT.js TLS clients in `interop/test_tls.py` and `interop/test_mqttjs.py`.

mod binary;
mod clients;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use clients::{unique_id, v3, WAIT};
use common::pki::{rustls_client, temp_dir, Pki};
use common::TestBroker;
use gateway::config::{ListenerConfig, ListenerKind};

fn tls_listener(cert: &Path, key: &Path) -> ListenerConfig {
    ListenerConfig {
        cert: Some(cert.to_owned()),
        key: Some(key.to_owned()),
        ..ListenerConfig::new(ListenerKind::Tls, "127.0.0.1:0".parse().expect("literal"))
    }
}

/// Runs a mosquitto client to completion (bounded by `-W` where it subscribes).
fn mosquitto(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (apt install mosquitto-clients): {e}"))
}

/// `mosquitto_sub` for one message in the background, then `mosquitto_pub`, both connecting to
/// `host` (a name or an IP literal); the message seen, or what the first failing client printed.
async fn try_pub_sub(
    host: &str,
    addr: SocketAddr,
    tls: &[&str],
    topic: &str,
    payload: &str,
) -> Result<String, String> {
    let port = addr.port().to_string();
    let mut common = vec!["-h", host, "-p", &port, "-V", "mqttv311"];
    common.extend_from_slice(tls);
    let mut sub_args = common.clone();
    let sub_id = unique_id("sub-tls");
    sub_args.extend_from_slice(&["-t", topic, "-C", "1", "-W", "10", "-i", &sub_id]);
    let sub = Command::new("mosquitto_sub")
        .args(&sub_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs");
    let sub_pid = sub.id() as libc::pid_t;
    // mosquitto_sub has no ready signal: publish until it has seen one (its subscription is in).
    let mut pub_args = common.clone();
    let pub_id = unique_id("pub-tls");
    pub_args.extend_from_slice(&["-t", topic, "-m", payload, "-q", "1", "-i", &pub_id]);
    let sub = tokio::task::spawn_blocking(move || sub.wait_with_output());
    let mut published = Ok(());
    for _ in 0..20 {
        let out = mosquitto("mosquitto_pub", &pub_args);
        if !out.status.success() {
            published = Err(format!(
                "mosquitto_pub failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            // Our own child, by its pid: no need to wait for its -W timeout.
            // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
            unsafe { libc::kill(sub_pid, libc::SIGTERM) };
            break;
        }
        if sub.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = sub.await.expect("join").expect("mosquitto_sub output");
    published?;
    if !out.status.success() {
        return Err(format!(
            "mosquitto_sub failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `try_pub_sub` by name, failing the test on an error.
async fn pub_sub(addr: SocketAddr, tls: &[&str], topic: &str, payload: &str) -> String {
    try_pub_sub("localhost", addr, tls, topic, payload)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_over_tls_and_mutual_tls_with_identity_as_username() {
    let dir = temp_dir("mosquitto");
    let pki = Pki::new(&dir, "mosquitto test CA");
    let (dev_cert, dev_key) = pki.issue("device-7", Some("device-7"), &[]);
    let (san_cert, san_key) = pki.issue("san-only", None, &["device-9.example"]);
    let broker = tls_and_mutual_tls_broker(&pki, &dir).await;
    let (tls_addr, mutual_addr) = (broker.listeners[0], broker.listeners[1]);
    let ca = pki.ca_path();
    let ca = ca.to_str().expect("utf-8 path");

    let seen = pub_sub(tls_addr, &["--cafile", ca], "open/a", "over-tls").await;
    assert_eq!(seen, "over-tls");
    // Both protocol versions the listener offers, each pinned on the client side.
    for version in ["tlsv1.2", "tlsv1.3"] {
        let seen = pub_sub(
            tls_addr,
            &["--cafile", ca, "--tls-version", version],
            "open/v",
            version,
        )
        .await;
        assert_eq!(seen, version);
    }

    let (c, k) = (
        dev_cert.to_str().expect("path"),
        dev_key.to_str().expect("path"),
    );
    let seen = pub_sub(
        mutual_addr,
        &["--cafile", ca, "--cert", c, "--key", k],
        "dev/device-7/temp",
        "by-cn",
    )
    .await;
    assert_eq!(
        seen, "by-cn",
        "the CN is the username the %u pattern grants"
    );

    let (c, k) = (
        san_cert.to_str().expect("path"),
        san_key.to_str().expect("path"),
    );
    let seen = pub_sub(
        mutual_addr,
        &["--cafile", ca, "--cert", c, "--key", k],
        "dev/device-9.example/temp",
        "by-san",
    )
    .await;
    assert_eq!(
        seen, "by-san",
        "without a CN the first DNS SAN is the username"
    );

    // No client certificate where one is required: the TLS handshake fails.
    let port = mutual_addr.port().to_string();
    let out = mosquitto(
        "mosquitto_pub",
        &[
            "-h",
            "localhost",
            "-p",
            &port,
            "--cafile",
            ca,
            "-t",
            "open/x",
            "-m",
            "x",
        ],
    );
    assert!(
        !out.status.success(),
        "a client without a certificate was accepted"
    );
    broker.shutdown().await;
}

/// The hosts every TLS client is tried with: an IP literal and a name, both in the server
/// certificate (`IP:127.0.0.1, DNS:localhost`).
/// A broker with a server-authenticated TLS listener (`listeners[0]`) and a mutual TLS one
/// (`listeners[1]`: the client certificate's identity is the username), both with `pki`'s server
/// certificate. Anonymous clients may use `open/#`, identified ones their own `dev/%u/#`.
async fn tls_and_mutual_tls_broker(pki: &Pki, dir: &Path) -> TestBroker {
    let (cert, key) = pki.server();
    let acl = dir.join("acl");
    std::fs::write(&acl, "topic readwrite open/#\npattern readwrite dev/%u/#\n").expect("acl");
    let tls = tls_listener(&cert, &key);
    let mut mutual = tls_listener(&cert, &key);
    mutual.ca = Some(pki.ca_path());
    mutual.require_client_cert = true;
    mutual.use_identity_as_username = true;
    TestBroker::with(move |c| {
        c.auth.acl_file = Some(acl);
        c.auth.allow_anonymous = true;
        c.listeners = vec![tls, mutual];
    })
    .await
}

const HOSTS: [&str; 2] = ["127.0.0.1", "localhost"];

/// OpenSSL clients (libmosquitto) by IP literal and by name, TLS 1.2 and 1.3, without a client
/// certificate (server-authenticated listener) and with one (mutual TLS, the CN as username).
/// libmosquitto puts the host it was given in SNI even when it is an IP literal, which rustls
/// 0.22 refused ("Illegal SNI hostname received"): every combination by IP failed then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_by_ip_literal_and_by_name_tls12_tls13_with_and_without_client_cert() {
    let dir = temp_dir("mosquitto-matrix");
    let pki = Pki::new(&dir, "mosquitto matrix CA");
    let (dev_cert, dev_key) = pki.issue("device-3", Some("device-3"), &[]);
    let broker = tls_and_mutual_tls_broker(&pki, &dir).await;
    let ca = pki.ca_path();
    let ca = ca.to_str().expect("utf-8 path");
    let (c, k) = (
        dev_cert.to_str().expect("path"),
        dev_key.to_str().expect("path"),
    );

    let mut failures = Vec::new();
    let mut tried = 0;
    for host in HOSTS {
        for version in ["tlsv1.2", "tlsv1.3"] {
            for client_cert in [false, true] {
                let case = format!(
                    "{host} {version} {}",
                    if client_cert {
                        "client-cert"
                    } else {
                        "no-client-cert"
                    }
                );
                let mut args = vec!["--cafile", ca, "--tls-version", version];
                let (addr, topic) = if client_cert {
                    args.extend_from_slice(&["--cert", c, "--key", k]);
                    (broker.listeners[1], format!("dev/device-3/{tried}"))
                } else {
                    (broker.listeners[0], format!("open/{tried}"))
                };
                tried += 1;
                match try_pub_sub(host, addr, &args, &topic, &case).await {
                    Ok(seen) if seen == case => {}
                    Ok(seen) => failures.push(format!("{case}: received {seen:?}")),
                    Err(e) => failures.push(format!("{case}: {e}")),
                }
            }
        }
    }
    assert_eq!(tried, 8);
    assert!(
        failures.is_empty(),
        "{} of 8 failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    broker.shutdown().await;
}

fn rumqttc_tls(addr: SocketAddr, ca_pem: Vec<u8>) -> v3::MqttOptions {
    let mut o = v3::MqttOptions::new(unique_id("tls"), "localhost", addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
        ca: ca_pem,
        alpn: None,
        client_auth: None,
    }));
    o
}

/// Connects over TLS; Err with the reason when the connection fails.
async fn try_tls_connect(options: v3::MqttOptions) -> Result<(), String> {
    let (_client, mut eventloop) = v3::AsyncClient::new(options, 10);
    match tokio::time::timeout(WAIT, eventloop.poll()).await {
        Ok(Ok(v3::Event::Incoming(v3::Packet::ConnAck(_)))) => Ok(()),
        Ok(Ok(other)) => Err(format!("unexpected {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timeout".to_owned()),
    }
}

/// rumqttc (rustls) by IP literal and by name, TLS 1.2 and 1.3, without and with a client
/// certificate (mutual TLS, the CN as username): each connects, and publishes to itself at
/// QoS 1 through the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_by_ip_literal_and_by_name_tls12_tls13_with_and_without_client_cert() {
    let dir = temp_dir("rumqttc-matrix");
    let pki = Pki::new(&dir, "rumqttc matrix CA");
    let (dev_cert, dev_key) = pki.issue("device-5", Some("device-5"), &[]);
    let broker = tls_and_mutual_tls_broker(&pki, &dir).await;

    let mut failures = Vec::new();
    let mut tried = 0;
    for host in HOSTS {
        for version in ["1.2", "1.3"] {
            for client_cert in [false, true] {
                tried += 1;
                let case = format!(
                    "{host} TLS {version} {}",
                    if client_cert {
                        "client-cert"
                    } else {
                        "no-client-cert"
                    }
                );
                let (addr, topic, client) = if client_cert {
                    (
                        broker.listeners[1],
                        format!("dev/device-5/{tried}"),
                        Some((dev_cert.as_path(), dev_key.as_path())),
                    )
                } else {
                    (broker.listeners[0], format!("open/{tried}"), None)
                };
                let config = std::sync::Arc::new(rustls_client(&pki.ca_path(), version, client));
                let mut o = v3::MqttOptions::new(unique_id("tls-matrix"), host, addr.port());
                o.set_keep_alive(Duration::from_secs(30));
                o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
                    config,
                )));
                if let Err(e) = try_tls_connect(o.clone()).await {
                    failures.push(format!("{case}: {e}"));
                    continue;
                }
                let mut client = v3::Client::connect(o).await;
                client.subscribe(&topic, v3::QoS::AtLeastOnce).await;
                client
                    .publish_confirmed(&topic, v3::QoS::AtLeastOnce, false, case.clone())
                    .await;
                let got = client.next_publish(WAIT).await;
                if got.payload.as_ref() != case.as_bytes() {
                    failures.push(format!("{case}: received {:?}", got.payload));
                }
            }
        }
    }
    assert_eq!(tried, 8);
    assert!(
        failures.is_empty(),
        "{} of 8 failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    broker.shutdown().await;
}

/// The packets in `bytes` (whole MQTT packets): each one's type nibble and its body.
fn packets(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(&first) = bytes.first() {
        let (len, used) = clients::raw::decode_varint(&bytes[1..]).expect("remaining length");
        let body = &bytes[(1 + used).min(bytes.len())..(1 + used + len).min(bytes.len())];
        out.push((first & 0xF0, body.to_vec()));
        bytes = &bytes[(1 + used + len).min(bytes.len())..];
    }
    out
}

/// One TLS connection to `addr` as `host` with `config`: CONNECT, SUBSCRIBE to `filter` at QoS 1
/// and DISCONNECT in one write, read to the end. How the handshake went (full or resumed) and
/// the SUBACK's return code, or why it failed.
async fn tls_subscribe_once(
    addr: SocketAddr,
    host: &str,
    config: &std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    filter: &str,
) -> Result<(tokio_rustls::rustls::HandshakeKind, u8), String> {
    use clients::raw::{self, V};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::ServerName;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let mut stream = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timeout".to_owned())?
        .map_err(|e| format!("handshake: {e}"))?;
    let kind = stream
        .get_ref()
        .1
        .handshake_kind()
        .ok_or("no handshake kind")?;
    let mut burst = V::V311.connect(&unique_id("resume"));
    burst.extend(V::V311.subscribe(filter, 1));
    burst.extend(raw::encode_disconnect(None));
    stream.write_all(&burst).await.map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    // The broker closes after DISCONNECT; the session ticket (TLS 1.3) arrives on the way.
    tokio::time::timeout(WAIT, stream.read_to_end(&mut got))
        .await
        .map_err(|_| "read timeout".to_owned())?
        .map_err(|e| e.to_string())?;
    match &packets(&got)[..] {
        [(raw::CONNACK, connack), (raw::SUBACK, suback)] if connack.get(1) == Some(&0) => {
            Ok((kind, *suback.last().ok_or("empty SUBACK")?))
        }
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// Resumption on by default: a second connection from a rustls client that kept what the first
/// one got resumes, by TLS 1.3 ticket, TLS 1.2 ticket and TLS 1.2 session id, by IP literal and by
/// name, without and with a client certificate. On the mutual TLS listener the resumed session
/// still carries the client's identity: its username (the CN) is what the ACL's `%u` pattern
/// grants the subscription to (SUBACK 1, not 0x80).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sessions_resume_by_tls13_ticket_tls12_ticket_and_session_id_keeping_identity() {
    use tokio_rustls::rustls::client::{Resumption, Tls12Resumption};
    use tokio_rustls::rustls::HandshakeKind;
    let dir = temp_dir("resumption");
    let pki = Pki::new(&dir, "resumption CA");
    let (dev_cert, dev_key) = pki.issue("device-6", Some("device-6"), &[]);
    let broker = tls_and_mutual_tls_broker(&pki, &dir).await;

    let mut failures = Vec::new();
    let mut tried = 0;
    for host in HOSTS {
        for (how, version, tls12) in [
            ("TLS 1.3 ticket", "1.3", Tls12Resumption::SessionIdOrTickets),
            ("TLS 1.2 ticket", "1.2", Tls12Resumption::SessionIdOrTickets),
            ("TLS 1.2 session id", "1.2", Tls12Resumption::SessionIdOnly),
        ] {
            for client_cert in [false, true] {
                tried += 1;
                let case = format!(
                    "{host} {how} {}",
                    if client_cert {
                        "client-cert"
                    } else {
                        "no-client-cert"
                    }
                );
                let (addr, filter, client) = if client_cert {
                    (
                        broker.listeners[1],
                        "dev/device-6/#",
                        Some((dev_cert.as_path(), dev_key.as_path())),
                    )
                } else {
                    (broker.listeners[0], "open/#", None)
                };
                let mut config = rustls_client(&pki.ca_path(), version, client);
                config.resumption = Resumption::in_memory_sessions(16).tls12_resumption(tls12);
                let config = std::sync::Arc::new(config);
                let first = tls_subscribe_once(addr, host, &config, filter).await;
                let second = tls_subscribe_once(addr, host, &config, filter).await;
                match (first, second) {
                    (Ok((HandshakeKind::Full, 1)), Ok((HandshakeKind::Resumed, 1))) => {}
                    (first, second) => {
                        failures.push(format!("{case}: first {first:?}, second {second:?}"))
                    }
                }
            }
        }
    }
    assert_eq!(tried, 12);
    assert!(
        failures.is_empty(),
        "{} of 12 failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn rumqttc_over_tls_publishes_and_subscribes() {
    let dir = temp_dir("rumqttc");
    let pki = Pki::new(&dir, "rumqttc test CA");
    let (cert, key) = pki.server();
    let tls = tls_listener(&cert, &key);
    let broker = TestBroker::with(move |c| {
        c.auth.allow_anonymous = true;
        c.listeners = vec![tls];
    })
    .await;
    let addr = broker.listeners[0];
    let ca = std::fs::read(pki.ca_path()).expect("CA");

    let mut sub = v3::Client::connect(rumqttc_tls(addr, ca.clone())).await;
    sub.subscribe("tls/#", v3::QoS::AtLeastOnce).await;
    let mut publisher = v3::Client::connect(rumqttc_tls(addr, ca)).await;
    // Larger than one TLS record: the packet arrives in pieces.
    let big = vec![7u8; 100_000];
    publisher
        .publish_confirmed("tls/big", v3::QoS::AtLeastOnce, false, big.clone())
        .await;
    for i in 0..50u32 {
        publisher
            .publish(
                "tls/small",
                v3::QoS::AtMostOnce,
                false,
                i.to_be_bytes().to_vec(),
            )
            .await;
    }
    let first = sub.next_publish(WAIT).await;
    assert_eq!(first.payload.as_ref(), &big[..]);
    for i in 0..50u32 {
        let p = sub.next_publish(WAIT).await;
        assert_eq!(p.payload.as_ref(), &i.to_be_bytes());
    }

    // The plain listener still speaks plain MQTT next to it.
    let plain = v3::connect(broker.addr, &unique_id("plain")).await;
    plain
        .publish("tls/plain", v3::QoS::AtMostOnce, false, "p")
        .await;
    assert_eq!(sub.next_publish(WAIT).await.payload.as_ref(), b"p");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_are_refused_on_extra_listeners_unless_allowed() {
    let dir = temp_dir("anonymous");
    let pki = Pki::new(&dir, "anonymous CA");
    let (cert, key) = pki.server();
    let tls = tls_listener(&cert, &key);
    let broker = TestBroker::with(move |c| c.listeners = vec![tls]).await;
    let ca = std::fs::read(pki.ca_path()).expect("CA");
    // The loopback default listener keeps serving local tools anonymously ...
    let _local = v3::connect(broker.addr, &unique_id("anon-local")).await;
    // ... but a `[[listeners]]` entry does not, without `allow_anonymous`.
    let refused = try_tls_connect(rumqttc_tls(broker.listeners[0], ca)).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("NotAuthorized")),
        "anonymous client on a TLS listener: {refused:?}"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn per_listener_max_connections() {
    let listener = ListenerConfig {
        max_connections: 2,
        ..ListenerConfig::new(ListenerKind::Tcp, "127.0.0.1:0".parse().expect("literal"))
    };
    let broker = TestBroker::with(move |c| {
        c.auth.allow_anonymous = true;
        c.listeners = vec![listener];
    })
    .await;
    let limited = broker.listeners[0];
    let a = v3::connect(limited, &unique_id("a")).await;
    let _b = v3::connect(limited, &unique_id("b")).await;
    let mut o = v3::options(limited, &unique_id("c"));
    o.set_keep_alive(Duration::from_secs(30));
    let (_client, mut eventloop) = v3::AsyncClient::new(o, 10);
    let third = tokio::time::timeout(WAIT, eventloop.poll())
        .await
        .expect("answer in time");
    assert!(third.is_err(), "a third connection was accepted: {third:?}");
    // The default listener is not limited by it.
    let _plain = v3::connect(broker.addr, &unique_id("plain")).await;
    // A slot freed on the listener is usable again.
    a.disconnect().await;
    let mut admitted = false;
    for _ in 0..50 {
        let (_c, mut ev) = v3::AsyncClient::new(v3::options(limited, &unique_id("d")), 10);
        if let Ok(Ok(_)) = tokio::time::timeout(WAIT, ev.poll()).await {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "the freed slot was not reused");
    broker.shutdown().await;
}

/// TCP keepalive of the broker's end of the connection from `client`: (on, idle, interval, count).
/// The broker runs in this process, so its socket is among this process's descriptors: the one
/// whose peer is the client's address.
fn server_keepalive(client: &tokio::net::TcpStream) -> Option<(bool, Duration, Duration, u32)> {
    use std::os::fd::BorrowedFd;
    let me = client.local_addr().expect("client address");
    let fds = std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd");
    for entry in fds.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // SAFETY: borrowed only for the getsockopt calls below. Another test closing it
        // meanwhile makes them fail (EBADF) or ask the wrong socket, whose peer is not `me`.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let peer = socket.peer_addr().ok().and_then(|a| a.as_socket());
        if peer == Some(me) && socket.local_addr().ok().and_then(|a| a.as_socket()) != Some(me) {
            assert!(socket.nodelay().expect("TCP_NODELAY"), "TCP_NODELAY on");
            return Some((
                socket.keepalive().expect("SO_KEEPALIVE"),
                socket.keepalive_time().expect("TCP_KEEPIDLE"),
                socket.keepalive_interval().expect("TCP_KEEPINTVL"),
                socket.keepalive_retries().expect("TCP_KEEPCNT"),
            ));
        }
    }
    None
}

/// Accepted sockets of every listener kind get TCP keepalive as `mqtt.tcp_keepalive_*` say, so
/// a peer that vanished without a word is found even on a connection with nothing to send, and
/// TCP_NODELAY (both inherited from the listening socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_sockets_get_tcp_keepalive() {
    let ws = ListenerConfig::new(ListenerKind::Ws, "127.0.0.1:0".parse().expect("literal"));
    for (idle, interval, count) in [(7, 3, 2), (0, 30, 4)] {
        let ws = ws.clone();
        let broker = TestBroker::with(move |c| {
            c.mqtt.tcp_keepalive_idle = idle;
            c.mqtt.tcp_keepalive_interval = interval;
            c.mqtt.tcp_keepalive_count = count;
            c.listeners = vec![ws];
        })
        .await;
        for addr in [broker.addr, broker.listeners[0]] {
            let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
            // The broker's end appears once its accept loop took it: wait for it. (When keepalive
            // was set after accepting, the socket could be seen a moment before the setting.)
            let mut found = None;
            for _ in 0..100 {
                found = server_keepalive(&client);
                if found.is_some_and(|(on, ..)| on == (idle > 0)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let (on, time, every, retries) = found.expect("the broker's end of the connection");
            assert_eq!(on, idle > 0, "{addr}: SO_KEEPALIVE with idle {idle}");
            if on {
                assert_eq!(
                    (time, every, retries),
                    (
                        Duration::from_secs(idle.into()),
                        Duration::from_secs(interval.into()),
                        count
                    ),
                    "{addr}"
                );
            }
        }
        broker.shutdown().await;
    }
}

/// SIGHUP: new handshakes get the new certificate while an established session keeps working; a
/// reload that fails keeps the certificates in use (and their resumable sessions); one that
/// succeeds starts a new session-ticket key and cache, so the next handshake is a full one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_without_dropping_connections() {
    let dir = temp_dir("sighup");
    let old_dir = dir.join("old");
    let new_dir = dir.join("new");
    std::fs::create_dir_all(&old_dir).expect("dir");
    std::fs::create_dir_all(&new_dir).expect("dir");
    let old = Pki::new(&old_dir, "old CA");
    let (cert, key) = old.server();
    let new = Pki::new(&new_dir, "new CA");
    let (new_cert, new_key) = new.server();
    // A free port for the TLS listener (the binary logs only the default listener's address).
    let port = common::port::free_port();
    let live_cert = dir.join("live.pem");
    let live_key = dir.join("live.key");
    std::fs::copy(&cert, &live_cert).expect("copy");
    std::fs::copy(&key, &live_key).expect("copy");
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nallow_anonymous = true\n[[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:{port}\"\ncert = {:?}\nkey = {:?}\n",
            live_cert.display().to_string(),
            live_key.display().to_string()
        ),
    )
    .expect("config");
    let gateway = binary::Gateway::start(&["--config", config.to_str().expect("path")]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let old_ca = std::fs::read(old.ca_path()).expect("CA");
    let new_ca = std::fs::read(new.ca_path()).expect("CA");

    let mut established = v3::Client::connect(rumqttc_tls(addr, old_ca.clone())).await;
    established
        .subscribe("rotate/#", v3::QoS::AtLeastOnce)
        .await;
    assert!(try_tls_connect(rumqttc_tls(addr, new_ca.clone()))
        .await
        .is_err());

    std::fs::copy(&new_cert, &live_cert).expect("rotate cert");
    std::fs::copy(&new_key, &live_key).expect("rotate key");
    gateway.signal(libc::SIGHUP);
    let mut rotated = false;
    for _ in 0..50 {
        if try_tls_connect(rumqttc_tls(addr, new_ca.clone()))
            .await
            .is_ok()
        {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated, "new handshakes did not get the new certificate");
    assert!(
        try_tls_connect(rumqttc_tls(addr, old_ca)).await.is_err(),
        "a client trusting only the old CA still connected"
    );

    // The connection made before the rotation still works both ways.
    established
        .publish_confirmed("rotate/x", v3::QoS::AtLeastOnce, false, "still here")
        .await;
    assert_eq!(
        established.next_publish(WAIT).await.payload.as_ref(),
        b"still here"
    );

    // Sessions resume under the current certificates ...
    use tokio_rustls::rustls::HandshakeKind;
    let resuming = std::sync::Arc::new(rustls_client(&new.ca_path(), "1.3", None));
    let handshake = |config| async move {
        tls_subscribe_once(addr, "localhost", config, "rotate/#")
            .await
            .map(|(kind, _)| kind)
    };
    assert_eq!(handshake(&resuming).await, Ok(HandshakeKind::Full));
    assert_eq!(handshake(&resuming).await, Ok(HandshakeKind::Resumed));
    // ... a reload that fails keeps the certificates in use, and the sessions with them ...
    std::fs::write(&live_cert, "not a certificate").expect("break cert");
    gateway.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        try_tls_connect(rumqttc_tls(addr, new_ca)).await.is_ok(),
        "a failed reload dropped the certificate in use"
    );
    assert_eq!(handshake(&resuming).await, Ok(HandshakeKind::Resumed));
    // ... and one that succeeds starts a new ticket key and cache: one full handshake.
    std::fs::copy(&new_cert, &live_cert).expect("restore cert");
    gateway.signal(libc::SIGHUP);
    let mut renewed = false;
    for _ in 0..50 {
        if handshake(&resuming).await == Ok(HandshakeKind::Full) {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(renewed, "sessions from before a reload still resumed");
}

#[test]
fn unreadable_certificate_exits_2_naming_the_listener_key() {
    let dir = temp_dir("badcert");
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:0\"\ncert = \"missing.pem\"\nkey = \"missing.key\"\n",
    )
    .expect("config");
    let out = binary::run_refused_config(&config);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with("config: invalid value for `listeners[1].cert`: \"missing.pem\""),
        "{stderr}"
    );
}

/// The packet types in `bytes`, a stream of whole MQTT packets.
fn packet_kinds(mut bytes: &[u8]) -> Vec<u8> {
    let mut kinds = Vec::new();
    while let Some(&first) = bytes.first() {
        let (len, used) = clients::raw::decode_varint(&bytes[1..]).expect("remaining length");
        kinds.push(first & 0xF0);
        bytes = &bytes[(1 + used + len).min(bytes.len())..];
    }
    kinds
}

/// CONNECT, a QoS 1 PUBLISH, a PINGREQ and a DISCONNECT in one write (one TLS record, one
/// WebSocket message): the broker must answer each in order, as it does over plain TCP
/// (`pubsub.rs`), whatever transport carried them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_pipelined_after_connect_over_tls_and_websocket() {
    use clients::raw::{self, V};
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

    let dir = temp_dir("pipelined");
    let pki = Pki::new(&dir, "pipelined CA");
    let (cert, key) = pki.server();
    let tls = tls_listener(&cert, &key);
    let ws = ListenerConfig::new(ListenerKind::Ws, "127.0.0.1:0".parse().expect("literal"));
    let broker = TestBroker::with(move |c| {
        c.auth.allow_anonymous = true;
        c.listeners = vec![tls, ws];
    })
    .await;
    let burst = |id: &str| {
        let mut b = V::V311.connect(id);
        b.extend(V::V311.publish(0x32, b"pipe/tls-ws", Some(9), &[], b"x"));
        b.extend(raw::encode_pingreq());
        b.extend(raw::encode_disconnect(None));
        b
    };
    let expected = [raw::CONNACK, raw::PUBACK, raw::PINGRESP];

    let mut roots = RootCertStore::empty();
    let ca = std::fs::read(pki.ca_path()).expect("CA");
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.expect("CA PEM")).expect("CA certificate");
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(broker.listeners[0])
        .await
        .expect("TLS listener");
    let name = ServerName::try_from("localhost").expect("name");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut stream = connector.connect(name, tcp).await.expect("TLS handshake");
    stream
        .write_all(&burst(&unique_id("pipe-tls")))
        .await
        .expect("write");
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut got)).await;
    // The broker closes after DISCONNECT, with a TLS close_notify (not a bare TCP close).
    assert!(
        matches!(read, Ok(Ok(_))),
        "the broker ends the TLS stream cleanly after DISCONNECT: {read:?}"
    );
    assert_eq!(packet_kinds(&got), expected, "over TLS");

    let mut request = format!("ws://{}/mqtt", broker.listeners[1])
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().expect("header"));
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket handshake");
    socket
        .send(Message::Binary(burst(&unique_id("pipe-ws")).into()))
        .await
        .expect("send");
    let mut got = Vec::new();
    let mut closed = false;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(WAIT, socket.next()).await {
        match message {
            Message::Binary(b) => got.extend(b),
            Message::Close(_) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert_eq!(packet_kinds(&got), expected, "over WebSocket");
    assert!(closed, "the broker ends the WebSocket with a close frame");
    broker.shutdown().await;
}
