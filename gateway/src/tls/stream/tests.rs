//! What a TLS session holds once parked, counted in malloc chunks by the test build's counting
//! allocator (`heap_count`: on the test's own thread only, as tests run side by side), against tokio-rustls's buffered session
//! after the same exchange. A rustls client (tokio-rustls) on a thread of its own connects to a
//! real loopback socket with a P-256 certificate, sends a few bytes and reads the answer.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::version::{TLS12, TLS13};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use super::*;
use crate::config::{ListenerConfig, ListenerKind};
use crate::heap_count::live;
use crate::tls::TlsFiles;

/// The bound on what a parked TLS 1.3 or 1.2 session (no client certificate) holds: measured at
/// 848 bytes for TLS 1.3 (rustls 0.23.48: the record layer's 208 bytes with both directions'
/// keys and sequence numbers, the stream's 184, the two traffic secrets for KeyUpdate) and 656
/// for TLS 1.2, against 6,576 / 6,688 for tokio-rustls's buffered session after the same
/// exchange. Keeping rustls's `KernelConnection` for KeyUpdate instead of the secrets it was
/// 1,552 for TLS 1.3; keeping its whole unbuffered connection, 2,681.
const PARKED_BOUND: isize = 1_000;

/// A P-256 server certificate for localhost, through the listener's own loading code: the
/// config, the certificate, and its PEM file (its own CA). `name` keeps tests' files apart.
pub(super) fn server_config(name: &str) -> (Arc<ServerConfig>, CertificateDer<'static>, PathBuf) {
    let dir =
        std::env::temp_dir().join(format!("gateway-tls-stream-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = rcgen::KeyPair::generate().expect("P-256 key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let (cert_path, key_path): (PathBuf, PathBuf) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    let listener = ListenerConfig {
        cert: Some(cert_path.clone()),
        key: Some(key_path),
        ..ListenerConfig::new(ListenerKind::Tls, "127.0.0.1:0".parse().expect("literal"))
    };
    let files = TlsFiles::load(0, &listener).expect("certificates load");
    let der = CertificateDer::from_pem_slice(cert.pem().as_bytes()).expect("PEM");
    (files.config(), der, cert_path)
}

/// A client that connects, sends `ping`, reads `pong` and stays connected until told to go.
fn client(
    addr: std::net::SocketAddr,
    cert: CertificateDer<'static>,
    version: &'static SupportedProtocolVersion,
) -> mpsc::Sender<()> {
    let (go, gone) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut roots = RootCertStore::empty();
            roots.add(cert).expect("root");
            let config = ClientConfig::builder_with_protocol_versions(&[version])
                .with_root_certificates(roots)
                .with_no_client_auth();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::try_from("localhost").expect("name");
            let mut tls = connector.connect(name, tcp).await.expect("handshake");
            tls.write_all(b"ping").await.expect("write");
            let mut pong = [0u8; 4];
            tls.read_exact(&mut pong).await.expect("read");
            assert_eq!(&pong, b"pong");
            let _ = tokio::task::spawn_blocking(move || gone.recv()).await;
        });
    });
    go
}

/// Bytes a session holds after the handshake, `ping` in and `pong` out: parked (ours) or as it
/// is (tokio-rustls's buffered session).
async fn held(
    listener: &TcpListener,
    config: &Arc<ServerConfig>,
    cert: &CertificateDer<'static>,
    version: &'static SupportedProtocolVersion,
    buffered: bool,
) -> (isize, Box<dyn Send>, mpsc::Sender<()>) {
    let addr = listener.local_addr().expect("addr");
    let go = client(addr, cert.clone(), version);
    let before = live();
    let (socket, _) = listener.accept().await.expect("accept");
    let mut ping = [0u8; 4];
    let session: Box<dyn Send> = if buffered {
        let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
        let mut tls = acceptor.accept(socket).await.expect("handshake");
        tls.read_exact(&mut ping).await.expect("read");
        tls.write_all(b"pong").await.expect("write");
        tls.flush().await.expect("flush");
        Box::new(tls)
    } else {
        let mut tls = accept(config.clone(), socket, metrics::Counter::noop())
            .await
            .expect("handshake");
        tls.read_exact(&mut ping).await.expect("read");
        tls.write_all(b"pong").await.expect("write");
        tls.flush().await.expect("flush");
        // Waits for more, as a session's task does before it parks (this once kept an empty
        // 4 KiB read buffer).
        let mut more = [0u8; 1];
        let waited = tokio::time::timeout(Duration::from_millis(20), tls.read(&mut more)).await;
        assert!(waited.is_err(), "the client sent nothing more");
        assert!(tls.idle(), "nothing held back");
        tls.hibernate().expect("parks");
        assert!(tls.hibernating_fd() >= 0);
        Box::new(tls)
    };
    assert_eq!(&ping, b"ping");
    (live() - before, session, go)
}

#[tokio::test]
async fn bytes_held_by_a_parked_session() {
    let (config, cert, _) = server_config("parked");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    // A first session of each kind warms up what is allocated once (the reactor's slab pages,
    // the ticket key): what the second one adds is its own.
    let mut keep = Vec::new();
    for buffered in [false, true] {
        keep.push(held(&listener, &config, &cert, &TLS13, buffered).await);
    }
    for (version, name) in [(&TLS13, "TLS 1.3"), (&TLS12, "TLS 1.2")] {
        let (parked, ..) = held(&listener, &config, &cert, version, false).await;
        let (buffered, ..) = held(&listener, &config, &cert, version, true).await;
        eprintln!(
            "{name}: parked {parked} B (of which inline: TlsStream {} B, record layer {} B), \
             tokio-rustls buffered {buffered} B",
            std::mem::size_of::<TlsStream>(),
            std::mem::size_of::<Traffic>()
        );
        assert!(
            parked < PARKED_BOUND,
            "{name}: a parked session holds {parked} B"
        );
        // Why the buffered API was not kept: its deframer buffer stays at 4 KiB.
        assert!(buffered > 4096, "{name}: buffered {buffered} B");
    }
}

/// rustls's work on a client's flight waits for a turn (`tls::turns`): with every turn taken, a
/// handshake does not complete; once they are free, it does.
#[tokio::test]
async fn a_handshake_waits_for_its_turn() {
    let (config, cert, _) = server_config("turns");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let all = crate::tls::turns::take_all().await;
    let _go = client(addr, cert, &TLS13);
    let (socket, _) = listener.accept().await.expect("accept");
    let mut handshake = Box::pin(accept(config, socket, metrics::Counter::noop()));
    let early = tokio::time::timeout(Duration::from_millis(300), &mut handshake).await;
    assert!(early.is_err(), "the handshake went on without a turn");
    drop(all);
    let mut tls = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .expect("the handshake completes once turns are free")
        .expect("handshake");
    let mut ping = [0u8; 4];
    tls.read_exact(&mut ping).await.expect("read");
    tls.write_all(b"pong").await.expect("write");
}
