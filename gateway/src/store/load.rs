//! Reading the store back: at start (only what is in flight is decoded; queues stay on disk and
//! are counted), and whole for `gateway store check` and `export`.

use std::collections::HashMap;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable};

use super::layout::{
    stage_of, MessageKey, FLOWS, INCOMING, INGEST_IDS, MESSAGES, RETAINED, SESSIONS,
};
use super::record;
use super::{Restored, StoredSession};
use crate::ingest::dedup::StoredId;
use crate::session::Pending;

/// What of the queued messages `read_all` decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decode {
    /// Every message (`gateway store check` and `export`).
    All,
    /// Only those in flight; the queued ones are counted and left on disk (start-up).
    InFlight,
}

/// The store's contents, for `load`, `gateway store check` and `export`.
pub(crate) fn read_all(db: &Database, decode: Decode) -> Result<Restored, String> {
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let e = |what: &str, err: &dyn std::fmt::Display| format!("{what}: {err}");
    let mut sessions: Vec<StoredSession> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    if let Ok(table) = tx.open_table(SESSIONS) {
        for entry in table.iter().map_err(|x| e("sessions", &x))? {
            let (k, v) = entry.map_err(|x| e("sessions", &x))?;
            let record = record::read_session(k.value(), v.value())
                .map_err(|x| e(&format!("session {:?}", k.value()), &x))?;
            index.insert(k.value().to_owned(), sessions.len());
            sessions.push(StoredSession {
                record,
                pending: Pending::default(),
                stored: 0,
                stored_from: 0,
                stored_last: 0,
            });
        }
    }
    // Only the messages in flight have a flow: few. Both tables are in the same key order.
    let mut flows: Vec<(Vec<u8>, u16, u8)> = Vec::new();
    if let Ok(table) = tx.open_table(FLOWS) {
        for entry in table.iter().map_err(|x| e("flows", &x))? {
            let (k, v) = entry.map_err(|x| e("flows", &x))?;
            let (packet_id, code) = v.value();
            flows.push((k.value().to_owned(), packet_id, code));
        }
    }
    let mut flows = flows.into_iter().peekable();
    if let Ok(table) = tx.open_table(MESSAGES) {
        let mut current: Option<(String, Option<usize>)> = None;
        for entry in table.iter().map_err(|x| e("messages", &x))? {
            let (k, v) = entry.map_err(|x| e("messages", &x))?;
            let (c, seq) = MessageKey::split(k.value())
                .ok_or_else(|| format!("messages: a malformed key {:?}", k.value()))?;
            if current.as_ref().map_or(true, |(name, _)| name != c) {
                current = Some((c.to_owned(), index.get(c).copied()));
            }
            let flow = loop {
                match flows.peek() {
                    Some(f) if f.0.as_slice() < k.value() => {
                        flows.next();
                    }
                    Some(f) if f.0.as_slice() == k.value() => break flows.next(),
                    _ => break None,
                }
            };
            // A message whose session is gone is left for the next removal to sweep.
            let Some((_, Some(i))) = current else {
                continue;
            };
            let session = &mut sessions[i];
            let value = v.value();
            // After the version byte: the stage it was written with, 0 when not yet sent.
            let written_sent = value.get(1).is_some_and(|&b| b != 0);
            if flow.is_none() && !written_sent && decode == Decode::InFlight {
                if session.stored == 0 {
                    session.stored_from = seq;
                }
                session.stored += 1;
                session.stored_last = seq;
                continue;
            }
            let (sent, delivery) = record::read_delivery(value, seq)
                .map_err(|x| e(&format!("message {seq} of {c:?}"), &x))?;
            // A later stage (in `flows`) overrides the one it was written with.
            match flow.map(|(_, id, code)| (id, code)).or(sent) {
                Some((packet_id, code)) => {
                    let stage = stage_of(code)
                        .ok_or_else(|| format!("message {seq} of {c:?}: flow stage {code}"))?;
                    session.pending.inflight.push((packet_id, stage, delivery));
                }
                None => session.pending.queue.push(delivery),
            }
        }
    }
    if let Ok(table) = tx.open_table(INCOMING) {
        for entry in table.iter().map_err(|x| e("incoming", &x))? {
            let (k, _) = entry.map_err(|x| e("incoming", &x))?;
            let (c, id) = k.value();
            if let Some(&i) = index.get(c) {
                sessions[i].pending.incoming_qos2.push(id);
            }
        }
    }
    // A store written before ingestion kept numberings has no such table: its sessions start
    // new epochs (`ingest::dedup`).
    if let Ok(table) = tx.open_table(INGEST_IDS) {
        for entry in table.iter().map_err(|x| e("ingest_ids", &x))? {
            let (k, v) = entry.map_err(|x| e("ingest_ids", &x))?;
            let ((c, packet_id), (epoch, content, n)) = (k.value(), v.value());
            if let Some(&i) = index.get(c) {
                sessions[i].pending.ingest_ids.push(StoredId {
                    packet_id,
                    epoch,
                    content,
                    n,
                });
            }
        }
    }
    let mut retained = Vec::new();
    if let Ok(table) = tx.open_table(RETAINED) {
        for entry in table.iter().map_err(|x| e("retained", &x))? {
            let (k, v) = entry.map_err(|x| e("retained", &x))?;
            let m = record::read_retained(v.value())
                .map_err(|x| e(&format!("retained {:?}", k.value()), &x))?;
            retained.push(Arc::new(m));
        }
    }
    Ok(Restored { sessions, retained })
}
