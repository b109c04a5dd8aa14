//! The store file's layout: its tables and their keys, the format mark, and opening it.
//!
//! Tables: `sessions` (client id -> record), `messages` ((client id, seq) -> delivery),
//! `flows` ((client id, seq) -> packet id and stage, once sent), `incoming` ((client id,
//! packet id) -> (), inbound QoS 2 awaiting PUBREL), `retained` (topic -> message), `meta`
//! (`format`). Keys are ordered, so a session's messages are read back in queue order by a range
//! scan.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition, TableHandle};

use super::StoreError;
use crate::session::Stage;

/// The file inside `[storage] dir`.
pub(crate) const FILE: &str = "store.redb";
/// What `meta.format` holds in a store of this layout.
const FORMAT: &str = "gateway-store-1";

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
pub(super) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
pub(super) const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
pub(super) const FLOWS: TableDefinition<(&str, u64), (u16, u8)> = TableDefinition::new("flows");
pub(super) const INCOMING: TableDefinition<(&str, u16), ()> = TableDefinition::new("incoming");
pub(super) const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");

/// redb's page cache (its default is 1 GiB): the store's working set is the recent writes and
/// the queues read back at start, and its cache counts in the gateway's memory like any session.
pub(super) const CACHE_BYTES: usize = 64 << 20;

pub(super) fn unreadable(path: &Path, what: impl std::fmt::Display) -> StoreError {
    StoreError::Unreadable {
        path: path.to_owned(),
        what: what.to_string(),
    }
}

/// Opens the file as redb, checks every page against its checksum and that it is a store of
/// ours (a new file becomes one). redb asserts on damaged pages it reads unchecked, so the whole
/// file is verified before anything is read from it.
pub(crate) fn open_database(path: &Path) -> Result<Database, StoreError> {
    // After a crash redb rebuilds its allocator state from the committed tree on open; data
    // is never reset. A file it cannot read is reported, not replaced.
    let opened = quietly(|| {
        let mut db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_repair_callback(|_| {})
            .create(path)
            .map_err(|e| unreadable(path, e))?;
        match db.check_integrity() {
            Ok(true) => Ok(db),
            Ok(false) => {
                tracing::warn!(path = %path.display(), "store repaired after an unclean stop");
                Ok(db)
            }
            Err(e) => Err(unreadable(path, format!("damaged: {e}"))),
        }
    });
    let db = opened
        .map_err(|_| unreadable(path, "damaged: the database engine failed reading it"))??;
    let tx = db.begin_write().map_err(|e| unreadable(path, e))?;
    {
        let mut meta = tx.open_table(META).map_err(|e| unreadable(path, e))?;
        let format = meta
            .get("format")
            .map_err(|e| unreadable(path, e))?
            .map(|v| v.value().to_owned());
        match format.as_deref() {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(unreadable(
                    path,
                    format!("a store of another format ({other:?}, expected {FORMAT:?})"),
                ))
            }
            None => {
                let empty = tx
                    .list_tables()
                    .map_err(|e| unreadable(path, e))?
                    .all(|t| t.name() == META.name());
                if !empty {
                    return Err(unreadable(path, "not a gateway store (no format record)"));
                }
                meta.insert("format", FORMAT)
                    .map_err(|e| unreadable(path, e))?;
            }
        }
    }
    tx.commit().map_err(|e| unreadable(path, e))?;
    Ok(db)
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into an error without the panic's report: a damaged store is said
/// in one line by the caller, not in a backtrace. Panics elsewhere are reported as before.
pub(super) fn quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    outcome
}

pub(super) fn stage_code(stage: Stage) -> u8 {
    match stage {
        Stage::PubAck => 1,
        Stage::PubRec => 2,
        Stage::PubComp => 3,
    }
}

pub(super) fn stage_of(code: u8) -> Option<Stage> {
    match code {
        1 => Some(Stage::PubAck),
        2 => Some(Stage::PubRec),
        3 => Some(Stage::PubComp),
        _ => None,
    }
}
