//! The end of a connection: the client's DISCONNECT, the last flush, the will, and in `Drop` the
//! session's fate (ended, left to expire, or handed over).

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use super::{Client, Close, CLOSE_FLUSH};
use crate::codec::{reason, Disconnect, Packet, Properties};
use crate::message::{ForwardedProperties, Message};
use crate::metrics::CloseReason;

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
                .set_expiry_interval(expiry.min(self.ctx.config.mqtt.session_expiry_max));
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
            Box::pin(self.conn.flush_within(CLOSE_FLUSH)).await;
        }
        self.close = close.reason;
        self.publish_will = close.will;
    }

    /// Publishes the will now or after its delay (cancelled if the client comes back in time).
    fn dispatch_will(&mut self, session_ends: bool) {
        let Some(will) = self.will.take() else { return };
        let msg = Arc::new(Message::new(
            &will.topic,
            &will.payload,
            will.qos,
            will.retain,
            self.session.id,
            ForwardedProperties::from_properties(&will.properties),
        ));
        let delay = will.properties.will_delay_interval.unwrap_or(0);
        let expiry = self.session.expiry_interval();
        let wait = if session_ends { 0 } else { delay.min(expiry) };
        if wait == 0 {
            self.ctx.router.publish(msg);
            return;
        }
        let ctx = self.ctx.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(wait))).await;
            ctx.router.publish(msg);
        });
        self.session.set_will_timer(Some(timer.abort_handle()));
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.close = CloseReason::Panic;
            self.publish_will = true;
        }
        self.session.set_online(false);
        self.ctx.metrics.connections_current.decrement(1.0);
        self.ctx.metrics.closed(self.close);
        let taken_over = self.close == CloseReason::TakenOver;
        let session_ends = !taken_over && self.session.expiry_interval() == 0;
        if self.publish_will {
            let delayed = self
                .will
                .as_ref()
                .is_some_and(|w| w.properties.will_delay_interval.unwrap_or(0) > 0);
            // A takeover is a reconnection within any will delay: only an undelayed will goes out.
            if !(taken_over && delayed) {
                self.dispatch_will(session_ends);
            }
        }
        if taken_over {
            return;
        }
        if session_ends {
            self.ctx.registry.end(&self.session, &self.ctx.router);
        } else {
            let after = Duration::from_secs(u64::from(self.session.expiry_interval()));
            self.ctx.registry.expire_later(
                self.session.clone(),
                self.generation,
                after,
                self.ctx.router.clone(),
            );
        }
        if self.close == CloseReason::Panic {
            warn!(client = %self.session.client_id, "session task panicked; session closed");
        }
    }
}
