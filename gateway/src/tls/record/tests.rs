//! Record protection against itself: every version and AEAD, sizes at the limits, altered or
//! misnumbered records, headers refused early. rustls as the peer is in `stream::tests`.

use proptest::prelude::*;

use super::*;

const AEADS: [Aead; 3] = [Aead::Aes128Gcm, Aead::Aes256Gcm, Aead::Chacha20Poly1305];
const VERSIONS: [Version; 2] = [Version::Tls13, Version::Tls12];

fn pair(aead: Aead, seq: u64) -> (Direction, Direction) {
    let key: Vec<u8> = (0..32).collect();
    let iv = [0x5a; NONCE_LEN];
    (
        Direction::with(aead, &key, iv, seq),
        Direction::with(aead, &key, iv, seq),
    )
}

#[test]
fn sealed_records_open_in_order_at_every_size_limit() {
    for version in VERSIONS {
        for aead in AEADS {
            let (mut tx, mut rx) = pair(aead, 5);
            let mut wire = Vec::new();
            let sizes = [0usize, 1, 100, MAX_PLAINTEXT];
            for (i, &n) in sizes.iter().enumerate() {
                let payload = vec![i as u8 + 1; n];
                tx.seal(version, APPLICATION_DATA, &payload, &mut wire)
                    .expect("seal");
            }
            let too_big = vec![0; MAX_PLAINTEXT + 1];
            assert_eq!(
                tx.seal(version, APPLICATION_DATA, &too_big, &mut wire),
                Err(RecordError::Overflow)
            );
            let mut at = 0;
            for (i, &n) in sizes.iter().enumerate() {
                // Incomplete: nothing yet, whatever is missing.
                let end = wire.len().min(at + HEADER + 1);
                assert_eq!(rx.open(version, &mut wire[at..end].to_vec()), Ok(None));
                let opened = rx
                    .open(version, &mut wire[at..])
                    .expect("opens")
                    .expect("whole");
                assert_eq!(opened.kind, APPLICATION_DATA, "{version:?} {aead:?}");
                let payload = &wire[at + opened.payload.start..at + opened.payload.end];
                assert_eq!(payload, vec![i as u8 + 1; n].as_slice());
                assert!(opened.len <= HEADER + MAX_CIPHERTEXT);
                assert!(
                    opened.len - n <= HEADER + EXPLICIT_NONCE + TAG,
                    "{version:?} {aead:?}"
                );
                at += opened.len;
            }
            assert_eq!(at, wire.len());
            assert_eq!((tx.seq(), rx.seq()), (9, 9));
        }
    }
}

#[test]
fn a_record_under_another_sequence_number_or_altered_is_bad_record_mac() {
    for version in VERSIONS {
        for aead in AEADS {
            let (mut tx, _) = pair(aead, 0);
            let mut wire = Vec::new();
            tx.seal(version, APPLICATION_DATA, b"hello", &mut wire)
                .expect("seal");
            // The wrong nonce (a replayed or reordered record).
            let (_, mut late) = pair(aead, 1);
            assert_eq!(
                late.open(version, &mut wire.clone()),
                Err(RecordError::BadRecordMac),
                "{version:?} {aead:?}"
            );
            // The version (in both versions' additional data), the body, the tag.
            for at in [2, HEADER, wire.len() - 1] {
                let mut altered = wire.clone();
                altered[at] ^= 0x80;
                let (_, mut rx) = pair(aead, 0);
                assert!(
                    rx.open(version, &mut altered).is_err(),
                    "{version:?} {aead:?} byte {at}"
                );
                assert_eq!(rx.seq(), 0, "a refused record counts for nothing");
            }
        }
    }
}

#[test]
fn headers_beyond_the_limits_are_refused_before_their_body_arrives() {
    for version in VERSIONS {
        let (_, mut rx) = pair(Aead::Aes128Gcm, 0);
        let long = (MAX_CIPHERTEXT as u16 + 1).to_be_bytes();
        let cases = [
            ([23, 3, 3, long[0], long[1]], RecordError::Overflow),
            ([24, 3, 3, 0, 20], RecordError::Unexpected),
            ([23, 2, 0, 0, 20], RecordError::Decode),
            ([20, 3, 3, 0, 1], RecordError::Unexpected),
        ];
        for (header, error) in cases {
            let mut input = header.to_vec();
            input.extend_from_slice(&[1]);
            assert_eq!(rx.open(version, &mut input), Err(error), "{header:?}");
        }
        // A body shorter than the tag cannot be authentic.
        let mut short = vec![23, 3, 3, 0, 4, 1, 2, 3, 4];
        assert_eq!(rx.open(version, &mut short), Err(RecordError::BadRecordMac));
    }
}

#[test]
fn tls13_records_hide_their_type_and_strip_padding() {
    let (mut tx, mut rx) = pair(Aead::Aes128Gcm, 0);
    let mut wire = Vec::new();
    tx.seal(Version::Tls13, ALERT, &[1, 0], &mut wire)
        .expect("seal");
    assert_eq!(wire[0], APPLICATION_DATA, "outer type");
    assert_eq!(&wire[1..3], &[3, 3]);
    assert_eq!(wire.len(), HEADER + 2 + 1 + TAG);
    let opened = rx
        .open(Version::Tls13, &mut wire)
        .expect("opens")
        .expect("whole");
    assert_eq!((opened.kind, opened.payload), (ALERT, HEADER..HEADER + 2));
    // TLS 1.2 keeps the type outside, and AES-GCM's explicit nonce before the ciphertext.
    let (mut tx, _) = pair(Aead::Aes128Gcm, 7);
    let mut wire = Vec::new();
    tx.seal(Version::Tls12, ALERT, &[1, 0], &mut wire)
        .expect("seal");
    assert_eq!(wire[0], ALERT);
    assert_eq!(wire.len(), HEADER + 8 + 2 + TAG);
    let mut nonce = [0x5a; NONCE_LEN];
    nonce[11] ^= 7;
    assert_eq!(
        &wire[HEADER..HEADER + 8],
        &nonce[4..],
        "explicit nonce: IV xor seq"
    );
}

proptest! {
    /// Any plaintexts, sealed in turn, open to themselves in turn.
    #[test]
    fn round_trip(
        v in 0usize..2,
        a in 0usize..3,
        seq in any::<u64>().prop_map(|s| s >> 1),
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6),
    ) {
        let (version, aead) = (VERSIONS[v], AEADS[a]);
        let (mut tx, mut rx) = pair(aead, seq);
        let mut wire = Vec::new();
        for p in &payloads {
            tx.seal(version, HANDSHAKE, p, &mut wire).expect("seal");
        }
        let mut at = 0;
        for p in &payloads {
            let opened = rx.open(version, &mut wire[at..]).expect("opens").expect("whole");
            if version == Version::Tls13 && p.is_empty() {
                // An empty TLS 1.3 handshake record is only its type byte: still itself.
                prop_assert_eq!(opened.payload.len(), 0);
            }
            prop_assert_eq!(opened.kind, HANDSHAKE);
            prop_assert_eq!(&wire[at + opened.payload.start..at + opened.payload.end], p.as_slice());
            at += opened.len;
        }
    }
}
