//! The session task: waits for the socket, the session's queue, a kick or the timer, then reads
//! and dispatches every packet the client sent.

use std::future::Future;
use std::task::Poll;

use bytes::Bytes;
use tracing::debug;

use super::timing::broker_nanos;
use super::{Client, Close, Event, READ_PAUSE_BYTES};
use crate::codec::{self, reason, DecodeError, Packet};
use crate::connection::ReadError;
use crate::metrics::CloseReason;
use crate::session::Kick;

impl Client {
    /// Boxed so that the task's future holds a pointer, not a second copy of the client state.
    /// `fresh`: just attached, so a first wait with nothing to do hibernates at once (a device
    /// that connects and then talks every few minutes never keeps a task for the wait).
    pub(super) async fn run(mut self: Box<Self>, mut fresh: bool) {
        // Only what the loop needs across waits lives here: this future is every active
        // session's task.
        let first = self.next_timer(broker_nanos(&self.ctx));
        let mut timed = first.is_some();
        let timer = tokio::time::sleep_until(self.instant(first.unwrap_or(u64::MAX)).into());
        tokio::pin!(timer);
        // At most one batch (`connection::FRAME_BATCH`): its capacity stays with the task.
        let mut frames = Vec::new();
        let close = loop {
            if let Some(kick) = self.session.take_kick() {
                break match kick {
                    Kick::TakenOver => Close {
                        reason: CloseReason::TakenOver,
                        code: Some(reason::SESSION_TAKEN_OVER),
                        will: true,
                    },
                    Kick::Shutdown => Close {
                        reason: CloseReason::Shutdown,
                        code: Some(reason::SERVER_SHUTTING_DOWN),
                        will: false,
                    },
                    Kick::Administrative => Close {
                        reason: CloseReason::Administrative,
                        code: Some(reason::ADMINISTRATIVE_ACTION),
                        will: true,
                    },
                    // Only 3.1.1 clients are kicked for it: no DISCONNECT to send.
                    Kick::IngestRefused => Close {
                        reason: CloseReason::IngestRefused,
                        code: None,
                        will: true,
                    },
                };
            }
            let more = self.fill();
            if self.conn.has_pending() {
                match self.conn.try_flush() {
                    Ok(n) => {
                        if n > 0 {
                            self.last_write = broker_nanos(&self.ctx);
                        }
                        self.ctx.metrics.add_bytes_sent(n as u64);
                    }
                    Err(e) => {
                        debug!(client = %self.session.client_id, "write failed: {e}");
                        break Close {
                            reason: CloseReason::Network,
                            code: None,
                            will: true,
                        };
                    }
                }
            }
            if more && !self.conn.has_pending() {
                // The queue holds more than one batch and nothing will wake us for it (its wake-up
                // was consumed): come back for the rest after letting other tasks run.
                tokio::task::yield_now().await;
                continue;
            }
            let reading = self.conn.pending_memory() < READ_PAUSE_BYTES;
            let writing = self.conn.has_pending();
            let idle_now = fresh && self.hibernation().is_some() && self.conn.may_hibernate();
            fresh = false;
            let session = &self.session;
            let conn = &mut self.conn;
            let mut wait = timer.as_mut();
            // `move`: the flags by value, a byte each in the task's future rather than a pointer.
            let event = std::future::poll_fn(move |cx| {
                if reading {
                    // The rest of a read that held more than one batch: no need to wait.
                    if conn.holds_frames() {
                        return Poll::Ready(Ok(Event::Readable));
                    }
                    if let Poll::Ready(r) = conn.poll_read_ready(cx) {
                        return Poll::Ready(r.map(|()| Event::Readable));
                    }
                }
                if writing {
                    if let Poll::Ready(r) = conn.poll_write_ready(cx) {
                        return Poll::Ready(r.map(|()| Event::Writable));
                    }
                }
                if session.poll_woken(cx).is_ready() {
                    return Poll::Ready(Ok(Event::Woken));
                }
                if idle_now {
                    return Poll::Ready(Ok(Event::Idle));
                }
                if timed && wait.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(Event::Timer));
                }
                Poll::Pending
            })
            .await;
            match event {
                Err(_) => {
                    break Close {
                        reason: CloseReason::Network,
                        code: None,
                        will: true,
                    }
                }
                Ok(Event::Readable) => {
                    if let Some(close) = self.read_and_handle(&mut frames) {
                        break close;
                    }
                    // A packet left half read: its timeout may come before anything the timer
                    // waits for. Looked at once per read, reset only when it is earlier.
                    if let Some(at) = self.packet_deadline() {
                        let at = tokio::time::Instant::from(self.instant(at));
                        if !timed || at < timer.deadline() {
                            timer.as_mut().reset(at);
                            timed = true;
                        }
                    }
                }
                Ok(Event::Writable | Event::Woken) => {}
                Ok(Event::Idle) => match self.hibernate() {
                    Ok(()) => return,
                    Err(me) => self = me,
                },
                Ok(Event::Timer) => {
                    let now = broker_nanos(&self.ctx);
                    if let Some(close) = self.keep_alive_expired(now) {
                        break close;
                    }
                    if let Some(close) = self.packet_expired(now) {
                        break close;
                    }
                    if let Some(after) = self.hibernation() {
                        if now >= self.last_read.max(self.last_write).saturating_add(after) {
                            match self.hibernate() {
                                Ok(()) => return,
                                // Busy (a write backlog, half a packet) or refused: `next_timer`
                                // looks again after another silent period, not at once.
                                Err(me) => self = me,
                            }
                        }
                    }
                    let next = self.next_timer(now).unwrap_or(u64::MAX);
                    timer.as_mut().reset(self.instant(next).into());
                }
            }
        };
        self.finish(close).await;
    }

    /// Reads one batch (or takes the next of a read that held more) and handles every complete
    /// packet in it.
    fn read_and_handle(&mut self, frames: &mut Vec<Bytes>) -> Option<Close> {
        let max = self.ctx.policy.max_packet_size as usize;
        match self.conn.try_read_frames(max, frames) {
            Ok(0) => {}
            Ok(n) => {
                self.ctx.metrics.add_bytes_received(n as u64);
                self.last_read = broker_nanos(&self.ctx);
            }
            Err(ReadError::Eof) => {
                debug!(client = %self.session.client_id, "connection closed by client without DISCONNECT");
                return Some(Close {
                    reason: CloseReason::Network,
                    code: None,
                    will: true,
                });
            }
            Err(ReadError::Io(e)) => {
                debug!(client = %self.session.client_id, "read failed: {e}");
                return Some(Close {
                    reason: CloseReason::Network,
                    code: None,
                    will: true,
                });
            }
            Err(ReadError::Decode(e)) => return Some(self.bad_input(&e)),
        }
        if frames.is_empty() {
            return None;
        }
        self.ctx.metrics.received_frames(frames);
        self.handle_frames(frames)
    }

    /// Handles decoded-in-order frames until one closes the connection; the rest are dropped then.
    pub(super) fn handle_frames(&mut self, frames: &mut Vec<Bytes>) -> Option<Close> {
        let mut outcome = None;
        for frame in frames.drain(..) {
            let handled = match codec::decode(frame, self.protocol) {
                Ok(packet) => self.handle(packet),
                Err(e) => Err(self.bad_input(&e)),
            };
            if let Err(close) = handled {
                outcome = Some(close);
                break;
            }
        }
        outcome
    }

    fn bad_input(&self, e: &DecodeError) -> Close {
        self.ctx.metrics.bad_input(e.kind());
        debug!(client = %self.session.client_id, "bad packet: {e}");
        Close::protocol(e.reason_code())
    }

    pub(super) fn violation(&self, code: u8, what: &'static str) -> Close {
        self.ctx.metrics.bad_input("protocol");
        debug!(client = %self.session.client_id, "protocol violation: {what}");
        Close::protocol(code)
    }

    fn handle(&mut self, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(a) => self.on_puback(a),
            Packet::PubRec(a) => self.on_pubrec(a),
            Packet::PubRel(a) => self.on_pubrel(a),
            Packet::PubComp(a) => self.on_pubcomp(a),
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(u);
                Ok(())
            }
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => Err(self.on_disconnect(d)),
            Packet::Auth(_) => Err(self.violation(
                reason::PROTOCOL_ERROR,
                "AUTH without an authentication method",
            )),
            Packet::Connect(_) => Err(self.violation(reason::PROTOCOL_ERROR, "second CONNECT")),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(self.violation(
                    reason::PROTOCOL_ERROR,
                    "server-to-client packet sent by client",
                ))
            }
        }
    }
}
