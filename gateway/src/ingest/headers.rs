//! The NATS headers a stored message carries: what MQTT said about it, so that a backend reading
//! the stream needs nothing else. Header names are constants (static, valid); values are
//! percent-escaped where the NATS header format could not carry them as they are.
//!
//! - `Mqtt-Topic`, `Mqtt-Client-Id`: the topic and the publisher's client id.
//! - `Mqtt-Qos`: `0`, `1` or `2`; `Mqtt-Retain`: `true` or `false`.
//! - `Mqtt-Content-Type`: the v5 content type, when set.
//! - `Mqtt-User-Property`: one per v5 user property, in order, as `name=value` (`=` in the
//!   name escaped).
//! - `Nats-Msg-Id`: for QoS 1/2, JetStream's de-duplication key (`dedup`).
//!
//! Escaping: `%`, control characters and spaces (which the header format trims or cannot
//! carry) become `%XX`; everything else, UTF-8 included, is kept.

use std::fmt::Write as _;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue, NATS_MESSAGE_ID};

use crate::codec::QoS;
use crate::message::Message;

pub(crate) const TOPIC: &str = "Mqtt-Topic";
pub(crate) const CLIENT_ID: &str = "Mqtt-Client-Id";
pub(crate) const QOS: &str = "Mqtt-Qos";
pub(crate) const RETAIN: &str = "Mqtt-Retain";
pub(crate) const CONTENT_TYPE: &str = "Mqtt-Content-Type";
pub(crate) const USER_PROPERTY: &str = "Mqtt-User-Property";

// Made once: a name given as text is validated and copied at every insert.
const TOPIC_NAME: HeaderName = HeaderName::from_static(TOPIC);
const CLIENT_ID_NAME: HeaderName = HeaderName::from_static(CLIENT_ID);
const QOS_NAME: HeaderName = HeaderName::from_static(QOS);
const RETAIN_NAME: HeaderName = HeaderName::from_static(RETAIN);
const CONTENT_TYPE_NAME: HeaderName = HeaderName::from_static(CONTENT_TYPE);
const USER_PROPERTY_NAME: HeaderName = HeaderName::from_static(USER_PROPERTY);

/// The headers of `msg` from `client_id`; `msg_id` for QoS 1/2.
pub(crate) fn headers(msg: &Message, client_id: &str, msg_id: Option<String>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(TOPIC_NAME, value(&msg.topic, false));
    h.insert(CLIENT_ID_NAME, value(client_id, false));
    let qos = match msg.qos {
        QoS::AtMostOnce => "0",
        QoS::AtLeastOnce => "1",
        QoS::ExactlyOnce => "2",
    };
    h.insert(QOS_NAME, qos);
    h.insert(RETAIN_NAME, if msg.retain { "true" } else { "false" });
    if let Some(p) = &msg.properties {
        if let Some(ct) = &p.content_type {
            h.insert(CONTENT_TYPE_NAME, value(ct, false));
        }
        for (name, v) in &p.user_properties {
            let mut text = escaped(name, true);
            text.push('=');
            text.push_str(&escaped(v, false));
            h.append(USER_PROPERTY_NAME, plain(text));
        }
    }
    if let Some(id) = msg_id {
        h.insert(NATS_MESSAGE_ID, plain(id));
    }
    h
}

fn value(text: &str, escape_equals: bool) -> HeaderValue {
    plain(escaped(text, escape_equals))
}

/// An escaped string holds no `\r` or `\n`, so it is taken as it is.
fn plain(text: String) -> HeaderValue {
    use async_nats::header::IntoHeaderValue;
    text.into_header_value()
}

fn escaped(text: &str, escape_equals: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '%' || c == ' ' || c.is_control() || (escape_equals && c == '=') {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                // Writing to a String cannot fail.
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use bytestring::ByteString;

    use crate::message::ForwardedProperties;

    #[test]
    fn mqtt_attributes_become_headers() {
        let props = ForwardedProperties {
            content_type: Some("application/json".into()),
            user_properties: vec![("a=b".into(), "x y".into()), ("k".into(), "v\r\n".into())],
            ..ForwardedProperties::default()
        };
        let msg = Message::new(
            &ByteString::from_static("d/1 %"),
            &Bytes::from_static(b"p"),
            QoS::AtLeastOnce,
            true,
            1,
            Some(Box::new(props)),
        );
        let h = headers(&msg, "dev", Some("id-1".into()));
        let get = |n: &str| h.get(n).map(|v| v.as_str().to_owned());
        assert_eq!(get(TOPIC).as_deref(), Some("d/1%20%25"));
        assert_eq!(get(CLIENT_ID).as_deref(), Some("dev"));
        assert_eq!(get(QOS).as_deref(), Some("1"));
        assert_eq!(get(RETAIN).as_deref(), Some("true"));
        assert_eq!(get(CONTENT_TYPE).as_deref(), Some("application/json"));
        let props: Vec<&str> = h.get_all(USER_PROPERTY).map(HeaderValue::as_str).collect();
        assert_eq!(props, ["a%3Db=x%20y", "k=v%0D%0A"]);
        assert_eq!(get("Nats-Msg-Id").as_deref(), Some("id-1"));
    }
}
