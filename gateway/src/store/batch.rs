//! A batch of recorded changes: what sessions' tasks hand the writer between two commits.
//!
//! The frequent changes (a message queued, sent, settled) are copied into the batch's own
//! buffers as they are recorded: the client id into `names`, the queued message's record into
//! `records`. So a change holds no reference to the live state (no `Arc` shared with the
//! session's task, no message kept alive until the commit, whose last reference would then be
//! dropped and freed on the writer's thread), and the buffers are reused from batch to batch.
//!
//! A batch is also what the journal stores (`encode`, `decode`): its changes as they are, each
//! op a few fixed fields and spans into the two buffers, which follow whole.

use std::ops::Range;
use std::sync::Arc;

use bytestring::ByteString;

use super::record::{self, Corrupt};
use super::SessionRecord;
use crate::ingest::dedup::{NewId, StoredId};
use crate::message::Message;
use crate::session::{Delivery, Stage};

/// Where a copied string or record lies in its batch's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn of(range: Range<usize>) -> Span {
        // A batch holds one commit delay's changes: far below 4 GiB.
        let narrow = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Span {
            start: narrow(range.start),
            end: narrow(range.end),
        }
    }

    fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    fn shifted(self, by: usize) -> Span {
        Span::of(self.range().start + by..self.range().end + by)
    }
}

/// One recorded change, in the order recorded.
pub(super) enum Op {
    Session(Box<SessionRecord>),
    SessionRemoved(Arc<str>),
    /// `record`: the message's stored form after its stage prefix (`record::delivery_tail`).
    Queued {
        client: Span,
        seq: u64,
        record: Span,
    },
    Sent {
        client: Span,
        seq: u64,
        packet_id: u16,
        stage: Stage,
    },
    Settled {
        client: Span,
        seq: u64,
    },
    Incoming(Arc<str>, u16, bool),
    Retained(ByteString, Option<Arc<Message>>),
    /// A new number of a persistent session's ingested message (`ingest::dedup`), and the
    /// packet id that fell out of its window.
    IngestId(Arc<str>, NewId),
}

#[derive(Default)]
pub(super) struct Batch {
    pub(super) ops: Vec<Op>,
    names: String,
    records: Vec<u8>,
    /// The name copied last: the next change of the same session shares it.
    last_name: Option<Span>,
}

impl Batch {
    pub(super) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Empties it, keeping its buffers for the next batch.
    pub(super) fn clear(&mut self) {
        self.ops.clear();
        self.names.clear();
        self.records.clear();
        self.last_name = None;
    }

    /// Moves `other`'s changes after this batch's (a batch kept after a failed commit takes
    /// what was recorded meanwhile).
    pub(super) fn append(&mut self, other: &mut Batch) {
        let (names, records) = (self.names.len(), self.records.len());
        self.last_name = None;
        self.names.push_str(&other.names);
        self.records.extend_from_slice(&other.records);
        self.ops.extend(other.ops.drain(..).map(|op| match op {
            Op::Queued {
                client,
                seq,
                record,
            } => Op::Queued {
                client: client.shifted(names),
                seq,
                record: record.shifted(records),
            },
            Op::Sent {
                client,
                seq,
                packet_id,
                stage,
            } => Op::Sent {
                client: client.shifted(names),
                seq,
                packet_id,
                stage,
            },
            Op::Settled { client, seq } => Op::Settled {
                client: client.shifted(names),
                seq,
            },
            op => op,
        }));
        other.clear();
    }

    pub(super) fn name(&self, span: Span) -> &str {
        &self.names[span.range()]
    }

    pub(super) fn record(&self, span: Span) -> &[u8] {
        &self.records[span.range()]
    }

    fn copy_name(&mut self, client_id: &str) -> Span {
        if let Some(last) = self.last_name {
            if &self.names[last.range()] == client_id {
                return last;
            }
        }
        let start = self.names.len();
        self.names.push_str(client_id);
        let span = Span::of(start..self.names.len());
        self.last_name = Some(span);
        span
    }

    pub(super) fn queued(&mut self, client_id: &str, delivery: &Delivery) -> Op {
        let client = self.copy_name(client_id);
        let start = self.records.len();
        record::delivery_tail(&mut self.records, delivery);
        Op::Queued {
            client,
            seq: delivery.seq,
            record: Span::of(start..self.records.len()),
        }
    }

    pub(super) fn sent(&mut self, client_id: &str, seq: u64, packet_id: u16, stage: Stage) -> Op {
        Op::Sent {
            client: self.copy_name(client_id),
            seq,
            packet_id,
            stage,
        }
    }

    pub(super) fn settled(&mut self, client_id: &str, seq: u64) -> Op {
        Op::Settled {
            client: self.copy_name(client_id),
            seq,
        }
    }

    /// About how much memory it holds: what the journal's checkpoints are paced by.
    pub(super) fn bytes(&self) -> usize {
        self.ops.len() * std::mem::size_of::<Op>() + self.names.len() + self.records.len()
    }

    /// Its stored form (a journal entry), into `out` (cleared first).
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(JOURNAL_VERSION);
        put_u32(out, self.ops.len());
        for op in &self.ops {
            match op {
                Op::Session(s) => {
                    out.push(1);
                    put_bytes(out, s.client_id.as_bytes());
                    put_bytes(out, &record::session(s));
                }
                Op::SessionRemoved(c) => {
                    out.push(2);
                    put_bytes(out, c.as_bytes());
                }
                Op::Queued {
                    client,
                    seq,
                    record,
                } => {
                    out.push(3);
                    put_span(out, *client);
                    out.extend_from_slice(&seq.to_le_bytes());
                    put_span(out, *record);
                }
                Op::Sent {
                    client,
                    seq,
                    packet_id,
                    stage,
                } => {
                    out.push(4);
                    put_span(out, *client);
                    out.extend_from_slice(&seq.to_le_bytes());
                    out.extend_from_slice(&packet_id.to_le_bytes());
                    out.push(super::layout::stage_code(*stage));
                }
                Op::Settled { client, seq } => {
                    out.push(5);
                    put_span(out, *client);
                    out.extend_from_slice(&seq.to_le_bytes());
                }
                Op::Incoming(c, packet_id, held) => {
                    out.push(6);
                    put_bytes(out, c.as_bytes());
                    out.extend_from_slice(&packet_id.to_le_bytes());
                    out.push(u8::from(*held));
                }
                Op::Retained(topic, m) => {
                    out.push(7);
                    put_bytes(out, topic.as_bytes());
                    match m {
                        Some(m) => {
                            out.push(1);
                            put_bytes(out, &record::retained(m));
                        }
                        None => out.push(0),
                    }
                }
                Op::IngestId(c, new) => {
                    out.push(8);
                    put_bytes(out, c.as_bytes());
                    let id = &new.id;
                    out.extend_from_slice(&id.packet_id.to_le_bytes());
                    out.extend_from_slice(&id.epoch.to_le_bytes());
                    out.extend_from_slice(&id.content.to_le_bytes());
                    out.extend_from_slice(&id.n.to_le_bytes());
                    match new.evicted {
                        Some(gone) => {
                            out.push(1);
                            out.extend_from_slice(&gone.to_le_bytes());
                        }
                        None => out.push(0),
                    }
                }
            }
        }
        put_bytes(out, self.names.as_bytes());
        put_bytes(out, &self.records);
    }

    /// A batch from its stored form; every span checked against its buffer.
    pub(super) fn decode(bytes: &[u8]) -> Result<Batch, Corrupt> {
        let mut r = Cursor(bytes);
        if r.take(1)? != [JOURNAL_VERSION] {
            return Err(Corrupt("journal entry of another format".into()));
        }
        let n = r.u32()? as usize;
        let mut ops = Vec::with_capacity(n.min(bytes.len()));
        for _ in 0..n {
            let op = match r.take(1)?[0] {
                1 => {
                    let c = r.str()?;
                    Op::Session(Box::new(record::read_session(c, r.bytes()?)?))
                }
                2 => Op::SessionRemoved(Arc::from(r.str()?)),
                3 => Op::Queued {
                    client: r.span()?,
                    seq: r.u64()?,
                    record: r.span()?,
                },
                4 => Op::Sent {
                    client: r.span()?,
                    seq: r.u64()?,
                    packet_id: r.u16()?,
                    stage: super::layout::stage_of(r.take(1)?[0])
                        .ok_or_else(|| Corrupt("journal: unknown stage".into()))?,
                },
                5 => Op::Settled {
                    client: r.span()?,
                    seq: r.u64()?,
                },
                6 => Op::Incoming(Arc::from(r.str()?), r.u16()?, r.flag()?),
                7 => {
                    let topic = ByteString::from(r.str()?);
                    let m = if r.flag()? {
                        Some(Arc::new(record::read_retained(r.bytes()?)?))
                    } else {
                        None
                    };
                    Op::Retained(topic, m)
                }
                8 => {
                    let client = Arc::from(r.str()?);
                    let id = StoredId {
                        packet_id: r.u16()?,
                        epoch: r.u64()?,
                        content: r.u64()?,
                        n: r.u64()?,
                    };
                    let evicted = if r.flag()? { Some(r.u16()?) } else { None };
                    Op::IngestId(client, NewId { id, evicted })
                }
                t => return Err(Corrupt(format!("journal: unknown change {t}"))),
            };
            ops.push(op);
        }
        let names = String::from(r.str()?);
        let records = r.bytes()?.to_vec();
        if !r.0.is_empty() {
            return Err(Corrupt("journal entry longer than its changes".into()));
        }
        let batch = Batch {
            ops,
            names,
            records,
            last_name: None,
        };
        let fits = |s: Span, len: usize| s.start <= s.end && s.end as usize <= len;
        let sound = batch.ops.iter().all(|op| match *op {
            Op::Queued { client, record, .. } => {
                batch.names.get(client.range()).is_some() && fits(record, batch.records.len())
            }
            Op::Sent { client, .. } | Op::Settled { client, .. } => {
                batch.names.get(client.range()).is_some()
            }
            _ => true,
        });
        if !sound {
            return Err(Corrupt("journal: a change points outside its entry".into()));
        }
        Ok(batch)
    }
}

/// The first byte of a journal entry of this format.
const JOURNAL_VERSION: u8 = 1;

fn put_u32(out: &mut Vec<u8>, n: usize) {
    // Lengths fit: a batch is one commit delay's changes, each from one MQTT packet.
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

fn put_span(out: &mut Vec<u8>, s: Span) {
    out.extend_from_slice(&s.start.to_le_bytes());
    out.extend_from_slice(&s.end.to_le_bytes());
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Corrupt> {
        if self.0.len() < n {
            return Err(Corrupt("journal entry cut short".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Corrupt> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, Corrupt> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, Corrupt> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, Corrupt> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A flag is written as 0 or 1; anything else is damage, not `true`.
    fn flag(&mut self) -> Result<bool, Corrupt> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(Corrupt(format!("journal: flag byte {v}"))),
        }
    }
    fn span(&mut self) -> Result<Span, Corrupt> {
        Ok(Span {
            start: self.u32()?,
            end: self.u32()?,
        })
    }
    fn bytes(&mut self) -> Result<&'a [u8], Corrupt> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, Corrupt> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Corrupt("journal: a name not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use bytes::Bytes;

    fn delivery(topic: &'static str, seq: u64) -> Delivery {
        let msg = Message::new(
            &ByteString::from_static(topic),
            &Bytes::from_static(b"payload"),
            QoS::AtLeastOnce,
            false,
            0,
            None,
        );
        Delivery {
            msg: Arc::new(msg),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            seq,
        }
    }

    fn described(b: &Batch) -> Vec<String> {
        b.ops
            .iter()
            .map(|op| match op {
                Op::Queued {
                    client,
                    seq,
                    record,
                } => format!("queued {} {seq} {:?}", b.name(*client), b.record(*record)),
                Op::Sent { client, seq, .. } => format!("sent {} {seq}", b.name(*client)),
                Op::Settled { client, seq } => format!("settled {} {seq}", b.name(*client)),
                _ => "other".into(),
            })
            .collect()
    }

    #[test]
    fn appended_changes_keep_their_names_and_records() {
        let (mut kept, mut later) = (Batch::default(), Batch::default());
        let op = kept.queued("first", &delivery("a", 1));
        kept.ops.push(op);
        let op = later.sent("second-client", 7, 3, Stage::PubAck);
        later.ops.push(op);
        let op = later.queued("third", &delivery("bb/cc", 2));
        later.ops.push(op);
        let op = later.settled("first", 1);
        later.ops.push(op);
        let mut expected = described(&kept);
        expected.extend(described(&later));

        kept.append(&mut later);
        assert_eq!(described(&kept), expected);
        assert!(later.is_empty() && later.names.is_empty() && later.records.is_empty());
    }

    #[test]
    fn a_journal_entry_reads_back_as_the_batch_it_was() {
        let mut b = Batch::default();
        let ops = [
            b.queued("dev", &delivery("t/1", 1)),
            b.queued("dev", &delivery("t/2", 2)),
            b.sent("dev", 1, 9, Stage::PubRec),
            b.settled("other", 4),
        ];
        b.ops.extend(ops);
        b.ops.push(Op::SessionRemoved("gone".into()));
        b.ops.push(Op::Incoming("dev".into(), 7, true));
        b.ops.push(Op::Retained("r".into(), None));
        let new = NewId {
            id: StoredId {
                packet_id: 3,
                epoch: u64::MAX,
                content: 5,
                n: 6,
            },
            evicted: Some(65535),
        };
        b.ops.push(Op::IngestId("dev".into(), new));
        let mut entry = Vec::new();
        b.encode(&mut entry);
        let back = Batch::decode(&entry).expect("decodes");
        assert_eq!(described(&back), described(&b));
        assert_eq!(back.ops.len(), 8);
        assert!(matches!(&back.ops[7], Op::IngestId(c, n) if &**c == "dev" && *n == new));
        assert!(matches!(&back.ops[4], Op::SessionRemoved(c) if &**c == "gone"));
        assert!(matches!(&back.ops[5], Op::Incoming(c, 7, true) if &**c == "dev"));
        assert!(matches!(&back.ops[6], Op::Retained(t, None) if t == "r"));

        for cut in [0, 1, 5, entry.len() / 2, entry.len() - 1] {
            assert!(Batch::decode(&entry[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = entry.clone();
        longer.push(0);
        assert!(Batch::decode(&longer).is_err());
        // A span pointing past the names: refused, not a panic later.
        let mut bad = Vec::new();
        let mut one = Batch::default();
        let op = one.settled("x", 1);
        one.ops.push(op);
        one.encode(&mut bad);
        bad[1 + 4 + 1 + 4..1 + 4 + 1 + 8].copy_from_slice(&99u32.to_le_bytes());
        assert!(Batch::decode(&bad).is_err());
    }

    /// Found by the `store_record` fuzz target (fuzz/regressions/store_record/): a flag byte
    /// other than 0 or 1 (a damaged entry) was read as `true`, a silently different value.
    #[test]
    fn a_journal_flag_other_than_0_or_1_is_refused() {
        let mut entry = Vec::new();
        let mut b = Batch::default();
        b.ops.push(Op::Incoming("c".into(), 1, true));
        b.encode(&mut entry);
        // Version, op count, kind, name ("c"), packet id: the held flag follows.
        let held = 1 + 4 + 1 + 4 + 1 + 2;
        assert_eq!(entry[held], 1);
        entry[held] = 5;
        assert!(Batch::decode(&entry).is_err(), "held flag 5");

        let mut b = Batch::default();
        b.ops.push(Op::Retained("t".into(), None));
        b.encode(&mut entry);
        // Version, op count, kind, topic ("t"): the flag for a message follows.
        let present = 1 + 4 + 1 + 4 + 1;
        assert_eq!(entry[present], 0);
        let message = Message::new(
            &ByteString::from_static("t"),
            &Bytes::new(),
            QoS::AtMostOnce,
            true,
            0,
            None,
        );
        let record = record::retained(&message);
        entry.splice(present..=present, [2].into_iter().chain(put(&record)));
        assert!(Batch::decode(&entry).is_err(), "message flag 2");
        entry[present] = 1;
        assert!(Batch::decode(&entry).is_ok(), "message flag 1");
    }

    fn put(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_bytes(&mut out, b);
        out
    }
}
