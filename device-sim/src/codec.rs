//! The client side of MQTT 3.1.1 and 5.0 (the wire [`Protocol`] a run speaks), on the
//! `mqttbytes` codec (independent of the gateway's, so a codec bug cannot hide in tests of one
//! against the other). Packets are encoded into and decoded from per-thread scratch buffers;
//! nothing here is kept per device.

use bytes::{Buf, Bytes, BytesMut};
use mqttbytes::{v4, v5, QoS};
use serde::{Deserialize, Serialize};

/// The MQTT protocol version spoken on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    V311,
    V5,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        }
    }
}

/// Larger incoming packets are a protocol error for a simulator that sends small messages.
pub const MAX_INCOMING: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("malformed packet from broker: {0}")]
    Malformed(String),
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// What a client needs from what the broker sends.
#[derive(Debug)]
pub enum Incoming {
    ConnAck {
        code: u8,
        name: String,
        session_present: bool,
    },
    Publish {
        qos: u8,
        pkid: u16,
        payload: Bytes,
    },
    /// `refused`: a v5 reason code of 0x80 or above (the broker did not take the message).
    PubAck {
        pkid: u16,
        refused: bool,
    },
    PubRec {
        pkid: u16,
        refused: bool,
    },
    PubRel {
        pkid: u16,
    },
    PubComp {
        pkid: u16,
        refused: bool,
    },
    SubAck {
        refused: bool,
    },
    PingResp,
    Disconnect {
        reason: u8,
    },
    Unexpected,
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn encode_err(e: mqttbytes::Error) -> CodecError {
    CodecError::Encode(e.to_string())
}

/// `NotAuthorized` -> `not_authorized`, for failure reason labels.
fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Takes the next complete packet off the front of `buf`; `None` until one is complete.
pub fn decode(buf: &mut BytesMut, protocol: Protocol) -> Result<Option<Incoming>, CodecError> {
    if buf.is_empty() {
        return Ok(None);
    }
    match protocol {
        Protocol::V311 => match v4::read(buf, MAX_INCOMING) {
            Ok(packet) => Ok(Some(from_v4(packet))),
            Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(CodecError::Malformed(e.to_string())),
        },
        Protocol::V5 => {
            // mqttbytes 0.6 rejects a v5 DISCONNECT without a body (reason 0x00, normal),
            // which the specification allows and brokers send.
            if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
                buf.advance(2);
                return Ok(Some(Incoming::Disconnect { reason: 0 }));
            }
            match v5::read(buf, MAX_INCOMING) {
                Ok(packet) => Ok(Some(from_v5(packet))),
                Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(CodecError::Malformed(e.to_string())),
            }
        }
    }
}

fn from_v4(packet: v4::Packet) -> Incoming {
    match packet {
        v4::Packet::ConnAck(ack) => Incoming::ConnAck {
            code: ack.code as u8,
            name: snake(&format!("{:?}", ack.code)),
            session_present: ack.session_present,
        },
        v4::Packet::Publish(p) => Incoming::Publish {
            qos: p.qos as u8,
            pkid: p.pkid,
            payload: p.payload,
        },
        v4::Packet::PubAck(a) => Incoming::PubAck {
            pkid: a.pkid,
            refused: false,
        },
        v4::Packet::PubRec(a) => Incoming::PubRec {
            pkid: a.pkid,
            refused: false,
        },
        v4::Packet::PubRel(a) => Incoming::PubRel { pkid: a.pkid },
        v4::Packet::PubComp(a) => Incoming::PubComp {
            pkid: a.pkid,
            refused: false,
        },
        v4::Packet::SubAck(a) => Incoming::SubAck {
            refused: a.return_codes.contains(&v4::SubscribeReasonCode::Failure),
        },
        v4::Packet::PingResp => Incoming::PingResp,
        _ => Incoming::Unexpected,
    }
}

fn from_v5(packet: v5::Packet) -> Incoming {
    match packet {
        v5::Packet::ConnAck(ack) => Incoming::ConnAck {
            code: ack.code as u8,
            name: snake(&format!("{:?}", ack.code)),
            session_present: ack.session_present,
        },
        v5::Packet::Publish(p) => Incoming::Publish {
            qos: p.qos as u8,
            pkid: p.pkid,
            payload: p.payload,
        },
        v5::Packet::PubAck(a) => Incoming::PubAck {
            pkid: a.pkid,
            refused: a.reason as u8 >= 0x80,
        },
        v5::Packet::PubRec(a) => Incoming::PubRec {
            pkid: a.pkid,
            refused: a.reason as u8 >= 0x80,
        },
        v5::Packet::PubRel(a) => Incoming::PubRel { pkid: a.pkid },
        v5::Packet::PubComp(a) => Incoming::PubComp {
            pkid: a.pkid,
            refused: a.reason as u8 >= 0x80,
        },
        v5::Packet::SubAck(a) => Incoming::SubAck {
            refused: a.return_codes.iter().any(|c| (*c as u8) >= 0x80),
        },
        v5::Packet::PingResp => Incoming::PingResp,
        v5::Packet::Disconnect(d) => Incoming::Disconnect {
            reason: d.reason_code as u8,
        },
        _ => Incoming::Unexpected,
    }
}

/// The fields of CONNECT the simulator varies.
pub struct ConnectOptions<'a> {
    pub client_id: &'a str,
    pub keep_alive: u16,
    pub clean_session: bool,
    pub session_expiry: Option<u32>,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
}

pub fn connect(
    buf: &mut BytesMut,
    protocol: Protocol,
    o: &ConnectOptions,
) -> Result<(), CodecError> {
    let login = o
        .username
        .map(|u| (u.to_string(), o.password.unwrap_or_default().to_string()));
    match protocol {
        Protocol::V311 => {
            let mut c = v4::Connect::new(o.client_id);
            c.keep_alive = o.keep_alive;
            c.clean_session = o.clean_session;
            if let Some((u, p)) = login {
                c.set_login(u, p);
            }
            c.write(buf).map_err(encode_err)?;
        }
        Protocol::V5 => {
            let mut c = v5::Connect::new(o.client_id);
            c.keep_alive = o.keep_alive;
            c.clean_session = o.clean_session;
            if let Some((u, p)) = login {
                c.set_login(u, p);
            }
            c.properties = o.session_expiry.map(|expiry| v5::ConnectProperties {
                session_expiry_interval: Some(expiry),
                receive_maximum: None,
                max_packet_size: None,
                topic_alias_max: None,
                request_response_info: None,
                request_problem_info: None,
                user_properties: Vec::new(),
                authentication_method: None,
                authentication_data: None,
            });
            c.write(buf).map_err(encode_err)?;
        }
    }
    Ok(())
}

pub fn publish(
    buf: &mut BytesMut,
    protocol: Protocol,
    topic: String,
    level: u8,
    pkid: u16,
    payload: &[u8],
) -> Result<(), CodecError> {
    match protocol {
        Protocol::V311 => {
            let mut p = v4::Publish::new(topic, qos(level), payload);
            p.pkid = pkid;
            p.write(buf).map_err(encode_err)?;
        }
        Protocol::V5 => {
            let mut p = v5::Publish::new(topic, qos(level), payload);
            p.pkid = pkid;
            p.write(buf).map_err(encode_err)?;
        }
    }
    Ok(())
}

pub fn subscribe(
    buf: &mut BytesMut,
    protocol: Protocol,
    pkid: u16,
    filter: &str,
    level: u8,
) -> Result<(), CodecError> {
    match protocol {
        Protocol::V311 => {
            let mut s = v4::Subscribe::new(filter, qos(level));
            s.pkid = pkid;
            s.write(buf).map_err(encode_err)?;
        }
        Protocol::V5 => {
            let mut s = v5::Subscribe::new(filter, qos(level));
            s.pkid = pkid;
            s.write(buf).map_err(encode_err)?;
        }
    }
    Ok(())
}

/// The acknowledgements a client sends: PUBACK, PUBREC, PUBREL, PUBCOMP.
#[derive(Debug, Clone, Copy)]
pub enum Ack {
    Puback,
    Pubrec,
    Pubrel,
    Pubcomp,
}

pub fn ack(buf: &mut BytesMut, protocol: Protocol, kind: Ack, pkid: u16) -> Result<(), CodecError> {
    let written = match (protocol, kind) {
        (Protocol::V311, Ack::Puback) => v4::PubAck::new(pkid).write(buf),
        (Protocol::V311, Ack::Pubrec) => v4::PubRec::new(pkid).write(buf),
        (Protocol::V311, Ack::Pubrel) => v4::PubRel::new(pkid).write(buf),
        (Protocol::V311, Ack::Pubcomp) => v4::PubComp::new(pkid).write(buf),
        (Protocol::V5, Ack::Puback) => v5::PubAck::new(pkid).write(buf),
        (Protocol::V5, Ack::Pubrec) => v5::PubRec::new(pkid).write(buf),
        (Protocol::V5, Ack::Pubrel) => v5::PubRel::new(pkid).write(buf),
        (Protocol::V5, Ack::Pubcomp) => v5::PubComp::new(pkid).write(buf),
    };
    written.map(drop).map_err(encode_err)
}

pub fn pingreq(buf: &mut BytesMut) {
    // PINGREQ is the same two bytes in every protocol version.
    buf.extend_from_slice(&[0xC0, 0x00]);
}

pub fn disconnect(buf: &mut BytesMut) {
    // Normal DISCONNECT: no body in 3.1.1, reason 0x00 may be omitted in 5.0.
    buf.extend_from_slice(&[0xE0, 0x00]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_it_encodes_across_split_reads() {
        for protocol in [Protocol::V311, Protocol::V5] {
            let mut wire = BytesMut::new();
            publish(&mut wire, protocol, "a/b".into(), 1, 7, b"hello").expect("encodes");
            ack(&mut wire, protocol, Ack::Puback, 7).expect("encodes");
            let whole = wire.split().freeze();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for byte in whole.iter() {
                buf.extend_from_slice(&[*byte]);
                while let Some(p) = decode(&mut buf, protocol).expect("valid") {
                    got.push(p);
                }
            }
            assert!(
                matches!(&got[0], Incoming::Publish { qos: 1, pkid: 7, payload } if &payload[..] == b"hello")
            );
            assert!(matches!(
                got[1],
                Incoming::PubAck {
                    pkid: 7,
                    refused: false
                }
            ));
        }
    }

    /// A v5 acknowledgement with a reason code of 0x80 or above is a refusal; below, as
    /// 0x10 No matching subscribers, the message was taken.
    #[test]
    fn v5_acknowledgements_tell_refusals() {
        // PUBACK 7 with 0x80, PUBREC 8 with 0x97, PUBCOMP 9 with 0x92, PUBACK 10 with 0x10.
        let mut buf = BytesMut::from(
            &[
                0x40u8, 0x03, 0x00, 0x07, 0x80, 0x50, 0x03, 0x00, 0x08, 0x97, 0x70, 0x03, 0x00,
                0x09, 0x92, 0x40, 0x03, 0x00, 0x0A, 0x10,
            ][..],
        );
        let mut got = Vec::new();
        while let Some(p) = decode(&mut buf, Protocol::V5).expect("valid") {
            got.push(p);
        }
        assert!(
            matches!(
                got[0],
                Incoming::PubAck {
                    pkid: 7,
                    refused: true
                }
            ),
            "{got:?}"
        );
        assert!(
            matches!(
                got[1],
                Incoming::PubRec {
                    pkid: 8,
                    refused: true
                }
            ),
            "{got:?}"
        );
        assert!(
            matches!(
                got[2],
                Incoming::PubComp {
                    pkid: 9,
                    refused: true
                }
            ),
            "{got:?}"
        );
        assert!(
            matches!(
                got[3],
                Incoming::PubAck {
                    pkid: 10,
                    refused: false
                }
            ),
            "{got:?}"
        );
    }

    #[test]
    fn v5_bodyless_disconnect_is_normal() {
        let mut buf = BytesMut::from(&[0xE0u8, 0x00][..]);
        assert!(matches!(
            decode(&mut buf, Protocol::V5),
            Ok(Some(Incoming::Disconnect { reason: 0 }))
        ));
    }

    #[test]
    fn connack_codes_get_names() {
        let mut buf = BytesMut::from(&[0x20u8, 0x02, 0x00, 0x05][..]);
        match decode(&mut buf, Protocol::V311) {
            Ok(Some(Incoming::ConnAck { code: 5, name, .. })) => assert_eq!(name, "not_authorized"),
            other => panic!("{other:?}"),
        }
    }

    /// A persistent session's receiver state (QoS 2 ids awaiting PUBREL) is kept only when the
    /// broker says the session is present.
    #[test]
    fn connack_tells_whether_the_session_is_present() {
        for (v, wire) in [
            (Protocol::V311, &[0x20u8, 0x02, 0x01, 0x00][..]),
            (Protocol::V5, &[0x20u8, 0x03, 0x01, 0x00, 0x00][..]),
        ] {
            let mut buf = BytesMut::from(wire);
            match decode(&mut buf, v) {
                Ok(Some(Incoming::ConnAck {
                    code: 0,
                    session_present,
                    ..
                })) => assert!(session_present, "{v:?}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
