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
use std::task::Poll;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::time::{Instant, Sleep};

use crate::codec::{self, Ack, Incoming};
use crate::connection::{self, Conn, Reason};
use crate::engine::{now_us, Ctx, Phase};
use crate::payload::Stamp;
use crate::scenario::{render, Who};
use crate::stats::micros;

/// Unacknowledged messages per device before further ones are skipped (and counted): a
/// broker that stops acknowledging must not make the simulator grow without bound.
const MAX_INFLIGHT: usize = 64;
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
    id: u64,
    seq: u64,
    pkid: u16,
    /// Packet id and send time of each unacknowledged message, oldest first.
    inflight: VecDeque<(u16, Instant)>,
}

/// Counts a connected device while it lives.
struct Online<'a>(&'a Ctx);

impl Drop for Online<'_> {
    fn drop(&mut self) {
        self.0.stats.devices_connected.fetch_sub(1, Relaxed);
    }
}

pub async fn run(ctx: Arc<Ctx>, id: u64) {
    let mut device = Device {
        id,
        seq: 0,
        pkid: 0,
        inflight: VecDeque::new(),
    };
    let mut failures = 0u32;
    loop {
        let delay = match device.session(&ctx).await {
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
        if !ctx.pause(delay).await {
            break;
        }
    }
    ctx.task_done();
}

async fn handshake(
    ctx: &Ctx,
    id: u64,
    target: std::net::SocketAddr,
    source: Option<std::net::Ipv4Addr>,
) -> Result<Conn, Reason> {
    let settings = &ctx.settings;
    let client_id = render(&settings.client_id, id);
    connection::establish(
        target,
        source,
        settings.protocol,
        &ctx.connect_options(&client_id),
        settings.connect_timeout,
    )
    .await
    .map(|(conn, _)| conn)
}

enum Event {
    Woken,
    Readable(std::io::Result<()>),
    Writable(std::io::Result<()>),
    Timer,
}

/// Waits for the first of: a wake-up, socket readiness, the timer. Polls readiness directly
/// (the socket keeps the waker) instead of holding `readable()`/`writable()` futures, which
/// would add ~300 bytes to every idle device.
async fn wait(
    stream: &TcpStream,
    buffered: bool,
    pending: bool,
    mut woken: Pin<&mut Notified<'_>>,
    mut sleep: Pin<&mut Sleep>,
) -> Event {
    std::future::poll_fn(|cx| {
        if woken.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Event::Woken);
        }
        if !buffered {
            if let Poll::Ready(ready) = stream.poll_read_ready(cx) {
                return Poll::Ready(Event::Readable(ready));
            }
        }
        if pending {
            if let Poll::Ready(ready) = stream.poll_write_ready(cx) {
                return Poll::Ready(Event::Writable(ready));
            }
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Event::Timer);
        }
        Poll::Pending
    })
    .await
}

/// The next interval, varied by up to plus or minus `jitter`.
fn jittered(interval: Duration, jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return interval;
    }
    (interval + jitter.mul_f64(2.0 * fastrand::f64())).saturating_sub(jitter)
}

impl Device {
    async fn session(&mut self, ctx: &Ctx) -> Outcome {
        if ctx.stopping() {
            return Outcome::Stopped;
        }
        let (target_index, target, source) = ctx.device_route(self.id);
        let epoch = ctx.disconnect_epoch();
        ctx.stats.connect_attempts.fetch_add(1, Relaxed);
        let started = Instant::now();
        // Boxed: the handshake's state (connect future, timer, client id) is large and lives
        // only for the handshake; inline, every idle device future would be sized for it.
        let mut conn = match Box::pin(handshake(ctx, self.id, target, source)).await {
            Ok(conn) => conn,
            Err(reason) => {
                ctx.stats.connect_failed(&reason);
                return Outcome::ConnectFailed;
            }
        };
        ctx.stats
            .hists
            .lock()
            .connect
            .saturating_record(micros(started.elapsed()));
        ctx.stats.devices_connected.fetch_add(1, Relaxed);
        let online = Online(ctx);
        let outcome = self.connected(ctx, &mut conn, target_index, epoch).await;
        if let Outcome::Stopped = outcome {
            conn.disconnect();
        }
        drop(online);
        // Whatever is still unacknowledged now never will be (clean sessions, no resend).
        ctx.stats
            .unacked
            .fetch_add(self.inflight.len() as u64, Relaxed);
        self.inflight = VecDeque::new();
        outcome
    }

    async fn connected(
        &mut self,
        ctx: &Ctx,
        conn: &mut Conn,
        target_index: usize,
        epoch: u32,
    ) -> Outcome {
        let settings = &ctx.settings;
        let keep_alive = Duration::from_secs(u64::from(settings.keep_alive));
        let mut last_sent = Instant::now();
        // A random phase within the interval spreads the fleet's messages evenly.
        let mut next_publish = settings
            .publish_interval
            .map(|i| last_sent + i.mul_f64(fastrand::f64()));
        let mut leaving: Option<Instant> = None;
        let woken = ctx.wake().notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let sleep = tokio::time::sleep_until(last_sent + keep_alive);
        tokio::pin!(sleep);
        loop {
            if ctx.stopping() {
                return Outcome::Stopped;
            }
            if leaving.is_none()
                && ctx.disconnect_epoch() != epoch
                && ctx.dropped_by_event(Who::Devices, self.id)
            {
                leaving = Some(Instant::now() + LEAVE_GRACE);
            }
            if let Some(deadline) = leaving {
                if self.inflight.is_empty() || Instant::now() >= deadline {
                    ctx.stats.disconnected("disconnect_event");
                    return Outcome::Offline;
                }
            }
            let publishing = ctx.phase() == Phase::Publishing && leaving.is_none();
            let mut deadline = last_sent + keep_alive;
            if let (true, Some(at)) = (publishing, next_publish) {
                deadline = deadline.min(at);
            }
            if let Some(at) = leaving {
                deadline = deadline.min(at);
            }
            sleep.as_mut().reset(deadline);
            if conn.has_buffered() {
                let leftover = conn.read(settings.protocol, |packet, reply| {
                    self.on_packet(ctx, packet, reply)
                });
                if let Err(reason) = leftover {
                    return self.dropped(ctx, reason);
                }
            }
            let (buffered, pending) = (conn.has_buffered(), conn.has_pending());
            let event = wait(
                &conn.stream,
                buffered,
                pending,
                woken.as_mut(),
                sleep.as_mut(),
            )
            .await;
            match event {
                Event::Woken => {
                    woken.set(ctx.wake().notified());
                    woken.as_mut().enable();
                }
                Event::Readable(ready) => {
                    let read = match ready {
                        Ok(()) => conn.read(settings.protocol, |packet, reply| {
                            self.on_packet(ctx, packet, reply)
                        }),
                        Err(e) => Err(connection::io_reason(&e)),
                    };
                    match read {
                        Ok(true) => {}
                        Ok(false) => return self.dropped(ctx, "closed_by_broker".into()),
                        Err(reason) => return self.dropped(ctx, reason),
                    }
                }
                Event::Writable(ready) => {
                    let flushed = match ready {
                        Ok(()) => conn.flush(),
                        Err(e) => Err(connection::io_reason(&e)),
                    };
                    if let Err(reason) = flushed {
                        return self.dropped(ctx, reason);
                    }
                }
                Event::Timer => {
                    let now = Instant::now();
                    if publishing && next_publish.is_some_and(|at| at <= now) {
                        if let Err(reason) = self.publish(ctx, conn, target_index) {
                            return self.dropped(ctx, reason);
                        }
                        last_sent = now;
                        next_publish = settings
                            .publish_interval
                            .map(|i| now + jittered(i, settings.jitter));
                    }
                    if now >= last_sent + keep_alive {
                        if let Err(reason) = conn.send(|buf| {
                            codec::pingreq(buf);
                            Ok(())
                        }) {
                            return self.dropped(ctx, reason);
                        }
                        last_sent = now;
                    }
                }
            }
        }
    }

    fn dropped(&self, ctx: &Ctx, reason: Reason) -> Outcome {
        ctx.stats.disconnected(&reason);
        Outcome::Dropped
    }

    fn publish(&mut self, ctx: &Ctx, conn: &mut Conn, target_index: usize) -> Result<(), Reason> {
        let settings = &ctx.settings;
        let qos = settings.qos;
        if qos > 0 && self.inflight.len() >= MAX_INFLIGHT {
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
            device: self.id,
            seq: self.seq,
            sent_us: now_us(),
        };
        PAYLOAD.with(|payload| {
            let mut payload = payload.borrow_mut();
            settings.payload.encode(stamp, &mut payload);
            let topic = render(&settings.topic, self.id);
            conn.send(|buf| codec::publish(buf, settings.protocol, topic, qos, pkid, &payload))
        })?;
        self.seq += 1;
        ctx.stats.published[target_index].fetch_add(1, Relaxed);
        if qos > 0 {
            self.inflight.push_back((pkid, Instant::now()));
        }
        Ok(())
    }

    fn on_packet(
        &mut self,
        ctx: &Ctx,
        packet: Incoming,
        reply: &mut BytesMut,
    ) -> Result<(), Reason> {
        match packet {
            Incoming::PubAck { pkid } | Incoming::PubComp { pkid } => self.acknowledged(ctx, pkid),
            Incoming::PubRec { pkid } => {
                codec::ack(reply, ctx.settings.protocol, Ack::Pubrel, pkid)
                    .map_err(|_| Reason::Borrowed("encode_error"))?
            }
            Incoming::Disconnect { reason } => {
                return Err(Reason::Owned(format!("server_disconnect_0x{reason:02x}")))
            }
            // PINGRESP, and anything a broker may send that a publisher does not need.
            _ => {}
        }
        Ok(())
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) ends a message's flow; its latency is recorded.
    fn acknowledged(&mut self, ctx: &Ctx, pkid: u16) {
        if let Some(at) = self.inflight.iter().position(|(p, _)| *p == pkid) {
            if let Some((_, sent)) = self.inflight.remove(at) {
                ctx.stats
                    .hists
                    .lock()
                    .puback
                    .saturating_record(micros(sent.elapsed()));
                ctx.stats.acked.fetch_add(1, Relaxed);
            }
        }
        if self.inflight.is_empty() {
            // Give the memory back: most of a device's life has nothing in flight.
            self.inflight = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, Slice};
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
        let slice = Slice {
            devices: 0..1,
            subscribers: 0..0,
            connect_rate: 1.0,
        };
        let engine = Engine::new(settings, slice, 0);
        let device = run(engine.ctx_for_test(), 0);
        let size = std::mem::size_of_val(&device);
        assert!(size <= 704, "device future grew to {size} bytes");
    }
}
