//! Watermark acknowledgements: a QoS 1/2 message a client published here and sent to a node
//! holding a persistent subscriber of it (its entry is `durable`) is acknowledged only once that
//! node has taken it in, so that the node dying cannot lose what the publisher was told is
//! safe.
//!
//! One number answers for many messages. NATS delivers one sender's messages to a receiving
//! connection in the order they were sent (the sender numbers them in that order), and the link
//! routes everything ready at once in the senders' order (`link::receive_ready`), so once a
//! node has routed message `seq` of a sender it has routed every earlier one of that sender it
//! was to get, unless its NATS client dropped one (a subscription 8,192 behind: a slow
//! consumer). For that, each asking message carries, for every node start it asks, how many
//! asking messages the sender has sent that start (its tally): a receiver whose tally skips
//! one missed it, and from then on answers only from the message after the gap on (`first`),
//! so the sender refuses what it missed. The receiver keeps, per
//! sending instance, the highest number routed and the store's mark covering what that queued
//! (`Receipts`); once the mark is durable it answers with that number (`Control::Ack`), at most
//! once per batch received, and only to a sender that asked (the envelope's `ack` flag). A
//! message it could not store (the store refuses) is named in the answer as refused. The
//! answer also says from which number on this start of the node has been taking the sender's
//! messages in: a node that restarted never got what was sent to its earlier start after that
//! one's last answer. The sender (`Awaiting`) completes, for every message from the first to
//! the last number, that node's part, and refuses the ones before the first.
//! A shared group's message goes to whichever member node NATS's queue group picks, so no
//! watermark can cover it: the node that took it names it in its answer (`took`), and the
//! sender waits for that from any node (`ANY`).
//! What is not answered within `TIMEOUT` refuses its publisher, who sends again: by then the
//! node is back, or its sessions are elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::store::Mark;
use crate::ticket::{Refusal, Ticket};

/// How long a publisher waits for the nodes holding persistent subscribers to answer.
pub(super) const TIMEOUT: Duration = Duration::from_secs(5);
/// Awaited from whichever node takes it: a shared group's message, which NATS's queue group
/// gives to one of the member nodes. Its answer names it (`took`), since the one number of
/// a watermark cannot say which of a sender's group messages came to this node.
pub(super) const ANY: u32 = u32::MAX;

/// The receiving side: what this node routed per sending instance and owes an answer for.
#[derive(Default)]
pub(super) struct Receipts {
    by_origin: HashMap<u64, Receipt>,
}

#[derive(Default)]
struct Receipt {
    /// The first sequence number answered for: the first routed by this start of this node,
    /// or the first after a tally showed a message missed.
    first: u64,
    /// The last tally of this node seen in the sender's asking messages.
    tally: Option<u64>,
    /// The highest sequence number routed.
    seq: u64,
    /// What the store must hold before the answer goes (the highest mark of the routing).
    mark: Mark,
    /// Some message since the last answer asked for one.
    wanted: bool,
    /// Asking messages the store refused, since the last answer.
    refused: Vec<u64>,
    /// Asking shared-group messages taken in, since the last answer.
    took: Vec<u64>,
}

/// One answer due: to `origin`, everything from `from` up to `seq` taken in but `refused`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Due {
    pub(super) origin: u64,
    pub(super) from: u64,
    pub(super) seq: u64,
    pub(super) refused: Vec<u64>,
    /// Shared-group messages taken in (awaited from any node).
    pub(super) took: Vec<u64>,
}

impl Receipts {
    /// Message `seq` of `origin` was routed here; `mark` covers what it queued for persistent
    /// sessions, `refused` when the store could not take it, `wanted` when it asks an answer,
    /// `tally` this node's count in it (how many asking messages the sender has sent here).
    pub(super) fn took(
        &mut self,
        origin: u64,
        seq: u64,
        mark: Mark,
        wanted: bool,
        refused: bool,
        tally: Option<u64>,
    ) {
        let r = self.by_origin.entry(origin).or_insert_with(|| Receipt {
            first: seq,
            ..Receipt::default()
        });
        if let Some(tally) = tally {
            // Counted from 1 for this start: anything else not one more than the last seen
            // means an asking message to this node never came.
            if tally != r.tally.map_or(1, |last| last + 1) {
                r.first = r.first.max(seq);
            }
            r.tally = Some(tally);
        }
        r.seq = r.seq.max(seq);
        r.mark = r.mark.max(mark);
        r.wanted |= wanted;
        if refused && wanted {
            r.refused.push(seq);
        }
    }

    /// Shared-group message `seq` of `origin`, asking, was routed here (`took`); `mark` and
    /// `refused` as for the others. Not part of the watermark: the queue group gave this node
    /// some of the sender's group messages and other nodes the others.
    pub(super) fn took_shared(&mut self, origin: u64, seq: u64, mark: Mark, refused: bool) {
        let r = self.by_origin.entry(origin).or_insert_with(|| Receipt {
            first: seq,
            ..Receipt::default()
        });
        r.mark = r.mark.max(mark);
        r.wanted = true;
        if refused {
            r.refused.push(seq);
        } else {
            r.took.push(seq);
        }
    }

    /// Whether some answer waits for the store.
    pub(super) fn waiting(&self) -> bool {
        self.by_origin.values().any(|r| r.wanted)
    }

    /// The answers whose marks are durable now; each is owed again only once another asking
    /// message comes.
    pub(super) fn due(&mut self, durable: impl Fn(Mark) -> bool) -> Vec<Due> {
        let mut due = Vec::new();
        for (origin, r) in &mut self.by_origin {
            if r.wanted && durable(r.mark) {
                r.wanted = false;
                due.push(Due {
                    origin: *origin,
                    from: r.first,
                    seq: r.seq,
                    refused: std::mem::take(&mut r.refused),
                    took: std::mem::take(&mut r.took),
                });
            }
        }
        due
    }

    /// Forgets the senders not among `instances` (gone, or started again).
    pub(super) fn keep(&mut self, instances: &std::collections::HashSet<u64>) {
        self.by_origin
            .retain(|origin, _| instances.contains(origin));
    }
}

/// The sending side: messages whose publishers wait for nodes' answers, by sequence number.
#[derive(Default)]
pub(super) struct Awaiting {
    pending: Mutex<BTreeMap<u64, Awaited>>,
}

struct Awaited {
    ticket: Arc<Ticket>,
    /// The nodes (ids in `RemoteInterest`) not yet answered.
    nodes: Vec<u32>,
    deadline: Instant,
}

impl Awaiting {
    /// Message `seq` waits for `nodes`; `ticket` has a part for it, completed once.
    pub(super) fn expect(&self, seq: u64, ticket: Arc<Ticket>, nodes: Vec<u32>, now: Instant) {
        let awaited = Awaited {
            ticket,
            nodes,
            deadline: now + TIMEOUT,
        };
        self.pending.lock().insert(seq, awaited);
    }

    /// Message `seq` was not sent after all: its part is given back to the caller.
    pub(super) fn cancel(&self, seq: u64) -> Option<Arc<Ticket>> {
        self.pending.lock().remove(&seq).map(|a| a.ticket)
    }

    /// `node` answered: everything from `from` up to `seq` taken in but `refused`, and the
    /// shared-group messages `took`; what it was to get before `from` it never will (an
    /// earlier start of it got it, and died). Returns how many messages were refused to their
    /// publishers.
    pub(super) fn answered(
        &self,
        node: u32,
        (from, seq): (u64, u64),
        refused: &[u64],
        took: &[u64],
    ) -> usize {
        let mut settled = Vec::new();
        {
            let mut pending = self.pending.lock();
            for r in refused {
                if let Some(a) = pending.remove(r) {
                    settled.push((a.ticket, Err(Refusal::Unavailable)));
                }
            }
            let mut done = Vec::new();
            for s in took {
                if let Some(a) = pending.get_mut(s) {
                    a.nodes.retain(|n| *n != ANY);
                    if a.nodes.is_empty() {
                        done.push((*s, Ok(())));
                    }
                }
            }
            for (s, a) in pending.range_mut(..=seq) {
                if *s < from {
                    if a.nodes.contains(&node) {
                        done.push((*s, Err(Refusal::Unavailable)));
                    }
                    continue;
                }
                a.nodes.retain(|n| *n != node);
                if a.nodes.is_empty() {
                    done.push((*s, Ok(())));
                }
            }
            for (s, outcome) in done {
                if let Some(a) = pending.remove(&s) {
                    settled.push((a.ticket, outcome));
                }
            }
        }
        let refusals = settled.iter().filter(|(_, o)| o.is_err()).count();
        for (ticket, outcome) in settled {
            ticket.complete(outcome);
        }
        refusals
    }

    /// Refuses the publishers of the messages unanswered past their time; returns how many.
    pub(super) fn expire(&self, now: Instant) -> usize {
        let late: Vec<Arc<Ticket>> = {
            let mut pending = self.pending.lock();
            let seqs: Vec<u64> = pending
                .iter()
                .filter(|(_, a)| a.deadline <= now)
                .map(|(s, _)| *s)
                .collect();
            seqs.iter()
                .filter_map(|s| pending.remove(s))
                .map(|a| a.ticket)
                .collect()
        };
        let refusals = late.len();
        for ticket in late {
            ticket.complete(Err(Refusal::Unavailable));
        }
        refusals
    }

    /// Messages waiting.
    pub(super) fn len(&self) -> usize {
        self.pending.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Session;
    use crate::ticket::TicketState;

    fn ticket() -> Arc<Ticket> {
        Arc::new(Ticket::new(1, Arc::new(Session::new(1, "p".into()))))
    }

    #[test]
    fn one_answer_covers_every_earlier_message_of_its_node() {
        let w = Awaiting::default();
        let now = Instant::now();
        let (t1, t2, t3) = (ticket(), ticket(), ticket());
        w.expect(1, t1.clone(), vec![7], now);
        w.expect(2, t2.clone(), vec![7, 8], now);
        w.expect(5, t3.clone(), vec![7], now);
        w.answered(7, (1, 4), &[], &[]);
        assert_eq!(t1.state(), TicketState::Stored);
        assert_eq!(t2.state(), TicketState::Pending, "8 has not answered");
        assert_eq!(t3.state(), TicketState::Pending, "beyond the answer");
        w.answered(8, (2, 9), &[], &[]);
        assert_eq!(t2.state(), TicketState::Stored);
        assert_eq!(t3.state(), TicketState::Pending, "8 was not asked about 5");
        w.answered(7, (1, 5), &[], &[]);
        assert_eq!(t3.state(), TicketState::Stored);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn a_node_started_again_answers_for_none_of_what_its_earlier_start_got() {
        let w = Awaiting::default();
        let now = Instant::now();
        let (t1, t2, t3) = (ticket(), ticket(), ticket());
        w.expect(1, t1.clone(), vec![7], now);
        w.expect(2, t2.clone(), vec![8], now);
        w.expect(3, t3.clone(), vec![7], now);
        // Node 7 came back and has taken in from 3 on: 1 went to its earlier start.
        w.answered(7, (3, 3), &[], &[]);
        assert!(matches!(t1.state(), TicketState::Refused(_)));
        assert_eq!(t2.state(), TicketState::Pending, "not 7's to answer for");
        assert_eq!(t3.state(), TicketState::Stored);
    }

    #[test]
    fn a_refusal_or_silence_refuses_the_publisher() {
        let w = Awaiting::default();
        let now = Instant::now();
        let (t1, t2, t3) = (ticket(), ticket(), ticket());
        w.expect(1, t1.clone(), vec![7], now);
        w.expect(2, t2.clone(), vec![7], now);
        w.expect(3, t3.clone(), vec![8], now);
        w.answered(7, (1, 2), &[1], &[]);
        assert!(matches!(t1.state(), TicketState::Refused(_)));
        assert_eq!(t2.state(), TicketState::Stored);
        w.expire(now + TIMEOUT - Duration::from_millis(1));
        assert_eq!(t3.state(), TicketState::Pending);
        w.expire(now + TIMEOUT);
        assert!(matches!(t3.state(), TicketState::Refused(_)));
        assert_eq!(w.len(), 0);
        w.expect(4, ticket(), vec![7], now);
        assert!(w.cancel(4).is_some());
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn a_receiver_answers_once_its_store_holds_what_it_took_in() {
        let mut r = Receipts::default();
        r.took(10, 1, 3, false, false, None);
        assert!(!r.waiting(), "nobody asked");
        assert_eq!(r.due(|_| true), []);
        r.took(10, 2, 5, true, false, Some(1));
        r.took(10, 3, 4, true, true, Some(2));
        r.took(11, 9, 0, true, false, Some(1));
        assert!(r.waiting());
        let mut due = r.due(|mark| mark <= 4);
        assert_eq!(
            due,
            [Due {
                origin: 11,
                from: 9,
                seq: 9,
                refused: vec![],
                took: vec![]
            }]
        );
        due = r.due(|mark| mark <= 5);
        assert_eq!(
            due,
            [Due {
                origin: 10,
                from: 1,
                seq: 3,
                refused: vec![3],
                took: vec![]
            }]
        );
        assert!(!r.waiting());
        r.keep(&[11].into_iter().collect());
        r.took(11, 10, 0, true, false, Some(2));
        assert_eq!(r.due(|_| true).len(), 1);
    }

    /// A shared group's message is awaited from whichever node takes it: that node names it in
    /// its answer, apart from its watermark (which says nothing about group messages).
    #[test]
    fn a_group_message_is_answered_by_name_by_the_node_that_took_it() {
        let mut r = Receipts::default();
        r.took(10, 1, 1, true, false, Some(1));
        r.took_shared(10, 2, 2, false);
        r.took_shared(10, 4, 2, true);
        let due = r.due(|_| true);
        assert_eq!(
            due,
            [Due {
                origin: 10,
                from: 1,
                seq: 1,
                refused: vec![4],
                took: vec![2]
            }]
        );
        let w = Awaiting::default();
        let now = Instant::now();
        let (t2, t3, t4) = (ticket(), ticket(), ticket());
        w.expect(2, t2.clone(), vec![ANY], now);
        w.expect(3, t3.clone(), vec![ANY], now);
        w.expect(4, t4.clone(), vec![ANY], now);
        // Node 7's watermark reaching past 3 does not cover it: another node may have it.
        let d = &due[0];
        assert_eq!(w.answered(7, (d.from, 5), &d.refused, &d.took), 1);
        assert_eq!(t2.state(), TicketState::Stored);
        assert_eq!(t3.state(), TicketState::Pending);
        assert!(matches!(t4.state(), TicketState::Refused(_)));
        w.answered(8, (1, 1), &[], &[3]);
        assert_eq!(t3.state(), TicketState::Stored);
    }

    /// An asking message its NATS client dropped (a slow consumer) shows as a skipped tally:
    /// the answer then starts after it, so the sender refuses what never came instead of
    /// taking it as covered by the later number.
    #[test]
    fn a_skipped_tally_answers_only_from_after_the_gap() {
        let mut r = Receipts::default();
        r.took(10, 4, 1, true, false, Some(1));
        r.took(10, 5, 1, false, false, None);
        // Message 6 asked this node too (tally 2) and never came.
        r.took(10, 7, 2, true, false, Some(3));
        let due = r.due(|_| true);
        assert_eq!(
            due,
            [Due {
                origin: 10,
                from: 7,
                seq: 7,
                refused: vec![],
                took: vec![]
            }]
        );
        // On the sender's side: 4 and 6 waited for node 1; the answer refuses both (4 was
        // taken in, but the answer cannot say which before the gap were), and would have
        // covered 6 without the tally.
        let w = Awaiting::default();
        let now = Instant::now();
        let (t4, t6) = (ticket(), ticket());
        w.expect(4, t4.clone(), vec![1], now);
        w.expect(6, t6.clone(), vec![1], now);
        assert_eq!(
            w.answered(1, (due[0].from, due[0].seq), &due[0].refused, &[]),
            2
        );
        assert!(matches!(t6.state(), TicketState::Refused(_)));
        assert!(matches!(t4.state(), TicketState::Refused(_)));
        // The first tally seen not being 1 is a gap too.
        let mut r = Receipts::default();
        r.took(12, 20, 0, true, false, Some(2));
        r.took(12, 21, 0, true, false, Some(3));
        assert_eq!(r.due(|_| true)[0].from, 20);
    }
}
