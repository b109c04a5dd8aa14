//! What other nodes send a node over NATS, under the fuzzer (`crate::fuzzing::cluster_wire`):
//! the envelope of a forwarded message (binary, `envelope`) and the control messages of
//! interest, answers and goodbyes (JSON, `interest::Control`). Anyone who can publish on the
//! cluster's subjects can send them: each decoder promises an error for what is not its own,
//! never a panic, and what it accepts reads back as itself once written again.

use bytes::Bytes;

use super::envelope;
use super::interest::Control;

/// The first byte picks a form, the rest is its input. Checks that:
/// - an envelope that decodes, taken in as a message and sent on as this node would (same
///   origin, number, tallies, topic, expiry left), decodes to the same fields and payload;
/// - a control message that parses, written again, parses to the same message.
pub(crate) fn cluster_wire(data: &[u8]) {
    let Some((&form, bytes)) = data.split_first() else {
        return;
    };
    if form % 2 == 0 {
        envelope_again(bytes);
    } else if let Ok(control) = serde_json::from_slice::<Control>(bytes) {
        let again = serde_json::to_vec(&control).expect("a control message serializes");
        let back: Control = serde_json::from_slice(&again)
            .unwrap_or_else(|e| panic!("a control message written again is refused: {e}"));
        assert_eq!(back, control, "control message");
    }
}

fn envelope_again(bytes: &[u8]) {
    let Ok(first) = envelope::decode(Bytes::copy_from_slice(bytes)) else {
        return;
    };
    const NOW: u64 = 1_000_000;
    let (origin, seq, qos, retain, tallies) = (
        first.origin,
        first.seq,
        first.qos,
        first.retain,
        first.tallies.clone(),
    );
    let (ack, expiry, topic) = (first.ack, first.expiry_ms, first.topic.clone());
    let properties = first.properties.clone();
    let payload = first.payload.clone();
    let message = first.into_message(topic.clone().unwrap_or_else(|| "t".into()), NOW);
    let ask = ack.then_some(&tallies[..]);
    let wire = envelope::encode(&message, origin, seq, topic.is_some(), ask, NOW);
    let again = envelope::decode(wire)
        .unwrap_or_else(|e| panic!("an envelope written again is refused: {e}"));
    assert_eq!((again.origin, again.seq), (origin, seq), "numbering");
    assert_eq!(
        (again.qos, again.retain, again.ack),
        (qos, retain, ack),
        "flags"
    );
    assert_eq!(again.tallies, tallies, "tallies");
    // Expiry is sent as what is left: saturating at the far end of the clock.
    assert_eq!(
        again.expiry_ms,
        expiry.map(|left| NOW.saturating_add(left) - NOW),
        "expiry"
    );
    assert_eq!(again.topic, topic, "topic");
    assert_eq!(again.properties, properties, "properties");
    assert_eq!(again.payload, payload, "payload");
}
