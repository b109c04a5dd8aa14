//! The checks of the fuzz target `ws_frame` (`gateway::fuzzing::ws_frame`): the WebSocket frame
//! decoder against a naive one, on arbitrary bytes cut into reads at arbitrary points.

use super::frame::{Decoder, FrameError};

/// What decoding a client's bytes came to.
#[derive(Debug, PartialEq, Eq, Default)]
struct Outcome {
    stream: Vec<u8>,
    last_ping: Option<Vec<u8>>,
    close: Option<u16>,
    error: Option<FrameError>,
}

/// Checks, for arbitrary bytes (the first two choose the payload bound and the cuts):
/// - the decoder never panics, and never returns more stream bytes than it was given;
/// - cut into reads anywhere, the input decodes to what a naive decoder reading the whole input
///   frame by frame finds: the same stream, the same last ping, the same close code, and the same
///   error; on an error, the stream returned before it is a prefix of the naive stream.
pub(crate) fn ws_frame(data: &[u8]) {
    let [bound, cut_seed, input @ ..] = data else {
        return;
    };
    let max = u64::from(*bound) * 4;
    let mut cuts = Vec::new();
    let mut at = 0usize;
    let mut seed = u32::from(*cut_seed) | 1;
    while at < input.len() {
        // A small generator, so that one byte gives many cut points of varied sizes.
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        at += 1 + (seed >> 16) as usize % 17;
        cuts.push(at.min(input.len()));
    }
    let model = naive(input, max);
    let mut whole = Vec::from(input);
    let one = decoded(&mut Decoder::default(), &mut whole, max);
    let pieces = in_reads(input, &cuts, max);
    for (name, got) in [("whole", one), ("in reads", pieces)] {
        if model.error.is_some() {
            assert_eq!(got.error, model.error, "{name}: error");
            assert!(model.stream.starts_with(&got.stream), "{name}: stream");
        } else {
            assert_eq!(got, model, "{name}");
        }
    }
}

fn decoded(d: &mut Decoder, input: &mut [u8], max: u64) -> Outcome {
    match d.decode(input, max) {
        Ok(out) => {
            assert!(out.payload <= input.len(), "more stream bytes than input");
            Outcome {
                stream: input[..out.payload].to_vec(),
                last_ping: out.ping,
                close: out.close,
                error: None,
            }
        }
        Err(e) => Outcome {
            error: Some(e),
            ..Outcome::default()
        },
    }
}

fn in_reads(input: &[u8], cuts: &[usize], max: u64) -> Outcome {
    let mut d = Decoder::default();
    let mut all = Outcome::default();
    let mut from = 0;
    for &to in cuts {
        let mut read = input[from..to].to_vec();
        from = to;
        let got = decoded(&mut d, &mut read, max);
        all.stream.extend(got.stream);
        all.last_ping = got.last_ping.or(all.last_ping);
        all.close = got.close;
        all.error = got.error;
        if all.close.is_some() || all.error.is_some() {
            break;
        }
    }
    all
}

/// Frame by frame over the whole input, each check where RFC 6455 section 5.2 puts it.
fn naive(input: &[u8], max: u64) -> Outcome {
    let mut out = Outcome::default();
    let mut fragmented = false;
    let mut i = 0;
    while i + 2 <= input.len() {
        let (b0, b1) = (input[i], input[i + 1]);
        let ext = match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let fail = |out: &mut Outcome, e| out.error = Some(e);
        if b0 & 0x70 != 0 {
            fail(&mut out, FrameError::Reserved);
            break;
        }
        if b1 & 0x80 == 0 {
            fail(&mut out, FrameError::Unmasked);
            break;
        }
        let header = 2 + ext + 4;
        if i + header > input.len() {
            break;
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        let len = match ext {
            0 => u64::from(b1 & 0x7F),
            2 => u64::from(input[i + 2]) << 8 | u64::from(input[i + 3]),
            _ => input[i + 2..i + 10]
                .iter()
                .fold(0u64, |n, b| n << 8 | u64::from(*b)),
        };
        if len >= 1 << 63 {
            fail(&mut out, FrameError::TooLarge(len));
            break;
        }
        let control = opcode >= 8;
        let error = match opcode {
            8..=10 if !fin || len > 125 => Some(FrameError::Control),
            8..=10 => None,
            0 if !fragmented => Some(FrameError::Continuation),
            2 if fragmented => Some(FrameError::Interleaved),
            0 | 2 if len > max => Some(FrameError::TooLarge(len)),
            0 | 2 => None,
            1 => Some(FrameError::Text),
            other => Some(FrameError::Opcode(other)),
        };
        if let Some(e) = error {
            fail(&mut out, e);
            break;
        }
        if !control {
            fragmented = !fin;
        }
        let mask = &input[i + header - 4..i + header];
        let start = i + header;
        let available = (input.len() - start) as u64;
        let take = len.min(available) as usize;
        let payload: Vec<u8> = input[start..start + take]
            .iter()
            .enumerate()
            .map(|(k, b)| b ^ mask[k % 4])
            .collect();
        if !control {
            out.stream.extend_from_slice(&payload);
        }
        if (take as u64) < len {
            break;
        }
        match opcode {
            9 => out.last_ping = Some(payload),
            8 => {
                match naive_close(&payload) {
                    Ok(code) => out.close = Some(code),
                    Err(e) => out.error = Some(e),
                }
                break;
            }
            _ => {}
        }
        i = start + take;
    }
    out
}

fn naive_close(payload: &[u8]) -> Result<u16, FrameError> {
    if payload.is_empty() {
        return Ok(1000);
    }
    if payload.len() == 1 {
        return Err(FrameError::Close);
    }
    let code = u16::from(payload[0]) << 8 | u16::from(payload[1]);
    let allowed = (1000..=1003).contains(&code)
        || (1007..=1014).contains(&code)
        || (3000..=4999).contains(&code);
    if !allowed {
        return Err(FrameError::Close);
    }
    if std::str::from_utf8(&payload[2..]).is_err() {
        return Err(FrameError::CloseReason);
    }
    Ok(code)
}
