//! JetStream de-duplication ids (`Nats-Msg-Id`) for QoS 1/2 messages: equal for a resend of a
//! message, different for a new message that reuses its packet id, across a restart of the
//! gateway too.
//!
//! MQTT tells a resend apart only by the DUP flag and the packet id, and a packet id is reused as
//! soon as its acknowledgement arrives. So each session numbers its new messages (`n`), remembers
//! for its most recent packet ids which number and content the latest message with that id had,
//! and gives a resend (DUP, or a QoS 2 id still held) the number of the message it repeats. The
//! id is `client id : session epoch : packet id : n : rule`: the epoch is random per session (a
//! clean start is a new one), the rule keeps two rules writing one message into one stream apart.
//!
//! A persistent session's numbering outlives the gateway: every new number is recorded by the
//! store (`Store::ingest_id`, with the packet id that fell out of the window) and the JetStream
//! write waits until that record is committed (`writer`), so a restart gives back the epoch and
//! the window of every message JetStream may hold, and a device that re-sends after a `kill -9`
//! gets the same ids. In a cluster the store is the session state stream, and the numbering
//! goes with a session handed to another node (`stored`). A clean session is never recorded:
//! nothing of it survives a restart, so its next session starts with a new epoch, as does a
//! clean start (its records are removed with the old session). A record that is missing (older store, repaired store) only ever costs a new
//! epoch: a resend may then be stored twice, a new message is never taken for a duplicate.
//!
//! A resend whose packet id is no longer remembered (older than the window, or from before a
//! clean start) gets a new number: JetStream stores it again. A DUP message that reuses a packet
//! id after its predecessor's PUBACK but whose first copy never arrived is taken for a resend
//! only if its topic and payload are the predecessor's too (`content`); then it is, indeed, the
//! same message.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::time::{Instant, SystemTime};

use rustc_hash::FxHasher;

/// One remembered packet id as the store keeps it: the latest message that used it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredId {
    pub(crate) packet_id: u16,
    pub(crate) epoch: u64,
    pub(crate) content: u64,
    pub(crate) n: u64,
}

/// What the store must record after an assignment: a new number, and the packet id that fell
/// out of the window (its record goes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NewId {
    pub(crate) id: StoredId,
    pub(crate) evicted: Option<u16>,
}

/// A session's numbering of its published messages.
#[derive(Debug)]
pub(crate) struct PublishIds {
    epoch: u64,
    next: u64,
    /// The packet ids of the most recent new messages, one entry per id, oldest first; beside
    /// them, in the same order, each one's (content hash, n). Apart, because every message
    /// looks its id up among as many as the client's window (256 by default), and a scan of
    /// two-byte ids is a tenth of one over whole entries.
    ids: VecDeque<u16>,
    entries: VecDeque<(u64, u64)>,
}

impl PublishIds {
    pub(crate) fn new(session: u64) -> PublishIds {
        // Random per process, and the wall clock besides: no two sessions, before or after a
        // restart, share one (64 bits).
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        PublishIds {
            epoch: std::hash::RandomState::new().hash_one((session, Instant::now(), wall)),
            next: 0,
            ids: VecDeque::new(),
            entries: VecDeque::new(),
        }
    }

    /// The numbering a restart gives back: the stored ids of the epoch with the highest number
    /// (a session has one epoch; anything else is ignored). `None` when nothing was stored.
    pub(crate) fn restored(mut stored: Vec<StoredId>) -> Option<PublishIds> {
        let last = *stored.iter().max_by_key(|s| s.n)?;
        stored.retain(|s| s.epoch == last.epoch);
        stored.sort_unstable_by_key(|s| s.n);
        Some(PublishIds {
            epoch: last.epoch,
            next: last.n + 1,
            ids: stored.iter().map(|s| s.packet_id).collect(),
            entries: stored.iter().map(|s| (s.content, s.n)).collect(),
        })
    }

    /// What `restored` takes back: each remembered packet id with its latest message, as the
    /// store records them (for a session handed to another cluster node).
    pub(crate) fn stored(&self) -> Vec<StoredId> {
        self.ids
            .iter()
            .zip(&self.entries)
            .map(|(&packet_id, &(content, n))| StoredId {
                packet_id,
                epoch: self.epoch,
                content,
                n,
            })
            .collect()
    }

    /// The epoch and number of a message with `packet_id`, and what the store must record when
    /// the number is new. `window`: how many packet ids are remembered (the client's in-flight
    /// window: only those can be resent).
    pub(crate) fn assign(
        &mut self,
        packet_id: u16,
        resend: bool,
        content: u64,
        window: usize,
    ) -> (u64, u64, Option<NewId>) {
        let at = position(&self.ids, packet_id);
        if resend {
            // Only the latest message with this packet id can be resent: the client reused the
            // id because the one before was acknowledged.
            if let Some(&(c, n)) = at.and_then(|i| self.entries.get(i)) {
                if c == content {
                    return (self.epoch, n, None);
                }
            }
        }
        let n = self.next;
        self.next += 1;
        let mut evicted = None;
        match at {
            Some(i) => {
                self.ids.remove(i);
                self.entries.remove(i);
            }
            // One at a time: a window smaller than the stored one (configuration changed)
            // shrinks as new messages come.
            None if self.ids.len() >= window.max(1) => {
                evicted = self.ids.pop_front();
                self.entries.pop_front();
            }
            None => {}
        }
        self.ids.push_back(packet_id);
        self.entries.push_back((content, n));
        let id = StoredId {
            packet_id,
            epoch: self.epoch,
            content,
            n,
        };
        (self.epoch, n, Some(NewId { id, evicted }))
    }
}

/// Where `id` is in `ids`. Most messages' ids are not there (a client numbers its messages in
/// turn, and reuses an id only after 65,535 others), so the whole window is scanned: in chunks
/// the compiler compares side by side, without a branch per id.
fn position(ids: &VecDeque<u16>, id: u16) -> Option<usize> {
    const CHUNK: usize = 16;
    let (front, back) = ids.as_slices();
    let mut offset = 0;
    for half in [front, back] {
        let mut chunks = half.chunks_exact(CHUNK);
        for (c, chunk) in chunks.by_ref().enumerate() {
            if chunk.iter().fold(false, |found, &x| found | (x == id)) {
                let i = chunk.iter().position(|&x| x == id)?;
                return Some(offset + c * CHUNK + i);
            }
        }
        let rest = chunks.remainder();
        if let Some(i) = rest.iter().position(|&x| x == id) {
            return Some(offset + half.len() - rest.len() + i);
        }
        offset += half.len();
    }
    None
}

/// What tells a resend from a new message with the same packet id: topic and payload.
pub(crate) fn content_hash(topic: &str, payload: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(topic.as_bytes());
    h.write_u8(0xff);
    h.write(payload);
    h.finish()
}

/// The `Nats-Msg-Id` value (see the module's description).
pub(crate) fn msg_id(client_id: &str, epoch: u64, packet_id: u16, n: u64, rule: usize) -> String {
    let mut id = String::with_capacity(client_id.len() + 40);
    super::subject::escape_into(&mut id, client_id);
    // Writing to a String cannot fail.
    let _ = write!(id, ":{epoch:016x}:{packet_id}:{n}:{rule}");
    id
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The numbering as first written: one deque of whole entries, scanned entry by entry.
    #[derive(Default)]
    struct Model {
        next: u64,
        recent: VecDeque<(u16, u64, u64)>,
    }

    impl Model {
        fn assign(
            &mut self,
            packet_id: u16,
            resend: bool,
            content: u64,
            window: usize,
        ) -> (u64, Option<NewId>) {
            let at = self.recent.iter().position(|&(id, _, _)| id == packet_id);
            if resend {
                if let Some(&(_, c, n)) = at.and_then(|i| self.recent.get(i)) {
                    if c == content {
                        return (n, None);
                    }
                }
            }
            let n = self.next;
            self.next += 1;
            let mut evicted = None;
            match at {
                Some(i) => {
                    self.recent.remove(i);
                }
                None if self.recent.len() >= window.max(1) => {
                    evicted = self.recent.pop_front().map(|(id, _, _)| id);
                }
                None => {}
            }
            self.recent.push_back((packet_id, content, n));
            let id = StoredId {
                packet_id,
                epoch: 0,
                content,
                n,
            };
            (n, Some(NewId { id, evicted }))
        }
    }

    proptest! {
        /// Numbers, resends and evictions as the naive numbering gives them, with windows that
        /// shrink and grow, ids that repeat and DUPs of old and new content.
        #[test]
        fn numbers_like_the_naive_numbering(
            ops in proptest::collection::vec((0u16..40, any::<bool>(), 0u64..3, 1usize..24), 0..300)
        ) {
            let mut ids = PublishIds::new(9);
            ids.epoch = 0;
            let mut model = Model::default();
            for (packet_id, resend, content, window) in ops {
                let (_, n, new) = ids.assign(packet_id, resend, content, window);
                prop_assert_eq!((n, new), model.assign(packet_id, resend, content, window));
            }
        }

        /// A numbering handed to another node (`stored`, then `restored` there) goes on exactly
        /// as the original would: same epoch, numbers, resends and evictions.
        #[test]
        fn a_handed_over_numbering_goes_on_as_the_original(
            before in proptest::collection::vec((1u16..40, any::<bool>(), 0u64..3, 1usize..24), 1..200),
            after in proptest::collection::vec((1u16..40, any::<bool>(), 0u64..3, 1usize..24), 0..200),
        ) {
            let mut ids = PublishIds::new(9);
            for (packet_id, resend, content, window) in before {
                ids.assign(packet_id, resend, content, window);
            }
            let mut moved = PublishIds::restored(ids.stored()).expect("something numbered");
            for (packet_id, resend, content, window) in after {
                prop_assert_eq!(
                    moved.assign(packet_id, resend, content, window),
                    ids.assign(packet_id, resend, content, window)
                );
            }
        }

        /// The chunked scan finds what a plain scan finds, in deques that wrap around.
        #[test]
        fn position_is_a_plain_scan(
            front in proptest::collection::vec(0u16..50, 0..60),
            back in proptest::collection::vec(0u16..50, 0..60),
            id in 0u16..50,
        ) {
            let mut ids: VecDeque<u16> = back.into_iter().collect();
            for x in front {
                ids.push_front(x);
            }
            prop_assert_eq!(position(&ids, id), ids.iter().position(|&x| x == id));
        }
    }

    fn number(ids: &mut PublishIds, packet_id: u16, resend: bool, content: u64) -> u64 {
        ids.assign(packet_id, resend, content, 16).1
    }

    #[test]
    fn a_resend_repeats_the_number_a_reused_packet_id_does_not() {
        let mut ids = PublishIds::new(1);
        let a = content_hash("t", b"1");
        let b = content_hash("t", b"2");
        let (epoch, first, _) = ids.assign(7, false, a, 16);
        assert_eq!(
            ids.assign(7, true, a, 16),
            (epoch, first, None),
            "DUP resend"
        );
        let reused = number(&mut ids, 7, false, b);
        assert_ne!(reused, first, "packet id reused by a new message");
        assert_eq!(number(&mut ids, 7, true, b), reused);
        // The latest message with id 7 is `reused`: a DUP with the first one's content is new.
        assert!(![first, reused].contains(&number(&mut ids, 7, true, a)));
        // A DUP whose original never arrived, with other content: a new message.
        let other = number(&mut ids, 7, true, content_hash("t", b"3"));
        assert!(other != first && other != reused);
        assert_ne!(
            PublishIds::new(1).epoch,
            epoch,
            "a new session, a new epoch"
        );
    }

    #[test]
    fn only_the_window_is_remembered_and_what_falls_out_is_said() {
        let mut ids = PublishIds::new(1);
        let c = content_hash("t", b"x");
        let (_, first, new) = ids.assign(1, false, c, 2);
        assert_eq!(new.map(|n| n.evicted), Some(None));
        ids.assign(2, false, c, 2);
        // Reusing a remembered id replaces its entry: nothing falls out.
        assert_eq!(ids.assign(2, false, c, 2).2.map(|n| n.evicted), Some(None));
        assert_eq!(
            ids.assign(3, false, c, 2).2.map(|n| n.evicted),
            Some(Some(1))
        );
        assert_ne!(number(&mut ids, 1, true, c), first);
    }

    /// What the store keeps of a numbering (each new id recorded, each evicted one removed)
    /// gives back the same numbering: resends keep their numbers, new messages get new ones.
    #[test]
    fn the_stored_ids_give_the_numbering_back() {
        let mut ids = PublishIds::new(3);
        let mut stored: std::collections::BTreeMap<u16, StoredId> = Default::default();
        let mut numbers = Vec::new();
        for i in 0..40u16 {
            let packet_id = i % 7 + 1;
            let content = content_hash("t", &i.to_be_bytes());
            let (_, n, new) = ids.assign(packet_id, false, content, 5);
            let new = new.expect("a new number");
            if let Some(gone) = new.evicted {
                stored.remove(&gone);
            }
            stored.insert(packet_id, new.id);
            numbers.push((packet_id, content, n));
        }
        assert!(stored.len() <= 5);
        let mut back = PublishIds::restored(stored.into_values().collect()).expect("restored");
        assert_eq!((back.epoch, back.next), (ids.epoch, ids.next));
        for &(packet_id, content, n) in &numbers[numbers.len() - 5..] {
            assert_eq!(back.assign(packet_id, true, content, 5).1, n, "resend");
        }
        let fresh = back.assign(1, false, 0, 5).1;
        assert!(numbers.iter().all(|&(_, _, n)| n != fresh));
        assert!(PublishIds::restored(Vec::new()).is_none());
    }
}
