//! The store file's layout: its tables and their keys, the format mark, and opening it.
//!
//! Tables: `sessions` (client id -> record), `messages` (message key -> delivery), `flows`
//! (message key -> packet id and stage, once sent), `incoming` ((client id, packet id) -> (),
//! inbound QoS 2 awaiting PUBREL), `ingest_ids` ((client id, packet id) -> (epoch, content, n):
//! the numbering of ingested messages, `ingest::dedup`; a store without the table has none),
//! `retained` (topic -> message), `journal` (commit number -> a batch of changes not yet applied
//! to the others), `meta` (`format`).
//!
//! A message key is (client id, seq) as plain bytes (`MessageKey`): the client id's length, the
//! client id, the seq big-endian. A session's keys share their first bytes and sort by seq, so
//! its messages are one range, read back in queue order by a range scan; and being bytes, a key
//! is handed to the B-tree as it is (redb's tuple keys are serialized into a new allocation each
//! time the tree looks at one: several per insert).

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition, TableHandle};

use super::StoreError;
use crate::session::Stage;

/// The file inside `[storage] dir`.
pub(crate) const FILE: &str = "store.redb";
/// What `meta.format` holds in a store of this layout.
pub(super) const FORMAT: &str = "gateway-store-2";

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
pub(super) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
pub(super) const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
pub(super) const FLOWS: TableDefinition<&[u8], (u16, u8)> = TableDefinition::new("flows");
pub(super) const INCOMING: TableDefinition<(&str, u16), ()> = TableDefinition::new("incoming");
pub(super) const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
pub(super) const INGEST_IDS: TableDefinition<(&str, u16), (u64, u64, u64)> =
    TableDefinition::new("ingest_ids");
/// Batches committed but not yet applied to the tables above (`journal`), by commit number.
pub(super) const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");

/// A key of `messages` and `flows`, built in a buffer kept by its user.
#[derive(Default)]
pub(super) struct MessageKey(Vec<u8>);

impl MessageKey {
    /// The key of message `seq` of `client`.
    pub(super) fn of(&mut self, client: &str, seq: u64) -> &[u8] {
        self.0.clear();
        // A client id is an MQTT string: at most 65,535 bytes.
        let len = u16::try_from(client.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(client.as_bytes());
        self.0.extend_from_slice(&seq.to_be_bytes());
        &self.0
    }

    /// The first and last keys of `client`'s messages from seq `from` to `to`.
    pub(super) fn bounds(client: &str, from: u64, to: u64) -> (Vec<u8>, Vec<u8>) {
        let (mut lo, mut hi) = (MessageKey::default(), MessageKey::default());
        lo.of(client, from);
        hi.of(client, to);
        (lo.0, hi.0)
    }

    /// The client id and seq of a key; None when it is not one.
    pub(super) fn split(key: &[u8]) -> Option<(&str, u64)> {
        let (len, rest) = key.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        let (client, seq) = (rest.get(..len)?, rest.get(len..)?);
        let seq: [u8; 8] = seq.try_into().ok()?;
        Some((std::str::from_utf8(client).ok()?, u64::from_be_bytes(seq)))
    }
}

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

#[cfg(test)]
mod tests {
    use super::MessageKey;
    use proptest::prelude::*;

    proptest! {
        /// Keys of one session are contiguous and in seq order, whatever the client ids: a
        /// session's messages are one range.
        #[test]
        fn message_keys_sort_by_session_then_seq(
            a in "\\PC{0,12}", b in "\\PC{0,12}", s in any::<u64>(), t in any::<u64>()
        ) {
            let (mut x, mut y) = (MessageKey::default(), MessageKey::default());
            let (kx, ky) = (x.of(&a, s).to_vec(), y.of(&b, t).to_vec());
            prop_assert_eq!(MessageKey::split(&kx), Some((a.as_str(), s)));
            if a == b {
                prop_assert_eq!(kx.cmp(&ky), s.cmp(&t));
            } else {
                let (lo, hi) = MessageKey::bounds(&a, 0, u64::MAX);
                prop_assert!(!(lo..=hi).contains(&ky), "{b:?} {t} within {a:?}'s range");
            }
        }
    }

    #[test]
    fn what_is_not_a_key_is_refused() {
        for bad in [
            &b""[..],
            b"\0",
            b"\0\x05abc",
            b"\0\x01a1234567",
            b"\0\x01\xff12345678",
        ] {
            assert_eq!(MessageKey::split(bad), None, "{bad:?}");
        }
    }
}
