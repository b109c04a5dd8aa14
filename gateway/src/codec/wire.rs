//! The primitives of the MQTT wire format that packets and properties are both built from: the
//! reader over a received frame and the error it raises, variable byte integers, and length-prefixed
//! binary data and strings, in both directions.
//!
//! Decoding packets and decoding properties share one reader and one error type, and encoding both
//! shares the same length arithmetic; keeping them here lets packets depend on properties without
//! properties depending back on packets.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::packet::reason;

/// Why a frame was rejected. The text names the exact rule that was broken, for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("protocol error: property 0x{id:02X} not allowed in {packet}")]
    PropertyNotAllowed { id: u8, packet: &'static str },
    #[error("protocol error: duplicate property 0x{id:02X}")]
    DuplicateProperty { id: u8 },
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("unsupported protocol name or level {level}")]
    UnsupportedProtocol { level: u8 },
}

impl DecodeError {
    /// The v5 reason code the broker answers this error with in a CONNACK.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_)
            | DecodeError::PropertyNotAllowed { .. }
            | DecodeError::DuplicateProperty { .. } => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocol { .. } => reason::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }

    /// The reason code of the DISCONNECT that ends an established connection over this error.
    /// There a CONNECT is a protocol error whatever its protocol level [MQTT-3.1.0-2], and 0x84
    /// is a CONNACK code that no DISCONNECT may carry.
    pub fn disconnect_reason(&self) -> u8 {
        match self {
            DecodeError::UnsupportedProtocol { .. } => reason::PROTOCOL_ERROR,
            _ => self.reason_code(),
        }
    }

    /// A short, stable label with few distinct values, fit for a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) => "malformed",
            DecodeError::Protocol(_)
            | DecodeError::PropertyNotAllowed { .. }
            | DecodeError::DuplicateProperty { .. } => "protocol",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::UnsupportedProtocol { .. } => "unsupported_protocol",
        }
    }
}

/// Parses a variable byte integer at the front of `buf`: `Ok(None)` when `buf` ends first,
/// otherwise the value and how many bytes it took. The specification requires the shortest
/// encoding, and allows at most four bytes.
pub(super) fn read_varint(
    buf: &[u8],
    overflow: &'static str,
    non_minimal: &'static str,
) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, &byte) in buf.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(DecodeError::Malformed(non_minimal));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::Malformed(overflow))
    } else {
        Ok(None)
    }
}

/// The error texts for one kind of string, so that an error names the field it was found in.
pub(super) struct Field {
    truncated: &'static str,
    utf8: &'static str,
    nul: &'static str,
}

macro_rules! field {
    ($name:literal) => {
        $crate::codec::wire::Field::new(
            concat!($name, " runs past the end of the packet"),
            concat!("invalid UTF-8 in ", $name),
            concat!("U+0000 in ", $name),
        )
    };
}
pub(super) use field;

impl Field {
    pub(super) const fn new(
        truncated: &'static str,
        utf8: &'static str,
        nul: &'static str,
    ) -> Field {
        Field {
            truncated,
            utf8,
            nul,
        }
    }
}

/// A cursor over part of a frame. Everything it hands out is a slice of the frame, so strings and
/// payloads share the frame's allocation.
pub(super) struct Reader<'a> {
    frame: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `frame` from `pos` to its end.
    pub(super) fn new(frame: &'a Bytes, pos: usize) -> Reader<'a> {
        Reader {
            frame,
            pos: pos.min(frame.len()),
            end: frame.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pos >= self.end
    }

    /// Consumes the next `len` bytes and returns their position.
    fn advance(&mut self, len: usize, truncated: &'static str) -> Result<usize, DecodeError> {
        let start = self.pos;
        if self.end - start < len {
            return Err(DecodeError::Malformed(truncated));
        }
        self.pos += len;
        Ok(start)
    }

    fn array<const N: usize>(&mut self, truncated: &'static str) -> Result<[u8; N], DecodeError> {
        let start = self.advance(N, truncated)?;
        self.frame
            .get(start..start + N)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::Malformed(truncated))
    }

    pub(super) fn u8(&mut self, truncated: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(truncated).map(|[b]| b)
    }

    pub(super) fn u16(&mut self, truncated: &'static str) -> Result<u16, DecodeError> {
        self.array(truncated).map(u16::from_be_bytes)
    }

    pub(super) fn u32(&mut self, truncated: &'static str) -> Result<u32, DecodeError> {
        self.array(truncated).map(u32::from_be_bytes)
    }

    pub(super) fn varint(&mut self, truncated: &'static str) -> Result<usize, DecodeError> {
        let rest = self.frame.get(self.pos..self.end).unwrap_or_default();
        let (value, len) = read_varint(
            rest,
            "variable byte integer longer than 4 bytes",
            "non-minimal variable byte integer",
        )?
        .ok_or(DecodeError::Malformed(truncated))?;
        self.pos += len;
        Ok(value)
    }

    fn bytes(&mut self, len: usize, truncated: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.advance(len, truncated)?;
        Ok(self.frame.slice(start..start + len))
    }

    /// Binary data: a two-byte length and that many bytes.
    pub(super) fn binary(&mut self, truncated: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(truncated)?;
        self.bytes(usize::from(len), truncated)
    }

    /// A UTF-8 encoded string: valid UTF-8 without U+0000, as every MQTT string must be.
    pub(super) fn string(&mut self, field: &Field) -> Result<ByteString, DecodeError> {
        let bytes = self.binary(field.truncated)?;
        // U+0000 is the only character whose UTF-8 encoding contains a zero byte.
        if bytes.contains(&0) {
            return Err(DecodeError::Malformed(field.nul));
        }
        ByteString::try_from(bytes).map_err(|_| DecodeError::Malformed(field.utf8))
    }

    /// A reader over the next `len` bytes, which this reader skips.
    pub(super) fn take(
        &mut self,
        len: usize,
        truncated: &'static str,
    ) -> Result<Reader<'a>, DecodeError> {
        let start = self.advance(len, truncated)?;
        Ok(Reader {
            frame: self.frame,
            pos: start,
            end: self.pos,
        })
    }

    /// Everything left, e.g. a PUBLISH payload.
    pub(super) fn rest(&mut self) -> Bytes {
        let start = self.pos.min(self.end);
        self.pos = self.end;
        self.frame.slice(start..self.end)
    }

    pub(super) fn finish(&self, trailing: &'static str) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(trailing))
        }
    }

    pub(super) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16("packet identifier runs past the end of the packet")? {
            0 => Err(DecodeError::Malformed("packet identifier 0")),
            id => Ok(id),
        }
    }
}

/// Bytes taken by a variable byte integer holding `value`.
pub(super) fn varint_len(value: usize) -> usize {
    match value {
        0..=0x7F => 1,
        0x80..=0x3FFF => 2,
        0x4000..=0x1F_FFFF => 3,
        _ => 4,
    }
}

pub(super) fn put_varint(out: &mut BytesMut, mut value: usize) {
    debug_assert!(value <= 0x0FFF_FFFF, "variable byte integer out of range");
    loop {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            out.put_u8(byte);
            return;
        }
        out.put_u8(byte | 0x80);
    }
}

/// Bytes taken by binary data or a string of `len` bytes, as `put_binary` writes it.
pub(super) fn binary_len(len: usize) -> usize {
    2 + len.min(usize::from(u16::MAX))
}

/// Writes a two-byte length and `data`. Longer data cannot be represented; it is cut so that the
/// packet stays well-formed, and debug builds flag the caller's bug.
pub(super) fn put_binary(out: &mut BytesMut, data: &[u8]) {
    debug_assert!(
        data.len() <= usize::from(u16::MAX),
        "string too long for MQTT"
    );
    let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    out.put_u16(len);
    out.put_slice(data.get(..usize::from(len)).unwrap_or_default());
}
