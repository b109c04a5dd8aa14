//! Graceful shutdown of the real `gateway` binary on SIGTERM and SIGINT: connected v5 clients
//! are told DISCONNECT 0x8B (server shutting down), every client socket is closed, new
//! connections are refused, and the process exits with status 0 within 10 seconds.

mod binary;
mod clients;

use std::time::{Duration, Instant};

use binary::Gateway;
use clients::raw::{Raw, V};

const SERVER_SHUTTING_DOWN: u8 = 0x8B;
const EXIT_WITHIN: Duration = Duration::from_secs(10);

async fn shuts_down_gracefully_on(signal: libc::c_int) {
    let mut gateway = Gateway::start(&[]);
    let mut v5 = Raw::connected(gateway.addr, V::V5, "shutdown-v5").await;
    let mut v311 = Raw::connected(gateway.addr, V::V311, "shutdown-v311").await;
    // Sessions with a subscription each, and proof both are fully served before the signal.
    for (raw, v) in [(&mut v5, V::V5), (&mut v311, V::V311)] {
        raw.send(&v.subscribe("shutdown/t", 1)).await;
        assert_eq!(raw.expect_packet("SUBACK").await.first, 0x90);
        raw.ping().await;
    }

    let signalled = Instant::now();
    gateway.signal(signal);

    // v5: DISCONNECT with 0x8B, then the close.
    v5.expect_disconnect(SERVER_SHUTTING_DOWN, "v5 client on shutdown")
        .await;
    // The listener is closed before clients are told to leave: a newcomer is refused.
    match tokio::net::TcpStream::connect(gateway.addr).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(stream) => {
            // Only acceptable if the process is already gone and the port was reused: it is not,
            // so an accepted connection is a failure.
            drop(stream);
            panic!("a new connection was accepted after the shutdown signal");
        }
    }
    // 3.1.1: no DISCONNECT exists from server to client; the socket just closes.
    v311.expect_closed("3.1.1 client on shutdown").await;

    let status = gateway.exit_status(EXIT_WITHIN).await;
    assert!(status.success(), "gateway exited with {status:?}");
    assert!(signalled.elapsed() < EXIT_WITHIN);
    // And once it is gone, nothing listens any more.
    assert!(tokio::net::TcpStream::connect(gateway.addr).await.is_err());
}

#[tokio::test]
async fn sigterm_disconnects_clients_and_exits_0() {
    shuts_down_gracefully_on(libc::SIGTERM).await;
}

#[tokio::test]
async fn sigint_disconnects_clients_and_exits_0() {
    shuts_down_gracefully_on(libc::SIGINT).await;
}

#[tokio::test]
async fn shutdown_is_not_held_up_by_a_client_that_does_not_read() {
    // A subscriber that never reads while messages pile up for it must not stall the exit.
    let mut gateway = Gateway::start(&[]);
    let mut stalled = Raw::connected(gateway.addr, V::V5, "stalled").await;
    stalled.send(&V::V5.subscribe("flood/t", 0)).await;
    assert_eq!(stalled.expect_packet("SUBACK").await.first, 0x90);
    let mut flooder = Raw::connected(gateway.addr, V::V311, "flooder").await;
    let message = V::V311.publish(0x30, b"flood/t", None, &[], &[b'x'; 16 * 1024]);
    for _ in 0..2000 {
        flooder.send_lenient(&message).await;
    }
    gateway.signal(libc::SIGTERM);
    let status = gateway.exit_status(EXIT_WITHIN).await;
    assert!(status.success(), "gateway exited with {status:?}");
    flooder.expect_closed("publisher after exit").await;
}

#[tokio::test]
async fn idle_gateway_exits_promptly() {
    let mut gateway = Gateway::start(&[]);
    let signalled = Instant::now();
    gateway.signal(libc::SIGTERM);
    let status = gateway.exit_status(EXIT_WITHIN).await;
    assert!(status.success(), "gateway exited with {status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "idle exit took {:?}",
        signalled.elapsed()
    );
}

#[tokio::test]
async fn connections_without_connect_do_not_block_the_exit() {
    // One socket that never sends anything and one stuck half-way through its CONNECT: both
    // are closed and the process still exits 0 within the bound.
    let mut gateway = Gateway::start(&[]);
    let mut silent = Raw::open(gateway.addr).await;
    let mut partial = Raw::open_with(gateway.addr, &V::V5.connect("partial")[..6]).await;
    let mut ready = Raw::connected(gateway.addr, V::V5, "ready").await;
    let signalled = Instant::now();
    gateway.signal(libc::SIGTERM);
    ready
        .expect_disconnect(SERVER_SHUTTING_DOWN, "connected v5 client")
        .await;
    let status = gateway.exit_status(EXIT_WITHIN).await;
    assert!(status.success(), "gateway exited with {status:?}");
    silent.expect_closed("socket that never sent CONNECT").await;
    partial.expect_closed("socket with a partial CONNECT").await;
    eprintln!(
        "exit took {:?} with two pending handshakes",
        signalled.elapsed()
    );
}
