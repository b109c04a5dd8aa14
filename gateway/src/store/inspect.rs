//! The operator's view of a store on disk, with no gateway running: `gateway store check DIR`
//! (is it sound, and what does it hold) and `gateway store export DIR` (everything in it as JSON
//! lines, to read, to salvage, or to feed elsewhere).

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use serde_json::json;

use super::layout::{open_database, FILE};
use super::load::{read_all, Decode};
use super::{Restored, StoreError, StoredWill};
use crate::message::Message;

/// What a sound store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSummary {
    pub sessions: usize,
    pub messages: usize,
    pub retained: usize,
}

fn unreadable(path: &Path, what: impl std::fmt::Display) -> StoreError {
    StoreError::Unreadable {
        path: path.to_owned(),
        what: what.to_string(),
    }
}

/// Reads the whole store in `dir` as the gateway would at start, and checks redb's own
/// checksums of every page.
fn read(dir: &Path) -> Result<Restored, StoreError> {
    let path = dir.join(FILE);
    if !path.is_file() {
        return Err(unreadable(&path, "no store file"));
    }
    let mut db = open_database(&path)?;
    match db.check_integrity() {
        Ok(true) => {}
        Ok(false) => return Err(unreadable(&path, "damaged pages (checksum mismatch)")),
        Err(e) => return Err(unreadable(&path, e)),
    }
    super::journal::replay(&db).map_err(|e| unreadable(&path, e))?;
    read_all(&db, Decode::All).map_err(|e| unreadable(&path, e))
}

/// `gateway store check DIR`: Ok with what it holds when the store is sound.
pub fn check_store(dir: &Path) -> Result<StoreSummary, StoreError> {
    let restored = read(dir)?;
    let messages = restored
        .sessions
        .iter()
        .map(|s| s.pending.queue.len() + s.pending.inflight.len())
        .sum();
    Ok(StoreSummary {
        sessions: restored.sessions.len(),
        messages,
        retained: restored.retained.len(),
    })
}

/// `gateway store export DIR`: one JSON object per line, sessions (each followed by its
/// messages in queue order) then retained messages; payloads in base64.
pub fn export_store(dir: &Path, out: &mut dyn Write) -> Result<(), StoreError> {
    let restored = read(dir)?;
    let write_err = |e: std::io::Error| unreadable(dir, format!("cannot write the export: {e}"));
    for s in &restored.sessions {
        let r = &s.record;
        let subscriptions: Vec<_> = r
            .subscriptions
            .iter()
            .map(|sub| {
                json!({
                    "filter": &sub.filter[..],
                    "qos": sub.options.qos as u8,
                    "no_local": sub.options.no_local,
                    "retain_as_published": sub.options.retain_as_published,
                    "retain_handling": sub.options.retain_handling,
                    "id": sub.id,
                })
            })
            .collect();
        let line = json!({
            "session": &*r.client_id,
            "expiry_interval": r.expiry_interval,
            "expires_at": r.expires_at,
            "subscriptions": subscriptions,
            "will": r.will.as_ref().map(|w| match w {
                StoredWill::Due { message: m, due } => json!({"due": due, "message": message(m)}),
                StoredWill::Armed { message: m, delay } => {
                    json!({"on_connection_loss_after_s": delay, "message": message(m)})
                }
            }),
            "incoming_qos2": s.pending.incoming_qos2,
        });
        writeln!(out, "{line}").map_err(write_err)?;
        let inflight = s
            .pending
            .inflight
            .iter()
            .map(|(id, stage, d)| (Some((*id, format!("{stage:?}"))), d));
        let queued = s.pending.queue.iter().map(|d| (None, d));
        for (flow, d) in inflight.chain(queued) {
            let line = json!({
                "message_for": &*r.client_id,
                "seq": d.seq,
                "qos": d.qos as u8,
                "retain": d.retain,
                "subscription_ids": d.subscription_ids,
                "packet_id": flow.as_ref().map(|f| f.0),
                "waiting_for": flow.as_ref().map(|f| f.1.clone()),
                "message": message(&d.msg),
            });
            writeln!(out, "{line}").map_err(write_err)?;
        }
    }
    for m in &restored.retained {
        let line = json!({ "retained": message(m) });
        writeln!(out, "{line}").map_err(write_err)?;
    }
    Ok(())
}

fn message(m: &Message) -> serde_json::Value {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let props = m.properties.as_ref().map(|p| {
        json!({
            "payload_format_indicator": p.payload_format_indicator,
            "message_expiry_interval": p.message_expiry_interval,
            "content_type": p.content_type.as_ref().map(|s| &s[..]),
            "response_topic": p.response_topic.as_ref().map(|s| &s[..]),
            "correlation_data": p.correlation_data.as_deref().map(b64),
            "user_properties": p.user_properties.iter().map(|(k, v)| [&k[..], &v[..]]).collect::<Vec<_>>(),
        })
    });
    json!({
        "topic": &m.topic[..],
        "qos": m.qos as u8,
        "retain": m.retain,
        "expires_at": m.expires_at,
        "payload": b64(&m.payload),
        "properties": props,
    })
}
