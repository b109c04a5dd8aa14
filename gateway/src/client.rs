//! One connected client: the task that runs its MQTT state machine from CONNECT to close.
//!
//! The data path reads top to bottom here: frames come off the socket (`connection`), are decoded
//! (`codec`), inbound PUBLISHes become one shared `Message` handed to the `router`, and the session's
//! queue is drained into encoded-once PUBLISH heads plus shared payload chunks for one vectored
//! write. Everything that must happen when the connection ends (will, session expiry, hand-over)
//! happens in `Drop`, so it also happens when the task unwinds from a panic.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use tracing::{debug, warn};

use crate::acl::{ClientAcl, Principal};
use crate::auth::Refusal;
use crate::codec::{
    self, reason, Ack, ConnAck, Connect, DecodeError, Disconnect, LastWill, Packet, Properties,
    Protocol, Publish, QoS, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use crate::connection::{Connection, ReadError};
use crate::context::{ConnectionSlot, Context};
use crate::hibernate::Sleeper;
use crate::limits::{Handshake, PublishQuota, QuotaExceeded};
use crate::message::{ForwardedProperties, Message};
use crate::metrics::{CloseReason, DropReason, LimitExceeded, SentBatch};
use crate::registry::Departure;
use crate::session::{ConnectionInfo, IncomingQos2, Kick, Outgoing, Ownership, Stage};
use crate::task::spawn_isolated;
use crate::topic;

/// Items taken from the session queue per wake-up; bounds the work done before yielding.
const FILL_BATCH: usize = 256;

thread_local! {
    /// The items of one fill, reused by every connection on the worker thread: a fill runs
    /// without awaiting, and a fresh vector per fill was an allocation (and a free) per write
    /// batch, i.e. per delivery when subscribers get one message at a time (fan-out).
    static READY: std::cell::RefCell<Vec<Outgoing>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Where control packets (acknowledgements mostly: one per QoS 1 PUBLISH) are encoded.
    static ENCODED: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// Reading pauses while this much is waiting to be written: a client that does not read its
/// acknowledgements is throttled by TCP instead of growing our buffers.
const READ_PAUSE_BYTES: usize = 256 * 1024;
/// How long a closing connection may take to flush its last packets.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// Why and how the connection closes.
struct Close {
    reason: CloseReason,
    /// v5 DISCONNECT reason code to send first, if any.
    code: Option<u8>,
    /// Whether the will is published.
    will: bool,
}

impl Close {
    fn protocol(code: u8) -> Close {
        Close {
            reason: CloseReason::ProtocolError,
            code: Some(code),
            will: true,
        }
    }
}

/// What woke the connection task.
enum Event {
    Readable,
    Writable,
    Woken,
    /// Just attached and nothing to do: hibernate.
    Idle,
    /// Keep-alive is due, or the connection may have been silent long enough to hibernate.
    Timer,
}

/// Outbound topic aliases towards a v5 client that accepts them.
struct AliasesOut {
    map: std::collections::HashMap<ByteString, u16>,
    max: u16,
}

/// Per-connection state once the session is attached. Every idle session keeps one, so fields
/// are as narrow as their values allow: times are nanoseconds on the broker's clock
/// (`ctx.started`) rather than 16-byte `Instant`s, limits use the width the protocol gives them.
pub struct Client {
    ctx: Arc<Context>,
    conn: Connection,
    /// The session, owned for the connection's lifetime; ownership ends when the client drops.
    session: Ownership,
    generation: u32,
    protocol: Protocol,
    /// The keep-alive deadline, 1.5 times the negotiated keep-alive; `None` without keep-alive.
    keep_alive_ms: Option<NonZeroU32>,
    /// When bytes last came from the client, in nanoseconds since `ctx.started`.
    last_read: u64,
    /// When the socket last took bytes from us (same clock); a client that stops reading is
    /// detected by it.
    last_write: u64,
    send_window: u16,
    /// The client's Maximum Packet Size (a four-byte integer in MQTT); `u32::MAX` when unset.
    client_max_packet: u32,
    will: Option<Box<LastWill>>,
    aliases_in: Option<Box<[Option<ByteString>]>>,
    aliases_out: Option<Box<AliasesOut>>,
    /// Present only when an ACL file is configured: without one, one branch per check.
    acl: Option<Box<ClientAcl>>,
    /// `limits.max_publish_rate` and `max_publish_bytes_rate`: boxed on the first charged PUBLISH,
    /// so without those limits (or without publishing) a session does not carry the buckets.
    quota: Option<Box<PublishQuota>>,
    close: CloseReason,
    publish_will: bool,
    _slot: ConnectionSlot,
}

/// An accepted connection ready for MQTT bytes.
pub struct Opened {
    pub conn: Connection,
    /// The client certificate's name on a `use_identity_as_username` listener: the username,
    /// in place of CONNECT's username and password.
    pub identity: Option<ByteString>,
    /// Accepted by the default (`[mqtt] listen`) listener, where anonymous access may be allowed
    /// without `allow_anonymous` (see `auth`).
    pub default_listener: bool,
}

/// Serves one accepted socket. The handshake runs in this task; the session then runs in a task
/// of its own, so an idle session's task holds only the session's state, not the larger state the
/// handshake needed (a decoded CONNECT, CONNACK properties, the connect timer).
pub async fn serve(
    slot: ConnectionSlot,
    admission: Handshake,
    open: impl Future<Output = Option<Opened>>,
    peer: std::net::SocketAddr,
) {
    if let Some(at) = admission.not_before {
        // Paced by `limits.connect_rate`: the client's CONNECT waits in the socket until this
        // connection's slot, and the connect timeout starts then.
        tokio::time::sleep_until(at.into()).await;
    }
    // The TLS / WebSocket handshake, if any: after pacing, counted as a handshake in flight.
    let Some(opened) = open.await else {
        return;
    };
    let client = handshake(slot, opened, peer).await;
    // CONNACK is queued (or the connection refused): the handshake no longer counts.
    drop(admission);
    if let Some(client) = client {
        let ctx = client.ctx.clone();
        // A new session with nothing to do waits for its first packet hibernating, without ever
        // spawning its task: connecting costs one task, not two.
        if let Err(client) = Box::new(client).hibernate_at_once() {
            spawn_isolated(ctx.metrics.clone(), peer, client.run(true));
        }
    }
}

/// From accepted socket to attached session: CONNECT within the connect timeout, then CONNACK.
async fn handshake(
    slot: ConnectionSlot,
    opened: Opened,
    peer: std::net::SocketAddr,
) -> Option<Client> {
    let ctx = slot.context().clone();
    let Opened {
        mut conn,
        identity,
        default_listener,
    } = opened;
    let connect = match tokio::time::timeout(
        ctx.config.mqtt.connect_timeout,
        read_connect(&ctx, &mut conn),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(why)) => {
            debug!(%peer, "connection refused before CONNECT completed: {why}");
            conn.flush_within(CLOSE_FLUSH).await;
            return None;
        }
        Err(_) => {
            debug!(%peer, "no CONNECT within the connect timeout");
            ctx.metrics.closed(CloseReason::ConnectTimeout);
            return None;
        }
    };
    Client::attach(ctx, slot, conn, connect, (identity, default_listener), peer).await
}

/// Reads and validates the first packet. Answers failures itself (CONNACK where the protocol allows).
async fn read_connect(ctx: &Context, conn: &mut Connection) -> Result<Box<Connect>, String> {
    let max = ctx.config.mqtt.max_packet_size as usize;
    let mut frames = Vec::with_capacity(1);
    loop {
        conn.readable().await.map_err(|e| e.to_string())?;
        match conn.try_read_frames(max, &mut frames) {
            Ok(n) => ctx.metrics.add_bytes_received(n as u64),
            Err(ReadError::Decode(e)) => {
                ctx.metrics.bad_input(e.kind());
                return Err(e.to_string());
            }
            Err(e) => return Err(e.to_string()),
        }
        let Some(frame) = frames.first().cloned() else {
            continue;
        };
        ctx.metrics.received_frames(std::slice::from_ref(&frame));
        let level = connect_level(&frame);
        // The session keeps client id and will for its lifetime: decode them from a compact copy
        // rather than from slices that would pin the shared read buffer.
        return match codec::decode_connect(Bytes::copy_from_slice(&frame)) {
            Ok(c) => Ok(Box::new(c)),
            Err(e) => {
                ctx.metrics.bad_input(e.kind());
                if let DecodeError::UnsupportedProtocol { .. } = e {
                    refuse(
                        ctx,
                        conn,
                        Protocol::V311,
                        reason::UNSUPPORTED_PROTOCOL_VERSION,
                    );
                } else if level == Some(5) {
                    refuse(ctx, conn, Protocol::V5, e.reason_code());
                }
                ctx.metrics.rejected("bad_connect");
                Err(e.to_string())
            }
        };
    }
}

/// The protocol level byte of a CONNECT frame, when it can be found, to answer errors in kind.
/// Any other packet type has no level: a first packet that is not CONNECT gets no answer.
fn connect_level(frame: &[u8]) -> Option<u8> {
    if *frame.first()? >> 4 != 1 {
        return None;
    }
    let mut i = 1;
    while *frame.get(i)? & 0x80 != 0 {
        i += 1;
    }
    let name_len = usize::from(u16::from_be_bytes([*frame.get(i + 1)?, *frame.get(i + 2)?]));
    frame.get(i + 3 + name_len).copied()
}

/// Now on the broker's clock: nanoseconds since `ctx.started`, the unit of a client's
/// `last_read` / `last_write` (eight bytes each where an `Instant` takes sixteen).
fn broker_nanos(ctx: &Context) -> u64 {
    u64::try_from(ctx.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn refuse(ctx: &Context, conn: &mut Connection, protocol: Protocol, code: u8) {
    let mut out = BytesMut::new();
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: code,
        properties: Properties::default(),
    });
    codec::encode(&connack, protocol, &mut out);
    ctx.metrics.packet_sent(&connack);
    conn.queue(out.freeze());
}

impl Client {
    /// Validates CONNECT, takes the session over and answers CONNACK.
    async fn attach(
        ctx: Arc<Context>,
        slot: ConnectionSlot,
        mut conn: Connection,
        connect: Box<Connect>,
        (identity, default_listener): (Option<ByteString>, bool),
        peer: std::net::SocketAddr,
    ) -> Option<Client> {
        let cfg = &ctx.config.mqtt;
        let protocol = connect.protocol;
        let v5 = protocol.is_v5();
        let mut props = Properties::default();

        // First: above the memory high-water mark nothing else about the client matters.
        if ctx.router.overloaded.load(Ordering::Relaxed) {
            return refuse_and_close(&ctx, conn, protocol, reason::SERVER_BUSY, peer).await;
        }
        if connect.properties.authentication_method.is_some() {
            return refuse_and_close(
                &ctx,
                conn,
                protocol,
                reason::BAD_AUTHENTICATION_METHOD,
                peer,
            )
            .await;
        }
        let client_id = if connect.client_id.is_empty() {
            if protocol == Protocol::V31 || (!v5 && !connect.clean_start) {
                return refuse_and_close(
                    &ctx,
                    conn,
                    protocol,
                    reason::CLIENT_IDENTIFIER_NOT_VALID,
                    peer,
                )
                .await;
            }
            let assigned = ByteString::from(format!("auto-{:016x}", rand_id()));
            if v5 {
                props.assigned_client_identifier = Some(assigned.clone());
            }
            assigned
        } else {
            connect.client_id.clone()
        };
        if let Some(will) = &connect.will {
            let too_long = will.topic.len() > ctx.config.limits.max_topic_length;
            if too_long || topic::validate_topic_name(&will.topic, cfg.max_topic_levels).is_err() {
                if !v5 {
                    // 3.x has no return code for this: a non-conforming CONNECT is closed without
                    // CONNACK [MQTT-3.1.4-1].
                    debug!(%peer, "CONNECT refused: invalid will topic");
                    ctx.metrics
                        .rejected(reject_label(reason::TOPIC_NAME_INVALID));
                    return None;
                }
                return refuse_and_close(&ctx, conn, protocol, reason::TOPIC_NAME_INVALID, peer)
                    .await;
            }
            if !payload_format_ok(&will.properties, &will.payload) {
                return refuse_and_close(
                    &ctx,
                    conn,
                    protocol,
                    reason::PAYLOAD_FORMAT_INVALID,
                    peer,
                )
                .await;
            }
        }

        // Before the session is touched: a refused client must not take over anyone's session.
        let acl = match authorize(&ctx, &connect, &client_id, identity, default_listener).await {
            Ok(acl) => acl,
            Err(code) => return refuse_and_close(&ctx, conn, protocol, code, peer).await,
        };

        let attached = ctx
            .registry
            .attach(&client_id, connect.clean_start, &ctx.router)
            .await;
        let session = attached.session;

        let requested_expiry = if v5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry = requested_expiry.min(cfg.session_expiry_max);
        if v5 && expiry != requested_expiry {
            props.session_expiry_interval = Some(expiry);
        }
        session.set_expiry_interval(expiry);

        let mut keep_alive = connect.keep_alive;
        if keep_alive > cfg.max_keepalive || (keep_alive == 0 && v5 && cfg.max_keepalive < u16::MAX)
        {
            keep_alive = cfg.max_keepalive;
            if v5 {
                props.server_keep_alive = Some(keep_alive);
            }
        }
        if v5 {
            props.receive_maximum = Some(cfg.receive_maximum);
            props.maximum_packet_size = Some(cfg.max_packet_size);
            if cfg.topic_alias_maximum > 0 {
                props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
            }
        }
        let client_receive_max = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        // Aliases towards the client cost a map entry each: bounded by our own maximum too, so a
        // client announcing 65535 cannot make us keep 65535 topics for it.
        let client_alias_max = connect
            .properties
            .topic_alias_maximum
            .unwrap_or(0)
            .min(cfg.topic_alias_maximum);
        let mut out = BytesMut::new();
        let connack = Packet::ConnAck(ConnAck {
            session_present: attached.present,
            reason: reason::SUCCESS,
            properties: props,
        });
        codec::encode(&connack, protocol, &mut out);
        ctx.metrics.packet_sent(&connack);
        conn.queue(out.freeze());
        session.set_online(true);
        session.set_connection(ConnectionInfo::now(peer, protocol));
        ctx.metrics.connections_current.increment(1.0);
        debug!(client = %client_id, %peer, ?protocol, present = attached.present, "connected");

        let now = broker_nanos(&ctx);
        let mut client = Client {
            generation: attached.generation,
            session: attached.owner,
            protocol,
            keep_alive_ms: NonZeroU32::new(u32::from(keep_alive) * 1500),
            last_read: now,
            last_write: now,
            send_window: cfg.max_inflight.min(client_receive_max),
            client_max_packet: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
            will: connect.will.map(Box::new),
            aliases_in: None,
            aliases_out: (v5 && ctx.config.mqtt.outbound_topic_aliases && client_alias_max > 0)
                .then(|| {
                    Box::new(AliasesOut {
                        map: Default::default(),
                        max: client_alias_max,
                    })
                }),
            acl,
            quota: None,
            close: CloseReason::Network,
            publish_will: true,
            conn,
            ctx,
            _slot: slot,
        };
        let mut resend = Vec::new();
        client.session.inflight_for_resend(&mut resend);
        client.write_outgoing(&mut resend, Instant::now());
        Some(client)
    }

    /// Boxed so that the task's future holds a pointer, not a second copy of the client state.
    /// `fresh`: just attached, so a first wait with nothing to do hibernates at once (a device
    /// that connects and then talks every few minutes never keeps a task for the wait).
    async fn run(mut self: Box<Self>, mut fresh: bool) {
        // Only what the loop needs across waits lives here: this future is every active
        // session's task.
        let first = self.next_timer(broker_nanos(&self.ctx));
        let timed = first.is_some();
        let timer = tokio::time::sleep_until(self.instant(first.unwrap_or(u64::MAX)).into());
        tokio::pin!(timer);
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
            let reading = self.conn.pending_bytes() < READ_PAUSE_BYTES;
            let writing = self.conn.has_pending();
            let idle_now = fresh && self.hibernation().is_some() && self.conn.may_hibernate();
            fresh = false;
            let session = &self.session;
            let conn = &mut self.conn;
            let mut wait = timer.as_mut();
            // `move`: the flags by value, a byte each in the task's future rather than a pointer.
            let event = std::future::poll_fn(move |cx| {
                if reading {
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

    /// The silence (nanoseconds) after which this session hibernates; `None`: never.
    fn hibernation(&self) -> Option<u64> {
        self.ctx.config.mqtt.hibernate_after.map(duration_nanos)
    }

    /// The keep-alive period in nanoseconds; `None` without keep-alive.
    fn keep_alive_period(&self) -> Option<u64> {
        self.keep_alive_ms.map(|ms| u64::from(ms.get()) * 1_000_000)
    }

    /// The close a silent client (or one that stopped reading) has earned by `now`, if any.
    fn keep_alive_expired(&self, now: u64) -> Option<Close> {
        let period = self.keep_alive_period()?;
        // A client that stops reading is as gone as one that stops sending: with data waiting
        // and no byte taken for a keep-alive period, it is closed. Checked first: its silence
        // may only be our read pause (write backpressure).
        let waiting = self.conn.has_pending();
        if waiting && now >= self.last_write.saturating_add(period) {
            debug!(client = %self.session.client_id, "not reading: closed as a slow consumer");
            return Some(Close {
                reason: CloseReason::SlowConsumer,
                code: None,
                will: true,
            });
        }
        // While our write backlog pauses reading, the client's packets wait unread: its
        // silence is ours, and the slow-consumer rule above judges it.
        let read_paused = self.conn.pending_bytes() >= READ_PAUSE_BYTES;
        if !read_paused && now >= self.last_read.saturating_add(period) {
            debug!(client = %self.session.client_id, "keep-alive expired");
            return Some(Close {
                reason: CloseReason::KeepAlive,
                code: Some(reason::KEEP_ALIVE_TIMEOUT),
                will: true,
            });
        }
        None
    }

    /// When the timer must fire next (nanoseconds on the broker's clock): the keep-alive check
    /// and, with hibernation on, the end of a silent period. `None` when neither applies.
    fn next_timer(&self, now: u64) -> Option<u64> {
        let keep_alive = self.keep_alive_period().map(|period| {
            let waiting = self.conn.has_pending();
            let read_paused = self.conn.pending_bytes() >= READ_PAUSE_BYTES;
            match (waiting, read_paused) {
                (true, true) => self.last_write,
                (true, false) => self.last_read.min(self.last_write),
                _ => self.last_read,
            }
            .saturating_add(period)
        });
        let silent = self.hibernation().map(|after| {
            let at = self.last_read.max(self.last_write).saturating_add(after);
            // Past it without hibernating (busy or refused), or just resumed after a long
            // silence: the next look is a whole period away.
            if at <= now {
                now.saturating_add(after)
            } else {
                at
            }
        });
        match (keep_alive, silent) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A time on the broker's clock as an `Instant` (far in the future for `u64::MAX`).
    fn instant(&self, nanos: u64) -> Instant {
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        self.ctx
            .started
            .checked_add(Duration::from_nanos(nanos))
            .map_or(far, |at| at.min(far))
    }

    /// Right after CONNACK: writes it and hibernates when the socket took everything and the
    /// session has nothing queued. Gives the client back otherwise, for its task.
    fn hibernate_at_once(mut self: Box<Self>) -> Result<(), Box<Self>> {
        if self.hibernation().is_none() || self.session.queue_len() > 0 {
            return Err(self);
        }
        match self.conn.try_flush() {
            Ok(n) => {
                self.last_write = broker_nanos(&self.ctx);
                self.ctx.metrics.add_bytes_sent(n as u64);
            }
            // The task meets the error again and closes the connection.
            Err(_) => return Err(self),
        }
        self.hibernate()
    }

    /// Ends the task and leaves the client to the parker, its socket off tokio's reactor, until
    /// the client sends something, the session is woken or keep-alive is due. Gives the client
    /// back when it cannot hibernate now.
    fn hibernate(mut self: Box<Self>) -> Result<(), Box<Self>> {
        if !self.conn.may_hibernate() {
            return Err(self);
        }
        if let Err(e) = self.conn.hibernate() {
            // The socket is lost with the error: the task's next I/O fails and closes it.
            debug!(client = %self.session.client_id, "cannot hibernate: {e}");
            return Err(self);
        }
        let deadline = self
            .keep_alive_period()
            .map(|period| self.instant(self.last_read.saturating_add(period)));
        let parker = self.ctx.parker.clone();
        parker.park(self, deadline).map_err(|mut me| {
            if let Err(e) = me.conn.resume() {
                debug!(client = %me.session.client_id, "cannot resume after a refused hibernation: {e}");
            }
            me
        })
    }

    /// Reads one batch and handles every complete packet in it.
    fn read_and_handle(&mut self, frames: &mut Vec<Bytes>) -> Option<Close> {
        let max = self.ctx.config.mqtt.max_packet_size as usize;
        match self.conn.try_read_frames(max, frames) {
            Ok(0) => return None,
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
        self.ctx.metrics.received_frames(frames);
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

    fn violation(&self, code: u8, what: &'static str) -> Close {
        self.ctx.metrics.bad_input("protocol");
        debug!(client = %self.session.client_id, "protocol violation: {what}");
        Close::protocol(code)
    }

    fn handle(&mut self, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(a) => {
                if !self.session.acknowledge(a.packet_id, Stage::PubAck) {
                    debug!(client = %self.session.client_id, id = a.packet_id, "PUBACK for unknown packet id");
                }
                Ok(())
            }
            Packet::PubRec(a) => {
                if a.reason >= 0x80 {
                    self.session.abandon(a.packet_id);
                    return Ok(());
                }
                let known = self.session.acknowledge(a.packet_id, Stage::PubRec);
                let code = if known {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.send(&Packet::PubRel(ack(a.packet_id, code)));
                Ok(())
            }
            Packet::PubRel(a) => {
                let code = if self.session.release_incoming(a.packet_id) {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.send(&Packet::PubComp(ack(a.packet_id, code)));
                Ok(())
            }
            Packet::PubComp(a) => {
                self.session.acknowledge(a.packet_id, Stage::PubComp);
                Ok(())
            }
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

    fn on_publish(&mut self, p: Publish) -> Result<(), Close> {
        let ctx = self.ctx.clone();
        let cfg = &ctx.config.mqtt;
        if !p.properties.subscription_identifiers.is_empty() {
            // Only the server sends subscription identifiers in PUBLISH [MQTT-3.3.4-6].
            return Err(self.violation(
                reason::PROTOCOL_ERROR,
                "subscription identifier in PUBLISH from a client",
            ));
        }
        let topic = self.resolve_topic(&p)?;
        let limits = &ctx.config.limits;
        if topic.len() > limits.max_topic_length {
            self.ctx.metrics.limit_exceeded(LimitExceeded::TopicLength);
            debug!(client = %self.session.client_id, len = topic.len(), "PUBLISH topic longer than limits.max_topic_length");
            return Err(Close::protocol(reason::TOPIC_NAME_INVALID));
        }
        if limits.max_publish_rate > 0 || limits.max_publish_bytes_rate > 0 {
            self.charge_quota(topic.len() + p.payload.len())?;
        }
        if topic::validate_topic_name(&topic, cfg.max_topic_levels).is_err() {
            return Err(self.violation(reason::TOPIC_NAME_INVALID, "invalid topic name in PUBLISH"));
        }
        #[cfg(feature = "fault-injection")]
        if &topic[..] == "$fault/panic" {
            panic!(
                "fault injection: panic requested by {}",
                self.session.client_id
            );
        }
        if !payload_format_ok(&p.properties, &p.payload) {
            if p.qos == QoS::AtMostOnce {
                return Err(self.violation(reason::PAYLOAD_FORMAT_INVALID, "payload is not UTF-8"));
            }
            self.ctx.metrics.bad_input("payload_format");
            self.acknowledge_publish(&p, reason::PAYLOAD_FORMAT_INVALID);
            return Ok(());
        }
        if let Some(acl) = self.acl.as_mut() {
            if !acl.may_write(&topic) {
                debug!(client = %self.session.client_id, %topic, "PUBLISH not authorized");
                self.ctx.metrics.dropped(DropReason::NotAuthorized, 1);
                self.acknowledge_publish(&p, reason::NOT_AUTHORIZED);
                return Ok(());
            }
        }
        let route = match p.qos {
            QoS::ExactlyOnce => match self
                .session
                .incoming_qos2(p.packet_id, usize::from(cfg.receive_maximum))
            {
                IncomingQos2::New => true,
                IncomingQos2::Resent => false,
                IncomingQos2::ReceiveMaximumExceeded => {
                    return Err(self
                        .violation(reason::RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded"));
                }
            },
            _ => true,
        };
        if route {
            let msg = Message::new(
                &topic,
                &p.payload,
                p.qos,
                p.retain,
                self.session.id,
                ForwardedProperties::from_properties(&p.properties),
            );
            self.ctx.router.publish(Arc::new(msg));
        }
        self.acknowledge_publish(&p, reason::SUCCESS);
        Ok(())
    }

    /// Charges one PUBLISH against the client's quotas; over either, the client is disconnected
    /// (v5: 0x96 message rate / 0x97 bytes; 3.1.1 has no way to say it and is closed).
    fn charge_quota(&mut self, bytes: usize) -> Result<(), Close> {
        let limits = &self.ctx.config.limits;
        // The read batch's time: no clock read per message.
        let charged = self.quota.get_or_insert_with(Box::default).charge(
            self.last_read,
            bytes,
            limits.max_publish_rate,
            limits.max_publish_bytes_rate,
        );
        let Err(exceeded) = charged else {
            return Ok(());
        };
        let (limit, code) = match exceeded {
            QuotaExceeded::Messages => (LimitExceeded::PublishRate, reason::MESSAGE_RATE_TOO_HIGH),
            QuotaExceeded::Bytes => (LimitExceeded::PublishBytesRate, reason::QUOTA_EXCEEDED),
        };
        self.ctx.metrics.limit_exceeded(limit);
        debug!(client = %self.session.client_id, ?exceeded, "publish quota exceeded: disconnecting");
        Err(Close {
            reason: CloseReason::QuotaExceeded,
            code: Some(code),
            will: true,
        })
    }

    fn acknowledge_publish(&mut self, p: &Publish, code: u8) {
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(ack(p.packet_id, code))),
            QoS::ExactlyOnce => self.send(&Packet::PubRec(ack(p.packet_id, code))),
        }
    }

    /// Applies v5 topic aliases: returns the topic the PUBLISH is for.
    fn resolve_topic(&mut self, p: &Publish) -> Result<ByteString, Close> {
        let Some(alias) = p.properties.topic_alias else {
            if p.topic.is_empty() {
                return Err(
                    self.violation(reason::PROTOCOL_ERROR, "empty topic without topic alias")
                );
            }
            return Ok(p.topic.clone());
        };
        let max = self.ctx.config.mqtt.topic_alias_maximum;
        if alias == 0 || alias > max {
            return Err(self.violation(
                reason::TOPIC_ALIAS_INVALID,
                "topic alias 0 or above the maximum",
            ));
        }
        let slots = self
            .aliases_in
            .get_or_insert_with(|| vec![None; usize::from(max)].into_boxed_slice());
        let slot = &mut slots[usize::from(alias - 1)];
        if p.topic.is_empty() {
            match slot {
                Some(t) => Ok(t.clone()),
                None => Err(self.violation(reason::PROTOCOL_ERROR, "unknown topic alias")),
            }
        } else {
            // The alias outlives this packet: own the topic instead of pinning the read buffer.
            *slot = Some(ByteString::from(&p.topic[..]));
            Ok(p.topic.clone())
        }
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let v5 = self.protocol.is_v5();
        let id = s.properties.subscription_identifiers.first().copied();
        let mut reasons = Vec::with_capacity(s.filters.len());
        for (filter, options) in &s.filters {
            let shared = filter.starts_with("$share/");
            if shared && options.no_local && v5 {
                return Err(
                    self.violation(reason::PROTOCOL_ERROR, "no local on a shared subscription")
                );
            }
            let limits = &self.ctx.config.limits;
            if filter.len() > limits.max_topic_length {
                self.ctx.metrics.limit_exceeded(LimitExceeded::TopicLength);
                reasons.push(reason::TOPIC_FILTER_INVALID);
                continue;
            }
            let max_subscriptions = limits.max_subscriptions_per_client;
            if max_subscriptions > 0
                && !self.session.may_subscribe_within(filter, max_subscriptions)
            {
                self.ctx
                    .metrics
                    .limit_exceeded(LimitExceeded::Subscriptions);
                debug!(client = %self.session.client_id, %filter, "subscription refused: limits.max_subscriptions_per_client");
                reasons.push(reason::QUOTA_EXCEEDED);
                continue;
            }
            if !self.may_subscribe(filter) {
                debug!(client = %self.session.client_id, %filter, "subscription not authorized");
                reasons.push(reason::NOT_AUTHORIZED);
                continue;
            }
            match self
                .ctx
                .router
                .subscribe(&self.session, filter, *options, id)
            {
                Ok(sub) => {
                    reasons.push(options.qos as u8);
                    let send_retained = !shared
                        && match options.retain_handling {
                            0 => true,
                            1 => !sub.replaced,
                            _ => false,
                        };
                    if send_retained {
                        let deliveries = self.ctx.router.retained_for(filter, *options, id);
                        self.session.add_retained(deliveries);
                    }
                }
                Err(e) => {
                    debug!(client = %self.session.client_id, %filter, "subscription refused: {e}");
                    self.ctx.metrics.bad_input("topic_filter");
                    reasons.push(reason::TOPIC_FILTER_INVALID);
                }
            }
        }
        self.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reasons,
            properties: Properties::default(),
        }));
        Ok(())
    }

    /// ACL check of a SUBSCRIBE filter; for `$share/{group}/F` the filter F is what is read.
    fn may_subscribe(&mut self, filter: &str) -> bool {
        let Some(acl) = self.acl.as_mut() else {
            return true;
        };
        // A malformed shared filter is left for the router to refuse with its own reason code.
        let plain = match topic::parse_shared(filter) {
            Ok(Some((_, f))) => f,
            _ => filter,
        };
        acl.may_subscribe(plain)
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let reasons = u
            .filters
            .iter()
            .map(|f| {
                if self.ctx.router.unsubscribe(&self.session, f) {
                    reason::SUCCESS
                } else {
                    reason::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.send(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reasons,
            properties: Properties::default(),
        }));
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Close {
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

    fn send(&mut self, packet: &Packet) {
        let out = ENCODED.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            codec::encode(packet, self.protocol, &mut buf);
            // An exact-size copy is one allocation; freezing a fresh, larger encode buffer was two
            // (the buffer, then the shared header `Bytes` needs when length and capacity differ).
            Bytes::copy_from_slice(&buf)
        });
        self.ctx.metrics.packet_sent(packet);
        self.conn.queue(out);
    }

    /// Moves what the session may send now into the write queue. Returns true when it may have
    /// left sendable items behind (a full batch taken, or skipped while the write queue is full).
    fn fill(&mut self) -> bool {
        if self.conn.pending_bytes() >= READ_PAUSE_BYTES {
            return true;
        }
        let mut ready = READY.with(|r| std::mem::take(&mut *r.borrow_mut()));
        let now = Instant::now();
        let expired =
            self.session
                .take_ready(now, usize::from(self.send_window), FILL_BATCH, &mut ready);
        if expired > 0 {
            self.ctx
                .metrics
                .dropped(DropReason::Expired, expired as u64);
        }
        let full = ready.len() >= FILL_BATCH;
        if !ready.is_empty() {
            self.write_outgoing(&mut ready, now);
        }
        READY.with(|r| *r.borrow_mut() = ready);
        full
    }

    /// Encodes outgoing items (and empties `items`): shared heads patched per receiver, payloads
    /// by reference.
    fn write_outgoing(&mut self, items: &mut Vec<Outgoing>, now: Instant) {
        // Empty until a head must be patched or encoded (a QoS 0 delivery of a shared head
        // allocates nothing here), then sized for the rest of the batch: one allocation per
        // batch rather than per patched head.
        let mut heads = BytesMut::new();
        let mut sent = SentBatch::default();
        let count = items.len();
        for (i, o) in items.drain(..).enumerate() {
            if o.pubrel {
                self.send(&Packet::PubRel(ack(o.packet_id, reason::SUCCESS)));
                continue;
            }
            let d = &o.delivery;
            let msg = &d.msg;
            // The last gate of every route to this client (live, queued, retained, resent,
            // shared): a wildcard subscription never carries a topic the client may not read.
            if let Some(acl) = self.acl.as_mut() {
                if !acl.may_read(&msg.topic) {
                    self.ctx.metrics.dropped(DropReason::NotAuthorized, 1);
                    if o.packet_id != 0 {
                        self.session.abandon(o.packet_id);
                    }
                    continue;
                }
            }
            let plain = msg.has_plain_layout(self.protocol)
                && (d.subscription_ids.is_empty() || !self.protocol.is_v5())
                && self.aliases_out.is_none();
            let head = if plain {
                let shared = msg.shared_head(self.protocol, d.qos);
                let flags = first_byte(d.qos, o.dup, d.retain);
                if flags == shared.bytes[0] && shared.packet_id_at.is_none() {
                    shared.bytes.clone()
                } else {
                    if heads.capacity() < shared.bytes.len() {
                        heads.reserve(shared.bytes.len() * (count - i));
                    }
                    heads.extend_from_slice(&shared.bytes);
                    let mut h = heads.split();
                    h[0] = flags;
                    if let Some(at) = shared.packet_id_at {
                        h[at..at + 2].copy_from_slice(&o.packet_id.to_be_bytes());
                    }
                    h.freeze()
                }
            } else {
                let (topic, alias) = self.outbound_alias(&msg.topic);
                let props = msg.v5_properties(self.protocol, now, &d.subscription_ids, alias);
                codec::encode_publish_head(
                    &mut heads,
                    self.protocol,
                    d.qos,
                    o.dup,
                    d.retain,
                    topic,
                    o.packet_id,
                    &props,
                    msg.payload.len(),
                );
                heads.split().freeze()
            };
            if head.len() + msg.payload.len() > self.client_max_packet as usize {
                self.ctx.metrics.dropped(DropReason::TooLarge, 1);
                if o.packet_id != 0 {
                    self.session.abandon(o.packet_id);
                }
                continue;
            }
            // Redeliveries and retained copies (RETAIN set) waited for reasons other than
            // delivery: they count as sent but stay out of the latency histogram.
            let retained_copy = d.retain && msg.retain;
            let live = !(o.dup || retained_copy);
            sent.add(d.qos as usize, live.then_some(msg.read_at));
            self.conn.queue(head);
            self.conn.queue(msg.payload.clone());
        }
        self.ctx.metrics.sent_batch(&sent);
    }

    /// The topic to write and the alias to send with it, for clients that accept aliases.
    fn outbound_alias<'a>(&mut self, topic: &'a ByteString) -> (&'a str, Option<u16>) {
        let Some(a) = self.aliases_out.as_mut() else {
            return (topic, None);
        };
        if let Some(&alias) = a.map.get(topic) {
            return ("", Some(alias));
        }
        if a.map.len() < usize::from(a.max) {
            let alias = a.map.len() as u16 + 1;
            a.map.insert(ByteString::from(&topic[..]), alias);
            return (topic, Some(alias));
        }
        (topic, None)
    }

    async fn finish(&mut self, close: Close) {
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

    /// The will as a message with its delay in seconds, if the close publishes one.
    fn departing_will(&mut self) -> Option<(Arc<Message>, u32)> {
        let will = self.will.take().filter(|_| self.publish_will)?;
        let msg = Arc::new(Message::new(
            &will.topic,
            &will.payload,
            will.qos,
            will.retain,
            self.session.id,
            ForwardedProperties::from_properties(&will.properties),
        ));
        Some((msg, will.properties.will_delay_interval.unwrap_or(0)))
    }
}

/// Runs also when the task unwinds from a panic: the session is always handed back to the
/// registry, which decides what becomes of it and of the will.
impl Drop for Client {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.close = CloseReason::Panic;
            self.publish_will = true;
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

/// A hibernating client wakes up into a new task of its own.
impl Sleeper for Client {
    fn fd(&self) -> std::os::fd::RawFd {
        self.conn.hibernating_fd()
    }

    fn arm(&mut self, waker: &std::task::Waker) -> bool {
        self.session
            .poll_woken(&mut std::task::Context::from_waker(waker))
            .is_ready()
    }

    fn resume(mut self: Box<Self>) {
        if let Err(e) = self.conn.resume() {
            // Dropped here: closed as a network failure, will and session handled by `Drop`.
            debug!(client = %self.session.client_id, "cannot resume from hibernation: {e}");
            return;
        }
        let peer = self.session.connection().map_or_else(
            || std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            |c| std::net::SocketAddr::new(c.ip, c.port),
        );
        let metrics = self.ctx.metrics.clone();
        spawn_isolated(metrics, peer, self.run(false));
    }
}

/// Authenticates the CONNECT and checks its will against the ACL (at CONNECT rather than at
/// publication, so a client learns at once, CONNACK 5 / 0x87, that its will could never go out).
/// Returns the client's ACL view (when an ACL file is configured) or the CONNACK reason code.
async fn authorize(
    ctx: &Context,
    connect: &Connect,
    client_id: &ByteString,
    identity: Option<ByteString>,
    default_listener: bool,
) -> Result<Option<Box<ClientAcl>>, u8> {
    // A verified client certificate is the credential: its name is the username.
    let username = match identity {
        Some(name) => Some(name),
        None => ctx
            .security
            .authenticate(
                connect.username.as_ref(),
                connect.password.as_deref(),
                default_listener,
            )
            .await
            .map_err(|refusal| match refusal {
                Refusal::BadCredentials => reason::BAD_USERNAME_OR_PASSWORD,
                Refusal::NotAuthorized => reason::NOT_AUTHORIZED,
            })?,
    };
    let Some(handle) = ctx.security.acl() else {
        return Ok(None);
    };
    let mut acl = ClientAcl::new(
        handle.clone(),
        Principal {
            // Owned copies: the principal lives as long as the connection.
            client_id: ByteString::from(&client_id[..]),
            username: username.map(|u| ByteString::from(&u[..])),
        },
    );
    if let Some(will) = &connect.will {
        if !acl.may_write(&will.topic) {
            return Err(reason::NOT_AUTHORIZED);
        }
    }
    Ok(Some(Box::new(acl)))
}

async fn refuse_and_close(
    ctx: &Context,
    mut conn: Connection,
    protocol: Protocol,
    code: u8,
    peer: std::net::SocketAddr,
) -> Option<Client> {
    debug!(%peer, code, "CONNECT refused");
    ctx.metrics.rejected(reject_label(code));
    refuse(ctx, &mut conn, protocol, code);
    conn.flush_within(CLOSE_FLUSH).await;
    None
}

fn reject_label(code: u8) -> &'static str {
    match code {
        reason::CLIENT_IDENTIFIER_NOT_VALID => "client_id_invalid",
        reason::BAD_AUTHENTICATION_METHOD => "bad_auth_method",
        reason::TOPIC_NAME_INVALID => "will_topic_invalid",
        reason::PAYLOAD_FORMAT_INVALID => "will_payload_invalid",
        reason::BAD_USERNAME_OR_PASSWORD => "bad_credentials",
        reason::NOT_AUTHORIZED => "not_authorized",
        reason::SERVER_BUSY => "memory",
        _ => "other",
    }
}

fn first_byte(qos: QoS, dup: bool, retain: bool) -> u8 {
    0x30 | (u8::from(dup) << 3) | ((qos as u8) << 1) | u8::from(retain)
}

fn ack(packet_id: u16, code: u8) -> Ack {
    Ack {
        packet_id,
        reason: code,
        properties: Properties::default(),
    }
}

/// A payload flagged as UTF-8 (payload format indicator 1) must be UTF-8.
fn payload_format_ok(props: &Properties, payload: &Bytes) -> bool {
    props.payload_format_indicator != Some(1) || std::str::from_utf8(payload).is_ok()
}

/// A process-unique, hard to guess suffix for assigned client identifiers.
fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<F: Future>(_: impl FnOnce(Box<Client>) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The session task's future is most of an active session's memory: keep it small.
    #[test]
    fn session_future_stays_small() {
        let size = future_size(|c| c.run(true));
        println!("session task future: {size} bytes");
        assert!(size <= 512, "session task future grew to {size} bytes");
    }

    /// Every idle session keeps one boxed `Client`: 232 bytes is a 240-byte malloc chunk.
    #[test]
    fn client_stays_small() {
        let size = std::mem::size_of::<Client>();
        println!("Client: {size} bytes");
        assert!(size <= 232, "Client grew to {size} bytes");
    }
}
