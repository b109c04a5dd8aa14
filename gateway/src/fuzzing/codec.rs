//! The MQTT codec, fed as a connection feeds it: `frame_size`/`frame_len` on what has arrived,
//! then `decode_connect` or `decode` on each frame, at every protocol level.

use bytes::{Bytes, BytesMut};

use crate::codec::{decode, decode_connect, encode, frame_len, frame_size, Packet, Protocol};

const PROTOCOLS: [Protocol; 3] = [Protocol::V31, Protocol::V311, Protocol::V5];
const MAX_PACKET_SIZE: usize = 1 << 20;

/// Checks, for arbitrary bytes:
/// - framing: what `frame_size` says about the packet at the front is final as soon as it says
///   anything (a longer prefix never changes it: a reader may act on it with part of a packet),
///   and `frame_len` is `frame_size` once that many bytes are there;
/// - decoding never panics, and everything a decoded packet holds is a slice of its frame (the
///   decoder reads nothing outside it);
/// - a decoded packet re-encodes to one frame that decodes to the same packet;
/// - `decode_connect` and `decode` agree on a CONNECT.
pub fn codec(data: &[u8]) {
    framing(data);
    let input = Bytes::copy_from_slice(data);
    // The whole input as one frame reaches the length checks; the framed prefix, the rest.
    let mut frames = vec![input.clone()];
    if let Ok(Some(len)) = frame_len(data, MAX_PACKET_SIZE) {
        if len < input.len() {
            frames.push(input.slice(..len));
        }
    }
    for frame in frames {
        let connect = decode_connect(frame.clone());
        for protocol in PROTOCOLS {
            let decoded = decode(frame.clone(), protocol);
            match &decoded {
                Ok(packet) => {
                    within(packet, &frame);
                    round_trip(packet, protocol);
                }
                Err(e) => {
                    // What a refusal is answered with and logged as must exist for every error.
                    let _ = (e.reason_code(), e.kind(), e.to_string());
                }
            }
            if let Ok(c) = &connect {
                assert_eq!(
                    decoded.as_ref(),
                    Ok(&Packet::Connect(Box::new(c.clone()))),
                    "decode_connect and decode disagree at {protocol:?}"
                );
            } else if let Ok(Packet::Connect(c)) = &decoded {
                panic!("decode_connect refused what decode read as {c:?}: {connect:?}");
            }
        }
    }
}

fn framing(data: &[u8]) {
    let full = frame_size(data, MAX_PACKET_SIZE);
    if let Ok(Some(size)) = full {
        assert!(size >= 2, "a frame of {size} bytes");
        let expected = (data.len() >= size).then_some(size);
        assert_eq!(frame_len(data, MAX_PACKET_SIZE), Ok(expected));
    }
    // The fixed header is at most 5 bytes: every shorter prefix knows nothing yet or the same.
    for end in 0..data.len().min(6) {
        let early = frame_size(&data[..end], MAX_PACKET_SIZE);
        assert!(
            early == Ok(None) || early == full,
            "{end} bytes say {early:?}, all {} say {full:?}",
            data.len()
        );
        if let Ok(Some(len)) = frame_len(&data[..end], MAX_PACKET_SIZE) {
            assert!(len <= end, "frame_len {len} beyond the {end} bytes given");
        }
    }
}

/// Asserts that `part` lies within `frame`'s memory: decoded fields are slices of the frame.
fn inside(frame: &Bytes, part: &[u8], what: &str) {
    if part.is_empty() {
        return;
    }
    let (start, end) = (
        frame.as_ptr() as usize,
        frame.as_ptr() as usize + frame.len(),
    );
    let (p, q) = (part.as_ptr() as usize, part.as_ptr() as usize + part.len());
    assert!(
        start <= p && q <= end,
        "{what} at {p:#x}..{q:#x} outside the frame {start:#x}..{end:#x}"
    );
}

fn within(packet: &Packet, frame: &Bytes) {
    match packet {
        Packet::Connect(c) => {
            inside(frame, c.client_id.as_bytes(), "client id");
            if let Some(will) = &c.will {
                inside(frame, will.topic.as_bytes(), "will topic");
                inside(frame, &will.payload, "will payload");
            }
            if let Some(username) = &c.username {
                inside(frame, username.as_bytes(), "username");
            }
            if let Some(password) = &c.password {
                inside(frame, password, "password");
            }
        }
        Packet::Publish(p) => {
            inside(frame, p.topic.as_bytes(), "topic");
            inside(frame, &p.payload, "payload");
            if let Some(data) = &p.properties.correlation_data {
                inside(frame, data, "correlation data");
            }
        }
        Packet::Subscribe(s) => {
            for (filter, _) in &s.filters {
                inside(frame, filter.as_bytes(), "topic filter");
            }
        }
        Packet::Unsubscribe(u) => {
            for filter in &u.filters {
                inside(frame, filter.as_bytes(), "topic filter");
            }
        }
        _ => {}
    }
}

fn round_trip(packet: &Packet, protocol: Protocol) {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out);
    assert_eq!(
        frame_len(&out, usize::MAX),
        Ok(Some(out.len())),
        "the encoding of {packet:?} is not one frame"
    );
    match decode(out.freeze(), protocol) {
        Ok(again) => assert_eq!(&again, packet, "re-encoding changed the packet"),
        Err(e) => panic!("re-encoded {packet:?} does not decode at {protocol:?}: {e}"),
    }
}
