//! What a publisher's acknowledgement waits for besides the store: a `Ticket` that the last
//! of its parties (ingestion's writes, the cluster link's sends) completes, waking the session to
//! send it, or refuse it with a reason code.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

use crate::codec::reason;
use crate::session::Session;

/// How a ticket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TicketState {
    Pending,
    Stored,
    /// Not stored; the v5 reason code to answer with.
    Refused(u8),
}

const PENDING: u8 = 0;
const REFUSED_UNAVAILABLE: u8 = 1;
const REFUSED_FULL: u8 = 2;

/// What one QoS 1/2 message's acknowledgement waits for besides the store: the writes of the
/// `[[ingest]]` rules with `ack = "stream"` that matched it, or its sends to other cluster
/// nodes reaching NATS.
pub(crate) struct Ticket {
    remaining: AtomicU32,
    /// `PENDING` or the worst refusal so far; read once `remaining` is 0.
    refused: AtomicU8,
    waiter: Arc<Session>,
}

/// Why a write (or a send to other nodes) was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The stream is full and refuses new messages (discard new), or the rule's queue is (a
    /// client ignoring its window): v5 0x97 Quota exceeded.
    Quota,
    /// JetStream did not acknowledge within `ack_timeout`, or a send to other nodes did not
    /// reach NATS: v5 0x80 Unspecified error.
    Unavailable,
}

impl Ticket {
    pub(crate) fn new(writes: usize, waiter: Arc<Session>) -> Ticket {
        Ticket {
            remaining: AtomicU32::new(u32::try_from(writes).unwrap_or(u32::MAX)),
            refused: AtomicU8::new(PENDING),
            waiter,
        }
    }

    /// One more party to wait for; only while another is still owed (the ticket is pending).
    pub(crate) fn add_one(&self) {
        self.remaining.fetch_add(1, Ordering::AcqRel);
    }

    /// One write ended; the last one wakes the session to send (or refuse) the ack.
    pub(crate) fn complete(&self, outcome: Result<(), Refusal>) {
        if let Err(refusal) = outcome {
            let code = match refusal {
                Refusal::Quota => REFUSED_FULL,
                Refusal::Unavailable => REFUSED_UNAVAILABLE,
            };
            self.refused.fetch_max(code, Ordering::AcqRel);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waiter.wake();
        }
    }

    pub(crate) fn state(&self) -> TicketState {
        if self.remaining.load(Ordering::Acquire) > 0 {
            return TicketState::Pending;
        }
        match self.refused.load(Ordering::Acquire) {
            PENDING => TicketState::Stored,
            REFUSED_FULL => TicketState::Refused(reason::QUOTA_EXCEEDED),
            _ => TicketState::Refused(reason::UNSPECIFIED_ERROR),
        }
    }
}
