//! The change records of one session's subject in the state stream, and folding them back into
//! the session.
//!
//! A record is one tag byte and its fields (big-endian), reusing `record`'s encodings for
//! sessions and deliveries. A stream message holds one record, or a batch of records of its
//! subject in order (`batch`). Folding is order-tolerant for one message's records (a record whose
//! publish failed and was sent again can land after a later one): a message is queued, sent
//! with the furthest stage seen, or settled, whatever order those came in. A tombstone or a
//! snapshot starts the session anew at its place; a compaction snapshot's place is the last
//! sequence it covers, not where it landed, so records written while it was made still apply.

use std::collections::{BTreeMap, BTreeSet};

use super::super::layout::stage_of;
use super::super::record::{self, Corrupt};
use super::super::SessionRecord;
use crate::clock::UnixMillis;
use crate::ingest::dedup::{NewId, StoredId};
use crate::session::{Delivery, Pending, Stage};

const SESSION: u8 = b'S';
const QUEUED: u8 = b'Q';
const SENT: u8 = b'T';
const SETTLED: u8 = b'D';
const INCOMING: u8 = b'I';
const REMOVED: u8 = b'X';
const ADOPTED: u8 = b'A';
const COMPACTED: u8 = b'C';
const INGEST_ID: u8 = b'N';
/// Records in order, each as its length (u32) and bytes.
const BATCH: u8 = b'B';

pub(super) fn session(s: &SessionRecord) -> Vec<u8> {
    let body = record::session(s);
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(SESSION);
    out.extend_from_slice(&body);
    out
}

pub(super) fn queued(d: &Delivery) -> Vec<u8> {
    let mut tail = Vec::new();
    record::delivery_tail(&mut tail, d);
    let mut body = Vec::new();
    record::delivery(&mut body, None, &tail);
    let mut out = Vec::with_capacity(9 + body.len());
    out.push(QUEUED);
    out.extend_from_slice(&d.seq.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

pub(super) fn sent(seq: u64, packet_id: u16, stage: Stage) -> Vec<u8> {
    let mut out = vec![SENT];
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&packet_id.to_be_bytes());
    out.push(super::super::layout::stage_code(stage));
    out
}

pub(super) fn settled(seq: u64) -> Vec<u8> {
    let mut out = vec![SETTLED];
    out.extend_from_slice(&seq.to_be_bytes());
    out
}

pub(super) fn incoming(packet_id: u16, held: bool) -> Vec<u8> {
    let mut out = vec![INCOMING];
    out.extend_from_slice(&packet_id.to_be_bytes());
    out.push(u8::from(held));
    out
}

/// A new number of ingestion's de-duplication (`ingest::dedup`), and the packet id that fell
/// out of its window (0: none; packet ids are never 0).
pub(super) fn ingest_id(new: NewId) -> Vec<u8> {
    let mut out = vec![INGEST_ID];
    out.extend_from_slice(&new.id.packet_id.to_be_bytes());
    out.extend_from_slice(&new.id.epoch.to_be_bytes());
    out.extend_from_slice(&new.id.content.to_be_bytes());
    out.extend_from_slice(&new.id.n.to_be_bytes());
    out.extend_from_slice(&new.evicted.unwrap_or(0).to_be_bytes());
    out
}

pub(super) fn removed() -> Vec<u8> {
    vec![REMOVED]
}

/// The whole session, superseding every record before it.
pub(super) fn adopted(s: &SessionRecord, pending: &Pending) -> Vec<u8> {
    let body = record::snapshot(s, pending);
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(ADOPTED);
    out.extend_from_slice(&body);
    out
}

/// The session as of stream sequence `covers`: it stands in for the records up to it.
pub(super) fn compacted(covers: u64, s: &SessionRecord, pending: &Pending) -> Vec<u8> {
    let body = record::snapshot(s, pending);
    let mut out = Vec::with_capacity(9 + body.len());
    out.push(COMPACTED);
    out.extend_from_slice(&covers.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Several records of one subject as one stream message, in order.
pub(super) fn batch<'a>(records: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = vec![BATCH];
    for r in records {
        // A record is far below 4 GiB: it is bounded by the largest packet and the message limit.
        out.extend_from_slice(&u32::try_from(r.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// Whether a record starts its session anew (what is before it can be purged once it is stored).
pub(super) fn supersedes(payload: &[u8]) -> bool {
    matches!(payload.first(), Some(&REMOVED | &ADOPTED))
}

#[derive(Default)]
struct Fate {
    delivery: Option<Delivery>,
    /// Packet id and the furthest stage code seen.
    sent: Option<(u16, u8)>,
    settled: bool,
}

/// A session's records folded so far.
#[derive(Default)]
pub(super) struct Folded {
    record: Option<SessionRecord>,
    messages: BTreeMap<u64, Fate>,
    incoming: BTreeSet<u16>,
    ingest_ids: BTreeMap<u16, StoredId>,
    /// (logical place, payload) of the records read, folded by `finish` in place order.
    records: Vec<(u128, bytes::Bytes)>,
}

/// A session read back from its records: its record, what it holds, and the stream sequence
/// of the last record read.
pub(super) struct Read {
    pub(super) record: SessionRecord,
    pub(super) pending: Pending,
}

fn be_u64(b: &[u8]) -> Result<u64, Corrupt> {
    b.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Corrupt("record cut short".into()))
}

fn be_u16(b: &[u8]) -> Result<u16, Corrupt> {
    b.get(..2)
        .and_then(|b| <[u8; 2]>::try_from(b).ok())
        .map(u16::from_be_bytes)
        .ok_or_else(|| Corrupt("record cut short".into()))
}

impl Folded {
    /// Takes the stream message stored at sequence `seq`: one record or a batch.
    pub(super) fn add(&mut self, seq: u64, payload: bytes::Bytes) -> Result<(), Corrupt> {
        // A record's place: its message's sequence, then its index in the batch; a compaction
        // snapshot's is after every record of the last message it covers.
        let at = |seq: u64, index: u32| u128::from(seq) << 32 | u128::from(index);
        match payload.first() {
            Some(&COMPACTED) => {
                let covers = be_u64(&payload[1..])?;
                self.records.push((at(covers, u32::MAX), payload));
            }
            Some(&BATCH) => {
                let mut rest = payload.slice(1..);
                let mut index = 0u32;
                while !rest.is_empty() {
                    let len = rest
                        .get(..4)
                        .and_then(|b| <[u8; 4]>::try_from(b).ok())
                        .map(|b| u32::from_be_bytes(b) as usize)
                        .ok_or_else(|| Corrupt("batch cut short".into()))?;
                    let end = len
                        .checked_add(4)
                        .filter(|&end| end <= rest.len() && len > 0)
                        .ok_or_else(|| Corrupt("batch cut short".into()))?;
                    let record = rest.slice(4..end);
                    if matches!(record.first(), Some(&BATCH | &COMPACTED)) {
                        return Err(Corrupt("a batch within a batch".into()));
                    }
                    self.records.push((at(seq, index), record));
                    rest = rest.slice(end..);
                    index = index
                        .checked_add(1)
                        .filter(|&i| i < u32::MAX)
                        .ok_or_else(|| Corrupt("batch too long".into()))?;
                }
                if index == 0 {
                    return Err(Corrupt("empty batch".into()));
                }
            }
            Some(_) => self.records.push((at(seq, 0), payload)),
            None => return Err(Corrupt("empty record".into())),
        }
        Ok(())
    }

    /// Folds the records taken, in place order; `None` when no session is left.
    pub(super) fn finish(mut self, client_id: &str) -> Result<Option<Read>, Corrupt> {
        let mut records = std::mem::take(&mut self.records);
        records.sort_by_key(|(place, _)| *place);
        for (_, payload) in records {
            self.apply(client_id, &payload)?;
        }
        let Some(record) = self.record else {
            return Ok(None);
        };
        let mut pending = Pending::default();
        for fate in self.messages.into_values() {
            let (Some(d), false) = (fate.delivery, fate.settled) else {
                continue;
            };
            match fate.sent.and_then(|(id, code)| Some((id, stage_of(code)?))) {
                Some((id, stage)) => pending.inflight.push((id, stage, d)),
                None => pending.queue.push(d),
            }
        }
        pending.incoming_qos2 = self.incoming.into_iter().collect();
        pending.ingest_ids = self.ingest_ids.into_values().collect();
        Ok(Some(Read { record, pending }))
    }

    fn reset(&mut self) {
        self.record = None;
        self.messages.clear();
        self.incoming.clear();
        self.ingest_ids.clear();
    }

    fn apply(&mut self, client_id: &str, payload: &[u8]) -> Result<(), Corrupt> {
        let (&tag, body) = payload
            .split_first()
            .ok_or_else(|| Corrupt("empty record".into()))?;
        match tag {
            SESSION => self.record = Some(record::read_session(client_id, body)?),
            QUEUED => {
                let seq = be_u64(body)?;
                let (sent, d) = record::read_delivery(&body[8..], seq)?;
                let fate = self.messages.entry(seq).or_default();
                fate.delivery = Some(d);
                fate.sent = fate.sent.max(sent);
            }
            SENT => {
                let seq = be_u64(body)?;
                let id = be_u16(&body[8..])?;
                let code = *body
                    .get(10)
                    .ok_or_else(|| Corrupt("record cut short".into()))?;
                stage_of(code).ok_or_else(|| Corrupt(format!("stage {code}")))?;
                let fate = self.messages.entry(seq).or_default();
                // The furthest stage wins: a PUBREL sent is never taken back to a PUBLISH.
                if fate.sent.map_or(true, |(_, c)| c <= code) {
                    fate.sent = Some((id, code));
                }
            }
            SETTLED => self.messages.entry(be_u64(body)?).or_default().settled = true,
            INCOMING => {
                let id = be_u16(body)?;
                match body.get(2) {
                    Some(1) => self.incoming.insert(id),
                    Some(0) => self.incoming.remove(&id),
                    _ => return Err(Corrupt("incoming flag".into())),
                };
            }
            INGEST_ID => {
                let packet_id = be_u16(body)?;
                let field = |at: usize| be_u64(body.get(at..).unwrap_or_default());
                let id = StoredId {
                    packet_id,
                    epoch: field(2)?,
                    content: field(10)?,
                    n: field(18)?,
                };
                let evicted = be_u16(body.get(26..).unwrap_or_default())?;
                if packet_id == 0 || body.len() != 28 {
                    return Err(Corrupt("ingest id record".into()));
                }
                self.ingest_ids.remove(&evicted);
                self.ingest_ids.insert(packet_id, id);
            }
            REMOVED => self.reset(),
            ADOPTED | COMPACTED => {
                let body = if tag == COMPACTED {
                    body.get(8..)
                        .ok_or_else(|| Corrupt("record cut short".into()))?
                } else {
                    body
                };
                let snapshot = record::read_snapshot(client_id, body)?;
                self.reset();
                self.record = Some(snapshot.record);
                for (sent, d) in snapshot.messages {
                    let fate = self.messages.entry(d.seq).or_default();
                    fate.sent = sent;
                    fate.delivery = Some(d);
                }
                self.incoming = snapshot.incoming.into_iter().collect();
                self.ingest_ids = snapshot
                    .ingest_ids
                    .into_iter()
                    .map(|id| (id.packet_id, id))
                    .collect();
            }
            t => return Err(Corrupt(format!("record tag {t}"))),
        }
        Ok(())
    }
}

/// Whether a session read back has ended by its expiry: offline since `expires_at` was set, or
/// (connected when its node died) `expiry_interval` after its last record, `last_at`.
pub(super) fn expired(record: &SessionRecord, last_at: UnixMillis, now: UnixMillis) -> bool {
    if record.expiry_interval == u32::MAX {
        return false;
    }
    let ends = record
        .expires_at
        .unwrap_or(last_at + u64::from(record.expiry_interval) * 1000);
    ends <= now
}

/// Gives seqs to the deliveries a live hand-over brought (numbered by the previous node as 0),
/// after the highest one present, so that later records can name them.
pub(crate) fn number(pending: &mut Pending) {
    let mut next = pending
        .queue
        .iter()
        .chain(pending.inflight.iter().map(|(_, _, d)| d))
        .map(|d| d.seq)
        .max()
        .unwrap_or(0);
    let unnumbered = pending
        .inflight
        .iter_mut()
        .map(|(_, _, d)| d)
        .chain(pending.queue.iter_mut())
        .filter(|d| d.seq == 0);
    for d in unnumbered {
        next += 1;
        d.seq = next;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::codec::QoS;
    use crate::message::Message;

    fn rec() -> SessionRecord {
        SessionRecord {
            client_id: Arc::from("c"),
            expiry_interval: 60,
            expires_at: None,
            subscriptions: Vec::new(),
            will: None,
        }
    }

    fn delivery(seq: u64) -> Delivery {
        let m = Message::restored(
            "t".into(),
            bytes::Bytes::from(format!("m{seq}")),
            QoS::AtLeastOnce,
            false,
            None,
            None,
        );
        Delivery {
            msg: Arc::new(m),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            seq,
        }
    }

    fn fold(records: &[Vec<u8>]) -> Option<Read> {
        let mut f = Folded::default();
        for (i, r) in records.iter().enumerate() {
            f.add(i as u64 + 1, bytes::Bytes::from(r.clone())).unwrap();
        }
        f.finish("c").unwrap()
    }

    #[test]
    fn messages_fold_to_queue_inflight_and_settled_in_any_order() {
        let read = fold(&[
            session(&rec()),
            queued(&delivery(1)),
            sent(2, 7, Stage::PubRec),
            queued(&delivery(2)),
            queued(&delivery(3)),
            settled(3),
            sent(2, 7, Stage::PubComp),
            sent(2, 7, Stage::PubRec),
            incoming(9, true),
            incoming(10, true),
            incoming(9, false),
        ])
        .expect("a session");
        let seqs = |v: &[Delivery]| v.iter().map(|d| d.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&read.pending.queue), [1]);
        assert_eq!(read.pending.inflight.len(), 1);
        let (id, stage, d) = &read.pending.inflight[0];
        assert_eq!((*id, *stage, d.seq), (7, Stage::PubComp, 2));
        assert_eq!(read.pending.incoming_qos2, [10]);
    }

    #[test]
    fn a_tombstone_ends_and_a_snapshot_restarts_the_session() {
        assert!(fold(&[session(&rec()), queued(&delivery(1)), removed()]).is_none());
        let mut p = Pending::default();
        p.queue.push(delivery(4));
        let read = fold(&[
            session(&rec()),
            queued(&delivery(1)),
            adopted(&rec(), &p),
            queued(&delivery(5)),
        ])
        .expect("a session");
        let seqs: Vec<u64> = read.pending.queue.iter().map(|d| d.seq).collect();
        assert_eq!(seqs, [4, 5]);
    }

    #[test]
    fn a_compaction_snapshot_stands_where_it_covers() {
        let mut p = Pending::default();
        p.queue.push(delivery(1));
        // Records 3 and 4 were written while the snapshot of 1..=2 was made; it landed after.
        let read = fold(&[
            session(&rec()),
            queued(&delivery(1)),
            queued(&delivery(2)),
            settled(1),
            compacted(2, &rec(), &p),
        ])
        .expect("a session");
        let seqs: Vec<u64> = read.pending.queue.iter().map(|d| d.seq).collect();
        assert_eq!(seqs, [2]);
    }

    /// What a read gives back, comparable: queued seqs, in-flight (id, stage, seq), QoS 2 ids,
    /// ingestion numbering.
    type Summary = (Vec<u64>, Vec<(u16, Stage, u64)>, Vec<u16>, Vec<StoredId>);

    fn summary(read: Option<Read>) -> Option<Summary> {
        read.map(|r| {
            (
                r.pending.queue.iter().map(|d| d.seq).collect(),
                r.pending
                    .inflight
                    .iter()
                    .map(|(id, stage, d)| (*id, *stage, d.seq))
                    .collect(),
                r.pending.incoming_qos2,
                r.pending.ingest_ids,
            )
        })
    }

    fn new_id(packet_id: u16, n: u64, evicted: Option<u16>) -> NewId {
        NewId {
            id: StoredId {
                packet_id,
                epoch: 77,
                content: n + 100,
                n,
            },
            evicted,
        }
    }

    /// The records of one session's life: queued, sent and settled in mixed order, a
    /// tombstone and a new start, QoS 2 ids, ingestion numbers (one carried by a snapshot).
    fn life() -> Vec<Vec<u8>> {
        let mut p = Pending::default();
        p.queue.push(delivery(4));
        p.ingest_ids.push(new_id(3, 5, None).id);
        vec![
            session(&rec()),
            queued(&delivery(1)),
            ingest_id(new_id(1, 0, None)),
            sent(1, 7, Stage::PubAck),
            queued(&delivery(2)),
            settled(1),
            incoming(9, true),
            removed(),
            session(&rec()),
            ingest_id(new_id(2, 1, None)),
            queued(&delivery(3)),
            adopted(&rec(), &p),
            queued(&delivery(5)),
            ingest_id(new_id(4, 6, None)),
            sent(5, 8, Stage::PubRec),
            ingest_id(new_id(5, 7, Some(3))),
            queued(&delivery(6)),
            incoming(10, true),
            settled(4),
        ]
    }

    #[test]
    fn ingestion_numbers_fold_with_their_evictions_and_snapshots() {
        let read = summary(fold(&life())).expect("a session");
        let ids: Vec<(u16, u64)> = read.3.iter().map(|i| (i.packet_id, i.n)).collect();
        // 1 went with the tombstone, 2 with the snapshot (which carried 3), 3 was evicted by 5.
        assert_eq!(ids, [(4, 6), (5, 7)]);
        let mut f = Folded::default();
        f.add(1, session(&rec()).into()).unwrap();
        f.add(2, ingest_id(new_id(0, 1, None)).into()).unwrap();
        assert!(f.finish("c").is_err(), "packet id 0 is no packet id");
    }

    proptest::proptest! {
        /// However the writer cuts a subject's records into stream messages (`cuts` marks
        /// where a new message begins), they fold as they do one by one.
        #[test]
        fn batches_fold_as_their_records_one_by_one(cuts in proptest::collection::vec(proptest::bool::ANY, 19)) {
            let records = life();
            let mut f = Folded::default();
            let mut seq = 0;
            let mut group: Vec<&[u8]> = Vec::new();
            let mut flush = |group: &mut Vec<&[u8]>, f: &mut Folded| {
                if group.is_empty() {
                    return;
                }
                seq += 1;
                let payload = if group.len() == 1 { group[0].to_vec() } else { batch(group.iter().copied()) };
                f.add(seq, bytes::Bytes::from(payload)).unwrap();
                group.clear();
            };
            for (r, cut) in records.iter().zip(cuts) {
                if cut {
                    flush(&mut group, &mut f);
                }
                group.push(r);
            }
            flush(&mut group, &mut f);
            proptest::prop_assert_eq!(summary(f.finish("c").unwrap()), summary(fold(&records)));
        }
    }

    /// What lands in the stream when the write of `records[failed]` fails: the later ones
    /// sent before it was stored (up to `records[last_sent]`) land first, its first publish
    /// among them or nowhere (`original`), then its retry, then (`replayed`) those later ones
    /// again, then the rest (`writer::Replays`).
    fn landed(
        records: &[Vec<u8>],
        failed: usize,
        last_sent: usize,
        original: Option<usize>,
        replayed: bool,
    ) -> Vec<Vec<u8>> {
        let last_sent = last_sent.max(failed);
        let late = &records[failed];
        let after = &records[failed + 1..=last_sent];
        let mut out = records[..failed].to_vec();
        let mut between = after.to_vec();
        if let Some(at) = original {
            between.insert(at.min(between.len()), late.clone());
        }
        out.extend(between);
        out.push(late.clone());
        if replayed {
            out.extend_from_slice(after);
        }
        out.extend_from_slice(&records[last_sent + 1..]);
        out
    }

    #[test]
    fn a_late_write_needs_what_followed_it_replayed() {
        let records = [session(&rec()), incoming(9, true), incoming(9, false)];
        let pending = |r: &[Vec<u8>]| summary(fold(r)).expect("a session").2;
        assert_eq!(pending(&records), Vec::<u16>::new());
        // Held, then released; the hold stored after the release: 9 would be held forever, and
        // a new QoS 2 message with packet id 9 taken for a resend and dropped.
        assert_eq!(pending(&landed(&records, 1, 2, None, false)), [9]);
        assert_eq!(
            pending(&landed(&records, 1, 2, None, true)),
            Vec::<u16>::new()
        );
    }

    proptest::proptest! {
        /// Whichever write fails, however late its first publish lands or if it never does,
        /// the replay after it makes the subject fold as its records in the order made.
        #[test]
        fn a_late_write_and_the_replay_after_it_fold_as_the_order_made(
            failed in 0..19usize,
            last_sent in 0..19usize,
            original in proptest::option::of(0..19usize),
        ) {
            let records = life();
            let landed = landed(&records, failed, last_sent, original, true);
            proptest::prop_assert_eq!(summary(fold(&landed)), summary(fold(&records)));
        }
    }

    #[test]
    fn a_compaction_snapshot_stands_after_the_whole_batch_it_covers() {
        let mut p = Pending::default();
        p.queue.push(delivery(2));
        let mut f = Folded::default();
        let first = [session(&rec()), queued(&delivery(1)), queued(&delivery(2))];
        f.add(1, batch(first.iter().map(|r| &r[..])).into())
            .unwrap();
        let later = [settled(1), queued(&delivery(3))];
        f.add(2, batch(later.iter().map(|r| &r[..])).into())
            .unwrap();
        f.add(3, compacted(1, &rec(), &p).into()).unwrap();
        let read = summary(f.finish("c").unwrap()).expect("a session");
        // The snapshot (of 1's batch: 2 left) lands after it and before 2's batch.
        assert_eq!(read.0, [2, 3]);
    }

    #[test]
    fn a_damaged_batch_is_refused() {
        let good = batch([&settled(1)[..], &settled(2)[..]].into_iter());
        for bad in [
            vec![BATCH],
            good[..good.len() - 1].to_vec(),
            vec![BATCH, 0, 0, 0, 0],
            vec![BATCH, 0xff, 0xff, 0xff, 0xff, SETTLED],
            batch([&good[..]].into_iter()),
        ] {
            assert!(
                Folded::default().add(1, bad.clone().into()).is_err(),
                "{bad:?}"
            );
        }
        assert!(Folded::default().add(1, good.into()).is_ok());
    }

    #[test]
    fn expiry_counts_from_the_last_record_of_a_connected_session() {
        let mut r = rec();
        assert!(!expired(&r, 1_000, 60_999));
        assert!(expired(&r, 1_000, 61_000));
        r.expires_at = Some(5_000);
        assert!(expired(&r, 1_000, 5_000));
        r.expiry_interval = u32::MAX;
        assert!(!expired(&r, 0, u64::MAX));
    }

    #[test]
    fn handed_over_deliveries_are_numbered_after_the_highest() {
        let mut p = Pending::default();
        p.queue.push(delivery(0));
        p.inflight.push((1, Stage::PubAck, delivery(0)));
        p.queue.push(delivery(3));
        number(&mut p);
        assert_eq!(p.inflight[0].2.seq, 4);
        let seqs: Vec<u64> = p.queue.iter().map(|d| d.seq).collect();
        assert_eq!(seqs, [5, 3]);
    }
}
