//! JetStream de-duplication ids (`Nats-Msg-Id`) for QoS 1/2 messages: equal for a resend of a
//! message, different for a new message that reuses its packet id.
//!
//! MQTT tells a resend apart only by the DUP flag and the packet id, and a packet id is reused as
//! soon as its acknowledgement arrives. So each session numbers its new messages (`n`), remembers
//! for its most recent packet ids which number and content they had, and gives a resend (DUP, or
//! a QoS 2 id still held) the number of the message it repeats. The id is
//! `client id : session epoch : packet id : n : rule`: the epoch is random per session (a clean
//! start, or a restart of the gateway, is a new one), the rule keeps two rules writing one
//! message into one stream apart.
//!
//! A resend whose packet id is no longer remembered (older than the window, or from before a
//! clean start or a gateway restart) gets a new number: JetStream stores it again. A DUP
//! message that reuses a packet id after its predecessor's PUBACK but whose first copy never
//! arrived is taken for a resend only if its topic and payload are the predecessor's too
//! (`content`); then it is, indeed, the same message.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::time::Instant;

use rustc_hash::FxHasher;

/// A session's numbering of its published messages.
#[derive(Debug)]
pub(crate) struct PublishIds {
    epoch: u64,
    next: u64,
    /// (packet id, content hash, n) of the most recent new messages, oldest first.
    recent: VecDeque<(u16, u64, u64)>,
}

impl PublishIds {
    pub(crate) fn new(session: u64) -> PublishIds {
        PublishIds {
            epoch: std::hash::RandomState::new().hash_one((session, Instant::now())),
            next: 0,
            recent: VecDeque::new(),
        }
    }

    /// The epoch and number of a message with `packet_id`. `window`: how many packet ids are
    /// remembered (the client's in-flight window: only those can be resent).
    pub(crate) fn assign(
        &mut self,
        packet_id: u16,
        resend: bool,
        content: u64,
        window: usize,
    ) -> (u64, u64) {
        if resend {
            let found = self
                .recent
                .iter()
                .rev()
                .find(|(id, c, _)| *id == packet_id && *c == content);
            if let Some(&(_, _, n)) = found {
                return (self.epoch, n);
            }
        }
        let n = self.next;
        self.next += 1;
        if self.recent.len() >= window.max(1) {
            self.recent.pop_front();
        }
        self.recent.push_back((packet_id, content, n));
        (self.epoch, n)
    }
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
    id.push_str(&format!(":{epoch:016x}:{packet_id}:{n}:{rule}"));
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resend_repeats_the_number_a_reused_packet_id_does_not() {
        let mut ids = PublishIds::new(1);
        let a = content_hash("t", b"1");
        let b = content_hash("t", b"2");
        let (epoch, first) = ids.assign(7, false, a, 16);
        assert_eq!(ids.assign(7, true, a, 16), (epoch, first), "DUP resend");
        let (_, reused) = ids.assign(7, false, b, 16);
        assert_ne!(reused, first, "packet id reused by a new message");
        assert_eq!(ids.assign(7, true, b, 16).1, reused);
        // A DUP whose original never arrived, with other content: a new message.
        let (_, other) = ids.assign(7, true, content_hash("t", b"3"), 16);
        assert!(other != first && other != reused);
        assert_ne!(
            PublishIds::new(1).epoch,
            epoch,
            "a new session, a new epoch"
        );
    }

    #[test]
    fn only_the_window_is_remembered() {
        let mut ids = PublishIds::new(1);
        let c = content_hash("t", b"x");
        let (_, first) = ids.assign(1, false, c, 2);
        ids.assign(2, false, c, 2);
        ids.assign(3, false, c, 2);
        assert_ne!(ids.assign(1, true, c, 2).1, first);
    }
}
