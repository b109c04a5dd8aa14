//! Remote interest: which other nodes want which filters, learnt over NATS.
//!
//! A node forwards a message only if some other node has a matching subscription, so that a
//! node nobody elsewhere listens to sends nothing to NATS. Each node therefore mirrors the
//! others' filters (not their subscribers: one entry per (node, group, filter), as the topic
//! index reports first-in and last-out) in a `TopicIndex` keyed by node, the same structure
//! local routing uses, with its result cache.
//!
//! How nodes learn it, on core NATS only (no consensus: each node is the only writer of its
//! own set, and the others copy it):
//! - `add` / `remove` deltas, broadcast on `{prefix}.c.all`, each numbered by its sender
//!   (`version`, +1 per delta). NATS keeps one connection's messages in order, so a receiver
//!   applies version v+1 after v; a gap, an unknown node or a new instance (restart) means it
//!   missed something, and it asks that node for a snapshot (`sync`, sent to the node's own
//!   subject `{prefix}.c.node.{name}`), ignoring deltas until the snapshot replaces the set.
//! - `hello` when a node's connection comes up (start, or back after an outage): it carries
//!   the node's whole set, and every other node answers with a snapshot of its own sent
//!   directly to the newcomer.
//! - `beat` every second with the sender's version: a receiver whose copy has another version
//!   asks for a snapshot, so a lost delta heals within a beat. A node not heard from for
//!   `PEER_TIMEOUT` (crashed, cut off from NATS) is dropped with all its interest, unless
//!   every other node fell silent with it (then after `ALL_SILENT_TIMEOUT`: see there); `bye`
//!   drops it at once on a clean shutdown.
//!
//! Each entry says whether a persistent session subscribes to it (`durable`): the node counts
//! its persistent subscribers per entry (`Interest::PersistentIn` / `PersistentOut` from the
//! router) and announces the entry again when that count leaves or reaches zero. A sender can
//! tell from it which nodes hold what must not be lost. A node that falls silent, or says it is
//! leaving (a restart, expected back), leaves its durable plain entries behind as owed
//! (`owed`): what they match has nowhere safe to go until its sessions have a home again.
//!
//! Worst cases are bounded: a node missing a delta forwards a message nobody wants (wasted, not
//! wrong) or does not forward one for at most a beat (the new subscriber's first messages from
//! other nodes are lost, as for a message racing a subscribe on one node).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::owed::Owed;
use crate::topic_index::{Matches, TopicIndex};

/// A node silent for this long is taken as gone (beats come every second)...
pub(crate) const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// ...unless every other node fell silent with it: that is more likely this node's own trouble
/// or NATS's (a CPU-starved box, a congested connection) than every peer dying at once, and
/// dropping all remote interest would lose what this node's publishers send meanwhile. Nodes
/// silent together are taken as gone after this. A node with a single peer cannot tell the two
/// apart and keeps `PEER_TIMEOUT`.
pub(crate) const ALL_SILENT_TIMEOUT: Duration = Duration::from_secs(30);
/// At most one snapshot request per node in this time: beats and deltas that keep disagreeing
/// while a snapshot is on its way must not ask again and again.
const SYNC_BACKOFF: Duration = Duration::from_millis(500);

/// Interest in one filter, in a shared group or not.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub(crate) struct Entry {
    #[serde(rename = "g", default, skip_serializing_if = "Option::is_none")]
    pub(crate) group: Option<String>,
    #[serde(rename = "f")]
    pub(crate) filter: String,
}

/// An entry as announced, with whether a persistent session subscribes to it. `d` is left out
/// when false, and nodes that predate it read an entry without it as not durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Announced {
    #[serde(flatten)]
    pub(crate) entry: Entry,
    #[serde(rename = "d", default, skip_serializing_if = "is_false")]
    pub(crate) durable: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The control messages between nodes (JSON: small, rare, and readable with `nats sub`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub(crate) enum Control {
    /// A node's connection came up; its snapshot follows on the same subject.
    Hello {
        node: String,
        instance: u64,
    },
    /// One part of a node's whole set at `version`; the last part has `more` false. A set too
    /// large for one NATS message (1 MiB by default) is sent in parts (`snapshot_parts`).
    Snapshot {
        node: String,
        instance: u64,
        version: u64,
        entries: Vec<Announced>,
        more: bool,
    },
    /// An entry new, or announced again with another `durable`.
    Add {
        node: String,
        instance: u64,
        version: u64,
        #[serde(flatten)]
        entry: Entry,
        #[serde(rename = "d", default, skip_serializing_if = "is_false")]
        durable: bool,
    },
    Remove {
        node: String,
        instance: u64,
        version: u64,
        #[serde(flatten)]
        entry: Entry,
    },
    Beat {
        node: String,
        instance: u64,
        version: u64,
    },
    /// "Send me your snapshot": to the asked node's own subject.
    Sync {
        node: String,
    },
    Bye {
        node: String,
        instance: u64,
    },
    /// To the sending node's own subject: everything it sent to `node` from `from` up to
    /// `seq` (its start `to`) is taken in and stored, but the `refused` ones (`watermark`).
    Ack {
        node: String,
        to: u64,
        from: u64,
        seq: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        refused: Vec<u64>,
        /// Shared-group messages taken in (`watermark::ANY`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        took: Vec<u64>,
    },
}

impl Control {
    /// The instance of the node that sent it, where the message carries it.
    pub(crate) fn instance(&self) -> Option<u64> {
        match self {
            Control::Hello { instance, .. }
            | Control::Snapshot { instance, .. }
            | Control::Add { instance, .. }
            | Control::Remove { instance, .. }
            | Control::Beat { instance, .. }
            | Control::Bye { instance, .. } => Some(*instance),
            Control::Sync { .. } | Control::Ack { .. } => None,
        }
    }

    pub(crate) fn sender(&self) -> &str {
        match self {
            Control::Hello { node, .. }
            | Control::Snapshot { node, .. }
            | Control::Add { node, .. }
            | Control::Remove { node, .. }
            | Control::Beat { node, .. }
            | Control::Sync { node }
            | Control::Bye { node, .. }
            | Control::Ack { node, .. } => node,
        }
    }
}

/// What applying a control message asks of the link.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Nothing,
    /// Send our snapshot to this node.
    SnapshotTo(String),
    /// Ask this node for its snapshot.
    SyncFrom(String),
}

/// Another node as this one knows it.
struct Peer {
    id: u32,
    instance: u64,
    version: u64,
    /// Each entry with whether it is durable.
    entries: HashMap<Entry, bool>,
    last_seen: Instant,
    /// When a snapshot was last asked of it; deltas are ignored while one is awaited.
    asked: Option<Instant>,
}

/// The parts of one node's snapshot gathered so far: (instance, version, entries).
type Parts = (u64, u64, Vec<Announced>);

/// Every other node's interest.
pub(crate) struct RemoteInterest {
    /// Node ids by filter, each with whether its entry is durable.
    index: TopicIndex<u32, bool>,
    peers: Mutex<HashMap<String, Peer>>,
    /// Snapshot parts gathered per node.
    partial: Mutex<HashMap<String, Parts>>,
    next_id: Mutex<u32>,
    entries: AtomicUsize,
    nodes: AtomicUsize,
    /// Silent and leaving nodes' durable plain entries (`owes`).
    owed: Owed,
    /// The start of each node that last said goodbye (one per node name): nothing more of it
    /// is taken in.
    left: Mutex<HashMap<String, u64>>,
}

impl Default for RemoteInterest {
    fn default() -> Self {
        RemoteInterest {
            index: TopicIndex::new(),
            peers: Mutex::new(HashMap::new()),
            partial: Mutex::new(HashMap::new()),
            next_id: Mutex::new(0),
            entries: AtomicUsize::new(0),
            nodes: AtomicUsize::new(0),
            owed: Owed::default(),
            left: Mutex::new(HashMap::new()),
        }
    }
}

impl RemoteInterest {
    /// The other nodes' interest in `topic`: plain entries (one per node, with whether it is
    /// durable) and shared groups (their members are nodes).
    pub(crate) fn matches(&self, topic: &str) -> Arc<Matches<u32, bool>> {
        self.index.matches(topic)
    }

    /// (node, group, filter) entries held.
    pub(crate) fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Other nodes known.
    pub(crate) fn nodes(&self) -> usize {
        self.nodes.load(Ordering::Relaxed)
    }

    /// The id under which `node` is known.
    pub(crate) fn node_id(&self, node: &str) -> Option<u32> {
        self.peers.lock().get(node).map(|p| p.id)
    }

    /// The starts of the nodes `ids` (those still known).
    pub(crate) fn instances_of(&self, ids: &[u32]) -> Vec<u64> {
        let peers = self.peers.lock();
        ids.iter()
            .filter_map(|id| peers.values().find(|p| p.id == *id).map(|p| p.instance))
            .collect()
    }

    /// The name of the node whose start is `instance`, if it is known.
    pub(crate) fn node_of(&self, instance: u64) -> Option<String> {
        self.peers
            .lock()
            .iter()
            .find(|(_, p)| p.instance == instance)
            .map(|(name, _)| name.clone())
    }

    /// Names of the nodes known.
    pub(crate) fn node_names(&self) -> Vec<String> {
        self.peers.lock().keys().cloned().collect()
    }

    /// Instances of the nodes known, for the duplicate filter to forget the others.
    pub(crate) fn instances(&self) -> HashSet<u64> {
        self.peers.lock().values().map(|p| p.instance).collect()
    }

    /// Applies one control message from another node (`me` is this node's name: a message
    /// claiming it is ignored).
    pub(crate) fn apply(&self, msg: Control, me: &str, now: Instant) -> Reply {
        let from = msg.sender().to_owned();
        if from == me {
            return Reply::Nothing;
        }
        // A start that said goodbye still beats or answers until its process ends: taking it
        // back in would undo its goodbye (and settle what it owes) for a node about to vanish.
        if msg.instance().is_some() && self.left.lock().get(&from) == msg.instance().as_ref() {
            return Reply::Nothing;
        }
        let mut peers = self.peers.lock();
        if let Some(p) = peers.get_mut(&from) {
            p.last_seen = now;
        }
        match msg {
            // Not interest: the link takes these before they come here.
            Control::Ack { .. } => Reply::Nothing,
            Control::Sync { node } => Reply::SnapshotTo(node),
            Control::Bye { node, instance } => {
                if peers.get(&node).is_some_and(|p| p.instance == instance) {
                    self.left.lock().insert(node.clone(), instance);
                    if let Some(p) = peers.remove(&node) {
                        // Expected back (it is not adopted from): until it is, or for
                        // `OWED_FOR`, what its persistent sessions want has nowhere to go.
                        self.owe(&node, &p, now);
                        self.drop_peer(p);
                    }
                }
                Reply::Nothing
            }
            // Back: what it owed is settled entry by entry as its snapshot announces them.
            Control::Hello { node, .. } => Reply::SnapshotTo(node),
            Control::Snapshot {
                node,
                instance,
                version,
                entries,
                more,
            } => {
                let mut partial = self.partial.lock();
                let parts = partial
                    .entry(node.clone())
                    .or_insert_with(|| (instance, version, Vec::new()));
                // A part of another snapshot than the one being gathered starts over (the
                // parts of one snapshot arrive together and in order: one sender, one task).
                if (parts.0, parts.1) != (instance, version) {
                    *parts = (instance, version, Vec::new());
                }
                parts.2.extend(entries);
                if !more {
                    let (_, _, all) = partial.remove(&node).unwrap_or_default();
                    self.replace(&mut peers, &node, instance, version, all, now);
                }
                Reply::Nothing
            }
            Control::Add {
                node,
                instance,
                version,
                entry,
                durable,
            } => {
                let change = Some(durable);
                self.delta(&mut peers, &node, instance, version, entry, change, now)
            }
            Control::Remove {
                node,
                instance,
                version,
                entry,
            } => self.delta(&mut peers, &node, instance, version, entry, None, now),
            Control::Beat {
                node,
                instance,
                version,
            } => {
                let agrees = peers
                    .get(&node)
                    .is_some_and(|p| p.instance == instance && p.version == version);
                if agrees {
                    Reply::Nothing
                } else {
                    ask(&mut peers, &node, now)
                }
            }
        }
    }

    /// One numbered change of `node`'s set (`added`: the entry with whether it is durable;
    /// none: removed): applied when it is the next one, else (a gap, an unknown node or
    /// instance) a snapshot is asked for.
    #[allow(clippy::too_many_arguments)]
    fn delta(
        &self,
        peers: &mut HashMap<String, Peer>,
        node: &str,
        instance: u64,
        version: u64,
        entry: Entry,
        added: Option<bool>,
        now: Instant,
    ) -> Reply {
        let Some(p) = peers.get_mut(node) else {
            return ask(peers, node, now);
        };
        if p.instance != instance {
            return ask(peers, node, now);
        }
        if version <= p.version {
            // Already in the snapshot this node sent after it.
            return Reply::Nothing;
        }
        if version != p.version + 1 {
            return ask(peers, node, now);
        }
        p.version = version;
        if let Some(durable) = added {
            if durable {
                self.covered(node, &entry);
            }
            let was = p.entries.insert(entry.clone(), durable);
            if was != Some(durable) {
                // A changed flag replaces the index's value; a new entry adds one.
                self.index
                    .insert(&entry.filter, entry.group.as_deref(), p.id, durable);
            }
            if was.is_none() {
                self.entries.fetch_add(1, Ordering::Relaxed);
            }
        } else if p.entries.remove(&entry).is_some() {
            self.index
                .remove(&entry.filter, entry.group.as_deref(), &p.id);
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
        Reply::Nothing
    }

    /// `node`'s whole set, from a hello or a snapshot.
    fn replace(
        &self,
        peers: &mut HashMap<String, Peer>,
        node: &str,
        instance: u64,
        version: u64,
        entries: Vec<Announced>,
        now: Instant,
    ) {
        let new: HashMap<Entry, bool> = entries.into_iter().map(|a| (a.entry, a.durable)).collect();
        for (entry, _) in new.iter().filter(|(_, durable)| **durable) {
            self.covered(node, entry);
        }
        let peer = match peers.get_mut(node) {
            Some(p) => p,
            None => {
                let id = {
                    let mut next = self.next_id.lock();
                    *next = next.wrapping_add(1);
                    *next
                };
                self.nodes.fetch_add(1, Ordering::Relaxed);
                peers.entry(node.to_owned()).or_insert(Peer {
                    id,
                    instance,
                    version: 0,
                    entries: HashMap::new(),
                    last_seen: now,
                    asked: None,
                })
            }
        };
        for gone in peer.entries.keys().filter(|e| !new.contains_key(*e)) {
            self.index
                .remove(&gone.filter, gone.group.as_deref(), &peer.id);
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
        for (came, durable) in &new {
            let was = peer.entries.get(came).copied();
            if was != Some(*durable) {
                self.index
                    .insert(&came.filter, came.group.as_deref(), peer.id, *durable);
            }
            if was.is_none() {
                self.entries.fetch_add(1, Ordering::Relaxed);
            }
        }
        peer.entries = new;
        peer.instance = instance;
        peer.version = version;
        peer.asked = None;
        peer.last_seen = now;
    }

    fn drop_peer(&self, peer: Peer) {
        for e in peer.entries.keys() {
            self.index.remove(&e.filter, e.group.as_deref(), &peer.id);
        }
        self.entries
            .fetch_sub(peer.entries.len(), Ordering::Relaxed);
        self.nodes.fetch_sub(1, Ordering::Relaxed);
    }

    /// Drops the nodes not heard from within `PEER_TIMEOUT` while some other node was (or
    /// within `ALL_SILENT_TIMEOUT` when all fell silent together), leaving their durable plain
    /// entries owed, and ends what was owed for `OWED_FOR`; returns the silent nodes' names,
    /// each with when it was last heard.
    pub(crate) fn expire(&self, now: Instant) -> Vec<(String, Instant)> {
        let mut peers = self.peers.lock();
        let quiet = |p: &Peer| now.saturating_duration_since(p.last_seen);
        let someone_heard = peers.len() == 1 || peers.values().any(|p| quiet(p) <= PEER_TIMEOUT);
        let timeout = if someone_heard {
            PEER_TIMEOUT
        } else {
            ALL_SILENT_TIMEOUT
        };
        let silent: Vec<(String, Instant)> = peers
            .iter()
            .filter(|(_, p)| quiet(p) > timeout)
            .map(|(name, p)| (name.clone(), p.last_seen))
            .collect();
        for (name, _) in &silent {
            if let Some(p) = peers.remove(name) {
                self.owe(name, &p, now);
                self.drop_peer(p);
            }
        }
        drop(peers);
        self.owed.expire(now);
        silent
    }

    /// Leaves `peer`'s durable plain entries owed (`owed`).
    fn owe(&self, name: &str, peer: &Peer, now: Instant) {
        let filters: Vec<String> = peer
            .entries
            .iter()
            .filter(|(e, durable)| **durable && e.group.is_none())
            .map(|(e, _)| e.filter.clone())
            .collect();
        self.owed.owe(name, peer.id, filters, now);
    }

    /// Whether a silent or leaving node's persistent sessions wanted `topic`: a message for
    /// them has nowhere safe to go until they have a home again.
    pub(crate) fn owes(&self, topic: &str) -> bool {
        self.owed.owes(topic)
    }

    /// `node` announces `entry` as durable again: what it owed for it is settled.
    fn covered(&self, node: &str, entry: &Entry) {
        if entry.group.is_none() {
            self.owed.covered(node, &entry.filter);
        }
    }

    /// What `node` owed is settled: its sessions adopted (or the node found alive).
    pub(crate) fn settle(&self, node: &str) {
        self.owed.settle(node);
    }
}

/// Bytes of entries per snapshot part: far below NATS's default max_payload (1 MiB), so that a
/// part always fits even with the largest filter (65,535 bytes, escaped in JSON at most 6x).
const PART_BYTES: usize = 64 * 1024;

/// `entries` as the snapshot parts of `node` at `version`.
pub(crate) fn snapshot_parts(
    node: &str,
    instance: u64,
    version: u64,
    entries: impl IntoIterator<Item = Announced>,
) -> Vec<Control> {
    let mut parts = Vec::new();
    let mut part = Vec::new();
    let mut bytes = 0;
    for e in entries {
        bytes += e.entry.filter.len() + e.entry.group.as_ref().map_or(0, String::len) + 24;
        part.push(e);
        if bytes >= PART_BYTES {
            parts.push(std::mem::take(&mut part));
            bytes = 0;
        }
    }
    if !part.is_empty() || parts.is_empty() {
        parts.push(part);
    }
    let last = parts.len() - 1;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, entries)| Control::Snapshot {
            node: node.to_owned(),
            instance,
            version,
            entries,
            more: i < last,
        })
        .collect()
}

/// Asks `node` for a snapshot unless that was done within `SYNC_BACKOFF`.
fn ask(peers: &mut HashMap<String, Peer>, node: &str, now: Instant) -> Reply {
    if let Some(p) = peers.get_mut(node) {
        if p.asked
            .is_some_and(|t| now.saturating_duration_since(t) < SYNC_BACKOFF)
        {
            return Reply::Nothing;
        }
        p.asked = Some(now);
    }
    Reply::SyncFrom(node.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::owed::OWED_FOR;

    fn entry(filter: &str) -> Entry {
        Entry {
            group: None,
            filter: filter.to_owned(),
        }
    }

    fn announced(filter: &str) -> Announced {
        Announced {
            entry: entry(filter),
            durable: false,
        }
    }

    fn add(node: &str, version: u64, filter: &str) -> Control {
        add_durable(node, version, filter, false)
    }

    fn add_durable(node: &str, version: u64, filter: &str, durable: bool) -> Control {
        Control::Add {
            node: node.to_owned(),
            instance: 1,
            version,
            entry: entry(filter),
            durable,
        }
    }

    /// A node's arrival: its hello, then its snapshot (in one part).
    fn hello(r: &RemoteInterest, node: &str, entries: &[&str], t: Instant) -> Reply {
        let hello = Control::Hello {
            node: node.to_owned(),
            instance: 1,
        };
        let reply = r.apply(hello, "a", t);
        for part in snapshot_parts(node, 1, 0, entries.iter().map(|f| announced(f))) {
            assert_eq!(r.apply(part, "a", t), Reply::Nothing);
        }
        reply
    }

    fn wants(r: &RemoteInterest, topic: &str) -> bool {
        !r.matches(topic).plain.is_empty()
    }

    #[test]
    fn deltas_in_order_apply_and_a_gap_asks_for_a_snapshot() {
        let r = RemoteInterest::default();
        let t = Instant::now();
        assert_eq!(hello(&r, "b", &["x/#"], t), Reply::SnapshotTo("b".into()));
        assert!(wants(&r, "x/1") && !wants(&r, "y"));
        assert_eq!(r.apply(add("b", 1, "y"), "a", t), Reply::Nothing);
        assert!(wants(&r, "y"));
        // Version 3 after 1: version 2 was lost.
        assert_eq!(
            r.apply(add("b", 3, "z"), "a", t),
            Reply::SyncFrom("b".into())
        );
        assert!(!wants(&r, "z"));
        // Asked once per backoff, however many disagreeing messages come meanwhile.
        assert_eq!(r.apply(add("b", 4, "z"), "a", t), Reply::Nothing);
        let snapshot = Control::Snapshot {
            node: "b".into(),
            instance: 1,
            version: 4,
            entries: vec![announced("z"), announced("x/#")],
            more: false,
        };
        assert_eq!(r.apply(snapshot, "a", t), Reply::Nothing);
        assert!(wants(&r, "z") && wants(&r, "x") && !wants(&r, "y"));
        assert_eq!(r.len(), 2);
        let remove = Control::Remove {
            node: "b".into(),
            instance: 1,
            version: 5,
            entry: entry("z"),
        };
        r.apply(remove, "a", t);
        assert!(!wants(&r, "z"));
        // Our own name is never a peer.
        hello(&r, "a", &["mine"], t);
        assert!(!wants(&r, "mine"));
    }

    #[test]
    fn beats_heal_divergence_and_silent_or_leaving_nodes_are_dropped() {
        let r = RemoteInterest::default();
        let t = Instant::now();
        hello(&r, "b", &["b/#"], t);
        hello(&r, "c", &["c/#"], t);
        let beat = |node: &str, version| Control::Beat {
            node: node.into(),
            instance: 1,
            version,
        };
        assert_eq!(r.apply(beat("b", 0), "a", t), Reply::Nothing);
        assert_eq!(r.apply(beat("b", 7), "a", t), Reply::SyncFrom("b".into()));
        assert_eq!(r.apply(beat("d", 0), "a", t), Reply::SyncFrom("d".into()));
        assert_eq!(r.nodes(), 2);
        // b keeps beating, c goes silent.
        let later = t + PEER_TIMEOUT + Duration::from_secs(1);
        r.apply(beat("b", 0), "a", later - Duration::from_secs(1));
        assert_eq!(r.expire(later), vec![("c".to_owned(), t)]);
        assert!(wants(&r, "b/x") && !wants(&r, "c/x"));
        r.apply(
            Control::Bye {
                node: "b".into(),
                instance: 1,
            },
            "a",
            later,
        );
        assert_eq!((r.len(), r.nodes()), (0, 0));
        assert!(!wants(&r, "b/x"));
    }

    #[test]
    fn nodes_silent_all_together_are_kept_longer_than_one_silent_alone() {
        let r = RemoteInterest::default();
        let t = Instant::now();
        for node in ["b", "c", "d"] {
            hello(&r, node, &[&format!("{node}/#")], t);
        }
        // Everyone silent at once: this node or NATS is the likelier fault.
        let later = t + PEER_TIMEOUT + Duration::from_secs(1);
        assert_eq!(r.expire(later), vec![]);
        assert!(wants(&r, "b/x") && wants(&r, "c/x") && wants(&r, "d/x"));
        // One of them heard again: the others' silence is their own.
        let beat = Control::Beat {
            node: "d".into(),
            instance: 1,
            version: 0,
        };
        r.apply(beat, "a", later);
        let mut gone = r.expire(later);
        gone.sort();
        assert_eq!(gone, vec![("b".to_owned(), t), ("c".to_owned(), t)]);
        assert!(!wants(&r, "b/x") && wants(&r, "d/x"));
        // Silent together for long enough, they are gone all the same.
        hello(&r, "e", &["e/#"], later);
        let much_later = later + ALL_SILENT_TIMEOUT + Duration::from_secs(1);
        assert_eq!(r.expire(much_later - PEER_TIMEOUT).len(), 0);
        assert_eq!(r.expire(much_later).len(), 2);
        assert_eq!(r.nodes(), 0);
    }

    #[test]
    fn shared_entries_are_groups_whose_members_are_nodes() {
        let r = RemoteInterest::default();
        let t = Instant::now();
        let shared = |node: &str| Control::Snapshot {
            node: node.into(),
            instance: 1,
            version: 0,
            entries: vec![Announced {
                entry: Entry {
                    group: Some("g".into()),
                    filter: "s/+".into(),
                },
                durable: false,
            }],
            more: false,
        };
        r.apply(shared("b"), "a", t);
        r.apply(shared("c"), "a", t);
        let m = r.matches("s/1");
        assert!(m.plain.is_empty());
        assert_eq!(m.shared.len(), 1);
        assert_eq!(m.shared[0].len(), 2);
    }

    #[test]
    fn large_sets_travel_in_parts_and_apply_once_whole() {
        let r = RemoteInterest::default();
        let t = Instant::now();
        let filters: Vec<String> = (0..20_000).map(|i| format!("cmd/device-{i:06}")).collect();
        let parts = snapshot_parts("b", 1, 9, filters.iter().map(|f| announced(f)));
        assert!(parts.len() > 4, "{} parts", parts.len());
        let (last, first) = parts.split_last().unwrap();
        for part in first {
            assert!(serde_json::to_vec(part).unwrap().len() < 256 * 1024);
            r.apply(part.clone(), "a", t);
            // Nothing applies before the last part.
            assert_eq!(r.len(), 0);
        }
        r.apply(last.clone(), "a", t);
        assert_eq!(r.len(), 20_000);
        assert!(wants(&r, "cmd/device-019999") && !wants(&r, "cmd/device-020000"));
        // An empty set is one part too.
        assert_eq!(snapshot_parts("b", 1, 0, Vec::new()).len(), 1);
    }

    #[test]
    fn control_messages_are_compact_json() {
        let text = serde_json::to_string(&add("b", 1, "x/#")).unwrap();
        assert_eq!(
            text,
            r#"{"k":"add","node":"b","instance":1,"version":1,"f":"x/#"}"#
        );
        let back: Control = serde_json::from_str(&text).unwrap();
        assert_eq!(back, add("b", 1, "x/#"));
        assert!(serde_json::from_slice::<Control>(b"\xff{").is_err());
        // A durable entry says so; one from a node that predates the flag reads as not durable.
        let text = serde_json::to_string(&add_durable("b", 2, "x/#", true)).unwrap();
        assert_eq!(
            text,
            r#"{"k":"add","node":"b","instance":1,"version":2,"f":"x/#","d":true}"#
        );
        assert_eq!(
            serde_json::from_str::<Control>(&text).unwrap(),
            add_durable("b", 2, "x/#", true)
        );
        let old = r#"{"k":"snapshot","node":"b","instance":1,"version":0,"entries":[{"f":"x"}],"more":false}"#;
        match serde_json::from_str::<Control>(old).unwrap() {
            Control::Snapshot { entries, .. } => assert_eq!(entries, vec![announced("x")]),
            other => panic!("{other:?}"),
        }
    }

    /// A node that leaves cleanly (a restart) is expected back and not adopted from: until it
    /// is back, or `OWED_FOR` passed, its persistent sessions' messages are refused, not lost.
    #[test]
    fn a_leaving_nodes_durable_entries_are_owed_until_it_is_back() {
        let r = RemoteInterest::default();
        let t = Instant::now();
        hello(&r, "b", &["clean/#"], t);
        r.apply(add_durable("b", 1, "keep/#", true), "a", t);
        let bye = |instance| Control::Bye {
            node: "b".into(),
            instance,
        };
        let snapshot = |instance, durable| {
            let keep = Announced {
                entry: entry("keep/#"),
                durable,
            };
            snapshot_parts("b", instance, 1, [keep]).remove(0)
        };
        r.apply(bye(1), "a", t);
        assert!(!wants(&r, "keep/1") && !wants(&r, "clean/1"));
        assert!(r.owes("keep/1") && !r.owes("clean/1"));
        // The start that left still beats and answers until its process ends: ignored.
        let beat = Control::Beat {
            node: "b".into(),
            instance: 1,
            version: 1,
        };
        assert_eq!(r.apply(beat, "a", t), Reply::Nothing);
        r.apply(snapshot(1, true), "a", t);
        assert!(
            !wants(&r, "keep/1") && r.owes("keep/1"),
            "its goodbye stands"
        );
        // Back as a new start, its sessions not yet taken back (or their clients gone
        // elsewhere): still owed, until it announces the entry as durable again.
        let back = t + Duration::from_secs(2);
        let hello2 = Control::Hello {
            node: "b".into(),
            instance: 2,
        };
        assert_eq!(r.apply(hello2, "a", back), Reply::SnapshotTo("b".into()));
        r.apply(snapshot(2, false), "a", back);
        assert!(wants(&r, "keep/1") && r.owes("keep/1"));
        r.apply(snapshot(2, true), "a", back);
        assert!(!r.owes("keep/1"), "announced as durable again");
        r.apply(bye(2), "a", back);
        assert!(r
            .expire(back + OWED_FOR - Duration::from_millis(1))
            .is_empty());
        assert!(r.owes("keep/1"));
        r.expire(back + OWED_FOR);
        assert!(!r.owes("keep/1"), "not back in time: owed no longer");
    }

    #[test]
    fn a_silent_nodes_durable_entries_are_owed_until_settled_or_overdue() {
        let r = RemoteInterest::default();
        let t = Instant::now();
        hello(&r, "b", &["clean/#"], t);
        r.apply(add_durable("b", 1, "keep/#", true), "a", t);
        assert!(!r.owes("keep/1"));
        let later = t + PEER_TIMEOUT + Duration::from_secs(1);
        assert_eq!(r.expire(later), [("b".to_owned(), t)]);
        assert!(r.owes("keep/1"), "durable: owed");
        assert!(!r.owes("clean/1"), "clean: nothing to keep");
        assert!(!wants(&r, "keep/1"));
        r.settle("b");
        assert!(!r.owes("keep/1"));
        // Back, or overdue, it owes nothing either.
        hello(&r, "b", &[], t);
        r.apply(add_durable("b", 1, "keep/#", true), "a", t);
        r.expire(later);
        assert!(r.owes("keep/1"));
        hello(&r, "b", &[], later);
        assert!(r.owes("keep/1"), "heard again, without it");
        let parts = snapshot_parts(
            "b",
            1,
            3,
            [Announced {
                entry: entry("keep/#"),
                durable: true,
            }],
        );
        for part in parts {
            r.apply(part, "a", later);
        }
        assert!(!r.owes("keep/1"), "heard again, with it");
        r.apply(add_durable("b", 1, "keep/#", true), "a", later);
        let silent = later + PEER_TIMEOUT + Duration::from_secs(1);
        r.expire(silent);
        assert!(r.owes("keep/1"));
        r.expire(silent + OWED_FOR);
        assert!(!r.owes("keep/1"), "overdue");
    }

    /// Which nodes hold a persistent subscriber of a topic: announced with each entry, changed
    /// by announcing the entry again, kept through snapshots.
    #[test]
    fn entries_say_whether_they_are_durable() {
        let r = RemoteInterest::default();
        let t = Instant::now();
        let durable =
            |topic: &str| -> Vec<bool> { r.matches(topic).plain.iter().map(|(_, d)| *d).collect() };
        hello(&r, "b", &["x/#"], t);
        assert_eq!(durable("x/1"), [false]);
        r.apply(add_durable("b", 1, "x/#", true), "a", t);
        assert_eq!(durable("x/1"), [true]);
        assert_eq!(r.len(), 1, "announced again, not added twice");
        r.apply(add_durable("b", 2, "x/#", false), "a", t);
        assert_eq!(durable("x/1"), [false]);
        let snapshot = Control::Snapshot {
            node: "b".into(),
            instance: 1,
            version: 3,
            entries: vec![
                Announced {
                    entry: entry("x/#"),
                    durable: true,
                },
                announced("y"),
            ],
            more: false,
        };
        r.apply(snapshot, "a", t);
        assert_eq!((durable("x/1"), durable("y")), (vec![true], vec![false]));
        assert_eq!(r.len(), 2);
        hello(&r, "c", &["x/#"], t);
        let mut both = durable("x/1");
        both.sort();
        assert_eq!(both, [false, true]);
    }
}
