//! The end of a connection: the client's DISCONNECT, the last flush, and in `Drop` the session
//! and its will handed to the registry, which decides their fate (`Registry::detach`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, warn};

use super::{Client, Close, CLOSE_FLUSH};
use crate::codec::{reason, Disconnect, LastWill, Packet, Properties};
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

    pub(super) async fn finish(&mut self, close: Close) {
        if let (Some(code), true) = (close.code, self.protocol.is_v5()) {
            self.send(&Packet::Disconnect(Disconnect {
                reason: code,
                properties: Properties::default(),
            }));
            // The DISCONNECT must reach the client, even one still sending (takeover, shutdown).
            Box::pin(self.conn.close_gracefully(CLOSE_FLUSH)).await;
        } else {
            Box::pin(self.conn.finish_within(CLOSE_FLUSH)).await;
        }
        self.close = close.reason;
        self.publish_will = close.will;
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
