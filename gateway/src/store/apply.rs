//! Writing one batch of changes into a write transaction, each message at most once.
//!
//! Most messages for a connected subscriber are queued, sent and settled within a few
//! milliseconds, so a batch is first read whole for each message's fate: one queued and
//! settled in the same batch is never written; one queued and sent is written once with its
//! stage (no `flows` entry). Messages settled from earlier batches are removed at the end, a
//! run of consecutive seqs of one session in one range removal (a subscriber acknowledges in
//! order), not one B-tree descent each.

use std::sync::Arc;

use redb::{Table, TableDefinition, TableHandle, WriteTransaction};
use rustc_hash::{FxHashMap, FxHashSet};

use super::batch::{Batch, Op, Span};
use super::layout::{
    stage_code, MessageKey, FLOWS, INCOMING, INGEST_IDS, MESSAGES, RETAINED, SESSIONS,
};
use super::record;

/// What a committed batch changed, for the counts and the metrics, and the `flows` entries it
/// added and removed (applied to the writer's set only once the commit succeeded).
#[derive(Default)]
pub(super) struct Applied {
    pub(super) sessions: i64,
    pub(super) messages: i64,
    pub(super) bytes: u64,
    pub(super) flows_added: Vec<(Arc<str>, u64)>,
    pub(super) flows_removed: Vec<(Arc<str>, u64)>,
    pub(super) flows_cleared: Vec<Arc<str>>,
}

/// The messages with a `flows` entry (sent in a later batch than they were written): the
/// writer's knowledge, so that settling any other message needs no removal there.
#[derive(Default)]
pub(super) struct InFlows(FxHashMap<Arc<str>, FxHashSet<u64>>);

impl InFlows {
    fn contains(&self, client: &str, seq: u64) -> bool {
        self.0.get(client).is_some_and(|seqs| seqs.contains(&seq))
    }

    /// Takes in what a committed batch changed.
    pub(super) fn committed(&mut self, applied: &Applied) {
        for c in &applied.flows_cleared {
            self.0.remove(c);
        }
        for (c, seq) in &applied.flows_removed {
            if let Some(seqs) = self.0.get_mut(c) {
                seqs.remove(seq);
                if seqs.is_empty() {
                    self.0.remove(c);
                }
            }
        }
        for (c, seq) in &applied.flows_added {
            self.0.entry(c.clone()).or_default().insert(*seq);
        }
    }
}

impl FromIterator<(Arc<str>, u64)> for InFlows {
    fn from_iter<I: IntoIterator<Item = (Arc<str>, u64)>>(iter: I) -> InFlows {
        let mut flows = InFlows::default();
        for (c, seq) in iter {
            flows.0.entry(c).or_default().insert(seq);
        }
        flows
    }
}

/// What a batch does to one stored message, gathered before it is applied.
#[derive(Default, Clone, Copy)]
struct Fate {
    queued: bool,
    /// The last stage it was sent with, as `stage_code`.
    sent: Option<(u16, u8)>,
    settled: bool,
}

/// A stored message within a batch: its session's number (`Clients`), how many times that
/// session was removed earlier in the batch (a session started anew counts its seqs from 1
/// again), seq.
type Key = (u32, u32, u64);

/// Numbers the sessions a batch mentions, and counts their generations. Looked up by where the
/// name lies in the batch (the changes of one session mostly share it, see `Batch`), so a client
/// id is hashed once per copy, not once per change: a batch may hold a second's worth of them.
#[derive(Default)]
struct Clients<'b> {
    by_span: FxHashMap<Span, u32>,
    by_name: FxHashMap<&'b str, u32>,
    generations: Vec<u32>,
}

impl<'b> Clients<'b> {
    fn named(&mut self, name: &'b str) -> u32 {
        let next = u32::try_from(self.generations.len()).unwrap_or(u32::MAX);
        let id = *self.by_name.entry(name).or_insert(next);
        if id == next {
            self.generations.push(0);
        }
        id
    }

    fn key(&mut self, batch: &'b Batch, client: Span, seq: u64) -> Key {
        let id = match self.by_span.get(&client) {
            Some(&id) => id,
            None => {
                let id = self.named(batch.name(client));
                self.by_span.insert(client, id);
                id
            }
        };
        (id, self.generations[id as usize], seq)
    }

    fn removed(&mut self, name: &'b str) {
        let id = self.named(name);
        self.generations[id as usize] += 1;
    }

    /// For a second pass over the same batch: the numbers stay, generations count again.
    fn restart(&mut self) {
        self.generations.iter_mut().for_each(|g| *g = 0);
    }
}

/// The tables a batch writes, each opened when first needed (opening one checks its
/// definition: a dozen allocations, for a table most batches never touch).
struct Tables<'tx> {
    tx: &'tx WriteTransaction,
    sessions: Option<Table<'tx, &'static str, &'static [u8]>>,
    messages: Option<Table<'tx, &'static [u8], &'static [u8]>>,
    flows: Option<Table<'tx, &'static [u8], (u16, u8)>>,
    incoming: Option<Table<'tx, (&'static str, u16), ()>>,
    retained: Option<Table<'tx, &'static str, &'static [u8]>>,
    ingest_ids: Option<IngestIds<'tx>>,
}

type IngestIds<'tx> = Table<'tx, (&'static str, u16), (u64, u64, u64)>;

fn opened<'s, 'tx, K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &'tx WriteTransaction,
    slot: &'s mut Option<Table<'tx, K, V>>,
    definition: TableDefinition<'static, K, V>,
) -> Result<&'s mut Table<'tx, K, V>, redb::Error> {
    match slot {
        Some(table) => Ok(table),
        None => Ok(slot.insert(tx.open_table(definition)?)),
    }
}

impl<'tx> Tables<'tx> {
    fn new(tx: &'tx WriteTransaction) -> Tables<'tx> {
        Tables {
            tx,
            sessions: None,
            messages: None,
            flows: None,
            incoming: None,
            retained: None,
            ingest_ids: None,
        }
    }
    fn ingest_ids(&mut self) -> Result<&mut IngestIds<'tx>, redb::Error> {
        opened(self.tx, &mut self.ingest_ids, INGEST_IDS)
    }
    /// The table if the store has one: a store that never ingested gets none (opening a table
    /// in a write transaction creates it).
    fn ingest_ids_if_any(&mut self) -> Result<Option<&mut IngestIds<'tx>>, redb::Error> {
        if self.ingest_ids.is_none() {
            let exists = self
                .tx
                .list_tables()?
                .any(|t| t.name() == INGEST_IDS.name());
            if !exists {
                return Ok(None);
            }
        }
        self.ingest_ids().map(Some)
    }
    fn sessions(&mut self) -> Result<&mut Table<'tx, &'static str, &'static [u8]>, redb::Error> {
        opened(self.tx, &mut self.sessions, SESSIONS)
    }
    fn messages(&mut self) -> Result<&mut Table<'tx, &'static [u8], &'static [u8]>, redb::Error> {
        opened(self.tx, &mut self.messages, MESSAGES)
    }
    fn flows(&mut self) -> Result<&mut Table<'tx, &'static [u8], (u16, u8)>, redb::Error> {
        opened(self.tx, &mut self.flows, FLOWS)
    }
    fn incoming(&mut self) -> Result<&mut Table<'tx, (&'static str, u16), ()>, redb::Error> {
        opened(self.tx, &mut self.incoming, INCOMING)
    }
    fn retained(&mut self) -> Result<&mut Table<'tx, &'static str, &'static [u8]>, redb::Error> {
        opened(self.tx, &mut self.retained, RETAINED)
    }
}

/// Applies `batch` in order. `scratch`: a buffer for
/// the records written, kept by the writer from batch to batch.
pub(super) fn apply(
    tx: &WriteTransaction,
    batch: &Batch,
    in_flows: &InFlows,
    scratch: &mut Vec<u8>,
) -> Result<Applied, redb::Error> {
    let mut n = Applied::default();
    let mut fates: FxHashMap<Key, Fate> =
        FxHashMap::with_capacity_and_hasher(batch.ops.len() / 2, Default::default());
    let mut clients = Clients::default();
    for op in &batch.ops {
        match *op {
            Op::Queued { client, seq, .. } => {
                let key = clients.key(batch, client, seq);
                fates.entry(key).or_default().queued = true;
            }
            Op::Sent {
                client,
                seq,
                packet_id,
                stage,
            } => {
                let key = clients.key(batch, client, seq);
                fates.entry(key).or_default().sent = Some((packet_id, stage_code(stage)));
            }
            Op::Settled { client, seq } => {
                let key = clients.key(batch, client, seq);
                fates.entry(key).or_default().settled = true;
            }
            Op::SessionRemoved(ref c) => clients.removed(&c[..]),
            _ => {}
        }
    }
    let fate = |key: &Key| fates.get(key).copied().unwrap_or_default();
    clients.restart();
    // Messages from earlier batches settled in this one, removed at the end.
    let mut settled: Vec<(&str, u64)> = Vec::new();
    let mut t = Tables::new(tx);
    let mut key = MessageKey::default();
    for op in &batch.ops {
        match op {
            Op::Session(s) => {
                let bytes = record::session(s);
                n.bytes += (s.client_id.len() + bytes.len()) as u64;
                if t.sessions()?
                    .insert(&s.client_id[..], bytes.as_slice())?
                    .is_none()
                {
                    n.sessions += 1;
                }
            }
            Op::SessionRemoved(c) => {
                let c = &c[..];
                clients.removed(c);
                // Its messages settled so far go with the rest.
                settled.retain(|(s, _)| *s != c);
                if t.sessions()?.remove(c)?.is_some() {
                    n.sessions -= 1;
                }
                let (lo, hi) = MessageKey::bounds(c, 0, u64::MAX);
                t.messages()?
                    .retain_in(lo.as_slice()..=hi.as_slice(), |_, _| {
                        n.messages -= 1;
                        false
                    })?;
                t.flows()?
                    .retain_in(lo.as_slice()..=hi.as_slice(), |_, _| false)?;
                n.flows_cleared.push(Arc::from(c));
                t.incoming()?
                    .retain_in((c, 0)..=(c, u16::MAX), |_, _| false)?;
                if let Some(ids) = t.ingest_ids_if_any()? {
                    ids.retain_in((c, 0)..=(c, u16::MAX), |_, _| false)?;
                }
            }
            &Op::Queued {
                client,
                seq,
                record,
            } => {
                let c = batch.name(client);
                let fate = fate(&clients.key(batch, client, seq));
                if !fate.settled {
                    record::delivery(scratch, fate.sent, batch.record(record));
                    let k = key.of(c, seq);
                    n.bytes += (k.len() + scratch.len()) as u64;
                    t.messages()?.insert(k, scratch.as_slice())?;
                    n.messages += 1;
                }
            }
            &Op::Sent {
                client,
                seq,
                packet_id,
                stage,
            } => {
                let c = batch.name(client);
                let fate = fate(&clients.key(batch, client, seq));
                if !fate.queued && !fate.settled {
                    let k = key.of(c, seq);
                    n.bytes += (k.len() + 3) as u64;
                    t.flows()?.insert(k, (packet_id, stage_code(stage)))?;
                    n.flows_added.push((Arc::from(c), seq));
                }
            }
            &Op::Settled { client, seq } => {
                let c = batch.name(client);
                // (Sent in this batch too, it was skipped above: settled.)
                if !fate(&clients.key(batch, client, seq)).queued {
                    settled.push((c, seq));
                    if in_flows.contains(c, seq) {
                        t.flows()?.remove(key.of(c, seq))?;
                        n.flows_removed.push((Arc::from(c), seq));
                    }
                }
            }
            Op::Incoming(c, id, held) => {
                if *held {
                    n.bytes += (c.len() + 2) as u64;
                    t.incoming()?.insert((&c[..], *id), ())?;
                } else {
                    t.incoming()?.remove((&c[..], *id))?;
                }
            }
            Op::Retained(topic, m) => match m {
                Some(m) => {
                    let bytes = record::retained(m);
                    n.bytes += (topic.len() + bytes.len()) as u64;
                    t.retained()?.insert(&topic[..], bytes.as_slice())?;
                }
                None => {
                    t.retained()?.remove(&topic[..])?;
                }
            },
            Op::IngestId(c, new) => {
                let id = &new.id;
                let ids = t.ingest_ids()?;
                if let Some(gone) = new.evicted.filter(|&gone| gone != id.packet_id) {
                    ids.remove((&c[..], gone))?;
                }
                n.bytes += (c.len() + 26) as u64;
                ids.insert((&c[..], id.packet_id), (id.epoch, id.content, id.n))?;
            }
        }
    }
    settled.sort_unstable();
    settled.dedup();
    for run in settled.chunk_by(|a, b| a.0 == b.0 && a.1 + 1 == b.1) {
        let (c, from) = run[0];
        let to = from + run.len() as u64 - 1;
        let (lo, hi) = MessageKey::bounds(c, from, to);
        t.messages()?
            .retain_in(lo.as_slice()..=hi.as_slice(), |_, _| {
                n.messages -= 1;
                false
            })?;
    }
    Ok(n)
}
