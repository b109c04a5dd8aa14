//! The client packets an input asks for, read from its bytes: every client-to-server packet type
//! of 3.1.1 and 5.0 with the fields that steer the broker (QoS, DUP, retain, packet ids, topic
//! aliases, subscription options, session expiry, Receive Maximum, Maximum Packet Size, wills),
//! drawn mostly from small sets so that clients meet on the same topics and ids.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use super::super::input::Input;
use crate::codec::{
    encode, Ack, Auth, Connect, Disconnect, LastWill, Packet, Properties, Protocol, Publish, QoS,
    Subscribe, SubscriptionOptions, Unsubscribe,
};

const TOPICS: [&str; 7] = ["t", "t/1", "t/2", "a/b/c", "$SYS/x", "", "t/+"];
const FILTERS: [&str; 9] = [
    "t",
    "t/#",
    "#",
    "+/1",
    "t/+",
    "$share/g/t/1",
    "a/+/c",
    "$SYS/#",
    "t/1",
];
const CLIENT_IDS: [&str; 3] = ["a", "b", ""];

fn text(input: &mut Input, choices: &[&str]) -> ByteString {
    let i = usize::from(input.byte());
    match choices.get(i % (choices.len() + 1)) {
        Some(s) => ByteString::from(*s),
        None => ByteString::from(input.text()),
    }
}

fn qos(input: &mut Input) -> QoS {
    input.pick(&[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn maybe<T>(input: &mut Input, value: impl FnOnce(&mut Input) -> T) -> Option<T> {
    if input.byte() & 1 == 1 {
        Some(value(input))
    } else {
        None
    }
}

/// A packet id: mostly a few small ones, so that ids meet; sometimes any (0 included).
pub(super) fn packet_id(input: &mut Input) -> u16 {
    match input.byte() % 8 {
        0 => input.u16(),
        n => u16::from(n),
    }
}

pub(super) fn connect(input: &mut Input) -> Connect {
    let protocol = input.pick(&[Protocol::V311, Protocol::V5, Protocol::V5, Protocol::V31]);
    let v5 = protocol.is_v5();
    let flags = input.byte();
    let mut properties = Properties::default();
    if v5 {
        properties.session_expiry_interval = input.pick(&[None, Some(0), Some(10), Some(u32::MAX)]);
        properties.receive_maximum = input.pick(&[None, Some(1), Some(2), Some(3)]);
        properties.maximum_packet_size = input.pick(&[None, Some(24), Some(64), Some(4096)]);
        properties.topic_alias_maximum = input.pick(&[None, Some(0), Some(1), Some(3)]);
        if flags & 0x40 != 0 {
            properties.authentication_method = Some(ByteString::from("SCRAM"));
        }
    }
    let will = (flags & 1 == 1).then(|| {
        let mut props = Properties::default();
        if v5 {
            props.will_delay_interval = maybe(input, |i| u32::from(i.byte()));
        }
        LastWill {
            topic: text(input, &TOPICS),
            payload: Bytes::copy_from_slice(input.chunk()),
            qos: qos(input),
            retain: flags & 2 != 0,
            properties: props,
        }
    });
    Connect {
        protocol,
        clean_start: flags & 4 != 0,
        keep_alive: input.pick(&[0, 1, 10, 60]),
        client_id: text(input, &CLIENT_IDS),
        will,
        username: (flags & 8 != 0).then(|| ByteString::from("user")),
        password: (flags & 0x10 != 0).then(|| Bytes::from_static(b"secret")),
        properties,
    }
}

/// A PUBLISH whose payload starts with `tag` (`<hex>`), for the delivery check.
pub(super) fn publish(input: &mut Input, tag: u64, v5: bool) -> Publish {
    let flags = input.byte();
    let qos = qos(input);
    let mut properties = Properties::default();
    let mut topic = text(input, &TOPICS);
    if v5 {
        properties.topic_alias = input.pick(&[None, None, Some(1), Some(2), Some(65)]);
        if properties.topic_alias.is_some() && flags & 0x10 != 0 {
            topic = ByteString::new();
        }
        if flags & 0x20 != 0 {
            properties.payload_format_indicator = Some(1);
        }
        if flags & 0x40 != 0 {
            properties.message_expiry_interval = Some(u32::from(input.byte()));
        }
        if flags & 0x80 != 0 {
            properties.subscription_identifiers = vec![1];
        }
    }
    let mut payload = format!("<{tag:x}>").into_bytes();
    payload.extend_from_slice(input.chunk());
    Publish {
        dup: flags & 1 != 0,
        qos,
        retain: flags & 2 != 0,
        topic,
        packet_id: if qos == QoS::AtMostOnce {
            0
        } else {
            packet_id(input)
        },
        properties,
        payload: Bytes::from(payload),
    }
}

pub(super) fn subscribe(input: &mut Input, v5: bool) -> Subscribe {
    let count = 1 + usize::from(input.byte() % 3);
    let filters = (0..count)
        .map(|_| {
            let filter = text(input, &FILTERS);
            let b = input.byte();
            let options = SubscriptionOptions {
                qos: QoS::from_u8(b % 3).unwrap_or_default(),
                no_local: v5 && b & 0x04 != 0,
                retain_as_published: v5 && b & 0x08 != 0,
                retain_handling: if v5 { (b >> 4) % 3 } else { 0 },
            };
            (filter, options)
        })
        .collect();
    let mut properties = Properties::default();
    if v5 {
        properties.subscription_identifiers =
            maybe(input, |i| vec![u32::from(i.byte()) + 1]).unwrap_or_default();
    }
    Subscribe {
        packet_id: packet_id(input),
        filters,
        properties,
    }
}

pub(super) fn unsubscribe(input: &mut Input) -> Unsubscribe {
    let count = 1 + usize::from(input.byte() % 2);
    Unsubscribe {
        packet_id: packet_id(input),
        filters: (0..count).map(|_| text(input, &FILTERS)).collect(),
        properties: Properties::default(),
    }
}

pub(super) fn ack(packet_id: u16, reason: u8) -> Ack {
    Ack {
        packet_id,
        reason,
        properties: Properties::default(),
    }
}

pub(super) fn disconnect(input: &mut Input) -> Disconnect {
    let properties = Properties {
        session_expiry_interval: input.pick(&[None, None, Some(0), Some(30)]),
        ..Properties::default()
    };
    Disconnect {
        reason: input.pick(&[0x00, 0x04, 0x80]),
        properties,
    }
}

pub(super) fn auth(input: &mut Input) -> Auth {
    Auth {
        reason: input.pick(&[0x00, 0x18, 0x19]),
        properties: Properties::default(),
    }
}

/// `packet` encoded as a client at `protocol` sends it.
pub(super) fn encoded(packet: &Packet, protocol: Protocol) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out);
    out.to_vec()
}
