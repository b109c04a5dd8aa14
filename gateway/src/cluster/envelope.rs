//! The wire form of a message forwarded to other nodes: the NATS payload.
//!
//! A compact binary envelope rather than NATS headers: headers are text (`HPUB`, a MIME-like
//! block) and would need escaping for binary correlation data and user properties that may
//! hold any UTF-8; a length-prefixed layout is smaller, and decoding it is a bounds-checked walk
//! that refuses anything it does not understand. The topic of a plain message travels in the
//! subject (`subject`), that of a shared-group message (whose subject names the group) here.
//!
//! ```text
//! version u8 (1) | flags u8 | origin u64 | seq u64
//! [tallies: u16 count, then (instance u64, tally u64) each]    flags & ACK
//! [expiry: u64, milliseconds left when sent]    flags & EXPIRY
//! [topic: u16 length, UTF-8]                    flags & TOPIC
//! [properties: u32 length, then entries]        flags & PROPERTIES
//! payload: every remaining byte
//! ```
//! flags: bits 0-1 QoS, bit 2 RETAIN, bit 6 ACK (the sender waits for the answers of the nodes
//! whose starts the tallies name, that they took the message in: `watermark`; each tally counts
//! the asking messages the sender has sent that start; a shared group's message names none and
//! is answered by whichever node took it). Property entries use MQTT's identifiers: 0x01 payload
//! format (u8), 0x03 content type, 0x08 response topic (u16-length UTF-8), 0x09 correlation data
//! (u16-length bytes), 0x26 user property (two u16-length UTF-8 strings). Integers are
//! big-endian. `origin` (the sending node's instance) and `seq` let a receiver discard the
//! extra copies NATS sends for overlapping filters (`link`).

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::clock::UnixMillis;
use crate::codec::QoS;
use crate::message::{ForwardedProperties, Message};

const VERSION: u8 = 1;
const RETAIN: u8 = 0b100;
const EXPIRY: u8 = 0b1000;
const TOPIC: u8 = 0b1_0000;
const PROPERTIES: u8 = 0b10_0000;
const ACK: u8 = 0b100_0000;
const KNOWN_FLAGS: u8 = 0b111_1111;

const PAYLOAD_FORMAT: u8 = 0x01;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const USER_PROPERTY: u8 = 0x26;

/// Why an envelope was refused; each is counted as a malformed cluster message and dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum EnvelopeError {
    #[error("truncated envelope")]
    Truncated,
    #[error("unknown envelope version {0}")]
    Version(u8),
    #[error("unknown envelope flags {0:#04x}")]
    Flags(u8),
    #[error("QoS 3 in envelope")]
    Qos,
    #[error("invalid UTF-8 in envelope")]
    Utf8,
    #[error("unknown property {0:#04x} in envelope")]
    Property(u8),
}

/// A decoded envelope.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub(crate) origin: u64,
    pub(crate) seq: u64,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    /// The sender waits for an answer (`watermark`).
    pub(crate) ack: bool,
    /// With `ack`: for each node start asked, how many asking messages the sender has sent it.
    pub(crate) tallies: Vec<(u64, u64)>,
    /// Milliseconds of message expiry left when it was sent.
    pub(crate) expiry_ms: Option<u64>,
    /// Set for shared-group messages only.
    pub(crate) topic: Option<ByteString>,
    pub(crate) properties: Option<Box<ForwardedProperties>>,
    pub(crate) payload: Bytes,
}

impl Envelope {
    /// The message as this node's router takes it: expiry counted from now, origin a value no
    /// local session has (v5 No Local never applies to a message from another node).
    pub(crate) fn into_message(self, topic: ByteString, now: UnixMillis) -> Message {
        let expires_at = self.expiry_ms.map(|left| now.saturating_add(left));
        Message::restored(
            topic,
            self.payload,
            self.qos,
            self.retain,
            self.properties,
            expires_at,
        )
    }
}

/// Encodes `msg` as sent by node instance `origin` with sequence number `seq`; `with_topic` for
/// shared-group messages; `ask`: the tallies of the node starts whose answers the sender waits
/// for (`watermark`). `now` counts the expiry down.
pub(crate) fn encode(
    msg: &Message,
    origin: u64,
    seq: u64,
    with_topic: bool,
    ask: Option<&[(u64, u64)]>,
    now: UnixMillis,
) -> Bytes {
    let mut flags = msg.qos as u8;
    // No more than a u16 counts: nobody runs 65,536 nodes; beyond, those are not asked.
    let ask = ask.map(|t| &t[..t.len().min(usize::from(u16::MAX))]);
    if ask.is_some() {
        flags |= ACK;
    }
    if msg.retain {
        flags |= RETAIN;
    }
    let expiry = msg.expires_at.map(|t| t.saturating_sub(now));
    if expiry.is_some() {
        flags |= EXPIRY;
    }
    if with_topic {
        flags |= TOPIC;
    }
    let props = msg.properties.as_deref().map(properties);
    if props.is_some() {
        flags |= PROPERTIES;
    }
    let tallies = ask.map_or(0, |t| 2 + 16 * t.len());
    let mut out = BytesMut::with_capacity(
        18 + tallies
            + 8
            + 2
            + msg.topic.len()
            + 4
            + props.as_ref().map_or(0, Vec::len)
            + msg.payload.len(),
    );
    out.put_u8(VERSION);
    out.put_u8(flags);
    out.put_u64(origin);
    out.put_u64(seq);
    if let Some(ask) = ask {
        out.put_u16(u16::try_from(ask.len()).unwrap_or(u16::MAX));
        for (instance, tally) in ask {
            out.put_u64(*instance);
            out.put_u64(*tally);
        }
    }
    if let Some(left) = expiry {
        out.put_u64(left);
    }
    if with_topic {
        put_str(&mut out, &msg.topic);
    }
    if let Some(props) = props {
        // Properties come from a decoded PUBLISH (each string at most 65,535 bytes, the packet
        // at most 256 MiB), so the block's length fits a u32.
        out.put_u32(u32::try_from(props.len()).unwrap_or(u32::MAX));
        out.extend_from_slice(&props);
    }
    out.extend_from_slice(&msg.payload);
    out.freeze()
}

fn properties(p: &ForwardedProperties) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(format) = p.payload_format_indicator {
        out.put_u8(PAYLOAD_FORMAT);
        out.put_u8(format);
    }
    if let Some(ct) = &p.content_type {
        out.put_u8(CONTENT_TYPE);
        put_str(&mut out, ct);
    }
    if let Some(rt) = &p.response_topic {
        out.put_u8(RESPONSE_TOPIC);
        put_str(&mut out, rt);
    }
    if let Some(cd) = &p.correlation_data {
        out.put_u8(CORRELATION_DATA);
        put_bytes(&mut out, cd);
    }
    for (k, v) in &p.user_properties {
        out.put_u8(USER_PROPERTY);
        put_str(&mut out, k);
        put_str(&mut out, v);
    }
    out
}

/// MQTT strings and binary data are at most 65,535 bytes, so the u16 length always fits; the
/// clamp only keeps a broken invariant from writing a wrong length silently.
fn put_bytes(out: &mut impl BufMut, b: &[u8]) {
    let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
    out.put_u16(len);
    out.put_slice(&b[..usize::from(len)]);
}

fn put_str(out: &mut impl BufMut, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// A bounds-checked reader over the envelope.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, EnvelopeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    fn need(&self, n: usize) -> Result<(), EnvelopeError> {
        if self.buf.len() < n {
            return Err(EnvelopeError::Truncated);
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, EnvelopeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, EnvelopeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, EnvelopeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, EnvelopeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_be_bytes(a))
    }

    fn bytes(&mut self) -> Result<Bytes, EnvelopeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn string(&mut self) -> Result<ByteString, EnvelopeError> {
        ByteString::try_from(self.bytes()?).map_err(|_| EnvelopeError::Utf8)
    }
}

/// Decodes an envelope; never panics, whatever the bytes.
pub(crate) fn decode(buf: Bytes) -> Result<Envelope, EnvelopeError> {
    let mut r = Reader { buf };
    let version = r.u8()?;
    if version != VERSION {
        return Err(EnvelopeError::Version(version));
    }
    let flags = r.u8()?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(EnvelopeError::Flags(flags));
    }
    let qos = QoS::from_u8(flags & 0b11).ok_or(EnvelopeError::Qos)?;
    let origin = r.u64()?;
    let seq = r.u64()?;
    let ack = flags & ACK != 0;
    let mut tallies = Vec::new();
    if ack {
        let n = r.u16()?;
        // Checked against what is there before anything is allocated for it.
        r.need(16 * usize::from(n))?;
        tallies.reserve(usize::from(n));
        for _ in 0..n {
            tallies.push((r.u64()?, r.u64()?));
        }
    }
    let expiry_ms = if flags & EXPIRY != 0 {
        Some(r.u64()?)
    } else {
        None
    };
    let topic = if flags & TOPIC != 0 {
        Some(r.string()?)
    } else {
        None
    };
    let properties = if flags & PROPERTIES != 0 {
        let len = r.u32()?;
        let block = r.take(usize::try_from(len).map_err(|_| EnvelopeError::Truncated)?)?;
        Some(Box::new(decode_properties(block)?))
    } else {
        None
    };
    Ok(Envelope {
        origin,
        seq,
        qos,
        retain: flags & RETAIN != 0,
        ack,
        tallies,
        expiry_ms,
        topic,
        properties,
        payload: r.buf,
    })
}

fn decode_properties(block: Bytes) -> Result<ForwardedProperties, EnvelopeError> {
    let mut r = Reader { buf: block };
    let mut p = ForwardedProperties::default();
    while !r.buf.is_empty() {
        match r.u8()? {
            PAYLOAD_FORMAT => p.payload_format_indicator = Some(r.u8()?),
            CONTENT_TYPE => p.content_type = Some(r.string()?),
            RESPONSE_TOPIC => p.response_topic = Some(r.string()?),
            CORRELATION_DATA => p.correlation_data = Some(r.bytes()?),
            USER_PROPERTY => {
                let k = r.string()?;
                let v = r.string()?;
                p.user_properties.push((k, v));
            }
            other => return Err(EnvelopeError::Property(other)),
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(props: Option<Box<ForwardedProperties>>, expires_at: Option<u64>) -> Message {
        Message::restored(
            ByteString::from("a/b"),
            Bytes::from_static(b"payload \x00\xff"),
            QoS::ExactlyOnce,
            true,
            props,
            expires_at,
        )
    }

    #[test]
    fn every_field_survives_the_trip_and_expiry_counts_down() {
        let props = ForwardedProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "v2 é".into())],
        };
        let msg = message(Some(Box::new(props.clone())), Some(10_000));
        let wire = encode(&msg, 7, 42, true, Some(&[(9, 3), (11, 1)]), 4_000);
        let e = decode(wire).unwrap();
        assert_eq!(
            (e.origin, e.seq, e.qos, e.retain, e.ack),
            (7, 42, QoS::ExactlyOnce, true, true)
        );
        assert_eq!(e.tallies, [(9, 3), (11, 1)]);
        assert_eq!(e.expiry_ms, Some(6_000));
        assert_eq!(e.topic.as_deref(), Some("a/b"));
        let got = e.properties.as_deref().unwrap();
        // The interval itself is not sent: the receiver counts down from the time left.
        assert_eq!(
            *got,
            ForwardedProperties {
                message_expiry_interval: None,
                ..props
            }
        );
        assert_eq!(&e.payload[..], b"payload \x00\xff");
        let m = e.into_message("a/b".into(), 100_000);
        assert_eq!(m.expires_at, Some(106_000));

        let plain = decode(encode(&message(None, None), 1, 2, false, None, 0)).unwrap();
        assert!(plain.topic.is_none() && plain.properties.is_none() && plain.expiry_ms.is_none());
        assert!(!plain.ack && plain.tallies.is_empty());
    }

    #[test]
    fn bad_envelopes_are_refused_with_their_reason() {
        assert_eq!(decode(Bytes::new()).unwrap_err(), EnvelopeError::Truncated);
        assert_eq!(
            decode(Bytes::from_static(&[2, 0])).unwrap_err(),
            EnvelopeError::Version(2)
        );
        assert_eq!(
            decode(Bytes::from_static(&[1, 0x80])).unwrap_err(),
            EnvelopeError::Flags(0x80)
        );
        let mut qos3 = vec![1, 3];
        qos3.extend_from_slice(&[0; 16]);
        assert_eq!(decode(qos3.into()).unwrap_err(), EnvelopeError::Qos);
        // Tallies claimed beyond what is there: refused before anything is allocated for them.
        let mut short = vec![1, ACK];
        short.extend_from_slice(&[0; 16]);
        short.extend_from_slice(&[0xff, 0xff, 0, 0]);
        assert_eq!(decode(short.into()).unwrap_err(), EnvelopeError::Truncated);
        let mut bad_utf8 = vec![1, TOPIC];
        bad_utf8.extend_from_slice(&[0; 16]);
        bad_utf8.extend_from_slice(&[0, 1, 0xff]);
        assert_eq!(decode(bad_utf8.into()).unwrap_err(), EnvelopeError::Utf8);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(Bytes::from(bytes));
        }

        #[test]
        fn corrupted_envelopes_never_panic(cut in 0usize..100, flip in 0usize..100, bit in 0u8..8) {
            let props = ForwardedProperties {
                content_type: Some("ct".into()),
                user_properties: vec![("a".into(), "b".into())],
                ..Default::default()
            };
            let ask = [(3, 4)];
            let wire = encode(&message(Some(Box::new(props)), Some(5)), 1, 1, true, Some(&ask), 0).to_vec();
            let mut bytes = wire[..cut.min(wire.len())].to_vec();
            if let Some(b) = bytes.get_mut(flip) {
                *b ^= 1 << bit;
            }
            let _ = decode(Bytes::from(bytes));
        }
    }
}
