//! Message payloads that carry their own proof: device id, sequence number and send time, as a
//! fixed binary header (padded to a size) or as fields of a JSON template.

use serde::{Deserialize, Serialize};

/// `ds` + version: lets the verifier tell simulator messages from foreign traffic.
const MAGIC: [u8; 3] = [b'd', b's', 1];
/// Magic, then device id, sequence and send time (µs since the Unix epoch), all big-endian u64.
pub const HEADER_LEN: usize = 3 + 8 + 8 + 8;

/// Sentinels rendered into a JSON template once, to learn which keys hold id, seq and ts.
const ID_PROBE: u64 = 900_000_000_000_001;
const SEQ_PROBE: u64 = 900_000_000_000_002;
const TS_PROBE: u64 = 900_000_000_000_003;

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("size {0} is below the {HEADER_LEN}-byte verification header")]
    TooSmall(usize),
    #[error("JSON template: {0}")]
    Template(String),
}

/// What a verifier needs from one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub device: u64,
    pub seq: u64,
    pub sent_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Part {
    Text(String),
    Id,
    Seq,
    Ts,
    Rand { min: f64, max: f64 },
    RandInt { min: i64, max: i64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Payload {
    Binary {
        size: usize,
    },
    Json {
        parts: Vec<Part>,
        id_key: String,
        seq_key: String,
        ts_key: String,
    },
}

impl Payload {
    /// A size in bytes, or a JSON template.
    pub fn parse(spec: &str) -> Result<Payload, PayloadError> {
        let spec = spec.trim();
        if let Ok(size) = spec.parse::<usize>() {
            if size < HEADER_LEN {
                return Err(PayloadError::TooSmall(size));
            }
            return Ok(Payload::Binary { size });
        }
        let parts = compile(spec)?;
        let mut probe = Vec::new();
        render(&parts, ID_PROBE, SEQ_PROBE, TS_PROBE, &mut probe);
        let value: serde_json::Value = serde_json::from_slice(&probe)
            .map_err(|e| PayloadError::Template(format!("not JSON once rendered: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| PayloadError::Template("must be a JSON object".into()))?;
        let key_of = |probe: u64, name: &str| {
            object
                .iter()
                .find(|(_, v)| number(v) == Some(probe))
                .map(|(k, _)| k.clone())
                .ok_or_else(|| {
                    PayloadError::Template(format!("needs a top-level field set to {{{name}}}"))
                })
        };
        Ok(Payload::Json {
            id_key: key_of(ID_PROBE, "id")?,
            seq_key: key_of(SEQ_PROBE, "seq")?,
            ts_key: key_of(TS_PROBE, "ts")?,
            parts,
        })
    }

    pub fn encode(&self, stamp: Stamp, out: &mut Vec<u8>) {
        out.clear();
        match self {
            Payload::Binary { size } => {
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(&stamp.device.to_be_bytes());
                out.extend_from_slice(&stamp.seq.to_be_bytes());
                out.extend_from_slice(&stamp.sent_us.to_be_bytes());
                out.resize(*size, 0);
            }
            Payload::Json { parts, .. } => {
                render(parts, stamp.device, stamp.seq, stamp.sent_us, out)
            }
        }
    }

    /// `None` for anything this run's devices did not send.
    pub fn decode(&self, bytes: &[u8]) -> Option<Stamp> {
        match self {
            Payload::Binary { .. } => {
                if bytes.len() < HEADER_LEN || bytes[..3] != MAGIC {
                    return None;
                }
                let word = |at: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&bytes[at..at + 8]);
                    u64::from_be_bytes(b)
                };
                Some(Stamp {
                    device: word(3),
                    seq: word(11),
                    sent_us: word(19),
                })
            }
            Payload::Json {
                id_key,
                seq_key,
                ts_key,
                ..
            } => {
                let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
                Some(Stamp {
                    device: number(value.get(id_key)?)?,
                    seq: number(value.get(seq_key)?)?,
                    sent_us: number(value.get(ts_key)?)?,
                })
            }
        }
    }
}

/// Accepts the number itself or a string holding it, as templates may quote `{id}`.
fn number(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn compile(template: &str) -> Result<Vec<Part>, PayloadError> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        text.push_str(&rest[..open]);
        rest = &rest[open..];
        let found = match rest.find('}') {
            Some(close) => placeholder(&rest[1..close])?.map(|part| (part, close)),
            None => None,
        };
        match found {
            Some((part, close)) => {
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(part);
                rest = &rest[close + 1..];
            }
            // A JSON brace, not a placeholder.
            None => {
                text.push('{');
                rest = &rest[1..];
            }
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

fn placeholder(name: &str) -> Result<Option<Part>, PayloadError> {
    match name {
        "id" => Ok(Some(Part::Id)),
        "seq" => Ok(Some(Part::Seq)),
        "ts" => Ok(Some(Part::Ts)),
        _ => random_part(name),
    }
}

fn random_part(name: &str) -> Result<Option<Part>, PayloadError> {
    let Some((kind, range)) = name.split_once(':') else {
        return Ok(None);
    };
    if kind != "rand" && kind != "randint" {
        return Ok(None);
    }
    let bad = || PayloadError::Template(format!("{{{name}}}: expected {kind}:MIN..MAX"));
    let (min, max) = range.split_once("..").ok_or_else(bad)?;
    if kind == "rand" {
        let (min, max): (f64, f64) = (
            min.trim().parse().map_err(|_| bad())?,
            max.trim().parse().map_err(|_| bad())?,
        );
        if min.partial_cmp(&max).map_or(true, |o| o.is_gt()) {
            return Err(bad());
        }
        Ok(Some(Part::Rand { min, max }))
    } else {
        let (min, max): (i64, i64) = (
            min.trim().parse().map_err(|_| bad())?,
            max.trim().parse().map_err(|_| bad())?,
        );
        if min > max {
            return Err(bad());
        }
        Ok(Some(Part::RandInt { min, max }))
    }
}

fn render(parts: &[Part], id: u64, seq: u64, ts: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    for part in parts {
        // Writing into a Vec cannot fail.
        let _ = match part {
            Part::Text(t) => out.write_all(t.as_bytes()),
            Part::Id => write!(out, "{id}"),
            Part::Seq => write!(out, "{seq}"),
            Part::Ts => write!(out, "{ts}"),
            Part::Rand { min, max } => write!(out, "{:.2}", min + fastrand::f64() * (max - min)),
            Part::RandInt { min, max } => write!(out, "{}", fastrand::i64(*min..=*max)),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        device: 42,
        seq: 7,
        sent_us: 1_700_000_000_000_000,
    };

    #[test]
    fn binary_round_trip_and_size() {
        let p = Payload::parse("64").expect("valid");
        let mut out = Vec::new();
        p.encode(STAMP, &mut out);
        assert_eq!(out.len(), 64);
        assert_eq!(p.decode(&out), Some(STAMP));
        assert_eq!(p.decode(b"hello, not ours, 27 bytes long"), None);
        assert!(Payload::parse("10").is_err());
    }

    #[test]
    fn json_template_round_trip_with_random_fields() {
        let p = Payload::parse(
            r#"{"device":"{id}","n":{seq},"at":{ts},"temp":{rand:20..30},"bat":{randint:0..100}}"#,
        )
        .expect("valid");
        let mut out = Vec::new();
        p.encode(STAMP, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert!(v["temp"]
            .as_f64()
            .is_some_and(|t| (20.0..=30.0).contains(&t)));
        assert_eq!(p.decode(&out), Some(STAMP));
    }

    #[test]
    fn json_template_must_carry_the_stamp() {
        assert!(Payload::parse(r#"{"id":{id},"seq":{seq}}"#).is_err());
        assert!(Payload::parse(r#"{"id":{id},"seq":{seq},"ts":{ts}"#).is_err());
    }
}
