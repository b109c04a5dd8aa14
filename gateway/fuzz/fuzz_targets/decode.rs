//! Feeds arbitrary bytes to the codec the way a connection does (`frame_len`, then
//! `decode_connect` or `decode` at each protocol level) and checks that nothing panics and that
//! every packet that decodes re-encodes to bytes that decode to the same packet.
#![no_main]

use bytes::{Bytes, BytesMut};
use gateway::codec::{decode, decode_connect, encode, frame_len, Packet, Protocol};
use libfuzzer_sys::fuzz_target;

const PROTOCOLS: [Protocol; 3] = [Protocol::V31, Protocol::V311, Protocol::V5];
const MAX_PACKET_SIZE: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    // The whole input as one frame reaches the length checks; the framed prefix reaches the rest.
    let mut frames = vec![input.clone()];
    if let Ok(Some(len)) = frame_len(data, MAX_PACKET_SIZE) {
        if len < input.len() {
            frames.push(input.slice(..len));
        }
    }
    for frame in frames {
        if let Ok(connect) = decode_connect(frame.clone()) {
            let protocol = connect.protocol;
            check_round_trip(&Packet::Connect(Box::new(connect)), protocol);
        }
        for protocol in PROTOCOLS {
            if let Ok(packet) = decode(frame.clone(), protocol) {
                check_round_trip(&packet, protocol);
            }
        }
    }
});

fn check_round_trip(packet: &Packet, protocol: Protocol) {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out);
    assert_eq!(frame_len(&out, usize::MAX), Ok(Some(out.len())));
    match decode(out.freeze(), protocol) {
        Ok(again) => assert_eq!(&again, packet, "re-encoding changed the packet"),
        Err(e) => panic!("re-encoded {packet:?} does not decode: {e}"),
    }
}
