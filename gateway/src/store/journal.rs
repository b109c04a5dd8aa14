//! The journal: a commit's batch made durable whole, applied to the tables later.
//!
//! Each commit writes its batch as one value of the `journal` table: one B-tree insert and one
//! fsync, however many messages it holds. The writer keeps the batches since the last
//! checkpoint in memory and applies them together (`apply`) every `CHECKPOINT_EVERY` or
//! `CHECKPOINT_BYTES`: a message queued and settled meanwhile (most are, within milliseconds)
//! then never reaches the tables at all. The checkpoint drops the entries it applied in the same
//! transaction. Opening a store replays what its journal still holds (`replay`) before anything
//! reads the tables. Replaying is idempotent (each change sets or removes keys), so a crash
//! between a checkpoint and its being made durable only means replaying again.

use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::apply::{apply, InFlows};
use super::batch::Batch;
use super::layout::{MessageKey, FLOWS, JOURNAL};

/// At most this much of the batches awaits a checkpoint in the writer's memory...
pub(super) const CHECKPOINT_BYTES: usize = 4 << 20;
/// ...nor longer than this: long against the milliseconds in which most messages are settled,
/// short enough that a checkpoint's bookkeeping stays in the processor's caches.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Applies what the journal of `db` holds to its tables and empties it. Returns the number of
/// entries replayed.
pub(crate) fn replay(db: &Database) -> Result<usize, String> {
    let e = |what: &str, err: &dyn std::fmt::Display| format!("journal: {what}: {err}");
    {
        let tx = db.begin_read().map_err(|x| e("reading", &x))?;
        match tx.open_table(JOURNAL) {
            Ok(journal) if !journal.is_empty().map_err(|x| e("reading", &x))? => {}
            _ => return Ok(0),
        }
    }
    let mut tx = db.begin_write().map_err(|x| e("replaying", &x))?;
    tx.set_durability(Durability::Immediate)
        .map_err(|x| e("replaying", &x))?;
    let mut merged = Batch::default();
    let mut entries = 0;
    {
        let journal = tx.open_table(JOURNAL).map_err(|x| e("reading", &x))?;
        for entry in journal.iter().map_err(|x| e("reading", &x))? {
            let (k, v) = entry.map_err(|x| e("reading", &x))?;
            let mut batch =
                Batch::decode(v.value()).map_err(|x| e(&format!("entry {}", k.value()), &x))?;
            merged.append(&mut batch);
            entries += 1;
        }
    }
    // The messages with a `flows` entry, so that settling one removes it.
    let in_flows: InFlows = {
        let flows = tx.open_table(FLOWS).map_err(|x| e("reading flows", &x))?;
        let mut known = Vec::new();
        for entry in flows.iter().map_err(|x| e("reading flows", &x))? {
            let (k, _) = entry.map_err(|x| e("reading flows", &x))?;
            if let Some((c, seq)) = MessageKey::split(k.value()) {
                known.push((c.into(), seq));
            }
        }
        known.into_iter().collect()
    };
    apply(&tx, &merged, &in_flows, &mut Vec::new()).map_err(|x| e("replaying", &x))?;
    tx.open_table(JOURNAL)
        .map_err(|x| e("emptying", &x))?
        .retain(|_, _| false)
        .map_err(|x| e("emptying", &x))?;
    tx.commit().map_err(|x| e("replaying", &x))?;
    Ok(entries)
}
