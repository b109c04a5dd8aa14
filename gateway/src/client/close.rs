//! The end of a connection: the client's DISCONNECT, the last flush, and in `Drop` the session
//! and its will handed to the registry, which decides their fate (`Registry::detach`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, warn};

use super::{Client, Close, CLOSE_FLUSH};
use crate::codec::{reason, Disconnect, LastWill, Packet, Properties};
use crate::connection::Connection;
use crate::context::ConnectionSlot;
use crate::message::{ForwardedProperties, Message};
use crate::metrics::CloseReason;
use crate::registry::Departure;
use crate::store::StoredWill;

impl Client {
    pub(super) fn on_disconnect(&mut self, d: Disconnect) -> Close {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.session.expiry_interval() == 0 && expiry != 0 {
                return self.violation(
                    reason::PROTOCOL_ERROR,
                    "session expiry set on DISCONNECT after 0 on CONNECT",
                );
            }
            self.session
                .set_expiry_interval(expiry.min(self.ctx.policy.session_expiry_max));
        }
        debug!(client = %self.session.client_id, reason = d.reason, "client disconnected");
        Close {
            reason: CloseReason::Normal,
            code: None,
            will: d.reason == reason::DISCONNECT_WITH_WILL,
        }
    }

    /// Ends the connection: DISCONNECT with the close's code to a v5 client, the session handed
    /// back (the client dropped: `Drop` below), then the socket's last flush. The session goes
    /// first because a client taking it over waits for it, and the flush may take all of
    /// `CLOSE_FLUSH` (a client that neither reads nor closes its end, a half-open socket): held
    /// through it, every takeover of such a connection waited that long before its CONNACK, and
    /// clients queued on one client id waited that long each.
    pub(super) async fn finish(mut self: Box<Self>, close: Close) {
        let disconnect = close.code.filter(|_| self.protocol.is_v5());
        if let Some(code) = disconnect {
            self.send(&Packet::Disconnect(Disconnect {
                reason: code,
                properties: Properties::default(),
            }));
        }
        self.close = close.reason;
        self.publish_will = close.will;
        let conn = self.conn.take();
        // The connection counts as open until its socket is closed.
        let slot = self.slot.take();
        drop(self);
        // Boxed: the session task's future stays small (`tests::session_future_stays_small`).
        Box::pin(last_flush(conn, slot, disconnect.is_some())).await;
    }

    /// The connection's will as a persistent session's record keeps it while connected: what a
    /// restart publishes if the broker stops with the connection open.
    pub(super) fn armed_will(&self) -> Option<StoredWill> {
        let (message, delay) = will_message(self.will.as_deref()?, self.session.id);
        Some(StoredWill::Armed { message, delay })
    }

    /// The will as a message with its delay in seconds, if the close publishes one.
    fn departing_will(&mut self) -> Option<(Arc<Message>, u32)> {
        let will = self.will.take().filter(|_| self.publish_will)?;
        Some(will_message(&will, self.session.id))
    }
}

/// `graceful`: a DISCONNECT is queued, which must reach the client even while it is still
/// sending (takeover, shutdown).
async fn last_flush(mut conn: Connection, _slot: Option<ConnectionSlot>, graceful: bool) {
    if graceful {
        conn.close_gracefully(CLOSE_FLUSH).await;
    } else {
        conn.finish_within(CLOSE_FLUSH).await;
    }
}

/// A CONNECT's will as the message it publishes, with its delay in seconds.
fn will_message(will: &LastWill, origin: crate::message::Origin) -> (Arc<Message>, u32) {
    let message = Message::new(
        &will.topic,
        &will.payload,
        will.qos,
        will.retain,
        origin,
        ForwardedProperties::from_properties(&will.properties),
    );
    let delay = will.properties.will_delay_interval.unwrap_or(0);
    (Arc::new(message), delay)
}

/// Runs also when the task unwinds from a panic: the session is always handed back to the
/// registry, which decides what becomes of it and of the will.
impl Drop for Client {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.close = CloseReason::Panic;
            self.publish_will = true;
        } else if self.close == CloseReason::Network && !self.ctx.ready.load(Ordering::Acquire) {
            // Dropped as the broker stops without its task having closed it (still hibernating
            // when the drain ended, or its task stopped with the runtime; a network failure
            // meanwhile looks the same): a shutdown like the kicked ones, will included (see
            // `Kick::Shutdown`).
            self.close = CloseReason::Shutdown;
        }
        self.session.set_online(false);
        self.ctx.metrics.connections_current.decrement(1.0);
        self.ctx.metrics.closed(self.close);
        let departure = Departure {
            generation: self.generation,
            taken_over: self.close == CloseReason::TakenOver,
            will: self.departing_will(),
        };
        self.ctx
            .registry
            .detach(&self.session, departure, &self.ctx.router);
        if self.close == CloseReason::Panic {
            warn!(client = %self.session.client_id, "session task panicked; session closed");
        }
    }
}
