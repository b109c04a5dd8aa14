//! Readiness for systemd's `Type=notify` (the packaged unit): started with NOTIFY_SOCKET, the real
//! binary sends `READY=1` once a client can connect, and `STOPPING=1` when SIGTERM starts the
//! drain; both for a socket path, as systemd uses for system services, and for an abstract name.

mod binary;

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use binary::scratch::Scratch;
use binary::Gateway;

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notification within 10 s");
    String::from_utf8(buf[..n].to_vec()).expect("UTF-8 notification")
}

async fn ready_then_stopping(socket: UnixDatagram, notify_socket: &OsStr) {
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set timeout");
    let mut gateway = Gateway::start_with_env(&[("NOTIFY_SOCKET", notify_socket)], &[]);

    assert_eq!(receive(&socket), "READY=1");
    tokio::net::TcpStream::connect(gateway.addr)
        .await
        .expect("connect once READY=1 was sent");

    gateway.signal(libc::SIGTERM);
    assert_eq!(receive(&socket), "STOPPING=1");
    let status = gateway.exit_status(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn notifies_a_socket_path() {
    let dir = Scratch::new("notify");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    ready_then_stopping(socket, path.as_os_str()).await;
}

#[tokio::test]
async fn notifies_an_abstract_socket() {
    let name = format!("gateway-notify-test-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
    let socket = UnixDatagram::bind_addr(&addr).expect("bind abstract notify socket");
    ready_then_stopping(socket, OsStr::new(&format!("@{name}"))).await;
}
