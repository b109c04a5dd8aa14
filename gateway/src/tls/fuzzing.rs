//! The checks of the fuzz target `tls_record` (`gateway::fuzzing::tls_record`): the record layer
//! after the handshake (`traffic` over `record`) on records sealed with a known key from a script
//! the input describes (application data, alerts, handshake messages, raw bytes, corrupted
//! records), read whole and cut into reads at arbitrary points.

use super::record::{Aead, Direction, Version, ALERT, APPLICATION_DATA, HANDSHAKE};
use super::traffic::{Read, Traffic};

const KEY: [u8; 32] = [7; 32];
const IV: [u8; 12] = [9; 12];

/// Checks, for arbitrary bytes (the first chooses version and suite, the second the cuts, the
/// rest is the script):
/// - reading never panics;
/// - the plaintext returned is a prefix of the script's application data, and all of it when
///   the script holds nothing but intact application data records;
/// - a corrupted record before anything else is refused (bad_record_mac; record_overflow or
///   unexpected_message when its header was hit), with the plaintext of the records before it
///   returned; one whose length field was hit may also wait for bytes that never come;
/// - read whole or cut anywhere, the input gives the same plaintext and the same outcome.
pub(crate) fn tls_record(data: &[u8]) {
    let [mode, cut_seed, script @ ..] = data else {
        return;
    };
    let version = if mode & 1 == 0 {
        Version::Tls13
    } else {
        Version::Tls12
    };
    let aead = match (mode >> 1) % 3 {
        0 => Aead::Aes128Gcm,
        1 => Aead::Aes256Gcm,
        _ => Aead::Chacha20Poly1305,
    };
    let (input, model) = sealed(version, aead, script);
    let whole = read(version, aead, &input, &[input.len()]);
    let mut cuts = Vec::new();
    let mut at = 0usize;
    let mut seed = u32::from(*cut_seed) | 1;
    while at < input.len() {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        at += 1 + (seed >> 16) as usize % 700;
        cuts.push(at.min(input.len()));
    }
    let pieces = read(version, aead, &input, &cuts);
    assert_eq!(whole, pieces, "whole and in reads");
    let (plaintext, outcome) = whole;
    assert!(
        model.all.starts_with(&plaintext),
        "plaintext not from the script"
    );
    assert!(
        plaintext.starts_with(&model.before_other),
        "application data before anything else lost"
    );
    match model.first_other {
        None => {
            assert_eq!(outcome, Ok(Read::Open));
            assert_eq!(plaintext, model.all);
        }
        Some(Other::Corrupted) => assert!(
            matches!(
                outcome,
                Err(super::record::RecordError::BadRecordMac
                    | super::record::RecordError::Overflow
                    | super::record::RecordError::Unexpected
                    | super::record::RecordError::Decode)
            ),
            "corrupted record: {outcome:?}"
        ),
        Some(Other::Message) => {}
    }
}

enum Other {
    Corrupted,
    Message,
}

#[derive(Default)]
struct Model {
    /// Every application data record's plaintext, in order.
    all: Vec<u8>,
    /// Those before the first record of another kind, a corrupted one, or raw bytes.
    before_other: Vec<u8>,
    first_other: Option<Other>,
}

fn sealed(version: Version, aead: Aead, mut script: &[u8]) -> (Vec<u8>, Model) {
    let mut client = Direction::with(aead, &KEY, IV, 0);
    let mut out = Vec::new();
    let mut model = Model::default();
    while let [op, len, rest @ ..] = script {
        let len = if op & 0x40 != 0 {
            usize::from(*len) * 65
        } else {
            usize::from(*len)
        };
        let payload: Vec<u8> = rest.iter().copied().cycle().take(len).collect();
        script = &rest[len.min(rest.len())..];
        let kind = match op & 3 {
            0 => APPLICATION_DATA,
            1 => ALERT,
            2 => HANDSHAKE,
            _ => {
                out.extend_from_slice(&payload);
                model.first_other.get_or_insert(Other::Message);
                continue;
            }
        };
        let start = out.len();
        if client.seal(version, kind, &payload, &mut out).is_err() {
            continue;
        }
        let corrupt = op & 0x80 != 0 && out.len() > start;
        if corrupt {
            let at = start + usize::from(*op) * 31 % (out.len() - start);
            out[at] ^= 0x01 | (op >> 2);
            // A length field altered may leave the record waiting for bytes that never come:
            // no outcome is promised then (found by the fuzzer: the check, not the code).
            let length_field = (start + 3..start + 5).contains(&at);
            model.first_other.get_or_insert(if length_field {
                Other::Message
            } else {
                Other::Corrupted
            });
        } else if kind != APPLICATION_DATA {
            model.first_other.get_or_insert(Other::Message);
        }
        if kind == APPLICATION_DATA {
            model.all.extend_from_slice(&payload);
            if model.first_other.is_none() {
                model.before_other.extend_from_slice(&payload);
            }
        }
    }
    (out, model)
}

/// Feeds `input` up to each cut in turn; the plaintext and how it ended.
fn read(
    version: Version,
    aead: Aead,
    input: &[u8],
    cuts: &[usize],
) -> (Vec<u8>, Result<Read, super::record::RecordError>) {
    let rx = Direction::with(aead, &KEY, IV, 0);
    let tx = Direction::with(aead, &[1; 32], IV, 0);
    let mut traffic = Traffic::with(version, None, rx, tx, u64::MAX);
    let (mut incoming, mut plaintext, mut outgoing) = (Vec::new(), Vec::new(), Vec::new());
    let mut from = 0;
    let mut outcome = Ok(Read::Open);
    for &to in cuts {
        incoming.extend_from_slice(&input[from..to]);
        from = to;
        outcome = traffic.read(&mut incoming, &mut plaintext, &mut outgoing);
        if outcome != Ok(Read::Open) {
            break;
        }
    }
    (plaintext, outcome)
}
