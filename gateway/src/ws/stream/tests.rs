//! What a WebSocket session's stream holds once parked, counted in malloc chunks by the test
//! build's counting allocator (`heap_count`, this thread's allocations only), against
//! tokio-tungstenite's `WebSocketStream` (what `ws` and `wss` sessions kept before) after the
//! same exchange. A tokio-tungstenite client on a thread of its own, over TCP or a rustls client
//! session (P-256 certificate), sends a binary message and reads the answer.

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::*;
use crate::config::{ListenerConfig, ListenerKind};
use crate::heap_count::live;
use crate::tls::TlsFiles;
use crate::ws::{accept, Socket};

/// The bound on what a parked `ws` session's stream holds (no buffer: its framing state, boxed
/// as the connection holds it). Measured at 224 bytes: the `WsStream`'s 176 inline in a 192-byte
/// chunk, and the test's box of the trait object.
const PARKED_WS_BOUND: isize = 320;
/// What a parked `ws` session's stream holds beyond a plain socket parked after the same bytes:
/// its framing state, boxed.
const PARKED_WS_OVER_PLAIN: isize = 256;
/// The same over TLS: the parked TLS session (bounded at 2,000 bytes by `tls::stream`'s test,
/// 1,552 measured for TLS 1.3) and the framing state.
const PARKED_WSS_BOUND: isize = 2_300;

/// A P-256 server certificate for localhost, through the listener's own loading code.
fn server_config() -> (Arc<ServerConfig>, CertificateDer<'static>) {
    let dir = std::env::temp_dir().join(format!("gateway-ws-stream-{}", std::process::id()));
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
        cert: Some(cert_path),
        key: Some(key_path),
        ..ListenerConfig::new(ListenerKind::Wss, "127.0.0.1:0".parse().expect("literal"))
    };
    let files = TlsFiles::load(0, &listener).expect("certificates load");
    let der = CertificateDer::from_pem_slice(cert.pem().as_bytes()).expect("PEM");
    (files.config(), der)
}

/// A client that upgrades, sends `ping` in a binary message, reads `pong` and stays connected
/// until told to go.
fn client(addr: std::net::SocketAddr, cert: Option<CertificateDer<'static>>) -> mpsc::Sender<()> {
    let (go, gone) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let stream: Box<dyn crate::connection::AsyncStream> = match cert {
                Some(cert) => {
                    let mut roots = RootCertStore::empty();
                    roots.add(cert).expect("root");
                    let config = ClientConfig::builder()
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                    let name = ServerName::try_from("localhost").expect("name");
                    Box::new(connector.connect(name, tcp).await.expect("handshake"))
                }
                None => Box::new(tcp),
            };
            // No subprotocol asked for: tungstenite's own accept (the comparison) answers none.
            let request = "ws://localhost/mqtt"
                .into_client_request()
                .expect("request");
            let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
                .await
                .expect("upgrade");
            ws.send(Message::binary(b"ping".to_vec()))
                .await
                .expect("send");
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], b"pong"),
                other => panic!("expected pong, got {other:?}"),
            }
            let _ = tokio::task::spawn_blocking(move || gone.recv()).await;
        });
    });
    go
}

/// The session as the gateway keeps it: parked (ours) or as it is (tokio-tungstenite's); or, for
/// reference, a plain TCP socket parked after the same bytes without WebSocket framing.
enum Kind {
    Parked,
    Tungstenite,
    Plain,
}

/// Bytes a session holds after the upgrade, `ping` in and `pong` out.
async fn held(
    listener: &TcpListener,
    tls: Option<&(Arc<ServerConfig>, CertificateDer<'static>)>,
    kind: Kind,
) -> (isize, Box<dyn Send>, mpsc::Sender<()>) {
    let addr = listener.local_addr().expect("addr");
    let go = client(addr, tls.map(|(_, cert)| cert.clone()));
    let before = live();
    let (socket, _) = listener.accept().await.expect("accept");
    let session: Box<dyn Send> = match (kind, tls) {
        (Kind::Parked, None) => {
            parked(
                accept(Socket::Live(socket), "/mqtt", 4096)
                    .await
                    .expect("upgrade"),
            )
            .await
        }
        (Kind::Parked, Some((config, _))) => {
            let secured = crate::tls::accept(config.clone(), socket, metrics::Counter::noop())
                .await
                .expect("TLS");
            parked(accept(secured, "/mqtt", 4096).await.expect("upgrade")).await
        }
        (Kind::Tungstenite, None) => tungstenite(socket).await,
        (Kind::Tungstenite, Some((config, _))) => {
            let secured = crate::tls::accept(config.clone(), socket, metrics::Counter::noop())
                .await
                .expect("TLS");
            tungstenite(secured).await
        }
        (Kind::Plain, _) => plain(socket).await,
    };
    (live() - before, session, go)
}

async fn parked<S: Hibernates + 'static>(mut ws: WsStream<S>) -> Box<dyn Send> {
    let mut ping = [0u8; 4];
    ws.read_exact(&mut ping).await.expect("read");
    assert_eq!(&ping, b"ping");
    ws.write_all(b"pong").await.expect("write");
    ws.flush().await.expect("flush");
    // Waits for more, as a session's task does before it parks.
    let mut more = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_millis(20), ws.read(&mut more)).await;
    assert!(waited.is_err(), "the client sent nothing more");
    assert!(ws.idle(), "nothing held back");
    ws.hibernate().expect("parks");
    assert!(ws.hibernating_fd() >= 0);
    // Boxed as the connection holds it.
    let boxed: Box<dyn Hibernates> = Box::new(ws);
    Box::new(boxed)
}

/// The upgrade's bytes read and answered by hand, then the socket parked as a plain session's.
async fn plain(mut socket: TcpStream) -> Box<dyn Send> {
    let mut request = Vec::new();
    while !request.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        socket.read_exact(&mut byte).await.expect("request");
        request.push(byte[0]);
    }
    let key = String::from_utf8_lossy(&request)
        .lines()
        .find_map(|l| {
            l.strip_prefix("Sec-WebSocket-Key: ")
                .or(l.strip_prefix("sec-websocket-key: "))
        })
        .expect("key")
        .trim()
        .to_owned();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    socket.write_all(answer.as_bytes()).await.expect("answer");
    // The masked binary frame with `ping` (2 + 4 + 4 bytes), answered with `pong` unmasked.
    let mut frame = [0u8; 10];
    socket.read_exact(&mut frame).await.expect("frame");
    socket
        .write_all(&[0x82, 4, b'p', b'o', b'n', b'g'])
        .await
        .expect("write");
    let mut more = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_millis(20), socket.read(&mut more)).await;
    assert!(waited.is_err(), "the client sent nothing more");
    Box::new(socket.into_std().expect("parks"))
}

/// The stream as `ws.rs` built it before: tungstenite's, with a 4 KiB read buffer.
async fn tungstenite<S>(socket: S) -> Box<dyn Send>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let mut ws = tokio_tungstenite::accept_async_with_config(socket, Some(config))
        .await
        .expect("upgrade");
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], b"ping"),
        other => panic!("expected ping, got {other:?}"),
    }
    ws.send(Message::binary(b"pong".to_vec()))
        .await
        .expect("send");
    let waited = tokio::time::timeout(Duration::from_millis(20), ws.next()).await;
    assert!(waited.is_err(), "the client sent nothing more");
    Box::new(ws)
}

#[tokio::test]
async fn bytes_held_by_a_parked_session() {
    let tls = server_config();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    // A first session of each kind warms up what is allocated once (the reactor's slab pages,
    // the ticket key): what the second one adds is its own.
    let mut keep = Vec::new();
    for secure in [None, Some(&tls)] {
        keep.push(held(&listener, secure, Kind::Parked).await);
        keep.push(held(&listener, secure, Kind::Tungstenite).await);
    }
    keep.push(held(&listener, None, Kind::Plain).await);
    let (plain, ..) = held(&listener, None, Kind::Plain).await;
    for (secure, name, bound) in [
        (None, "ws", PARKED_WS_BOUND),
        (Some(&tls), "wss", PARKED_WSS_BOUND),
    ] {
        let (parked, ..) = held(&listener, secure, Kind::Parked).await;
        let (theirs, ..) = held(&listener, secure, Kind::Tungstenite).await;
        eprintln!(
            "{name}: parked {parked} B (WsStream inline {} B), tokio-tungstenite {theirs} B, \
             a plain socket parked {plain} B",
            std::mem::size_of::<WsStream<Socket>>(),
        );
        assert!(parked < bound, "{name}: a parked session holds {parked} B");
        // Why tungstenite's stream was not kept: its read buffer stays.
        assert!(theirs > 4096, "{name}: tokio-tungstenite {theirs} B");
    }
    assert!(
        held(&listener, None, Kind::Parked).await.0 - plain < PARKED_WS_OVER_PLAIN,
        "ws: more than {PARKED_WS_OVER_PLAIN} B over a plain socket"
    );
}
