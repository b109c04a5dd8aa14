//! An application message on its way through the broker, and its encode-once PUBLISH heads.
//!
//! A `Message` is created once per incoming PUBLISH (or will, or retained copy) and shared by `Arc`
//! across every subscriber queue. Its payload is one `Bytes` that every subscriber's socket write
//! references; the PUBLISH head (fixed header, topic, packet id slot, properties) is encoded at most
//! once per layout (protocol family x QoS 0 or not) and patched per receiver: only the first byte
//! (DUP, QoS, RETAIN) and the packet id differ between subscribers of the same layout.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use crate::clock::{unix_millis, UnixMillis};
use crate::codec::{self, Properties, Protocol, QoS};

/// The v5 properties a broker forwards with a message, kept only when a publisher set any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardedProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<ByteString>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(ByteString, ByteString)>,
}

impl ForwardedProperties {
    /// Takes the forwardable subset of a PUBLISH's (or will's) properties; None when there is none.
    pub fn from_properties(p: &Properties) -> Option<Box<ForwardedProperties>> {
        // Deep copies: the decoded strings are slices of the read buffer, which must not be pinned.
        let own = |s: &ByteString| ByteString::from(&s[..]);
        let f = ForwardedProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type.as_ref().map(own),
            response_topic: p.response_topic.as_ref().map(own),
            correlation_data: p.correlation_data.as_deref().map(Bytes::copy_from_slice),
            user_properties: p
                .user_properties
                .iter()
                .map(|(k, v)| (own(k), own(v)))
                .collect(),
        };
        (f != ForwardedProperties::default()).then(|| Box::new(f))
    }

    /// The bytes these properties hold on the heap, their box included (for the retained
    /// store's byte bound); 32 per string or vector for its header and the allocator's rounding.
    pub(crate) fn heap_bytes(&self) -> usize {
        let string = |s: &ByteString| 32 + s.len();
        std::mem::size_of::<Self>()
            + 16
            + self.content_type.as_ref().map_or(0, string)
            + self.response_topic.as_ref().map_or(0, string)
            + self.correlation_data.as_ref().map_or(0, |d| 32 + d.len())
            + self
                .user_properties
                .iter()
                .map(|(k, v)| string(k) + string(v))
                .sum::<usize>()
            + self.user_properties.capacity() * std::mem::size_of::<(ByteString, ByteString)>()
    }
}

/// Identifies the session a message came from, for v5 No Local. 0 is the broker itself.
pub type Origin = u64;

#[derive(Debug)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub origin: Origin,
    pub properties: Option<Box<ForwardedProperties>>,
    /// When the message expiry interval runs out (wall clock, so that it survives a restart);
    /// undelivered copies are dropped after it.
    pub expires_at: Option<UnixMillis>,
    /// When the broker took the message in (its PUBLISH was read), for the delivery latency.
    pub read_at: Instant,
    heads: [OnceLock<Head>; 4],
}

/// A PUBLISH head without payload, encoded once and patched per receiver.
#[derive(Debug, Clone)]
pub struct Head {
    pub bytes: Bytes,
    /// Offset of the packet id within `bytes`, for QoS > 0 layouts.
    pub packet_id_at: Option<usize>,
}

impl Message {
    /// Builds a message that owns compact copies of topic and payload, so that it never pins the
    /// (much larger) read buffer they were decoded from while it waits in queues or the retain store.
    pub fn new(
        topic: &ByteString,
        payload: &Bytes,
        qos: QoS,
        retain: bool,
        origin: Origin,
        properties: Option<Box<ForwardedProperties>>,
    ) -> Message {
        let read_at = Instant::now();
        let expires_at = properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .map(|secs| unix_millis() + u64::from(secs) * 1000);
        Message {
            topic: ByteString::from(topic.as_ref()),
            payload: Bytes::copy_from_slice(payload),
            qos,
            retain,
            origin,
            properties,
            expires_at,
            read_at,
            heads: Default::default(),
        }
    }

    /// A message read back from the store: its expiry as it was stored (wall clock), taken in
    /// now. Its origin is a session of an earlier run, which no session of this one matches.
    pub(crate) fn restored(
        topic: ByteString,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Option<Box<ForwardedProperties>>,
        expires_at: Option<UnixMillis>,
    ) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            origin: Origin::MAX,
            properties,
            expires_at,
            read_at: Instant::now(),
            heads: Default::default(),
        }
    }

    pub fn is_expired(&self, now: UnixMillis) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Seconds of expiry left, as forwarded to subscribers (at least 1 while not expired).
    pub fn remaining_expiry(&self, now: UnixMillis) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_sub(now).div_ceil(1000);
            u32::try_from(left).unwrap_or(u32::MAX).max(1)
        })
    }

    /// Whether every receiver of `protocol` gets the same head, so the shared one can serve.
    pub fn has_plain_layout(&self, protocol: Protocol) -> bool {
        !protocol.is_v5() || self.expires_at.is_none()
    }

    /// The shared head for a layout, encoded on first use. Only valid when `has_plain_layout`.
    pub fn shared_head(&self, protocol: Protocol, qos: QoS) -> &Head {
        let slot = usize::from(protocol.is_v5()) * 2 + usize::from(qos != QoS::AtMostOnce);
        self.heads[slot].get_or_init(|| {
            let props = self.v5_properties(protocol, unix_millis(), &[], None);
            let mut out = BytesMut::with_capacity(self.topic.len() + 16);
            // Encoded at QoS 1 for every QoS > 0 layout: the receiver's QoS is patched into byte 0.
            let layout_qos = if qos == QoS::AtMostOnce {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            let packet_id_at = codec::encode_publish_head(
                &mut out,
                protocol,
                layout_qos,
                false,
                false,
                &self.topic,
                1,
                &props,
                self.payload.len(),
            );
            Head {
                bytes: out.freeze(),
                packet_id_at,
            }
        })
    }

    /// The properties this message carries towards one v5 receiver.
    pub fn v5_properties(
        &self,
        protocol: Protocol,
        now: UnixMillis,
        subscription_ids: &[u32],
        topic_alias: Option<u16>,
    ) -> Properties {
        let mut props = Properties::default();
        if !protocol.is_v5() {
            return props;
        }
        if let Some(f) = &self.properties {
            props.payload_format_indicator = f.payload_format_indicator;
            props.content_type = f.content_type.clone();
            props.response_topic = f.response_topic.clone();
            props.correlation_data = f.correlation_data.clone();
            props.user_properties = f.user_properties.clone();
        }
        props.message_expiry_interval = self.remaining_expiry(now);
        props.subscription_identifiers = subscription_ids.to_vec();
        props.topic_alias = topic_alias;
        props
    }
}
