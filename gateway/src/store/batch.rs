//! A batch of recorded changes: what sessions' tasks hand the writer between two commits.
//!
//! The frequent changes (a message queued, sent, settled) are copied into the batch's own
//! buffers as they are recorded: the client id into `names`, the queued message's record into
//! `records`. So a change holds no reference to the live state (no `Arc` shared with the
//! session's task, no message kept alive until the commit, whose last reference would then be
//! dropped and freed on the writer's thread), and the buffers are reused from batch to batch.

use std::ops::Range;
use std::sync::Arc;

use bytestring::ByteString;

use super::record;
use super::SessionRecord;
use crate::message::Message;
use crate::session::{Delivery, Stage};

/// Where a copied string or record lies in its batch's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

#[derive(Default)]
pub(super) struct Batch {
    pub(super) ops: Vec<Op>,
    names: String,
    records: Vec<u8>,
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
    }

    /// Moves `other`'s changes after this batch's (a batch kept after a failed commit takes
    /// what was recorded meanwhile).
    pub(super) fn append(&mut self, other: &mut Batch) {
        let (names, records) = (self.names.len(), self.records.len());
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
        let start = self.names.len();
        self.names.push_str(client_id);
        Span::of(start..self.names.len())
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
}
