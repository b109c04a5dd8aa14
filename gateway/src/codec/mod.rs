//! MQTT wire format: framing, strict decoding and encoding of every control packet for 3.1, 3.1.1 and 5.0.
//!
//! Decoding works on a frozen frame (`Bytes`) so that topics, strings and payloads are slices of the
//! bytes read from the socket, never copies. Validation is strict: anything the specification calls a
//! malformed packet or a protocol error is an error here, with the v5 reason code the broker answers with.

mod decode;
mod encode;
pub mod packet;
mod properties;
mod wire;

pub use decode::{decode, decode_connect, frame_len, frame_size};
pub use encode::{connack_len, encode, encode_publish_head};
pub use packet::*;
pub use wire::DecodeError;
