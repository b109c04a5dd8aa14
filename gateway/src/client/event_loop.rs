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
use crate::hibernate::Grace;
use crate::metrics::CloseReason;
use crate::session::Kick;

/// The packet type of PUBLISH, in a frame's first byte's high nibble.
const PUBLISH: u8 = 3;

impl Client {
    /// Boxed so that the task's future holds a pointer, not a second copy of the client state.
    /// `grace`: just attached, so a silence of `FIRST_PACKET_GRACE` already hibernates it (a
    /// device that connects and then talks every few minutes keeps its task that long only),
    /// until its first packet; the place is given back then. Otherwise it was resumed from hibernation, mostly because its
    /// client sent something: the socket is read at once rather than after tokio's reactor,
    /// which has just been given the socket, reports it readable (one turn of it saved on the
    /// first packet after a silence; a read that finds nothing costs one syscall).
    pub(super) async fn run(mut self: Box<Self>, mut grace: Option<Grace>) {
        let mut read_at_once = grace.is_none();
        // Only what the loop needs across waits lives here: this future is every active
        // session's task.
        let first = self.next_timer(broker_nanos(&self.ctx), grace.is_some());
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
                    // The broker, not the client, ends the connection: its will stands, as for any
                    // connection that ends without the client's DISCONNECT [MQTT-3.1.2-8]. MQTT
                    // lets a shutting-down server defer it to the restart: a persistent
                    // session's delayed will is kept in its record, and goes out after the
                    // restart unless the client is back first (`Registry::detach`).
                    Kick::Shutdown => Close {
                        reason: CloseReason::Shutdown,
                        code: Some(reason::SERVER_SHUTTING_DOWN),
                        will: true,
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
                    Kick::Unconfirmed => Close {
                        reason: CloseReason::ClusterUnconfirmed,
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
            // With `[[ingest]]`, a publisher whose acknowledgements wait for JetStream is not
            // read beyond its window: TCP pushes back on a 3.1.1 client that has no Receive
            // Maximum to keep, and ingestion's de-duplication window covers what it sent.
            let reading = self.conn.pending_memory() < READ_PAUSE_BYTES
                && (self.ctx.ingest.is_none()
                    || self.held_acks() < usize::from(self.ctx.policy.receive_maximum));
            let writing = self.conn.has_pending();
            let read_now = std::mem::take(&mut read_at_once);
            let session = &self.session;
            let conn = &mut self.conn;
            let mut wait = timer.as_mut();
            // `move`: the flags by value, a byte each in the task's future rather than a pointer.
            let event = std::future::poll_fn(move |cx| {
                if reading {
                    // Just resumed (see above), or the rest of a read that held more than one
                    // batch: no need to wait.
                    if read_now || conn.holds_frames() {
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
                if timed && wait.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(Event::Timer));
                }
                Poll::Pending
            })
            .await;
            match event {
                Err(e) => break self.stream_failed(&e),
                Ok(Event::Readable) => {
                    grace = None;
                    if let Some(close) = self.read_frames(&mut frames) {
                        break close;
                    }
                    // Tasks woken in one turn of tokio's reactor run last woken first (the
                    // scheduler's LIFO slot), so another client's SUBSCRIBE that reached the
                    // broker before this PUBLISH may wait behind it and miss the message. Letting
                    // the tasks woken with this one run first routes it in arrival order, as a
                    // single-threaded broker would (issue 18, item 10: Paho's
                    // `test_subscribe_options`). One yield per read that holds a PUBLISH.
                    if frames
                        .iter()
                        .any(|f| f.first().is_some_and(|b| b >> 4 == PUBLISH))
                    {
                        tokio::task::yield_now().await;
                    }
                    if !frames.is_empty() {
                        self.ctx.metrics.received_frames(&frames);
                        if let Some(close) = self.handle_frames(&mut frames) {
                            break close;
                        }
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
                Ok(Event::Timer) => {
                    let now = broker_nanos(&self.ctx);
                    if let Some(close) = self.keep_alive_expired(now) {
                        break close;
                    }
                    if let Some(close) = self.packet_expired(now) {
                        break close;
                    }
                    if let Some(after) = self.hibernation(grace.is_some()) {
                        if now >= self.last_read.max(self.last_write).saturating_add(after) {
                            match self.hibernate() {
                                Ok(()) => return,
                                // Busy (a write backlog, half a packet) or refused: `next_timer`
                                // looks again after another silent period, not at once.
                                Err(me) => self = me,
                            }
                        }
                    }
                    let next = self.next_timer(now, grace.is_some()).unwrap_or(u64::MAX);
                    timer.as_mut().reset(self.instant(next).into());
                }
            }
        };
        self.finish(close).await;
    }

    /// Reads one batch (or takes the next of a read that held more) into `frames`.
    fn read_frames(&mut self, frames: &mut Vec<Bytes>) -> Option<Close> {
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
                return Some(self.stream_failed(&e));
            }
            Err(ReadError::Decode(e)) => return Some(self.bad_input(&e)),
        }
        None
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

    /// The socket or the stream over it failed: a network close, unless the client's WebSocket
    /// frames were refused (a protocol error, counted; the WebSocket's close frame says why).
    fn stream_failed(&self, e: &std::io::Error) -> Close {
        let reason = if crate::ws::refused(e) {
            self.ctx.metrics.bad_input("websocket");
            CloseReason::ProtocolError
        } else {
            CloseReason::Network
        };
        Close {
            reason,
            code: None,
            will: true,
        }
    }

    fn bad_input(&self, e: &DecodeError) -> Close {
        self.ctx.metrics.bad_input(e.kind());
        debug!(client = %self.session.client_id, "bad packet: {e}");
        Close::protocol(e.disconnect_reason())
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
