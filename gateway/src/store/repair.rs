//! `gateway store repair DIR`: a store that redb refuses (truncated, damaged pages) rebuilt from
//! whatever of it still verifies, the damaged file kept beside it.
//!
//! What is kept is what `pages` could verify: every entry of an intact page of the last intact
//! commit, each also decoded as the gateway will decode it. A table of which the tree tells
//! nothing (its root page lost, or the page of the table list naming it) is taken instead from
//! every page of the file that still decodes as one of its leaves, as when no commit verifies
//! at all: the tree knows nothing to contradict them, and without them a cut one page further
//! would recover more than a cut that happened to take a root. The new store is written to
//! a file of its own, read back whole as `gateway store check` would, and only then put in
//! place: the damaged file is renamed, never overwritten, so a repair can always be undone by
//! hand. What was lost is said in counts (pages, entries), since its contents cannot be known.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use redb::{Durability, Key, TableHandle, Value};

use super::batch::Batch;
use super::inspect::{check_store, StoreSummary};
use super::layout::{
    open_database, quietly, unreadable, MessageKey, FILE, FLOWS, FORMAT, INCOMING, JOURNAL,
    MESSAGES, RETAINED, SESSIONS,
};
use super::pages::{read_tables, scan_leaves, Salvaged, Unreadable, Widths};
use super::record;
use super::StoreError;

/// What `repair_store` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// What the store holds now (after the repair, or as it was when it needed none).
    pub summary: StoreSummary,
    /// Where the damaged file was kept; None when the store was sound and left alone.
    pub damaged_kept_as: Option<PathBuf>,
    /// How what was kept was found.
    pub found: Found,
    /// Entries that did not decode (skipped).
    pub skipped_entries: usize,
}

/// Where a repair found what it kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The store was sound: nothing done.
    Sound,
    /// In the tree of a commit: exact, but for the subtrees of the pages that were lost.
    Tree {
        lost_pages: usize,
        /// The newest commit was damaged: the one before it was restored.
        older_commit: bool,
        /// Tables whose root was lost, taken from loose pages instead (as `Loose` says), and
        /// how many of their keys were found with differing values.
        loose: Vec<&'static str>,
        versions: usize,
    },
    /// No commit led to the tables any more: every page of the file that still decodes as one
    /// of them, old copies among them. Entries removed shortly before the damage may be back
    /// (a message delivered again, an older retained message); `versions` keys were found
    /// with differing values, of which one was kept.
    Loose { versions: usize },
}

/// The tables a repair rebuilds, and what a valid entry of each is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Sessions,
    Messages,
    Flows,
    Incoming,
    Retained,
    Journal,
}

impl Table {
    /// The tables whose leaves `loose` tells apart by decoding them.
    const LOOSE: [Table; 4] = [
        Table::Sessions,
        Table::Retained,
        Table::Messages,
        Table::Flows,
    ];

    const ALL: [Table; 6] = [
        Table::Sessions,
        Table::Messages,
        Table::Flows,
        Table::Incoming,
        Table::Retained,
        Table::Journal,
    ];

    fn name(self) -> &'static str {
        match self {
            Table::Sessions => SESSIONS.name(),
            Table::Messages => MESSAGES.name(),
            Table::Flows => FLOWS.name(),
            Table::Incoming => INCOMING.name(),
            Table::Retained => RETAINED.name(),
            Table::Journal => JOURNAL.name(),
        }
    }

    /// Whether the entry decodes as the gateway will decode it at start.
    fn valid(self, k: &[u8], v: &[u8]) -> bool {
        match self {
            Table::Sessions => {
                std::str::from_utf8(k).is_ok_and(|c| record::read_session(c, v).is_ok())
            }
            Table::Messages => {
                MessageKey::split(k).is_some_and(|(_, seq)| record::read_delivery(v, seq).is_ok())
            }
            Table::Flows => MessageKey::split(k).is_some() && fits::<(u16, u8)>(v),
            Table::Incoming => {
                fits::<()>(v) && quietly(|| <(&str, u16)>::from_bytes(k).0.len()).is_ok()
            }
            Table::Retained => std::str::from_utf8(k)
                .is_ok_and(|topic| record::read_retained(v).is_ok_and(|m| &m.topic[..] == topic)),
            Table::Journal => fits::<u64>(k) && Batch::decode(v).is_ok(),
        }
    }
}

/// Repairs the store in `dir` when it needs it; a sound store is left as it is.
pub fn repair_store(dir: &Path) -> Result<RepairReport, StoreError> {
    let path = dir.join(FILE);
    // Copied before anything opens it: opening lets redb write (its own recovery, our format
    // mark), and the damaged file is kept exactly as it was found.
    let kept = dir.join(format!(
        "{FILE}.damaged-{}",
        crate::clock::unix_millis() / 1000
    ));
    std::fs::copy(&path, &kept).map_err(|e| unreadable(&path, e))?;
    let repaired = match check_store(dir) {
        Ok(summary) => Ok(RepairReport {
            summary,
            damaged_kept_as: None,
            found: Found::Sound,
            skipped_entries: 0,
        }),
        Err(_) => rebuild(dir, &kept),
    };
    // Kept only beside a store that was rebuilt (a failed repair changed nothing).
    if !repaired.as_ref().is_ok_and(|r| r.damaged_kept_as.is_some()) {
        let _ = std::fs::remove_file(&kept);
    }
    repaired
}

/// Rebuilds the store of `dir` from `kept`, the copy of its damaged file.
fn rebuild(dir: &Path, kept: &Path) -> Result<RepairReport, StoreError> {
    let path = dir.join(FILE);
    let file = File::open(kept).map_err(|e| unreadable(kept, e))?;
    let (tables, found) = match read_tables(&file) {
        Ok(readable) => {
            refuse_foreign(&path, &readable.tables)?;
            let lost_pages = readable.lost_table_pages
                + readable
                    .tables
                    .values()
                    .map(|t| t.lost_pages)
                    .sum::<usize>();
            let mut tables = readable.tables;
            let unknown: Vec<&'static str> = Table::LOOSE
                .iter()
                .map(|t| t.name())
                .filter(|name| match tables.get(*name) {
                    Some(table) => table.root_lost,
                    None => readable.lost_table_pages > 0,
                })
                .collect();
            let mut versions = 0;
            if !unknown.is_empty() {
                let found = loose(&file).map_err(|e| unreadable(&path, e))?;
                for (name, (salvaged, v)) in found {
                    if unknown.contains(&name) {
                        versions += v;
                        tables.insert(name.to_owned(), salvaged);
                    }
                }
            }
            let found = Found::Tree {
                lost_pages,
                older_commit: readable.older_commit,
                loose: unknown,
                versions,
            };
            (tables, found)
        }
        Err(Unreadable::NoCommit) => {
            let found = loose(&file).map_err(|e| unreadable(&path, e))?;
            let versions = found.values().map(|(_, v)| v).sum();
            let tables = found
                .into_iter()
                .map(|(name, (salvaged, _))| (name.to_owned(), salvaged))
                .collect();
            (tables, Found::Loose { versions })
        }
        Err(e) => return Err(unreadable(&path, e)),
    };
    drop(file);

    // Built and checked under the store's own name in a directory of its own, then moved in
    // place of the damaged file: the store is either the damaged one or the sound new one.
    let scratch = dir.join(".repair");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir(&scratch).map_err(|e| unreadable(&scratch, e))?;
    let built = (|| {
        let skipped = write(&scratch.join(FILE), &tables)?;
        let summary = check_store(&scratch)?;
        std::fs::rename(scratch.join(FILE), &path).map_err(|e| unreadable(&path, e))?;
        Ok((skipped, summary))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let (skipped_entries, summary) = built?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| unreadable(dir, e))?;
    Ok(RepairReport {
        summary,
        damaged_kept_as: Some(kept.to_owned()),
        found,
        skipped_entries,
    })
}

/// A store of another format is not ours to rebuild.
fn refuse_foreign(path: &Path, tables: &BTreeMap<String, Salvaged>) -> Result<(), StoreError> {
    let format = tables
        .get("meta")
        .and_then(|m| m.entries.iter().find(|(k, _)| k == b"format"));
    match format {
        Some((_, f)) if f != FORMAT.as_bytes() => Err(unreadable(
            path,
            format!(
                "a store of another format ({:?}): not repaired",
                String::from_utf8_lossy(f)
            ),
        )),
        _ => Ok(()),
    }
}

/// The tables from every leaf of the file that decodes as one of them, each with how many of
/// its keys were found with differing values (the first found is kept).
fn loose(file: &File) -> Result<BTreeMap<&'static str, (Salvaged, usize)>, Unreadable> {
    const FLOWS_WIDTHS: Widths = Widths {
        key: None,
        value: Some(3),
    };
    /// A table's entries by key, and how many keys were seen with another value.
    type Kept = (BTreeMap<Vec<u8>, Vec<u8>>, usize);
    let mut found: BTreeMap<&'static str, Kept> = BTreeMap::new();
    scan_leaves(
        file,
        &[Widths::VARIABLE, FLOWS_WIDTHS],
        |widths, entries| {
            let mut entries = entries.peekable();
            let Some(&(k, v)) = entries.peek() else {
                return;
            };
            // A page holds one table's entries: the first that decodes names it.
            let candidates: &[Table] = if widths == 0 {
                &[Table::Sessions, Table::Retained, Table::Messages]
            } else {
                &[Table::Flows]
            };
            let Some(table) = candidates.iter().find(|t| t.valid(k, v)) else {
                return;
            };
            let (kept, versions) = found.entry(table.name()).or_default();
            for (k, v) in entries.filter(|(k, v)| table.valid(k, v)) {
                match kept.get(k) {
                    Some(old) if old.as_slice() != v => *versions += 1,
                    Some(_) => {}
                    None => {
                        kept.insert(k.to_vec(), v.to_vec());
                    }
                }
            }
        },
    )?;
    Ok(found
        .into_iter()
        .map(|(name, (entries, versions))| {
            let salvaged = Salvaged {
                entries: entries.into_iter().collect(),
                lost_pages: 0,
                root_lost: false,
            };
            (name, (salvaged, versions))
        })
        .collect())
}

/// A new store at `new` holding the valid entries of `tables`; returns how many were not.
fn write(new: &Path, tables: &BTreeMap<String, Salvaged>) -> Result<usize, StoreError> {
    let db = open_database(new)?;
    let mut skipped = 0;
    let written = quietly(|| -> Result<(), redb::Error> {
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        for table in Table::ALL {
            let Some(salvaged) = tables.get(table.name()) else {
                continue;
            };
            let valid = salvaged.entries.iter().filter(|(k, v)| table.valid(k, v));
            let valid: Vec<_> = valid.collect();
            skipped += salvaged.entries.len() - valid.len();
            match table {
                Table::Sessions => insert(&tx, SESSIONS, &valid)?,
                Table::Messages => insert(&tx, MESSAGES, &valid)?,
                Table::Flows => insert(&tx, FLOWS, &valid)?,
                Table::Incoming => insert(&tx, INCOMING, &valid)?,
                Table::Retained => insert(&tx, RETAINED, &valid)?,
                Table::Journal => insert(&tx, JOURNAL, &valid)?,
            }
        }
        tx.commit()?;
        Ok(())
    });
    match written {
        Ok(Ok(())) => Ok(skipped),
        Ok(Err(e)) => Err(unreadable(
            new,
            format!("cannot write the repaired store: {e}"),
        )),
        Err(_) => Err(unreadable(new, "cannot write the repaired store")),
    }
}

/// Inserts entries as raw bytes, already known to decode as `K` and `V`.
fn insert<K: Key + 'static, V: Value + 'static>(
    tx: &redb::WriteTransaction,
    definition: redb::TableDefinition<K, V>,
    entries: &[&(Vec<u8>, Vec<u8>)],
) -> Result<(), redb::Error> {
    let mut table = tx.open_table(definition)?;
    for (k, v) in entries {
        table.insert(K::from_bytes(k), V::from_bytes(v))?;
    }
    Ok(())
}

fn fits<T: Value>(b: &[u8]) -> bool {
    T::fixed_width().map_or(true, |w| w == b.len())
}
