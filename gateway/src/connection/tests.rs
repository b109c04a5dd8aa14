//! `Connection` over real byte streams: a loopback TCP pair (the plain path) and, where the
//! behaviour is promised for both, an in-memory duplex stream (the boxed transport TLS and
//! WebSocket use).

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use super::{AsyncStream, Connection, ReadError, CHUNK_OVERHEAD, FRAME_BATCH};
use crate::codec::DecodeError;

const MAX: usize = 1024 * 1024;
const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
enum Kind {
    Tcp,
    Stream,
}

const KINDS: [Kind; 2] = [Kind::Tcp, Kind::Stream];

/// A connection and the peer's end of it.
async fn pair(kind: Kind) -> (Connection, Box<dyn AsyncStream>) {
    match kind {
        Kind::Tcp => {
            let (conn, peer) = tcp_pair().await;
            (Connection::new(conn), Box::new(peer))
        }
        Kind::Stream => {
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            (Connection::stream(Box::new(ours)), Box::new(theirs))
        }
    }
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (peer, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (accepted.unwrap().0, peer.unwrap())
}

/// A PUBLISH (QoS 0) frame with a payload of `payload_len` bytes counting up from `seed`.
fn publish_frame(seed: u8, payload_len: usize) -> Vec<u8> {
    let topic = b"t/x";
    let remaining = 2 + topic.len() + payload_len;
    let mut frame = vec![0x30];
    let mut n = remaining;
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            frame.push(byte);
            break;
        }
        frame.push(byte | 0x80);
    }
    frame.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    frame.extend_from_slice(topic);
    frame.extend((0..payload_len).map(|i| seed.wrapping_add(i as u8)));
    frame
}

/// Waits for input and reads until `want` frames came out (or the read fails).
async fn read_frames(
    conn: &mut Connection,
    max: usize,
    want: usize,
) -> Result<Vec<Bytes>, ReadError> {
    let mut frames = Vec::new();
    timeout(WAIT, async {
        while frames.len() < want {
            conn.readable().await?;
            conn.try_read_frames(max, &mut frames)?;
        }
        Ok::<(), ReadError>(())
    })
    .await
    .expect("frames did not arrive in time")?;
    Ok(frames)
}

/// Waits for input and reads once: the bytes read and the frames that came out.
async fn read_once(conn: &mut Connection, max: usize) -> Result<(usize, Vec<Bytes>), ReadError> {
    timeout(WAIT, async {
        let mut frames = Vec::new();
        loop {
            conn.readable().await?;
            match conn.try_read_frames(max, &mut frames)? {
                0 => continue,
                n => return Ok::<_, ReadError>((n, frames)),
            }
        }
    })
    .await
    .expect("no input in time")
}

async fn send(peer: &mut Box<dyn AsyncStream>, bytes: &[u8]) {
    peer.write_all(bytes).await.unwrap();
    peer.flush().await.unwrap();
}

#[tokio::test]
async fn a_frame_split_across_reads_is_reassembled() {
    // Split points: inside the fixed header's remaining length (two bytes here: 300 > 127),
    // right after it, in the middle, one byte short.
    let frame = publish_frame(1, 300);
    let splits: &[&[usize]] = &[
        &[1],
        &[2],
        &[3],
        &[150],
        &[frame.len() - 1],
        &[1, 2, 3, 100, 200],
    ];
    for kind in KINDS {
        for cuts in splits {
            let (mut conn, mut peer) = pair(kind).await;
            let mut from = 0;
            for &cut in cuts.iter() {
                send(&mut peer, &frame[from..cut]).await;
                let (n, frames) = read_once(&mut conn, MAX).await.unwrap();
                assert_eq!(n, cut - from, "{kind:?} {cuts:?}");
                assert!(
                    frames.is_empty(),
                    "{kind:?} {cuts:?}: no frame before it is complete"
                );
                assert!(!conn.may_hibernate(), "{kind:?}: half a packet is kept");
                from = cut;
            }
            send(&mut peer, &frame[from..]).await;
            let frames = read_frames(&mut conn, MAX, 1).await.unwrap();
            assert_eq!(
                frames,
                vec![Bytes::from(frame.clone())],
                "{kind:?} {cuts:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_large_frame_arriving_over_many_reads_is_reassembled() {
    // Larger than the per-worker scratch buffer, so the partial buffer has to grow.
    let frame = publish_frame(7, 200 * 1024);
    for kind in KINDS {
        let (mut conn, mut peer) = pair(kind).await;
        let writer = {
            let frame = frame.clone();
            tokio::spawn(async move {
                for chunk in frame.chunks(10_000) {
                    send(&mut peer, chunk).await;
                }
                peer
            })
        };
        let frames = read_frames(&mut conn, MAX, 1).await.unwrap();
        assert_eq!(frames.len(), 1, "{kind:?}");
        assert_eq!(frames[0], frame, "{kind:?}");
        drop(writer.await.unwrap());
    }
}

#[tokio::test]
async fn several_frames_in_one_read_all_come_out_in_order() {
    for kind in KINDS {
        let (mut conn, mut peer) = pair(kind).await;
        let frames: Vec<Vec<u8>> = vec![
            publish_frame(1, 0),
            vec![0xC0, 0x00], // PINGREQ
            publish_frame(2, 130),
            publish_frame(3, 5),
        ];
        let mut bytes = frames.concat();
        // And the first byte of a further frame, kept for later.
        let last = publish_frame(4, 20);
        bytes.push(last[0]);
        send(&mut peer, &bytes).await;
        let (n, got) = read_once(&mut conn, MAX).await.unwrap();
        assert_eq!(n, bytes.len(), "{kind:?}: one read takes it all");
        let expected: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
        assert_eq!(got, expected, "{kind:?}");
        send(&mut peer, &last[1..]).await;
        assert_eq!(
            read_frames(&mut conn, MAX, 1).await.unwrap(),
            vec![Bytes::from(last)]
        );
    }
}

#[tokio::test]
async fn a_read_of_many_frames_hands_them_out_a_batch_at_a_time() {
    // 1,000 PINGREQs and half a PUBLISH in one read: batches of FRAME_BATCH, the rest held as
    // one view of the read buffer (not a handle per packet), read nothing more meanwhile.
    let publish = publish_frame(3, 10);
    let mut bytes = [0xC0, 0x00].repeat(1000);
    bytes.extend_from_slice(&publish[..5]);
    for kind in KINDS {
        let (mut conn, mut peer) = pair(kind).await;
        send(&mut peer, &bytes).await;
        let (n, first) = read_once(&mut conn, MAX).await.unwrap();
        assert_eq!((n, first.len()), (bytes.len(), FRAME_BATCH), "{kind:?}");
        let mut total = first.len();
        while conn.holds_frames() {
            assert!(!conn.may_hibernate(), "{kind:?}");
            let mut frames = Vec::new();
            assert_eq!(
                conn.try_read_frames(MAX, &mut frames).unwrap(),
                0,
                "{kind:?}"
            );
            assert!(
                !frames.is_empty() && frames.len() <= FRAME_BATCH,
                "{kind:?}"
            );
            assert!(frames.iter().all(|f| f[..] == [0xC0, 0x00]), "{kind:?}");
            total += frames.len();
        }
        assert_eq!(total, 1000, "{kind:?}");
        assert!(
            conn.partial_since().is_some(),
            "{kind:?}: the half PUBLISH is kept"
        );
        send(&mut peer, &publish[5..]).await;
        assert_eq!(
            read_frames(&mut conn, MAX, 1).await.unwrap(),
            vec![Bytes::from(publish.clone())],
            "{kind:?}"
        );
    }
}

#[tokio::test]
async fn an_oversized_frame_is_refused_from_its_header_alone() {
    // (payload length, maximum packet size, refused)
    let table = [
        (100, 105, true),
        (100, 106, true),
        (100, 107, false),
        (1000, 64, true),
    ];
    for kind in KINDS {
        for (payload, max, refused) in table {
            let (mut conn, mut peer) = pair(kind).await;
            let frame = publish_frame(0, payload);
            // The header and topic only: the size is known before the payload arrives.
            let header_len = if payload + 5 > 127 { 3 } else { 2 };
            send(&mut peer, &frame[..header_len + 5]).await;
            let got = read_once(&mut conn, max).await;
            if refused {
                match got {
                    Err(ReadError::Decode(DecodeError::TooLarge { size, max: m })) => {
                        assert_eq!((size, m), (frame.len(), max), "{kind:?}");
                    }
                    other => panic!("{kind:?} {payload}/{max}: {:?}", other.map(|(n, _)| n)),
                }
            } else {
                let (_, frames) = got.unwrap();
                assert!(frames.is_empty());
                send(&mut peer, &frame[header_len + 5..]).await;
                let frames = read_frames(&mut conn, max, 1).await.unwrap();
                assert_eq!(frames, vec![Bytes::from(frame)], "{kind:?}");
            }
        }
    }
}

#[tokio::test]
async fn a_malformed_remaining_length_is_a_decode_error() {
    for kind in KINDS {
        let (mut conn, mut peer) = pair(kind).await;
        // Five continuation bytes: more than the four a remaining length may have.
        send(&mut peer, &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await;
        let got = read_once(&mut conn, MAX).await;
        assert!(
            matches!(got, Err(ReadError::Decode(DecodeError::Malformed(_)))),
            "{kind:?}: {:?}",
            got.map(|(n, _)| n)
        );
    }
}

#[tokio::test]
async fn the_peer_closing_is_eof_even_with_half_a_packet_read() {
    for kind in KINDS {
        for partial in [0, 3] {
            let (mut conn, mut peer) = pair(kind).await;
            if partial > 0 {
                send(&mut peer, &publish_frame(0, 10)[..partial]).await;
                read_once(&mut conn, MAX).await.unwrap();
            }
            peer.shutdown().await.unwrap();
            drop(peer);
            let got = read_once(&mut conn, MAX).await.map(|(n, _)| n);
            assert!(
                matches!(got, Err(ReadError::Eof)),
                "{kind:?} {partial}: {got:?}"
            );
        }
    }
}

#[tokio::test]
async fn queued_chunks_are_flushed_in_order() {
    // More chunks than one vectored write takes (256), of uneven sizes, shared payloads among them.
    let shared = Bytes::from(vec![0xAB; 1000]);
    let chunks: Vec<Bytes> = (0..600u32)
        .map(|i| match i % 3 {
            0 => Bytes::from(i.to_be_bytes().to_vec()),
            1 => shared.clone(),
            _ => Bytes::from(vec![i as u8; (i as usize * 7) % 50]),
        })
        .collect();
    let expected: Vec<u8> = chunks.concat();
    for kind in KINDS {
        let (mut conn, mut peer) = pair(kind).await;
        assert!(!conn.has_pending());
        for c in &chunks {
            conn.queue(c.clone());
        }
        conn.queue(Bytes::new());
        // Each chunk costs its slot and allocation besides its bytes; empty ones are not queued.
        let queued = chunks.iter().filter(|c| !c.is_empty()).count();
        assert_eq!(
            conn.pending_memory(),
            expected.len() + queued * CHUNK_OVERHEAD,
            "{kind:?}"
        );
        assert!(conn.has_pending());
        assert!(!conn.may_hibernate());
        let total = expected.len();
        let reader = tokio::spawn(async move {
            let mut got = vec![0; total];
            peer.read_exact(&mut got).await.unwrap();
            got
        });
        conn.flush_within(WAIT).await;
        assert!(!conn.has_pending(), "{kind:?}");
        assert_eq!(conn.pending_memory(), 0);
        let got = reader.await.unwrap();
        assert!(got == expected, "{kind:?}: bytes out of order");
    }
}

#[tokio::test]
async fn try_flush_writes_what_the_socket_takes_and_keeps_the_rest() {
    // Far more than the socket buffers: the first try_flush stops short, and what is left is
    // exactly the tail, written once the peer reads.
    let chunks: Vec<Bytes> = (0..64u8)
        .map(|i| Bytes::from(vec![i; 256 * 1024]))
        .collect();
    let expected: Vec<u8> = chunks.concat();
    for kind in KINDS {
        let (mut conn, mut peer) = pair(kind).await;
        for c in &chunks {
            conn.queue(c.clone());
        }
        let written = conn.try_flush().unwrap();
        assert!(written < expected.len(), "{kind:?}: {written}");
        assert_eq!(conn.pending_bytes, expected.len() - written, "{kind:?}");
        assert!(conn.pending_memory() > conn.pending_bytes, "{kind:?}");
        let total = expected.len();
        let reader = tokio::spawn(async move {
            let mut got = vec![0; total];
            peer.read_exact(&mut got).await.unwrap();
            got
        });
        conn.flush_within(Duration::from_secs(20)).await;
        assert_eq!(conn.pending_memory(), 0, "{kind:?}");
        let got = reader.await.unwrap();
        assert!(got == expected, "{kind:?}: bytes out of order");
    }
}

#[tokio::test]
async fn close_gracefully_delivers_the_queue_then_ends_the_stream() {
    for kind in KINDS {
        let (mut conn, mut peer) = pair(kind).await;
        conn.queue(Bytes::from_static(&[0xE0, 0x00])); // DISCONNECT
                                                       // The peer still sends something the connection never reads.
        send(&mut peer, &[0xC0, 0x00]).await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            drop(peer);
            got
        });
        timeout(WAIT, conn.close_gracefully(Duration::from_secs(2)))
            .await
            .unwrap();
        assert_eq!(reader.await.unwrap(), vec![0xE0, 0x00], "{kind:?}");
    }
}

#[tokio::test]
async fn a_hibernating_socket_refuses_io_and_resumes_with_nothing_lost() {
    let (server, mut peer) = tcp_pair().await;
    let mut conn = Connection::new(server);
    assert_eq!(conn.hibernating_fd(), -1);
    assert!(conn.may_hibernate());
    conn.hibernate().unwrap();
    assert!(conn.hibernating_fd() >= 0);
    let mut frames = Vec::new();
    assert!(matches!(
        conn.try_read_frames(MAX, &mut frames),
        Err(ReadError::Io(_))
    ));
    conn.queue(Bytes::from_static(b"x"));
    assert!(conn.try_flush().is_err());
    assert!(conn.readable().await.is_err());
    // Sent while hibernating: waits in the kernel's buffer.
    let frame = publish_frame(9, 12);
    peer.write_all(&frame).await.unwrap();
    conn.resume().unwrap();
    assert_eq!(conn.hibernating_fd(), -1);
    assert!(conn.resume().is_err(), "resuming twice");
    assert_eq!(
        read_frames(&mut conn, MAX, 1).await.unwrap(),
        vec![Bytes::from(frame)]
    );
    conn.flush_within(WAIT).await;
    let mut got = [0];
    peer.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"x");
}

#[tokio::test]
async fn only_plain_tcp_hibernates() {
    let (mut conn, _peer) = pair(Kind::Stream).await;
    assert!(!conn.may_hibernate());
    assert!(conn.hibernate().is_err());
    // Still usable afterwards.
    conn.queue(Bytes::from_static(b"y"));
    conn.flush_within(WAIT).await;
    assert!(!conn.has_pending());
}

/// Where the kept beginning of a half-arrived packet starts in memory, and its length.
fn partial_at(conn: &Connection) -> Option<(usize, usize)> {
    conn.partial
        .as_ref()
        .map(|p| (p.buf.as_ptr() as usize, p.buf.len()))
}

#[tokio::test]
async fn a_packet_trickled_in_small_reads_is_not_copied_again_on_every_read() {
    // 256 KiB arriving 100 bytes per read: copying what was kept on every read would move
    // 2,600 times the average kept length (hundreds of megabytes); growing it in place moves
    // at most about the packet's size.
    let frame = publish_frame(5, 256 * 1024);
    for kind in KINDS {
        let (mut conn, mut peer) = pair(kind).await;
        let mut frames = Vec::new();
        let mut copied = 0;
        let mut at = None;
        for chunk in frame.chunks(100) {
            send(&mut peer, chunk).await;
            let mut got = 0;
            while got < chunk.len() {
                let (n, f) = read_once(&mut conn, MAX).await.unwrap();
                got += n;
                frames.extend(f);
            }
            let now = partial_at(&conn);
            if let (Some((before, _)), Some((start, len))) = (at, now) {
                if start != before {
                    copied += len - chunk.len();
                }
            }
            at = now;
        }
        assert_eq!(frames, vec![Bytes::from(frame.clone())], "{kind:?}");
        println!(
            "{kind:?}: {copied} bytes copied for a {}-byte packet",
            frame.len()
        );
        assert!(
            copied <= 2 * frame.len(),
            "{kind:?}: {copied} bytes copied to keep one {}-byte packet",
            frame.len()
        );
    }
}
