//! A simulated device: a small state machine in one small task. It connects (with backoff on
//! failure), publishes stamped messages on its interval, keeps alive, tracks its unacknowledged
//! QoS 1/2 messages for PUBACK latency, and leaves when the disconnect event or the end of the
//! run says so. Between events it owns no buffer: only its counters and a socket.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::codec::{self, Ack, Incoming};
use crate::connection::{self, Conn, Reason};
use crate::context::{now_us, Ctx, Phase};
use crate::payload::Stamp;
use crate::scenario::{render, Who, MAX_INFLIGHT};
use crate::stats::micros;
use crate::timer::{ms, ms_of, now_ms, NEVER};
use crate::tls::Peer;
use crate::window::STALL;

/// How long a device leaving in the disconnect event waits for its acknowledgements.
const LEAVE_GRACE: Duration = Duration::from_secs(2);

thread_local! {
    static PAYLOAD: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

enum Outcome {
    Stopped,
    ConnectFailed,
    Dropped,
    Offline,
}

struct Device {
    /// 4 bytes keep `Device` at 16: 4 billion messages per device is 49 days at 1,000 msg/s.
    seq: u32,
    pkid: u16,
    /// Targets failed over from (`Ctx::next_target`); in the padding of the fields around it.
    moved: u16,
    /// Packet id, seq and send time of each unacknowledged message, oldest first; absent while
    /// nothing is in flight, which is most of a device's life. Boxed: 8 bytes in every idle
    /// device instead of a `VecDeque`'s 32.
    #[allow(clippy::box_collection)]
    inflight: Option<Box<VecDeque<(u16, u32, Instant)>>>,
}

/// A device's whole life in one frame: connecting, connected, paused between sessions. No
/// nested session futures (each would hold its own copies of the references it is given), one
/// deadline at a time in the process's [`crate::timer::Timers`] instead of a timer of its own,
/// times as milliseconds (see [`ms`]); the frame's size is what an idle device costs beyond
/// its socket, guarded by a test below.
///
/// Not an `async fn`: that would keep both its arguments and their moved copies in the frame;
/// the block only borrows what it captures.
#[allow(clippy::manual_async_fn)]
pub fn run(ctx: Arc<Ctx>, id: u64) -> impl Future<Output = ()> + Send {
    async move {
        // Once: a task's waker is the same for its whole life.
        std::future::poll_fn(|cx| {
            ctx.timers().park(id, cx.waker());
            Poll::Ready(())
        })
        .await;
        let mut device = Device {
            seq: 0,
            pkid: 0,
            moved: 0,
            inflight: None,
        };
        let mut failures = 0u32;
        // The first handshake holds a place in the fleet's connect window (see `engine::pace`).
        let mut first = true;
        loop {
            let outcome = 'session: {
                if ctx.stopping() {
                    break 'session Outcome::Stopped;
                }
                let epoch = ctx.disconnect_epoch();
                ctx.stats.connect_attempts.fetch_add(1, Relaxed);
                let mut conn = {
                    let (target_index, target, source) = ctx.device_route(id, device.moved);
                    let started = Instant::now();
                    // Boxed: the handshake's state (connect future, timer, client id) is large
                    // and lives only for the handshake; inline, every idle device future would be
                    // sized for it.
                    let handshake =
                        Box::pin(handshake(&ctx, id, target_index, target, source)).await;
                    if std::mem::take(&mut first) {
                        ctx.first_handshake_done();
                    }
                    match handshake {
                        Ok(conn) => {
                            ctx.stats
                                .hists
                                .lock()
                                .connect
                                .saturating_record(micros(started.elapsed()));
                            conn
                        }
                        Err(reason) => {
                            ctx.stats.connect_failed(&reason);
                            device.moved = ctx.next_target(device.moved);
                            break 'session Outcome::ConnectFailed;
                        }
                    }
                };
                ctx.device_connected();
                let mut last_sent = ms(Instant::now());
                // A random phase within the interval spreads the fleet's messages evenly.
                let mut next_publish = ctx.settings.publish_interval.map_or(NEVER, |i| {
                    last_sent.saturating_add(ms_of(i.mul_f64(fastrand::f64())))
                });
                // When the disconnect event's grace ends for this device, or NEVER.
                let mut leaving = NEVER;
                let outcome = 'connected: loop {
                    // Read before the checks: any change after it wakes the wait below.
                    let seen = ctx.signal();
                    if ctx.stopping() {
                        break Outcome::Stopped;
                    }
                    if leaving == NEVER
                        && ctx.disconnect_epoch() != epoch
                        && ctx.dropped_by_event(Who::Devices, id)
                    {
                        leaving = ms(Instant::now() + LEAVE_GRACE);
                    }
                    if leaving != NEVER && (device.inflight.is_none() || now_ms() >= leaving) {
                        ctx.stats.disconnected("disconnect_event");
                        break Outcome::Offline;
                    }
                    let publishing = ctx.phase() == Phase::Publishing && leaving == NEVER;
                    let mut deadline = last_sent.saturating_add(keep_alive(&ctx)).min(leaving);
                    if publishing {
                        deadline = deadline.min(next_publish);
                    }
                    if publishing && ctx.settings.closed_loop() {
                        // Fill the window; a completion (a PUBACK read below, or the wake of a
                        // subscriber that has seen one of its messages) brings the device back.
                        let window = ctx.settings.window;
                        let sent = conn.send_many(|out| {
                            let mut burst = 0;
                            while burst < window && device.window_room(&ctx, id) {
                                device.publish(&ctx, out, id)?;
                                burst += 1;
                            }
                            Ok(burst)
                        });
                        let burst = match sent {
                            Ok(burst) => burst,
                            Err(reason) => break 'connected device.dropped(&ctx, reason),
                        };
                        if burst > 0 {
                            last_sent = now_ms();
                        }
                        if burst == window {
                            // The window may still have room: let other tasks run first.
                            tokio::task::yield_now().await;
                            continue;
                        }
                        if let Some(seen) = ctx.seen() {
                            let stalled = last_sent.saturating_add(ms_of(STALL));
                            if now_ms() >= stalled {
                                seen.write_off(id, u64::from(device.seq));
                                continue;
                            }
                            deadline = deadline.min(stalled);
                        }
                    }
                    if conn.has_buffered() {
                        let leftover = conn.read(ctx.settings.protocol, |packet, reply| {
                            device.on_packet(&ctx, id, packet, reply)
                        });
                        if let Err(reason) = leftover {
                            break device.dropped(&ctx, reason);
                        }
                    }
                    let event = Wait {
                        ctx: &ctx,
                        id,
                        stream: Some(&conn.stream),
                        deadline,
                        seen,
                        read: !conn.has_buffered(),
                        write: conn.has_pending(),
                        polled: false,
                    }
                    .await;
                    match event {
                        Event::Woken => {}
                        Event::Readable(ready) => {
                            let read = match ready {
                                Ok(()) => conn.read(ctx.settings.protocol, |packet, reply| {
                                    device.on_packet(&ctx, id, packet, reply)
                                }),
                                Err(e) => Err(connection::io_reason(&e)),
                            };
                            match read {
                                Ok(true) => {}
                                Ok(false) => break device.dropped(&ctx, "closed_by_broker".into()),
                                Err(reason) => break device.dropped(&ctx, reason),
                            }
                        }
                        Event::Writable(ready) => {
                            let flushed = match ready {
                                Ok(()) => conn.flush(),
                                Err(e) => Err(connection::io_reason(&e)),
                            };
                            if let Err(reason) = flushed {
                                break device.dropped(&ctx, reason);
                            }
                        }
                        Event::Timer => {
                            // Unchanged since the wait began: a change of phase or of
                            // `leaving` would have been `Woken` instead.
                            let publishing = ctx.phase() == Phase::Publishing && leaving == NEVER;
                            let now = now_ms();
                            if publishing && next_publish <= now {
                                if let Err(reason) =
                                    conn.send_many(|out| device.publish(&ctx, out, id))
                                {
                                    break device.dropped(&ctx, reason);
                                }
                                last_sent = now;
                                next_publish = ctx.settings.publish_interval.map_or(NEVER, |i| {
                                    // From the due time, not from now: wake-up lateness (up to
                                    // a timer tick) must not lower the rate. A device more
                                    // than an interval behind starts afresh from now.
                                    let due = if now - next_publish > ms_of(i) {
                                        now
                                    } else {
                                        next_publish
                                    };
                                    due.saturating_add(ms_of(jittered(i, ctx.settings.jitter)))
                                });
                            }
                            if now >= last_sent.saturating_add(keep_alive(&ctx)) {
                                if let Err(reason) = conn.send(|buf| {
                                    codec::pingreq(buf);
                                    Ok(())
                                }) {
                                    break device.dropped(&ctx, reason);
                                }
                                last_sent = now;
                            }
                        }
                    }
                };
                if let Outcome::Stopped = outcome {
                    conn.disconnect();
                }
                ctx.stats.devices_connected.fetch_sub(1, Relaxed);
                // Whatever is still unacknowledged now never will be (clean sessions, no resend).
                if let Some(inflight) = device.inflight.take() {
                    ctx.stats
                        .unacknowledged(id, inflight.iter().map(|(_, seq, _)| u64::from(*seq)));
                }
                outcome
            };
            let delay = match outcome {
                Outcome::Stopped => break,
                Outcome::ConnectFailed => {
                    failures = failures.saturating_add(1);
                    ctx.backoff(failures)
                }
                Outcome::Dropped => {
                    failures = 1;
                    ctx.backoff(failures)
                }
                Outcome::Offline => {
                    failures = 0;
                    ctx.offline_for() + ctx.backoff(1)
                }
            };
            // Sleeps unless the run stops first.
            let deadline = now_ms().saturating_add(ms_of(delay));
            let resumed = loop {
                let seen = ctx.signal();
                if ctx.stopping() {
                    break false;
                }
                let event = Wait {
                    ctx: &ctx,
                    id,
                    stream: None,
                    deadline,
                    seen,
                    read: false,
                    write: false,
                    polled: false,
                }
                .await;
                if let Event::Timer = event {
                    break true;
                }
            };
            if !resumed {
                break;
            }
        }
        ctx.timers().unpark(id);
        ctx.task_done();
    }
}

async fn handshake(
    ctx: &Ctx,
    id: u64,
    target_index: usize,
    target: std::net::SocketAddr,
    source: Option<std::net::Ipv4Addr>,
) -> Result<Conn, Reason> {
    let settings = &ctx.settings;
    let client_id = render(&settings.client_id, id);
    connection::establish(
        target,
        source,
        ctx.tls_dial(target_index, Peer::Device(id)),
        settings.protocol,
        &ctx.connect_options(&client_id),
        settings.connect_timeout,
    )
    .await
    .map(|(conn, _)| conn)
}

fn keep_alive(ctx: &Ctx) -> u32 {
    ms_of(Duration::from_secs(u64::from(ctx.settings.keep_alive)))
}

enum Event {
    Woken,
    Readable(std::io::Result<()>),
    Writable(std::io::Result<()>),
    Timer,
}

/// Waits for the first of: a change of [`Ctx::signal`] from `seen` (the task's waker is
/// registered with the process's timers), socket readiness, the deadline, any other wake of
/// the task (a subscriber's, when a closed-loop window opens at QoS 0). Polls readiness
/// directly (the socket keeps the waker) instead of holding `readable()`/`writable()` futures,
/// which would add ~300 bytes to every idle device.
struct Wait<'a> {
    ctx: &'a Ctx,
    id: u64,
    stream: Option<&'a TcpStream>,
    /// In [`ms`].
    deadline: u32,
    seen: u32,
    /// Wait for reading (not while complete packets are still buffered).
    read: bool,
    /// Wait for writing (only with unsent bytes).
    write: bool,
    polled: bool,
}

impl Future for Wait<'_> {
    type Output = Event;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Event> {
        let this = self.get_mut();
        if this.ctx.signal() != this.seen {
            return Poll::Ready(Event::Woken);
        }
        if let Some(stream) = this.stream {
            if this.read {
                if let Poll::Ready(ready) = stream.poll_read_ready(cx) {
                    return Poll::Ready(Event::Readable(ready));
                }
            }
            if this.write {
                if let Poll::Ready(ready) = stream.poll_write_ready(cx) {
                    return Poll::Ready(Event::Writable(ready));
                }
            }
        }
        if now_ms() >= this.deadline {
            return Poll::Ready(Event::Timer);
        }
        if this.polled {
            return Poll::Ready(Event::Woken);
        }
        this.polled = true;
        this.ctx.timers().arm(this.id, this.deadline);
        Poll::Pending
    }
}

/// The next interval, varied by up to plus or minus `jitter`.
fn jittered(interval: Duration, jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return interval;
    }
    (interval + jitter.mul_f64(2.0 * fastrand::f64())).saturating_sub(jitter)
}

impl Device {
    fn dropped(&self, ctx: &Ctx, reason: Reason) -> Outcome {
        ctx.stats.disconnected(&reason);
        Outcome::Dropped
    }

    /// Encodes the device's next message into `out` (written by the caller, with the rest of
    /// its burst).
    fn publish(&mut self, ctx: &Ctx, out: &mut BytesMut, id: u64) -> Result<(), Reason> {
        let settings = &ctx.settings;
        let (target_index, _, _) = ctx.device_route(id, self.moved);
        let qos = settings.qos;
        if !self.window_room(ctx, id) {
            ctx.stats.skipped.fetch_add(1, Relaxed);
            return Ok(());
        }
        let pkid = if qos > 0 {
            self.pkid = self.pkid.checked_add(1).unwrap_or(1);
            self.pkid
        } else {
            0
        };
        let stamp = Stamp {
            device: id,
            seq: u64::from(self.seq),
            sent_us: now_us(),
        };
        PAYLOAD.with(|payload| {
            let mut payload = payload.borrow_mut();
            settings.payload.encode(stamp, &mut payload);
            let topic = render(&settings.topic, id);
            codec::publish(out, settings.protocol, topic, qos, pkid, &payload)
                .map_err(connection::codec_reason)
        })?;
        self.seq = self.seq.wrapping_add(1);
        ctx.stats.published[target_index].fetch_add(1, Relaxed);
        if qos > 0 {
            self.inflight.get_or_insert_with(Box::default).push_back((
                pkid,
                self.seq.wrapping_sub(1),
                Instant::now(),
            ));
        }
        Ok(())
    }

    /// Whether another message may go out: at QoS 1/2 fewer unacknowledged than the window
    /// (or than [`MAX_INFLIGHT`]), and, in a one-process closed loop, fewer than the window not
    /// yet seen by the subscribers.
    fn window_room(&self, ctx: &Ctx, id: u64) -> bool {
        let window = ctx.settings.window;
        if ctx.settings.qos > 0 {
            let limit = if window > 0 {
                window as usize
            } else {
                MAX_INFLIGHT
            };
            if self.inflight.as_ref().map_or(0, |q| q.len()) >= limit {
                return false;
            }
        }
        ctx.seen()
            .map_or(true, |seen| seen.room(id, u64::from(self.seq), window))
    }

    fn on_packet(
        &mut self,
        ctx: &Ctx,
        id: u64,
        packet: Incoming,
        reply: &mut BytesMut,
    ) -> Result<(), Reason> {
        match packet {
            Incoming::PubAck { pkid, refused } | Incoming::PubComp { pkid, refused } => {
                self.acknowledged(ctx, id, pkid, refused)
            }
            // A refused PUBREC ends the flow: no PUBREL follows [MQTT-4.3.3].
            Incoming::PubRec {
                pkid,
                refused: true,
            } => self.acknowledged(ctx, id, pkid, true),
            Incoming::PubRec {
                pkid,
                refused: false,
            } => codec::ack(reply, ctx.settings.protocol, Ack::Pubrel, pkid)
                .map_err(|_| Reason::Borrowed("encode_error"))?,
            Incoming::Disconnect { reason } => {
                return Err(Reason::Owned(format!("server_disconnect_0x{reason:02x}")))
            }
            // PINGRESP, and anything a broker may send that a publisher does not need.
            _ => {}
        }
        Ok(())
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) ends a message's flow; its latency is recorded. A
    /// refusal (a v5 reason code of 0x80 or above, PUBREC's included) ends it too, but the
    /// message was not taken: it counts as refused and unacknowledged, so that its loss is not
    /// a loss of an acknowledged message. It is not sent again (a new message follows).
    fn acknowledged(&mut self, ctx: &Ctx, id: u64, pkid: u16, refused: bool) {
        let Some(inflight) = &mut self.inflight else {
            return;
        };
        if let Some(at) = inflight.iter().position(|(p, _, _)| *p == pkid) {
            if let Some((_, seq, sent)) = inflight.remove(at) {
                if refused {
                    ctx.stats.refused.fetch_add(1, Relaxed);
                    ctx.stats
                        .unacknowledged(id, std::iter::once(u64::from(seq)));
                } else {
                    ctx.stats
                        .hists
                        .lock()
                        .puback
                        .saturating_record(micros(sent.elapsed()));
                    ctx.stats.acked.fetch_add(1, Relaxed);
                }
            }
        }
        if inflight.is_empty() {
            // Give the memory back: most of a device's life has nothing in flight.
            self.inflight = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Settings;

    /// The task future is most of an idle device's memory; this guards its size.
    #[test]
    fn idle_device_future_stays_small() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _entered = runtime.enter();
        let settings = Settings::resolve(&crate::cli::RunArgs::default()).expect("valid");
        let ctx = Ctx::new(settings, None, 0..1, 0, None);
        let device = run(Arc::new(ctx), 0);
        let size = std::mem::size_of_val(&device);
        assert!(size <= 160, "device future grew to {size} bytes");
    }
}
