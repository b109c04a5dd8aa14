//! What other cluster nodes and the session state stream hand a node, under the fuzzer
//! (`crate::fuzzing::cluster_state`): a session handed over live, a snapshot record, and a
//! subject's stream messages (records and batches of them) folded back into a session. They
//! come over NATS, from peers or from a stream anyone with access could write: each decoder
//! promises an error for what is not its own, never a panic, and what it accepts reads back as
//! itself once written again.

use super::super::layout::stage_of;
use super::super::record;
use super::fold;
use crate::session::Pending;

/// The first byte picks a form, the rest is its input. Checks that:
/// - a hand-over or a snapshot that decodes, written again, decodes to the same session
///   (compared by writing it a third time): what a node installs is what the other one sent;
/// - a subject's messages (each a two-byte length and its bytes) fold without a panic, and a
///   session folded back names each of its messages once, its inbound QoS 2 ids and its
///   ingestion packet ids once each.
pub(crate) fn cluster_state(data: &[u8]) {
    let Some((&form, bytes)) = data.split_first() else {
        return;
    };
    match form % 3 {
        0 => {
            if let Ok((rec, pending)) = record::read_handover("c", bytes) {
                let again = record::handover(&rec, &pending);
                let (rec2, pending2) = record::read_handover("c", &again)
                    .unwrap_or_else(|e| panic!("a hand-over written again is refused: {e}"));
                assert_eq!(record::handover(&rec2, &pending2), again, "hand-over");
            }
        }
        1 => {
            if let Ok(snapshot) = record::read_snapshot("c", bytes) {
                let (rec, pending) = pending_of(snapshot);
                let again = record::snapshot(&rec, &pending);
                let (rec2, pending2) = pending_of(
                    record::read_snapshot("c", &again)
                        .unwrap_or_else(|e| panic!("a snapshot written again is refused: {e}")),
                );
                assert_eq!(record::snapshot(&rec2, &pending2), again, "snapshot");
            }
        }
        _ => fold_messages(bytes),
    }
}

fn pending_of(s: record::Snapshot) -> (super::super::SessionRecord, Pending) {
    let mut pending = Pending::default();
    for (sent, d) in s.messages {
        match sent.and_then(|(id, code)| Some((id, stage_of(code)?))) {
            Some((id, stage)) => pending.inflight.push((id, stage, d)),
            None => pending.queue.push(d),
        }
    }
    pending.incoming_qos2 = s.incoming;
    pending.ingest_ids = s.ingest_ids;
    (s.record, pending)
}

fn fold_messages(mut bytes: &[u8]) {
    let mut folded = fold::Folded::default();
    let mut seq = 0;
    while let [a, b, rest @ ..] = bytes {
        let len = usize::from(u16::from_be_bytes([*a, *b])).min(rest.len());
        let (message, tail) = rest.split_at(len);
        seq += 1;
        let _ = folded.add(seq, bytes::Bytes::copy_from_slice(message));
        bytes = tail;
    }
    let Ok(Some(read)) = folded.finish("c") else {
        return;
    };
    let p = read.pending;
    let mut seqs: Vec<u64> = p.queue.iter().map(|d| d.seq).collect();
    seqs.extend(p.inflight.iter().map(|(_, _, d)| d.seq));
    let mut once = seqs.clone();
    once.sort_unstable();
    once.dedup();
    assert_eq!(once.len(), seqs.len(), "a message named twice: {seqs:?}");
    let mut incoming = p.incoming_qos2.clone();
    incoming.dedup();
    assert_eq!(incoming, p.incoming_qos2, "inbound QoS 2 ids");
    let mut ids: Vec<u16> = p.ingest_ids.iter().map(|i| i.packet_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), p.ingest_ids.len(), "ingestion packet ids");
}
