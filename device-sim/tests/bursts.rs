//! A closed loop's burst goes out in one write: when several PUBACKs free the window at once,
//! the publishes that refill it leave together, not one system call (and, with `TCP_NODELAY`,
//! one segment) each. On loopback a write also pays for the receiver's side of the transfer, so
//! per-message writes made the simulator the heaviest process of a closed-loop benchmark.
//!
//! The broker here is a scripted peer, because what is measured is the simulator's own writes:
//! the segments its socket sent, as the peer's kernel counts them (`TCP_INFO`).

mod common;

use std::os::fd::AsRawFd;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::simulate;

const WINDOW: usize = 10;
const ROUNDS: usize = 5;

/// Segments this socket has received so far.
fn segments_in(stream: &TcpStream) -> u32 {
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, and `info`/`len` describe a buffer of the right size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_segs_in
}

/// Reads whole packets until `count` PUBLISHes came; returns their packet ids.
async fn publishes(stream: &mut TcpStream, buf: &mut BytesMut, count: usize) -> Vec<u16> {
    let mut ids = publish_ids(buf);
    while ids.len() < count {
        let n = stream.read_buf(buf).await.expect("read");
        assert!(n > 0, "the simulator closed early");
        ids.extend(publish_ids(buf));
    }
    ids
}

/// The packet ids of the complete PUBLISHes (QoS 1) in `buf`, which keeps any partial packet.
fn publish_ids(buf: &mut BytesMut) -> Vec<u16> {
    let mut ids = Vec::new();
    while let Some((kind, body)) = packet(buf) {
        if kind == 0x32 {
            let topic = usize::from(u16::from_be_bytes([body[0], body[1]]));
            ids.push(u16::from_be_bytes([body[2 + topic], body[3 + topic]]));
        }
    }
    ids
}

/// One complete packet off the front of `buf`: its first byte and its body.
fn packet(buf: &mut BytesMut) -> Option<(u8, BytesMut)> {
    let (mut len, mut shift, mut at) = (0usize, 0, 1);
    loop {
        let b = *buf.get(at)?;
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    if buf.len() < at + len {
        return None;
    }
    let kind = buf[0];
    buf.advance(at);
    Some((kind, buf.split_to(len)))
}

fn pubacks(ids: &[u16]) -> Vec<u8> {
    ids.iter()
        .flat_map(|id| {
            let [hi, lo] = id.to_be_bytes();
            [0x40, 2, hi, lo]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_freed_at_once_is_refilled_in_one_write() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = listener.local_addr().expect("addr").to_string();
    let (counted, segments) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buf = BytesMut::new();
        while packet(&mut buf).is_none_or(|(kind, _)| kind != 0x10) {
            stream.read_buf(&mut buf).await.expect("CONNECT");
        }
        stream.write_all(&[0x20, 2, 0, 0]).await.expect("CONNACK");
        let mut ids = publishes(&mut stream, &mut buf, WINDOW).await;
        let mut segments = 0;
        for _ in 0..ROUNDS {
            // The window is full: nothing more comes until these are acknowledged, together.
            let before = segments_in(&stream);
            stream.write_all(&pubacks(&ids)).await.expect("PUBACKs");
            ids = publishes(&mut stream, &mut buf, WINDOW).await;
            segments += segments_in(&stream) - before;
        }
        stream.write_all(&pubacks(&ids)).await.ok();
        let _ = counted.send(segments);
        // Acknowledges the rest until the run ends.
        while matches!(stream.read_buf(&mut buf).await, Ok(n) if n > 0) {
            let ids = publish_ids(&mut buf);
            if stream.write_all(&pubacks(&ids)).await.is_err() {
                break;
            }
        }
    });
    let run = simulate(
        &[
            "--target",
            &target,
            "--devices",
            "1",
            "--qos",
            "1",
            "--protocol",
            "3.1.1",
            "--publish-interval",
            "0",
            "--window",
            &WINDOW.to_string(),
            "--duration",
            "2s",
            "--subscribers",
            "0",
        ],
        &[],
    )
    .await;
    assert!(
        run.n("messages_published") > (ROUNDS * WINDOW) as u64,
        "{}",
        run.stdout
    );
    let segments = segments.await.expect("the broker's rounds");
    // One segment of publishes per round, and at most one bare ACK of the PUBACKs besides.
    assert!(
        segments <= (2 * ROUNDS) as u32,
        "{ROUNDS} bursts of {WINDOW} publishes took {segments} segments"
    );
}
