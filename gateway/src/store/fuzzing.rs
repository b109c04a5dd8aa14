//! The store's stored forms under the fuzzer (`crate::fuzzing::store_record`): a store file or
//! journal damaged on disk is read with these decoders, which promise an error for what is not a
//! record of theirs, never a panic and never a silently different value.

use std::sync::Arc;

use bytes::Bytes;

use super::batch::Batch;
use super::layout::MessageKey;
use super::record;
use super::{SessionRecord, StoredWill};
use crate::codec::{QoS, SubscriptionOptions};
use crate::fuzzing::input::Input;
use crate::message::{ForwardedProperties, Message};
use crate::session::{Delivery, SubscriptionRecord};

/// The first byte picks a form, the rest is its input. Checks that:
/// - whatever a decoder accepts (a retained message, a queued delivery, a session, a journal
///   entry, a message key) encodes back to exactly the bytes it was read from: a decoder that
///   accepted two spellings of one value would read a damaged byte as a valid value;
/// - what it accepts is a value the live state can hold: subscription options and identifiers
///   as a SUBSCRIBE could have set them;
/// - a value built from the input (arbitrary strings, payloads, properties, wills,
///   subscriptions) is read back from its encoding as the same value (compared by re-encoding).
pub(crate) fn store_record(data: &[u8]) {
    let Some((&form, bytes)) = data.split_first() else {
        return;
    };
    match form % 6 {
        0 => {
            if let Ok(m) = record::read_retained(bytes) {
                assert_eq!(record::retained(&m), bytes, "retained message {m:?}");
            }
        }
        1 => {
            if let Ok((sent, d)) = record::read_delivery(bytes, 1) {
                assert_eq!(delivery(sent, &d), bytes, "delivery {d:?}");
                assert!(
                    d.subscription_ids
                        .iter()
                        .all(|&id| valid_subscription_id(id)),
                    "delivery with subscription ids {:?}",
                    d.subscription_ids
                );
            }
        }
        2 => {
            if let Ok(s) = record::read_session("client", bytes) {
                assert_eq!(record::session(&s), bytes, "session {s:?}");
                for sub in &s.subscriptions {
                    assert!(sub.options.retain_handling <= 2, "restored {sub:?}");
                    assert!(
                        sub.id.map_or(true, valid_subscription_id),
                        "restored {sub:?}"
                    );
                }
            }
        }
        3 => {
            if let Ok(batch) = Batch::decode(bytes) {
                let mut out = Vec::new();
                batch.encode(&mut out);
                assert_eq!(out, bytes, "journal entry");
            }
        }
        4 => {
            if let Some((client, seq)) = MessageKey::split(bytes) {
                assert_eq!(MessageKey::default().of(client, seq), bytes, "message key");
            }
        }
        _ => built(&mut Input::new(bytes)),
    }
}

/// What a SUBSCRIBE's subscription identifier can be (a nonzero variable byte integer).
fn valid_subscription_id(id: u32) -> bool {
    (1..=268_435_455).contains(&id)
}

fn subscription_id(input: &mut Input<'_>) -> u32 {
    1 + input.u32() % 268_435_455
}

fn delivery(sent: Option<(u16, u8)>, d: &Delivery) -> Vec<u8> {
    let (mut tail, mut out) = (Vec::new(), Vec::new());
    record::delivery_tail(&mut tail, d);
    record::delivery(&mut out, sent, &tail);
    out
}

fn built(input: &mut Input<'_>) {
    let m = message(input);
    let stored = record::retained(&m);
    let back = record::read_retained(&stored).expect("a stored retained message reads back");
    assert_eq!(
        record::retained(&back),
        stored,
        "retained {m:?} read back as {back:?}"
    );

    let d = Delivery {
        msg: Arc::new(m),
        qos: qos(input),
        retain: input.byte() & 1 != 0,
        subscription_ids: (0..input.byte() % 4)
            .map(|_| subscription_id(input))
            .collect(),
        seq: input.u64(),
    };
    // Stage codes are 1 to 3; 0 is the "not sent" marker, which `sent: None` writes.
    let sent = (input.byte() % 2 != 0).then(|| (input.u16(), 1 + input.byte() % 3));
    let stored = delivery(sent, &d);
    let (sent_back, back) =
        record::read_delivery(&stored, d.seq).expect("a stored delivery reads back");
    assert_eq!(sent_back, sent, "sent state of {d:?}");
    assert_eq!(back.seq, d.seq);
    assert_eq!(
        delivery(sent_back, &back),
        stored,
        "delivery {d:?} read back as {back:?}"
    );

    let will = match input.byte() % 3 {
        0 => None,
        1 => Some(StoredWill::Due {
            message: Arc::new(message(input)),
            due: input.u64(),
        }),
        _ => Some(StoredWill::Armed {
            message: Arc::new(message(input)),
            delay: input.u32(),
        }),
    };
    let s = SessionRecord {
        client_id: Arc::from(input.text()),
        expiry_interval: input.u32(),
        expires_at: optional(input, Input::u64),
        subscriptions: (0..input.byte() % 4)
            .map(|_| SubscriptionRecord {
                filter: input.text().into(),
                options: SubscriptionOptions {
                    qos: qos(input),
                    no_local: input.byte() & 1 != 0,
                    retain_as_published: input.byte() & 1 != 0,
                    retain_handling: input.byte() % 3,
                },
                id: optional(input, subscription_id),
            })
            .collect(),
        will,
    };
    let stored = record::session(&s);
    let back = record::read_session(&s.client_id, &stored).expect("a stored session reads back");
    assert_eq!(
        record::session(&back),
        stored,
        "session {s:?} read back as {back:?}"
    );
    assert_eq!(back.client_id, s.client_id);
}

fn optional<'a, T>(input: &mut Input<'a>, value: impl FnOnce(&mut Input<'a>) -> T) -> Option<T> {
    (input.byte() % 2 != 0).then(|| value(input))
}

fn qos(input: &mut Input<'_>) -> QoS {
    input.pick(&[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn message(input: &mut Input<'_>) -> Message {
    let topic = input.text().into();
    let payload = Bytes::copy_from_slice(input.chunk());
    let (qos, retain) = (qos(input), input.byte() & 1 != 0);
    let expires_at = optional(input, Input::u64);
    let properties = (input.byte() % 2 != 0).then(|| {
        Box::new(ForwardedProperties {
            payload_format_indicator: optional(input, Input::byte),
            message_expiry_interval: optional(input, Input::u32),
            content_type: optional(input, |i| i.text().into()),
            response_topic: optional(input, |i| i.text().into()),
            correlation_data: optional(input, |i| Bytes::copy_from_slice(i.chunk())),
            user_properties: (0..input.byte() % 4)
                .map(|_| (input.text().into(), input.text().into()))
                .collect(),
        })
    });
    Message::restored(topic, payload, qos, retain, properties, expires_at)
}
