//! WebSocket framing (RFC 6455 section 5) as a server sees it: a decoder that turns the client's
//! masked frames into the byte stream they carry, in place, and the header of a frame we send.
//!
//! The decoder works on whatever a read returned, however frames are cut across reads: it unmasks
//! the payload of binary frames where it lies and moves it to the front of the same buffer (a
//! frame's header is never shorter than the bytes it leaves out, so the stream never overtakes
//! the input), keeps the payload of a control frame until the frame is complete, and keeps a
//! header that a read cut short. Between frames it holds nothing but a few flags; within a
//! binary frame, its length left and the mask: so a session waiting for its client owns no
//! buffer here, and may hibernate.
//!
//! Checked, each a `FrameError` with the close code the RFC gives it: the three reserved bits
//! (no extension is negotiated), the opcode, the client's mask, control frames (unfragmented,
//! payload at most 125 bytes), continuation frames only within a fragmented message and data
//! frames never within one, the 64-bit length's top bit, the payload bound, the close frame's
//! code and reason. A text frame is refused ([MQTT-6.0.0-1]: MQTT is carried in binary frames).

/// Opcodes (RFC 6455 5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
pub(crate) const BINARY: u8 = 0x2;
pub(crate) const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
pub(crate) const PONG: u8 = 0xA;

/// The largest payload of a control frame.
pub(crate) const MAX_CONTROL: usize = 125;
/// The longest frame header: 2 bytes, a 64-bit length, a 4-byte mask.
const MAX_HEADER: usize = 14;

/// Close codes (RFC 6455 7.4.1).
pub(crate) const NORMAL: u16 = 1000;
const PROTOCOL_ERROR: u16 = 1002;
const UNSUPPORTED_DATA: u16 = 1003;
const INVALID_PAYLOAD: u16 = 1007;
const TOO_BIG: u16 = 1009;

/// Why a client's frames are refused; each closes the connection with `close_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("WebSocket frame with a reserved bit set")]
    Reserved,
    #[error("WebSocket frame with the unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("unmasked WebSocket frame from a client")]
    Unmasked,
    #[error("fragmented or over-long WebSocket control frame")]
    Control,
    #[error("WebSocket continuation frame outside a fragmented message")]
    Continuation,
    #[error("WebSocket data frame inside a fragmented message")]
    Interleaved,
    #[error("text frame on an MQTT WebSocket")]
    Text,
    #[error("WebSocket frame of {0} bytes, beyond the bound")]
    TooLarge(u64),
    #[error("WebSocket close frame with an invalid code or reason")]
    Close,
    #[error("WebSocket close frame with a reason that is not UTF-8")]
    CloseReason,
}

impl FrameError {
    /// The close code the RFC gives this error.
    pub(crate) fn close_code(self) -> u16 {
        match self {
            FrameError::Text => UNSUPPORTED_DATA,
            FrameError::TooLarge(_) => TOO_BIG,
            FrameError::CloseReason => INVALID_PAYLOAD,
            _ => PROTOCOL_ERROR,
        }
    }
}

/// A frame whose payload is being read.
#[derive(Debug, Clone, Copy)]
struct Frame {
    opcode: u8,
    left: u64,
    /// The mask, rotated so that its first byte applies to the next payload byte.
    mask: [u8; 4],
}

/// What one `decode` call found besides the stream's bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Decoded {
    /// Bytes of the stream now at the front of the buffer.
    pub(crate) payload: usize,
    /// The payload of the last complete ping: the pong to send.
    pub(crate) ping: Option<Vec<u8>>,
    /// The client closed: the code to answer with (its own, or `NORMAL` when it gave none).
    /// Nothing after the close frame is decoded.
    pub(crate) close: Option<u16>,
}

#[derive(Debug, Default)]
pub(crate) struct Decoder {
    /// A header a read cut short.
    header: [u8; MAX_HEADER],
    header_len: u8,
    frame: Option<Frame>,
    /// Within a fragmented binary message.
    fragmented: bool,
    /// The payload of the control frame being read (freed once it is complete).
    control: Vec<u8>,
}

impl Decoder {
    /// Whether it holds no bytes: between frames, or within a binary frame's payload.
    pub(crate) fn idle(&self) -> bool {
        self.header_len == 0
            && self.control.capacity() == 0
            && self.frame.map_or(true, |f| is_data(f.opcode))
    }

    /// Decodes `input` (raw bytes as read): the binary payload it carries is unmasked and moved
    /// to its front (`Decoded::payload` bytes of it). Binary payloads are bounded by
    /// `max_payload` per frame.
    pub(crate) fn decode(
        &mut self,
        input: &mut [u8],
        max_payload: u64,
    ) -> Result<Decoded, FrameError> {
        let mut decoded = Decoded::default();
        let mut read = 0;
        while read < input.len() || self.frame.is_some_and(|f| f.left == 0) {
            let Some(frame) = &mut self.frame else {
                read += self.header(&input[read..], max_payload)?;
                continue;
            };
            let n = usize::try_from(frame.left)
                .unwrap_or(usize::MAX)
                .min(input.len() - read);
            let bytes = &mut input[read..read + n];
            unmask(bytes, &mut frame.mask);
            frame.left -= n as u64;
            if is_data(frame.opcode) {
                input.copy_within(read..read + n, decoded.payload);
                decoded.payload += n;
            } else {
                self.control.extend_from_slice(bytes);
            }
            read += n;
            if frame.left == 0 {
                let opcode = frame.opcode;
                self.frame = None;
                let payload = std::mem::take(&mut self.control);
                match opcode {
                    PING => decoded.ping = Some(payload),
                    CLOSE => {
                        decoded.close = Some(close_code(&payload)?);
                        return Ok(decoded);
                    }
                    _ => {}
                }
            }
        }
        Ok(decoded)
    }

    /// Takes header bytes from `input` (at least one); returns how many. Once the header is
    /// whole, checks it and starts its frame.
    fn header(&mut self, input: &[u8], max_payload: u64) -> Result<usize, FrameError> {
        let have = usize::from(self.header_len);
        // Known from the second byte on; until then take what there is, up to the shortest.
        let wanted = if have >= 2 {
            header_len(self.header[1])
        } else {
            2
        };
        let n = (wanted - have).min(input.len());
        self.header[have..have + n].copy_from_slice(&input[..n]);
        self.header_len += n as u8;
        let have = usize::from(self.header_len);
        if have < 2 {
            return Ok(n);
        }
        // Refused as soon as the first two bytes say so: an unmasked frame's header is shorter
        // than the masked one waited for below.
        let h = &self.header;
        if h[0] & 0x70 != 0 {
            return Err(FrameError::Reserved);
        }
        if h[1] & 0x80 == 0 {
            return Err(FrameError::Unmasked);
        }
        if have < header_len(h[1]) {
            return Ok(n);
        }
        self.header_len = 0;
        let (fin, opcode) = (h[0] & 0x80 != 0, h[0] & 0x0F);
        let (len, at) = match h[1] & 0x7F {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(FrameError::TooLarge(len));
                }
                (len, 10)
            }
            short => (u64::from(short), 2),
        };
        let mask = [h[at], h[at + 1], h[at + 2], h[at + 3]];
        match opcode {
            CLOSE | PING | PONG => {
                if !fin || len > MAX_CONTROL as u64 {
                    return Err(FrameError::Control);
                }
            }
            BINARY | CONTINUATION => {
                if opcode == CONTINUATION && !self.fragmented {
                    return Err(FrameError::Continuation);
                }
                if opcode == BINARY && self.fragmented {
                    return Err(FrameError::Interleaved);
                }
                if len > max_payload {
                    return Err(FrameError::TooLarge(len));
                }
                self.fragmented = !fin;
            }
            TEXT => return Err(FrameError::Text),
            other => return Err(FrameError::Opcode(other)),
        }
        self.frame = Some(Frame {
            opcode,
            left: len,
            mask,
        });
        Ok(n)
    }
}

fn is_data(opcode: u8) -> bool {
    matches!(opcode, BINARY | CONTINUATION)
}

/// The header's length (with the mask a client's frames carry), known from its second byte.
fn header_len(second: u8) -> usize {
    let extended = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + extended + 4
}

/// XORs `bytes` with the mask and rotates the mask past them, for the bytes that follow.
fn unmask(bytes: &mut [u8], mask: &mut [u8; 4]) {
    let word = u32::from_ne_bytes(*mask);
    let mut chunks = bytes.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    let rest = chunks.into_remainder();
    for (i, b) in rest.iter_mut().enumerate() {
        *b ^= mask[i];
    }
    mask.rotate_left(rest.len());
}

/// The code to answer a close frame's payload with.
fn close_code(payload: &[u8]) -> Result<u16, FrameError> {
    match payload {
        [] => Ok(NORMAL),
        [_] => Err(FrameError::Close),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            // The codes an endpoint may send (RFC 6455 7.4.1-7.4.2, and 1012-1014 registered since).
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(FrameError::Close);
            }
            std::str::from_utf8(reason).map_err(|_| FrameError::CloseReason)?;
            Ok(code)
        }
    }
}

/// The header of a frame we send (final, unmasked, as a server's are) with `len` payload bytes;
/// returns it and its length.
pub(crate) fn server_header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode;
    let n = match len {
        0..=125 => {
            h[1] = len as u8;
            2
        }
        126..=0xFFFF => {
            h[1] = 126;
            h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            h[1] = 127;
            h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    (h, n)
}

/// A whole control frame we send: a pong with `payload` or a close with a code.
pub(crate) fn control_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_CONTROL)];
    let (h, n) = server_header(opcode, payload.len());
    let mut frame = Vec::with_capacity(n + payload.len());
    frame.extend_from_slice(&h[..n]);
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests;
