//! What a CONNECT is granted: the client's requests (identifier, will, session expiry,
//! keep-alive, receive maximum, packet size, topic aliases) held against the configuration.
//! A pure function: no I/O, no clock, no session; `handshake` acts on its answer (the overload
//! check and authentication, which are not pure, stay there).

use bytestring::ByteString;

use super::publish::payload_format_ok;
use crate::codec::{connack_len, reason, Connect, Properties, Protocol};
use crate::policy::Policy;
use crate::topic;

/// The terms of an accepted CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Agreed {
    /// CONNECT's client identifier, or the one assigned when it was empty.
    pub(super) client_id: ByteString,
    /// Seconds the session outlives the connection: the request capped by `session_expiry_max`.
    pub(super) session_expiry: u32,
    /// Seconds; 0: no keep-alive.
    pub(super) keep_alive: u16,
    /// The CONNACK's properties; always empty for 3.x.
    pub(super) connack: Properties,
    /// Outbound QoS 1/2 window: `max_inflight` bounded by the client's Receive Maximum.
    pub(super) send_window: u16,
    /// The client's Maximum Packet Size; `u32::MAX` when unset.
    pub(super) client_max_packet: u32,
    /// Topic aliases the broker may use towards the client; 0: none.
    pub(super) aliases_out: u16,
    /// Topic aliases the client may use towards the broker (the Topic Alias Maximum announced
    /// in CONNACK); 0: none.
    pub(super) aliases_in: u16,
}

/// A CONNECT refused on its own terms (before authentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refused {
    /// The v5 reason code; the encoder maps it to the nearest 3.x return code.
    pub(super) code: u8,
    /// Whether the refusal is answered with a CONNACK before the connection closes.
    pub(super) connack: bool,
}

impl Refused {
    fn with_connack(code: u8) -> Refused {
        Refused {
            code,
            connack: true,
        }
    }
}

/// Holds CONNECT against the connection `policy`. `assign_id` makes the identifier of a client that sent an
/// empty one; it is called only then.
pub(super) fn negotiate(
    connect: &Connect,
    policy: &Policy,
    assign_id: impl FnOnce() -> ByteString,
) -> Result<Agreed, Refused> {
    let protocol = connect.protocol;
    let v5 = protocol.is_v5();
    let mut props = Properties::default();

    if connect.properties.authentication_method.is_some() {
        return Err(Refused::with_connack(reason::BAD_AUTHENTICATION_METHOD));
    }
    let client_id = if connect.client_id.is_empty() {
        if protocol == Protocol::V31 || (!v5 && !connect.clean_start) {
            return Err(Refused::with_connack(reason::CLIENT_IDENTIFIER_NOT_VALID));
        }
        let assigned = assign_id();
        if v5 {
            props.assigned_client_identifier = Some(assigned.clone());
        }
        assigned
    } else {
        connect.client_id.clone()
    };
    if let Some(will) = &connect.will {
        let too_long = will.topic.len() > policy.max_topic_length;
        if too_long || topic::validate_topic_name(&will.topic, policy.max_topic_levels).is_err() {
            return Err(Refused {
                code: reason::TOPIC_NAME_INVALID,
                // 3.x has no return code for this: a non-conforming CONNECT is closed without
                // CONNACK [MQTT-3.1.4-1].
                connack: v5,
            });
        }
        if !payload_format_ok(&will.properties, &will.payload) {
            return Err(Refused::with_connack(reason::PAYLOAD_FORMAT_INVALID));
        }
    }

    let requested_expiry = if v5 {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    let expiry = requested_expiry.min(policy.session_expiry_max);
    if v5 && expiry != requested_expiry {
        props.session_expiry_interval = Some(expiry);
    }

    let mut keep_alive = connect.keep_alive;
    if keep_alive > policy.max_keepalive
        || (keep_alive == 0 && v5 && policy.max_keepalive < u16::MAX)
    {
        keep_alive = policy.max_keepalive;
        if v5 {
            props.server_keep_alive = Some(keep_alive);
        }
    }
    if v5 {
        props.receive_maximum = Some(policy.receive_maximum);
        props.maximum_packet_size = Some(policy.max_packet_size);
        if policy.topic_alias_maximum > 0 {
            props.topic_alias_maximum = Some(policy.topic_alias_maximum);
        }
    }
    let client_max_packet = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
    let mut aliases_in = policy.topic_alias_maximum;
    fit_connack(&mut props, protocol, client_max_packet, &mut aliases_in)?;
    let client_receive_max = connect.properties.receive_maximum.unwrap_or(u16::MAX);
    // Aliases towards the client cost a map entry each: bounded by our own maximum too, so a
    // client announcing 65535 cannot make us keep 65535 topics for it.
    let client_alias_max = connect
        .properties
        .topic_alias_maximum
        .unwrap_or(0)
        .min(policy.topic_alias_maximum);
    Ok(Agreed {
        client_id,
        session_expiry: expiry,
        keep_alive,
        connack: props,
        send_window: policy.max_inflight.min(client_receive_max),
        client_max_packet,
        aliases_out: if v5 && policy.outbound_topic_aliases {
            client_alias_max
        } else {
            0
        },
        aliases_in,
    })
}

/// Makes CONNACK fit the client's Maximum Packet Size, which binds CONNACK as every other packet
/// [MQTT-3.1.2-24]. The broker sends no Reason String or User Property, the properties the
/// specification drops first [MQTT-3.2.2-19, -20]. Of the others only the Topic Alias Maximum can
/// go: without it the client may send no aliases, and none are accepted from it (`aliases_in`
/// becomes 0). The rest are limits the client must keep to (Receive Maximum, Maximum Packet
/// Size), values it must use (Server Keep Alive, Session Expiry Interval) or an identifier it
/// must be given [MQTT-3.2.2-16]; leaving one out would answer the client with a connection that
/// breaks later. A CONNACK that still does not fit refuses the connection: with the bare 5-byte
/// CONNACK 0x95 (Packet too large) where that fits, or closed without a word where even that is
/// too large (Mosquitto closes without CONNACK in both cases).
fn fit_connack(
    props: &mut Properties,
    protocol: Protocol,
    client_max_packet: u32,
    aliases_in: &mut u16,
) -> Result<(), Refused> {
    let max = client_max_packet as usize;
    if connack_len(props, protocol) <= max {
        return Ok(());
    }
    if props.topic_alias_maximum.take().is_some() {
        *aliases_in = 0;
        if connack_len(props, protocol) <= max {
            return Ok(());
        }
    }
    Err(Refused {
        code: reason::PACKET_TOO_LARGE,
        connack: connack_len(&Properties::default(), protocol) <= max,
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use bytes::Bytes;

    use super::*;
    use crate::codec::{LastWill, QoS};
    use crate::config::Config;

    use Protocol::{V31, V311, V5};

    const ALL: [Protocol; 3] = [V31, V311, V5];

    /// A conforming CONNECT: client id "dev", clean start, keep-alive 60, no will, no properties.
    fn connect(protocol: Protocol) -> Connect {
        Connect {
            protocol,
            clean_start: true,
            keep_alive: 60,
            client_id: ByteString::from_static("dev"),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }
    }

    fn will(topic: &'static str) -> LastWill {
        LastWill {
            topic: ByteString::from_static(topic),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
        }
    }

    fn agree(c: &Connect, config: &Config) -> Result<Agreed, Refused> {
        negotiate(c, &Policy::new(config), || {
            ByteString::from_static("auto-test")
        })
    }

    fn agreed(c: &Connect, config: &Config) -> Agreed {
        agree(c, config).unwrap_or_else(|r| panic!("{:?} refused: {r:?}", c.protocol))
    }

    #[test]
    fn authentication_method_is_refused() {
        let mut c = connect(V5);
        c.properties.authentication_method = Some(ByteString::from_static("SCRAM-SHA-1"));
        assert_eq!(
            agree(&c, &Config::default()),
            Err(Refused::with_connack(reason::BAD_AUTHENTICATION_METHOD))
        );
    }

    #[test]
    fn client_id() {
        /// The client's id and the Assigned Client Identifier in CONNACK, or the refusal.
        type Outcome = Result<(&'static str, Option<&'static str>), Refused>;
        let refused = Err(Refused::with_connack(reason::CLIENT_IDENTIFIER_NOT_VALID));
        let assigned = Ok(("auto-test", Some("auto-test")));
        let generated = Ok(("auto-test", None));
        // (protocol, client id, clean start) -> outcome
        let cases: [(Protocol, &str, bool, Outcome); 12] = [
            (V31, "", true, refused),
            (V31, "", false, refused),
            (V311, "", true, generated),
            (V311, "", false, refused),
            (V5, "", true, assigned),
            (V5, "", false, assigned),
            (V31, "dev", true, Ok(("dev", None))),
            (V31, "dev", false, Ok(("dev", None))),
            (V311, "dev", true, Ok(("dev", None))),
            (V311, "dev", false, Ok(("dev", None))),
            (V5, "dev", true, Ok(("dev", None))),
            (V5, "dev", false, Ok(("dev", None))),
        ];
        for (protocol, id, clean_start, want) in cases {
            let mut c = connect(protocol);
            c.client_id = ByteString::from(id);
            c.clean_start = clean_start;
            let calls = Cell::new(0);
            let got = negotiate(&c, &Policy::new(&Config::default()), || {
                calls.set(calls.get() + 1);
                ByteString::from_static("auto-test")
            });
            let got = got.as_ref().map(|a| {
                let announced = a.connack.assigned_client_identifier.as_deref();
                (&a.client_id[..], announced)
            });
            let case = format!("{protocol:?} id {id:?} clean_start {clean_start}");
            assert_eq!(got.map_err(|r| *r), want, "{case}");
            let generates = id.is_empty() && want.is_ok();
            assert_eq!(calls.get(), u32::from(generates), "{case}: assign_id calls");
        }
    }

    #[test]
    fn will_topic() {
        let mut config = Config::default();
        config.limits.max_topic_length = 8;
        config.mqtt.max_topic_levels = 3;
        // (will topic) -> valid; an invalid one is refused with CONNACK in v5 only.
        let cases = [
            ("a/b", true),
            ("a/b/c", true),
            ("12345678", true),
            ("123456789", false), // longer than limits.max_topic_length
            ("a/b/c/d", false),   // more levels than max_topic_levels
            ("a/+", false),
            ("a/#", false),
            ("", false),
        ];
        for protocol in ALL {
            for (topic, valid) in cases {
                let mut c = connect(protocol);
                c.will = Some(will(topic));
                let got = agree(&c, &config).map(|a| a.client_id);
                let want = if valid {
                    Ok(ByteString::from_static("dev"))
                } else {
                    Err(Refused {
                        code: reason::TOPIC_NAME_INVALID,
                        connack: protocol == V5,
                    })
                };
                assert_eq!(got, want, "{protocol:?} will topic {topic:?}");
            }
        }
    }

    #[test]
    fn will_payload_format() {
        // (payload format indicator, payload) -> accepted
        let cases: [(Option<u8>, &'static [u8], bool); 5] = [
            (None, b"\xff\xfe", true),
            (Some(0), b"\xff\xfe", true),
            (Some(1), b"text", true),
            (Some(1), b"", true),
            (Some(1), b"\xff\xfe", false),
        ];
        for (indicator, payload, ok) in cases {
            let mut c = connect(V5);
            let mut w = will("a/b");
            w.properties.payload_format_indicator = indicator;
            w.payload = Bytes::from_static(payload);
            c.will = Some(w);
            let want = if ok {
                Ok(())
            } else {
                Err(Refused::with_connack(reason::PAYLOAD_FORMAT_INVALID))
            };
            assert_eq!(
                agree(&c, &Config::default()).map(|_| ()),
                want,
                "{indicator:?} {payload:?}"
            );
        }
    }

    #[test]
    fn refusals_come_in_order() {
        // An empty client id is judged before the will, the will topic before its payload.
        let mut c = connect(V311);
        c.client_id = ByteString::new();
        c.clean_start = false;
        c.will = Some(will("a/+"));
        let refused = agree(&c, &Config::default()).unwrap_err();
        assert_eq!(
            refused,
            Refused::with_connack(reason::CLIENT_IDENTIFIER_NOT_VALID)
        );

        let mut c = connect(V5);
        let mut w = will("a/+");
        w.properties.payload_format_indicator = Some(1);
        w.payload = Bytes::from_static(b"\xff");
        c.will = Some(w);
        c.properties.authentication_method = Some(ByteString::from_static("x"));
        let refused = agree(&c, &Config::default()).unwrap_err();
        assert_eq!(refused.code, reason::BAD_AUTHENTICATION_METHOD);
        c.properties.authentication_method = None;
        assert_eq!(
            agree(&c, &Config::default()).unwrap_err().code,
            reason::TOPIC_NAME_INVALID
        );
    }

    #[test]
    fn session_expiry() {
        const MAX: u32 = 3600;
        // (protocol, clean start, requested) -> (granted, echoed in CONNACK)
        let cases = [
            (V5, true, None, 0, None),
            (V5, false, None, 0, None),
            (V5, true, Some(0), 0, None),
            (V5, false, Some(100), 100, None),
            (V5, false, Some(MAX), MAX, None),
            (V5, false, Some(MAX + 1), MAX, Some(MAX)),
            (V5, true, Some(u32::MAX), MAX, Some(MAX)),
            (V311, true, None, 0, None),
            (V311, false, None, MAX, None),
            (V31, true, None, 0, None),
            (V31, false, None, MAX, None),
        ];
        let mut config = Config::default();
        config.mqtt.session_expiry_max = MAX;
        for (protocol, clean_start, requested, granted, echoed) in cases {
            let mut c = connect(protocol);
            c.clean_start = clean_start;
            c.properties.session_expiry_interval = requested;
            let a = agreed(&c, &config);
            let case = format!("{protocol:?} clean_start {clean_start} requested {requested:?}");
            assert_eq!(a.session_expiry, granted, "{case}");
            assert_eq!(a.connack.session_expiry_interval, echoed, "{case}");
        }
        // Without a cap a 3.x persistent session never expires.
        config.mqtt.session_expiry_max = u32::MAX;
        let mut c = connect(V311);
        c.clean_start = false;
        assert_eq!(agreed(&c, &config).session_expiry, u32::MAX);
    }

    #[test]
    fn keep_alive() {
        // (protocol, requested, max_keepalive) -> (granted, Server Keep Alive in CONNACK)
        let cases = [
            (V311, 60, 600, 60, None),
            (V311, 600, 600, 600, None),
            (V311, 601, 600, 600, None),
            (V311, 0, 600, 0, None),
            (V31, 1000, 600, 600, None),
            (V31, 0, 600, 0, None),
            (V5, 60, 600, 60, None),
            (V5, 600, 600, 600, None),
            (V5, 601, 600, 600, Some(600)),
            (V5, 0, 600, 600, Some(600)),
            (V5, 0, u16::MAX, 0, None),
            (V5, u16::MAX, u16::MAX, u16::MAX, None),
        ];
        for (protocol, requested, max, granted, announced) in cases {
            let mut config = Config::default();
            config.mqtt.max_keepalive = max;
            let mut c = connect(protocol);
            c.keep_alive = requested;
            let a = agreed(&c, &config);
            let case = format!("{protocol:?} keep-alive {requested} max {max}");
            assert_eq!(a.keep_alive, granted, "{case}");
            assert_eq!(a.connack.server_keep_alive, announced, "{case}");
        }
    }

    #[test]
    fn windows_and_packet_sizes() {
        // (protocol, client's Receive Maximum, client's Maximum Packet Size, max_inflight)
        //   -> (send window, largest packet we may send the client)
        let cases = [
            (V5, None, None, 32, 32, u32::MAX),
            (V5, Some(10), Some(1024), 32, 10, 1024),
            (V5, Some(32), None, 32, 32, u32::MAX),
            (V5, Some(1000), Some(u32::MAX), 32, 32, u32::MAX),
            (V311, None, None, 32, 32, u32::MAX),
            (V31, None, None, 100, 100, u32::MAX),
        ];
        let mut config = Config::default();
        config.mqtt.receive_maximum = 77;
        config.mqtt.max_packet_size = 4096;
        for (protocol, receive_max, packet_max, inflight, window, largest) in cases {
            config.mqtt.max_inflight = inflight;
            let mut c = connect(protocol);
            c.properties.receive_maximum = receive_max;
            c.properties.maximum_packet_size = packet_max;
            let a = agreed(&c, &config);
            let case =
                format!("{protocol:?} client {receive_max:?} {packet_max:?} ours {inflight}");
            assert_eq!(
                (a.send_window, a.client_max_packet),
                (window, largest),
                "{case}"
            );
            // Our own limits, announced to v5 clients.
            let v5 = protocol == V5;
            assert_eq!(a.connack.receive_maximum, v5.then_some(77), "{case}");
            assert_eq!(a.connack.maximum_packet_size, v5.then_some(4096), "{case}");
        }
    }

    #[test]
    fn topic_aliases() {
        // (protocol, client's Topic Alias Maximum, topic_alias_maximum, outbound_topic_aliases)
        //   -> (aliases we use towards the client, Topic Alias Maximum announced in CONNACK)
        let cases = [
            (V5, Some(5), 10, true, 5, Some(10)),
            (V5, Some(10), 10, true, 10, Some(10)),
            (V5, Some(u16::MAX), 10, true, 10, Some(10)),
            (V5, Some(5), 10, false, 0, Some(10)),
            (V5, None, 10, true, 0, Some(10)),
            (V5, Some(0), 10, true, 0, Some(10)),
            (V5, Some(5), 0, true, 0, None),
            (V311, None, 10, true, 0, None),
            (V31, None, 10, true, 0, None),
        ];
        for (protocol, client_max, ours, enabled, aliases, announced) in cases {
            let mut config = Config::default();
            config.mqtt.topic_alias_maximum = ours;
            config.mqtt.outbound_topic_aliases = enabled;
            let mut c = connect(protocol);
            c.properties.topic_alias_maximum = client_max;
            let a = agreed(&c, &config);
            let case = format!("{protocol:?} client {client_max:?} ours {ours} enabled {enabled}");
            assert_eq!(a.aliases_out, aliases, "{case}");
            assert_eq!(a.connack.topic_alias_maximum, announced, "{case}");
        }
    }

    #[test]
    fn connack_fits_the_client_maximum_packet_size() {
        let mut config = Config::default();
        config.mqtt.topic_alias_maximum = 10;
        config.mqtt.max_keepalive = 30;
        let policy = Policy::new(&config);
        let assign = || ByteString::from_static("auto-0123456789abcdef");
        // (client id, keep-alive) -> its CONNACK's size with every property
        for (id, keep_alive) in [("dev", 10), ("dev", 0), ("", 10), ("", 100)] {
            let mut c = connect(V5);
            c.client_id = ByteString::from(id);
            c.keep_alive = keep_alive;
            let whole = negotiate(&c, &policy, assign).expect("accepted");
            let full = connack_len(&whole.connack, V5);
            let mut without_aliases = whole.connack.clone();
            without_aliases.topic_alias_maximum = None;
            let trimmed = connack_len(&without_aliases, V5);
            assert_eq!(trimmed, full - 3, "Topic Alias Maximum: 3 bytes");
            let case = format!("id {id:?} keep-alive {keep_alive}");
            for max in [
                1,
                4,
                5,
                6,
                trimmed - 1,
                trimmed,
                full - 1,
                full,
                u32::MAX as usize,
            ] {
                c.properties.maximum_packet_size = Some(max as u32);
                let got = negotiate(&c, &policy, assign);
                let terms = got.map(|a| (a.connack, a.aliases_in, a.aliases_out));
                if max >= full {
                    let want = (whole.connack.clone(), whole.aliases_in, whole.aliases_out);
                    assert_eq!(terms, Ok(want), "{case} max {max}");
                } else if max >= trimmed {
                    let (connack, aliases_in, aliases_out) =
                        terms.unwrap_or_else(|r| panic!("{case} max {max}: {r:?}"));
                    assert_eq!(connack, without_aliases, "{case} max {max}");
                    assert_eq!((aliases_in, aliases_out), (0, 0), "{case} max {max}");
                    assert_eq!(whole.aliases_in, 10, "{case}");
                } else {
                    let refused = Refused {
                        code: reason::PACKET_TOO_LARGE,
                        connack: max >= 5,
                    };
                    assert_eq!(terms, Err(refused), "{case} max {max}");
                }
            }
        }
        // A 3.x CONNACK has 4 bytes and no properties to drop; 3.x has no Maximum Packet Size.
        assert_eq!(connack_len(&Properties::default(), V311), 4);
    }

    #[test]
    fn a_3x_connack_has_no_properties() {
        let mut config = Config::default();
        config.mqtt.session_expiry_max = 60;
        config.mqtt.max_keepalive = 30;
        // What a v5 client would be told: a lowered keep-alive, a lowered expiry (persistent
        // sessions), an assigned id (3.1.1 with clean session).
        for (protocol, id, clean_start) in
            [(V31, "dev", false), (V311, "dev", false), (V311, "", true)]
        {
            let mut c = connect(protocol);
            c.client_id = ByteString::from(id);
            c.clean_start = clean_start;
            c.keep_alive = 100;
            assert!(agreed(&c, &config).connack.is_empty(), "{protocol:?}");
        }
    }
}
