//! Confirmations: a QoS 1/2 message a client published, and this node sent to other nodes, is
//! acknowledged only once NATS has it.
//!
//! Without this the acknowledgement went out when the message was queued towards the link,
//! and a node killed before the link wrote it to NATS lost a message it had acknowledged (the
//! other nodes' persistent sessions never got it). Now every send of such a message carries
//! the publisher's `Ticket`: the link completes it once its batch is written to the NATS
//! connection (`flush`), and refuses it when the send is dropped (the queue towards NATS full,
//! the link lost), so the publisher sends again. What this does not cover: a message NATS has
//! but the receiving node dies before its store holds it (see README, Cluster).

use std::sync::Arc;

use crate::session::Session;
use crate::ticket::Ticket;

/// What one message routed on this node owes its publisher: filled by `Cluster::share` and
/// `Cluster::forward` as they send it, ended by `finish`.
pub(crate) struct Confirm {
    /// Whose acknowledgement waits (none: nobody waits, as for QoS 0 or a will).
    publisher: Option<Arc<Session>>,
    ticket: Option<Arc<Ticket>>,
}

impl Confirm {
    /// For a message of `publisher` whose acknowledgement waits (QoS 1/2), or none.
    pub(crate) fn new(publisher: Option<Arc<Session>>) -> Confirm {
        Confirm {
            publisher,
            ticket: None,
        }
    }

    /// The ticket one send carries to the link, which completes it once; none when nobody
    /// waits.
    pub(super) fn send(&mut self) -> Option<Arc<Ticket>> {
        let publisher = self.publisher.as_ref()?;
        // One part is the router's own, completed by `finish`: a send done before the router
        // is cannot complete the ticket early.
        let ticket = self
            .ticket
            .get_or_insert_with(|| Arc::new(Ticket::new(1, publisher.clone())));
        ticket.add_one();
        Some(ticket.clone())
    }

    /// Whether a publisher waits for this message.
    pub(super) fn waits(&self) -> bool {
        self.publisher.is_some()
    }

    /// The router is done sending: the ticket the publisher's acknowledgement waits for, if
    /// some send took one.
    pub(crate) fn finish(self) -> Option<Arc<Ticket>> {
        let ticket = self.ticket?;
        ticket.complete(Ok(()));
        Some(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::{Refusal, TicketState};

    fn publisher() -> Option<Arc<Session>> {
        Some(Arc::new(Session::new(1, "p".into())))
    }

    #[test]
    fn the_acknowledgement_waits_for_every_send_and_the_router() {
        let mut confirm = Confirm::new(publisher());
        let first = confirm.send().expect("a publisher waits");
        let second = confirm.send().expect("a publisher waits");
        assert!(Arc::ptr_eq(&first, &second), "one ticket per message");
        // Both sends done before the router is: still pending.
        first.complete(Ok(()));
        second.complete(Ok(()));
        assert_eq!(first.state(), TicketState::Pending);
        let ticket = confirm.finish().expect("a ticket");
        assert_eq!(ticket.state(), TicketState::Stored);

        let mut confirm = Confirm::new(publisher());
        let send = confirm.send().expect("a ticket");
        let ticket = confirm.finish().expect("a ticket");
        assert_eq!(ticket.state(), TicketState::Pending, "the send is out");
        send.complete(Ok(()));
        assert_eq!(ticket.state(), TicketState::Stored);
    }

    #[test]
    fn a_dropped_send_refuses_the_publisher() {
        let mut confirm = Confirm::new(publisher());
        let sent = confirm.send().expect("a ticket");
        let dropped = confirm.send().expect("a ticket");
        let ticket = confirm.finish().expect("a ticket");
        sent.complete(Ok(()));
        dropped.complete(Err(Refusal::Unavailable));
        assert!(matches!(ticket.state(), TicketState::Refused(_)));
    }

    #[test]
    fn nobody_waits_without_a_publisher_or_a_send() {
        let mut confirm = Confirm::new(None);
        assert!(confirm.send().is_none());
        assert!(confirm.finish().is_none());
        assert!(Confirm::new(publisher()).finish().is_none());
    }
}
