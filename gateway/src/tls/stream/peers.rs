//! The record layer after the handshake against clients nobody here wrote, over loopback
//! sockets: rustls (tokio-rustls) with each cipher suite of TLS 1.3 and 1.2, and OpenSSL's
//! `s_client`. An echo server on `accept` sends back what it reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls::crypto::{aws_lc_rs, CryptoProvider};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, SupportedCipherSuite};

use super::tests::server_config;
use super::*;

/// Echoes until the client closes; the error that ended it, if one did.
async fn echo(mut tls: TlsStream) -> Option<io::Error> {
    let mut buf = vec![0u8; 8192];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) => return None,
            Ok(n) => {
                if let Err(e) = tls.write_all(&buf[..n]).await {
                    return Some(e);
                }
            }
            Err(e) => return Some(e),
        }
    }
}

fn client_config(cert: CertificateDer<'static>, suite: SupportedCipherSuite) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert).expect("root");
    let provider = CryptoProvider {
        cipher_suites: vec![suite],
        ..aws_lc_rs::default_provider()
    };
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[suite.version()])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake")
}

/// Sends `data` and reads it back, both at once (the echo cannot hold 300 KB unread).
async fn round_trip(client: &mut tokio_rustls::client::TlsStream<TcpStream>, data: &[u8]) {
    let (mut r, mut w) = tokio::io::split(client);
    let mut back = vec![0u8; data.len()];
    let (wrote, read) = tokio::join!(w.write_all(data), r.read_exact(&mut back));
    wrote.expect("write");
    read.expect("read back");
    assert!(back == data, "echoed bytes differ");
}

/// Every suite the listener offers (the P-256 certificate: ECDSA suites on TLS 1.2), with a
/// message of 300 KB (19 full records and a partial one) each way, then small ones.
#[tokio::test]
async fn large_messages_cross_many_records_both_ways_with_every_suite() {
    let (config, cert, _) = server_config("suites");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let suites = aws_lc_rs::ALL_CIPHER_SUITES
        .iter()
        .filter(|s| !format!("{:?}", s.suite()).contains("_RSA_"));
    let mut tried = 0;
    for &suite in suites {
        let client = tokio::spawn({
            let (config, big) = (client_config(cert.clone(), suite), big.clone());
            async move {
                let mut c = connect(addr, config).await;
                round_trip(&mut c, &big).await;
                for n in [1usize, 5, 16_384, 16_385] {
                    round_trip(&mut c, &big[..n]).await;
                }
                c.shutdown().await.expect("close_notify");
            }
        });
        let (socket, _) = listener.accept().await.expect("accept");
        let tls = accept(config.clone(), socket, Counter::noop())
            .await
            .expect("handshake");
        assert!(echo(tls).await.is_none(), "{:?}", suite.suite());
        client.await.expect("client");
        tried += 1;
    }
    assert_eq!(tried, 6, "3 TLS 1.3 suites and 3 ECDSA TLS 1.2 ones");
}

/// TLS 1.3, every suite (SHA-256 and SHA-384 key schedules): the client rotates its key
/// (rustls: KeyUpdate, not requesting ours); the server rotates its own when its sending key
/// nears the limit (lowered to a few records here). Both directions' next keys are the
/// gateway's own derivation (`key_schedule`), checked against rustls's.
#[tokio::test]
async fn key_updates_from_the_client_and_at_the_servers_limit() {
    let (config, cert, _) = server_config("key-update");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    use aws_lc_rs::cipher_suite::*;
    for suite in [
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        let cert = cert.clone();
        let client = tokio::spawn(async move {
            let mut c = connect(addr, client_config(cert, suite)).await;
            // A KeyUpdate that reaches the server with the client's Finished, before rustls
            // hands the session over, is refused when it asks for the server's (`key_schedule`):
            // a first exchange makes sure the hand-over is done.
            round_trip(&mut c, b"hello").await;
            for round in 0..6 {
                c.get_mut().1.refresh_traffic_keys().expect("KeyUpdate");
                round_trip(&mut c, format!("round {round}").as_bytes()).await;
                round_trip(&mut c, &vec![round as u8; 40_000]).await;
            }
            c.shutdown().await.expect("close_notify");
        });
        let (socket, _) = listener.accept().await.expect("accept");
        let mut tls = accept(config.clone(), socket, Counter::noop())
            .await
            .expect("handshake");
        tls.traffic.lower_limit(4);
        assert!(echo(tls).await.is_none(), "{suite:?}");
        client.await.expect("client");
    }
}

/// OpenSSL's `s_client` asks for the server's KeyUpdate (its `K` command): the server answers
/// with its own and switches keys; what it echoes afterwards is read under the new key.
#[tokio::test]
async fn openssl_requests_a_key_update_and_gets_one() {
    let (config, _, ca) = server_config("s-client");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut child = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-tls1_3",
            "-msg",
            "-servername",
            "localhost",
            "-CAfile",
        ])
        .arg(&ca)
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl s_client");
    let (socket, _) = listener.accept().await.expect("accept");
    let tls = accept(config, socket, Counter::noop())
        .await
        .expect("handshake");
    let server = tokio::spawn(echo(tls));
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    stdin.write_all(b"before\n").await.expect("stdin");
    until(&mut stdout, &mut seen, "before").await;
    stdin.write_all(b"K\n").await.expect("stdin");
    // Its trace of messages received (`-msg`): the server's own KeyUpdate.
    until(
        &mut stdout,
        &mut seen,
        "<<< TLS 1.3, Handshake [length 0005], KeyUpdate",
    )
    .await;
    stdin.write_all(b"after\n").await.expect("stdin");
    until(&mut stdout, &mut seen, "after").await;
    drop(stdin);
    assert!(server.await.expect("echo").is_none());
    let _ = child.wait().await;
}

/// Reads `s_client`'s output until it shows `want`.
async fn until(stdout: &mut tokio::process::ChildStdout, seen: &mut Vec<u8>, want: &str) {
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(want) {
        let n = tokio::time::timeout(Duration::from_secs(10), stdout.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {want:?} from s_client: {}",
                    String::from_utf8_lossy(seen)
                )
            })
            .expect("stdout");
        assert!(
            n > 0,
            "s_client ended before {want:?}: {}",
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

/// A record altered on the wire: the session answers bad_record_mac, closes and counts it;
/// another session on the same listener, mid-exchange, goes on.
#[tokio::test]
async fn a_corrupted_record_is_refused_closed_and_counted() {
    let (config, cert, _) = server_config("corrupt");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    for suite in [
        aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        aws_lc_rs::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ] {
        let failures = Arc::new(AtomicU64::new(0));
        let client_config = client_config(cert.clone(), suite);
        let bystander = tokio::spawn({
            let config = client_config.clone();
            async move { connect(addr, config).await }
        });
        let (socket, _) = listener.accept().await.expect("accept");
        let other = accept(config.clone(), socket, Counter::from_arc(failures.clone()))
            .await
            .expect("handshake");
        let other = tokio::spawn(echo(other));
        let mut bystander = bystander.await.expect("bystander");

        let attacked = tokio::spawn({
            let config = client_config.clone();
            async move {
                let mut c = connect(addr, config).await;
                round_trip(&mut c, b"first").await;
                // A record of the right shape whose tag cannot match.
                let mut forged = vec![23, 3, 3, 0, 40];
                forged.extend_from_slice(&[0xab; 40]);
                c.get_mut().0.write_all(&forged).await.expect("raw write");
                let mut buf = [0u8; 16];
                let got = c.read(&mut buf).await;
                let alert = format!("{got:?}");
                assert!(alert.contains("BadRecordMac"), "client saw {alert}");
            }
        });
        let (socket, _) = listener.accept().await.expect("accept");
        let tls = accept(config.clone(), socket, Counter::from_arc(failures.clone()))
            .await
            .expect("handshake");
        let ended = echo(tls).await.expect("refused");
        assert_eq!(ended.kind(), io::ErrorKind::InvalidData);
        assert!(ended.to_string().contains("bad_record_mac"), "{ended}");
        attacked.await.expect("attacked client");
        assert_eq!(failures.load(Ordering::Relaxed), 1, "{:?}", suite.suite());

        round_trip(&mut bystander, b"still here").await;
        bystander.shutdown().await.expect("close_notify");
        assert!(other.await.expect("bystander's echo").is_none());
        assert_eq!(failures.load(Ordering::Relaxed), 1);
    }
}
