//! Reading a redb file that redb itself refuses (truncated, or with damaged pages), for
//! `gateway store repair`: only what still verifies, never a guess.
//!
//! redb opens a file only whole: a file shorter than its recorded layout is refused, and a
//! damaged page met during its start-up walk panics inside it. Yet a B-tree whose every parent
//! holds its children's checksums (redb's pages form a Merkle tree from the commit slot down)
//! tells exactly which parts are intact. This module walks the tables of the last commit whose
//! slot verifies, reads each page from the file itself (a page past the end of a truncated
//! file is simply missing), keeps the entries of every page whose checksum matches the one its
//! parent recorded, and counts the pages it had to leave. A page that was freed by a later
//! commit (redb writes copies, never in place) is never reached: only the live tree is walked,
//! so nothing deleted comes back.
//!
//! The format read is redb's file format 3 (redb 5's `docs/design.md`: the super-header, the
//! commit slots, branch and leaf pages, the table tree's definitions); any other is refused.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

const MAGIC: &[u8; 9] = b"redb\x1a\x0a\xa9\x0d\x0a";
const FORMAT_VERSION: u8 = 3;
const SLOTS: [usize; 2] = [64, 192];
const SLOT_LEN: usize = 128;
/// The slot's own checksum covers the bytes before it.
const SLOT_CHECKSUMMED: usize = SLOT_LEN - 16;
const USER_ROOT_PRESENT: usize = 1;
const USER_ROOT: usize = 8;
const LEAF: u8 = 1;
const BRANCH: u8 = 2;
/// redb's own bound on a tree's depth: no real tree comes near it; a deeper one is damage.
const MAX_DEPTH: usize = 128;
/// redb's table type byte for a plain (not multimap) table.
const NORMAL_TABLE: u8 = 3;

/// Why nothing at all can be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unreadable {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a redb file (no redb header)")]
    NotRedb,
    #[error("a redb file of format {0}, this gateway reads format {FORMAT_VERSION}")]
    Format(u8),
    #[error("its header is damaged ({0})")]
    Header(&'static str),
    #[error("neither commit slot leads to an intact table list")]
    NoCommit,
}

/// A tree's root as its parent records it.
#[derive(Debug, Clone, Copy)]
struct Root {
    page: u64,
    checksum: u128,
}

impl Root {
    fn parse(b: &[u8]) -> Option<Root> {
        Some(Root {
            page: u64::from_le_bytes(b.get(..8)?.try_into().ok()?),
            checksum: u128::from_le_bytes(b.get(8..24)?.try_into().ok()?),
        })
    }
}

/// One table of the file as far as it could be read.
#[derive(Debug, Default)]
pub(super) struct Salvaged {
    /// Key and value bytes exactly as redb wrote them, in key order.
    pub(super) entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Pages of this table that could not be read or did not verify (their subtrees are lost).
    pub(super) lost_pages: usize,
    /// Its root page was among them: nothing of the table is known from the tree.
    pub(super) root_lost: bool,
}

/// What the file still holds: its tables by name, and whether the newest commit was used.
#[derive(Debug)]
pub(super) struct Readable {
    pub(super) tables: BTreeMap<String, Salvaged>,
    /// The newest commit did not verify: the one before it was read.
    pub(super) older_commit: bool,
    /// Pages of the table list itself that were lost (with every table they named).
    pub(super) lost_table_pages: usize,
}

/// The file's geometry, from its super-header.
struct Geometry {
    page_size: u64,
    region_header_pages: u64,
    region_max_data_pages: u64,
}

impl Geometry {
    /// Where page `number` (redb's packed page number) lies in the file.
    fn range(&self, number: u64) -> Option<(u64, usize)> {
        let order = (number >> 59) as u32;
        if order > 20 {
            return None;
        }
        let index = number & (0x000F_FFFF >> order);
        let region = (number >> 20) & 0x000F_FFFF;
        let len = self.page_size.checked_shl(order)?;
        let region_len = (self.region_header_pages + self.region_max_data_pages) * self.page_size;
        let start = self.page_size // the super-header's page
            + region * region_len
            + self.region_header_pages * self.page_size
            + index * len;
        Some((start, usize::try_from(len).ok()?))
    }
}

/// The super-header, its geometry checked.
fn header(file: &File) -> Result<([u8; 320], Geometry), Unreadable> {
    let mut head = [0u8; 320];
    file.read_exact_at(&mut head, 0)
        .map_err(|_| Unreadable::NotRedb)?;
    if &head[..9] != MAGIC {
        return Err(Unreadable::NotRedb);
    }
    let u32_at = |at: usize| {
        u64::from(u32::from_le_bytes([
            head[at],
            head[at + 1],
            head[at + 2],
            head[at + 3],
        ]))
    };
    let geometry = Geometry {
        page_size: u32_at(12),
        region_header_pages: u32_at(16),
        region_max_data_pages: u32_at(20),
    };
    if !geometry.page_size.is_power_of_two() || !(512..=(1 << 20)).contains(&geometry.page_size) {
        return Err(Unreadable::Header("page size"));
    }
    if geometry.region_max_data_pages == 0 {
        return Err(Unreadable::Header("region size"));
    }
    Ok((head, geometry))
}

/// Reads what verifies of every table of the file.
pub(super) fn read_tables(file: &File) -> Result<Readable, Unreadable> {
    let (head, geometry) = header(file)?;
    let primary = usize::from(head[9] & 1);
    let reader = Reader { file, geometry };
    let mut format_seen = None;
    for (i, slot_index) in [primary, 1 - primary].into_iter().enumerate() {
        let slot = &head[SLOTS[slot_index]..SLOTS[slot_index] + SLOT_LEN];
        let stored = u128::from_le_bytes(slot[SLOT_CHECKSUMMED..].try_into().unwrap_or_default());
        if xxh3(&slot[..SLOT_CHECKSUMMED]) != stored {
            continue;
        }
        if slot[0] != FORMAT_VERSION {
            format_seen = Some(slot[0]);
            continue;
        }
        if slot[USER_ROOT_PRESENT] == 0 {
            // A store with no table at all: intact and empty.
            return Ok(Readable {
                tables: BTreeMap::new(),
                older_commit: i > 0,
                lost_table_pages: 0,
            });
        }
        let Some(root) = Root::parse(&slot[USER_ROOT..]) else {
            continue;
        };
        // The table list's root must verify, or this commit is not the one to read.
        let Some(list) = reader.walk(root, Widths::VARIABLE) else {
            continue;
        };
        let mut tables = BTreeMap::new();
        for (name, definition) in list.entries {
            let (Ok(name), Some(table)) = (String::from_utf8(name), Definition::parse(&definition))
            else {
                continue;
            };
            let salvaged = match table.root {
                None => Salvaged::default(),
                Some(root) => reader.walk(root, table.widths).unwrap_or(Salvaged {
                    entries: Vec::new(),
                    lost_pages: 1,
                    root_lost: true,
                }),
            };
            tables.insert(name, salvaged);
        }
        return Ok(Readable {
            tables,
            older_commit: i > 0,
            lost_table_pages: list.lost_pages,
        });
    }
    Err(format_seen.map_or(Unreadable::NoCommit, Unreadable::Format))
}

/// Fixed key and value widths of a table (None: variable, with end offsets in each page).
#[derive(Debug, Clone, Copy)]
pub(super) struct Widths {
    pub(super) key: Option<usize>,
    pub(super) value: Option<usize>,
}

impl Widths {
    pub(super) const VARIABLE: Widths = Widths {
        key: None,
        value: None,
    };
}

/// A table's definition as the table list holds it (redb's `InternalTableDefinition`).
struct Definition {
    root: Option<Root>,
    widths: Widths,
}

impl Definition {
    fn parse(b: &[u8]) -> Option<Definition> {
        if *b.first()? != NORMAL_TABLE {
            return None;
        }
        // type, length (u64), root present, root (page, checksum, length), then the widths.
        let root = (*b.get(9)? != 0)
            .then(|| Root::parse(b.get(10..)?))
            .flatten();
        if *b.get(9)? != 0 && root.is_none() {
            return None;
        }
        let width = |at: usize| -> Option<Option<usize>> {
            let present = *b.get(at)? != 0;
            let w = u32::from_le_bytes(b.get(at + 1..at + 5)?.try_into().ok()?);
            Some(present.then_some(w as usize))
        };
        Some(Definition {
            root,
            widths: Widths {
                key: width(42)?,
                value: width(47)?,
            },
        })
    }
}

struct Reader<'a> {
    file: &'a File,
    geometry: Geometry,
}

impl Reader<'_> {
    /// The page `root.page` if it is in the file whole and its checksum is `root.checksum`.
    fn page(&self, root: Root, widths: Widths) -> Option<Page> {
        let (start, len) = self.geometry.range(root.page)?;
        let mut bytes = vec![0u8; len];
        self.file.read_exact_at(&mut bytes, start).ok()?;
        let page = Page::parse(bytes, widths)?;
        (xxh3(page.checksummed()) == root.checksum).then_some(page)
    }

    /// Every entry of the tree at `root` whose page verifies; None when the root itself does not.
    fn walk(&self, root: Root, widths: Widths) -> Option<Salvaged> {
        let mut out = Salvaged::default();
        let first = self.page(root, widths)?;
        let mut stack = vec![(first, 0usize)];
        while let Some((page, depth)) = stack.pop() {
            match page {
                Page::Leaf { bytes, entries, .. } => {
                    out.entries.extend(
                        entries
                            .into_iter()
                            .map(|(k, v)| (bytes[k].to_vec(), bytes[v].to_vec())),
                    );
                }
                Page::Branch { children, .. } => {
                    // Children pushed last first, so that entries come out in key order.
                    for child in children.into_iter().rev() {
                        match (depth < MAX_DEPTH)
                            .then(|| self.page(child, widths))
                            .flatten()
                        {
                            Some(p) => stack.push((p, depth + 1)),
                            None => out.lost_pages += 1,
                        }
                    }
                }
            }
        }
        Some(out)
    }
}

/// A leaf too large for this is not one (redb's own limit on a value is 3 GiB, but a store's
/// pages are small: records of a few KiB, messages up to the configured maximum).
const MAX_LOOSE_PAGE: usize = 64 << 20;

/// Every page-aligned place of the file that parses as a leaf with one of `widths`, in file
/// order, handed to `each` with the index of the widths it parsed with and its entries: for when
/// no commit leads to the tables any more (the pages of the table list were lost). Nothing here
/// is verified, and pages freed by later commits are among them: the caller decides what an
/// entry is by decoding it. Returns the number of places looked at.
pub(super) fn scan_leaves(
    file: &File,
    widths: &[Widths],
    mut each: impl FnMut(usize, &mut dyn Iterator<Item = (&[u8], &[u8])>),
) -> Result<u64, Unreadable> {
    let (_, geometry) = header(file)?;
    let len = file.metadata()?.len();
    let step = geometry.page_size;
    let mut head = vec![0u8; usize::try_from(step).unwrap_or(4096)];
    let mut places = 0;
    let mut at = step;
    while at < len {
        places += 1;
        let n = usize::try_from((len - at).min(step)).unwrap_or(0);
        file.read_exact_at(&mut head[..n], at)?;
        for (i, w) in widths.iter().enumerate() {
            let Some(extent) = leaf_extent(&head[..n], *w) else {
                continue;
            };
            if extent > MAX_LOOSE_PAGE || at + extent as u64 > len {
                continue;
            }
            let bytes = if extent <= n {
                head[..extent].to_vec()
            } else {
                let mut b = vec![0u8; extent];
                file.read_exact_at(&mut b, at)?;
                b
            };
            if let Some(Page::Leaf { bytes, entries, .. }) = Page::parse(bytes, *w) {
                each(
                    i,
                    &mut entries
                        .iter()
                        .map(|(k, v)| (&bytes[k.clone()], &bytes[v.clone()])),
                );
                break;
            }
        }
        at += step;
    }
    Ok(places)
}

/// How long a leaf starting with `head` is (the end of its last value), if `head` says.
fn leaf_extent(head: &[u8], w: Widths) -> Option<usize> {
    if *head.first()? != LEAF {
        return None;
    }
    let n = usize::from(u16::from_le_bytes(head.get(2..4)?.try_into().ok()?));
    let last = n.checked_sub(1)?;
    let u32_at =
        |at: usize| Some(u32::from_le_bytes(head.get(at..at + 4)?.try_into().ok()?) as usize);
    let keys_start = 4 + 4 * n * (usize::from(w.key.is_none()) + usize::from(w.value.is_none()));
    let key_end = match w.key {
        Some(kw) => keys_start + kw * n,
        None => u32_at(4 + 4 * last)?,
    };
    match w.value {
        Some(vw) => Some(key_end + vw * n),
        None => u32_at(4 + 4 * n * usize::from(w.key.is_none()) + 4 * last),
    }
}

type Span = std::ops::Range<usize>;

/// A page, its offsets checked against its length.
enum Page {
    Leaf {
        bytes: Vec<u8>,
        entries: Vec<(Span, Span)>,
        end: usize,
    },
    Branch {
        bytes: Vec<u8>,
        children: Vec<Root>,
        end: usize,
    },
}

impl Page {
    fn parse(bytes: Vec<u8>, widths: Widths) -> Option<Page> {
        let n = usize::from(u16::from_le_bytes(bytes.get(2..4)?.try_into().ok()?));
        let u32_at = |at: usize| -> Option<usize> {
            Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
        };
        match *bytes.first()? {
            LEAF if n > 0 => {
                let key_ends = 4;
                let value_ends = key_ends + if widths.key.is_none() { 4 * n } else { 0 };
                let keys_start = value_ends + if widths.value.is_none() { 4 * n } else { 0 };
                let key_end = |i: usize| match widths.key {
                    Some(w) => Some(keys_start + w * (i + 1)),
                    None => u32_at(key_ends + 4 * i),
                };
                let values_start = key_end(n - 1)?;
                let value_end = |i: usize| match widths.value {
                    Some(w) => Some(values_start + w * (i + 1)),
                    None => u32_at(value_ends + 4 * i),
                };
                let mut entries = Vec::with_capacity(n);
                let (mut k, mut v) = (keys_start, values_start);
                for i in 0..n {
                    let (ke, ve) = (key_end(i)?, value_end(i)?);
                    if ke < k || ve < v || ke > values_start || ve > bytes.len() {
                        return None;
                    }
                    entries.push((k..ke, v..ve));
                    (k, v) = (ke, ve);
                }
                Some(Page::Leaf {
                    bytes,
                    entries,
                    end: v,
                })
            }
            BRANCH if n > 0 => {
                let checksums = 8;
                let pages = checksums + 16 * (n + 1);
                let key_ends = pages + 8 * (n + 1);
                let end = match widths.key {
                    Some(w) => key_ends + w * n,
                    None => u32_at(key_ends + 4 * (n - 1))?,
                };
                if end > bytes.len() {
                    return None;
                }
                let children = (0..=n)
                    .map(|i| {
                        let page = bytes.get(pages + 8 * i..pages + 8 * i + 8)?;
                        let sum = bytes.get(checksums + 16 * i..checksums + 16 * i + 16)?;
                        Some(Root {
                            page: u64::from_le_bytes(page.try_into().ok()?),
                            checksum: u128::from_le_bytes(sum.try_into().ok()?),
                        })
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(Page::Branch {
                    bytes,
                    children,
                    end,
                })
            }
            _ => None,
        }
    }

    /// What redb's checksum of the page covers: up to the end of its last key or value.
    fn checksummed(&self) -> &[u8] {
        match self {
            Page::Leaf { bytes, end, .. } | Page::Branch { bytes, end, .. } => &bytes[..*end],
        }
    }
}

fn xxh3(b: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(b)
}
