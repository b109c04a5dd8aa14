//! The decoder against a naive model: frames a client would send (masked, fragmented, with pings
//! and pongs between them), cut into reads at arbitrary points, decode to the concatenation of
//! their binary payloads, with a pong owed for the last ping and the close code answered; and the
//! malformed frames each refused with the RFC's close code.

use proptest::prelude::*;

use super::*;

/// A frame as a client sends it: masked with `mask`.
fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![u8::from(fin) << 7 | opcode];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Decodes `wire` cut at `cuts` (sorted offsets), as reads would deliver it.
fn decode_in_reads(
    wire: &[u8],
    cuts: &[usize],
    max: u64,
) -> (Vec<u8>, Vec<Vec<u8>>, Option<u16>, Option<FrameError>) {
    let mut d = Decoder::default();
    let (mut stream, mut pings, mut close) = (Vec::new(), Vec::new(), None);
    let mut at = 0;
    for end in cuts.iter().copied().chain([wire.len()]) {
        let end = end.clamp(at, wire.len());
        let mut read = wire[at..end].to_vec();
        at = end;
        match d.decode(&mut read, max) {
            Ok(out) => {
                stream.extend_from_slice(&read[..out.payload]);
                pings.extend(out.ping);
                if out.close.is_some() {
                    close = out.close;
                    break;
                }
            }
            Err(e) => return (stream, pings, close, Some(e)),
        }
    }
    (stream, pings, close, None)
}

#[derive(Debug, Clone)]
enum Piece {
    /// A binary message in fragments of these payloads.
    Message(Vec<Vec<u8>>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

fn piece() -> impl Strategy<Value = Piece> {
    let payload = prop::collection::vec(any::<u8>(), 0..300);
    let control = prop::collection::vec(any::<u8>(), 0..=125);
    prop_oneof![
        4 => prop::collection::vec(payload, 1..4).prop_map(Piece::Message),
        1 => control.clone().prop_map(Piece::Ping),
        1 => control.prop_map(Piece::Pong),
    ]
}

proptest! {
    #[test]
    fn any_cut_of_valid_frames_decodes_to_their_payloads(
        pieces in prop::collection::vec(piece(), 0..12),
        mask in any::<[u8; 4]>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        close in any::<bool>(),
    ) {
        let (mut wire, mut want) = (Vec::new(), Vec::new());
        let mut last_ping = None;
        for p in &pieces {
            match p {
                Piece::Message(parts) => {
                    for (i, part) in parts.iter().enumerate() {
                        let opcode = if i == 0 { BINARY } else { CONTINUATION };
                        wire.extend(client_frame(i + 1 == parts.len(), opcode, part, mask));
                        want.extend_from_slice(part);
                    }
                }
                // Between messages and inside them alike is allowed; between is enough here.
                Piece::Ping(b) => {
                    wire.extend(client_frame(true, PING, b, mask));
                    last_ping = Some(b.clone());
                }
                Piece::Pong(b) => wire.extend(client_frame(true, PONG, b, mask)),
            }
        }
        if close {
            wire.extend(client_frame(true, CLOSE, &[0x03, 0xE9, b'o', b'k'], mask));
            // Nothing after a close is decoded.
            wire.extend(client_frame(true, BINARY, b"after", mask));
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.sort_unstable();
        let (stream, pings, got_close, error) = decode_in_reads(&wire, &cuts, 300);
        prop_assert_eq!(error, None);
        prop_assert_eq!(stream, want);
        prop_assert_eq!(pings.last().cloned(), last_ping);
        prop_assert_eq!(got_close, close.then_some(1001));
    }
}

#[test]
fn control_frames_inside_a_fragmented_message_are_answered() {
    let mask = [1, 2, 3, 4];
    let mut wire = client_frame(false, BINARY, b"ab", mask);
    wire.extend(client_frame(true, PING, b"p", mask));
    wire.extend(client_frame(true, CONTINUATION, b"cd", mask));
    let (stream, pings, close, error) = decode_in_reads(&wire, &[3, 9], 100);
    assert_eq!(
        (stream.as_slice(), error, close),
        (&b"abcd"[..], None, None)
    );
    assert_eq!(pings, vec![b"p".to_vec()]);
}

#[test]
fn a_decoder_between_frames_holds_nothing() {
    let mut d = Decoder::default();
    let mut frame = client_frame(true, BINARY, b"hello", [9, 9, 9, 9]);
    let (head, tail) = frame.split_at_mut(3);
    d.decode(head, 100).expect("valid");
    assert!(!d.idle(), "a header cut short is held");
    let out = d.decode(tail, 100).expect("valid");
    assert_eq!(&tail[..out.payload], b"hello");
    assert!(d.idle());
    let mut ping = client_frame(true, PING, b"xyz", [1, 1, 1, 1]);
    let (head, tail) = ping.split_at_mut(7);
    d.decode(head, 100).expect("valid");
    assert!(!d.idle(), "half a ping's payload is held");
    assert_eq!(
        d.decode(tail, 100).expect("valid").ping,
        Some(b"xyz".to_vec())
    );
    assert!(d.idle());
}

#[test]
fn malformed_frames_are_refused_with_the_rfc_close_code() {
    let m = [7, 7, 7, 7];
    let unmasked = {
        let mut f = client_frame(true, BINARY, b"x", m);
        f[1] &= 0x7F;
        f
    };
    let reserved = {
        let mut f = client_frame(true, BINARY, b"x", m);
        f[0] |= 0x40;
        f
    };
    let huge = {
        let mut f = vec![0x82, 0xFF];
        f.extend_from_slice(&(1u64 << 63).to_be_bytes());
        f.extend_from_slice(&m);
        f
    };
    // What a client that does not mask sends: a 2-byte header, refused before more comes.
    let unmasked_short = vec![0x82, 0x02, 0xC0, 0x00];
    let mut interleaved = client_frame(false, BINARY, b"a", m);
    interleaved.extend(client_frame(true, BINARY, b"b", m));
    let cases: Vec<(&str, Vec<u8>, FrameError, u16)> = vec![
        (
            "text",
            client_frame(true, TEXT, b"hi", m),
            FrameError::Text,
            1003,
        ),
        ("unmasked", unmasked, FrameError::Unmasked, 1002),
        (
            "unmasked, short",
            unmasked_short,
            FrameError::Unmasked,
            1002,
        ),
        ("reserved bit", reserved, FrameError::Reserved, 1002),
        (
            "opcode 3",
            client_frame(true, 0x3, b"", m),
            FrameError::Opcode(3),
            1002,
        ),
        (
            "oversize",
            client_frame(true, BINARY, &[0; 101], m),
            FrameError::TooLarge(101),
            1009,
        ),
        ("64-bit top bit", huge, FrameError::TooLarge(1 << 63), 1009),
        (
            "fragmented ping",
            client_frame(false, PING, b"", m),
            FrameError::Control,
            1002,
        ),
        (
            "long ping",
            client_frame(true, PING, &[0; 126], m),
            FrameError::Control,
            1002,
        ),
        (
            "lone continuation",
            client_frame(true, CONTINUATION, b"a", m),
            FrameError::Continuation,
            1002,
        ),
        ("interleaved", interleaved, FrameError::Interleaved, 1002),
        (
            "close of 1 byte",
            client_frame(true, CLOSE, &[3], m),
            FrameError::Close,
            1002,
        ),
        (
            "close code 1005",
            client_frame(true, CLOSE, &[0x03, 0xED], m),
            FrameError::Close,
            1002,
        ),
        (
            "close reason",
            client_frame(true, CLOSE, &[0x03, 0xE8, 0xFF], m),
            FrameError::CloseReason,
            1007,
        ),
    ];
    for (name, wire, error, code) in cases {
        let (.., got) = decode_in_reads(&wire, &[1, 2], 100);
        assert_eq!(got, Some(error), "{name}");
        assert_eq!(error.close_code(), code, "{name}");
    }
}

#[test]
fn server_headers_use_the_shortest_length() {
    assert_eq!(
        server_header(BINARY, 5),
        ([0x82, 5, 0, 0, 0, 0, 0, 0, 0, 0], 2)
    );
    assert_eq!(server_header(BINARY, 300).1, 4);
    assert_eq!(&server_header(BINARY, 300).0[..4], &[0x82, 126, 1, 44]);
    assert_eq!(server_header(BINARY, 70_000).1, 10);
    assert_eq!(control_frame(PONG, b"ab"), vec![0x8A, 2, b'a', b'b']);
}
