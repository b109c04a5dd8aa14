//! A verifying subscriber: subscribes to the fleet's topics (a wildcard or a `$share` group),
//! acknowledges what arrives, and gives every message its verdict (in order, out of order,
//! duplicate, stale or foreign) and its end-to-end latency. It reconnects like a device, and
//! a persistent session brings back what was queued while it was away.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::codec::{self, Ack, Incoming};
use crate::connection::{self, Conn, Reason};
use crate::context::{now_us, Ctx};
use crate::scenario::{render, Who};
use crate::tls::Peer;
use crate::verify::{Tracker, Verdict};

enum Outcome {
    Stopped,
    Failed,
    Offline,
}

struct Subscriber {
    index: u32,
    tracker: Arc<Mutex<Tracker>>,
    /// Counted once towards the process's ready subscribers, on its first SUBACK.
    counted_ready: bool,
    /// QoS 2 packet ids received and not yet released (PUBREL): a PUBLISH that comes again
    /// with one of them is the same message, resent by a broker that did not learn of the
    /// PUBREC (it restarted, or the connection dropped), and is not delivered twice. Kept with
    /// the session across reconnections, as MQTT's receiver state is.
    awaiting_release: Vec<u16>,
    /// Targets failed over from (`Ctx::next_target`).
    moved: u16,
}

pub async fn run(ctx: Arc<Ctx>, index: u32, tracker: Arc<Mutex<Tracker>>) {
    let mut subscriber = Subscriber {
        index,
        tracker,
        counted_ready: false,
        awaiting_release: Vec::new(),
        moved: 0,
    };
    let mut failures = 0u32;
    loop {
        let delay = match subscriber.session(&ctx).await {
            Outcome::Stopped => break,
            Outcome::Failed => {
                failures = failures.saturating_add(1);
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

impl Subscriber {
    async fn session(&mut self, ctx: &Ctx) -> Outcome {
        if ctx.stopping() {
            return Outcome::Stopped;
        }
        let settings = &ctx.settings;
        let (target_index, target, source) = ctx.subscriber_route(self.index, self.moved);
        let epoch = ctx.disconnect_epoch();
        ctx.stats.connect_attempts.fetch_add(1, Relaxed);
        let client_id = render(&settings.subscriber_client_id, u64::from(self.index));
        let established = connection::establish(
            target,
            source,
            ctx.tls_dial(target_index, Peer::Subscriber(self.index)),
            settings.protocol,
            &ctx.subscriber_connect_options(&client_id),
            settings.connect_timeout,
        )
        .await;
        let mut conn = match established {
            Ok((conn, session_present)) => {
                if !session_present {
                    self.awaiting_release.clear();
                }
                conn
            }
            Err(reason) => {
                ctx.stats.connect_failed(&reason);
                self.moved = ctx.next_target(self.moved);
                return Outcome::Failed;
            }
        };
        let subscribed = conn.send(|buf| {
            codec::subscribe(
                buf,
                settings.protocol,
                1,
                &settings.subscribe_filter,
                settings.qos,
            )
        });
        if let Err(reason) = subscribed {
            ctx.stats.disconnected(&reason);
            return Outcome::Failed;
        }
        ctx.stats.subscribers_connected.fetch_add(1, Relaxed);
        let outcome = self.connected(ctx, &mut conn, epoch).await;
        ctx.stats.subscribers_connected.fetch_sub(1, Relaxed);
        if let Outcome::Stopped = outcome {
            conn.disconnect();
        }
        outcome
    }

    async fn connected(&mut self, ctx: &Ctx, conn: &mut Conn, epoch: u32) -> Outcome {
        let settings = &ctx.settings;
        let keep_alive = Duration::from_secs(u64::from(settings.keep_alive));
        let mut last_sent = Instant::now();
        let woken = ctx.wake().notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let sleep = tokio::time::sleep_until(last_sent + keep_alive);
        tokio::pin!(sleep);
        loop {
            if ctx.stopping() {
                return Outcome::Stopped;
            }
            if ctx.disconnect_epoch() != epoch
                && ctx.dropped_by_event(Who::Subscribers, u64::from(self.index))
            {
                ctx.stats.disconnected("disconnect_event");
                return Outcome::Offline;
            }
            sleep.as_mut().reset(last_sent + keep_alive);
            if conn.has_buffered() {
                let leftover = conn.read(settings.protocol, |packet, reply| {
                    self.on_packet(ctx, packet, reply)
                });
                if let Err(reason) = leftover {
                    return failed(ctx, reason);
                }
            }
            tokio::select! {
                _ = &mut woken => {
                    woken.set(ctx.wake().notified());
                    woken.as_mut().enable();
                }
                ready = conn.stream.readable(), if !conn.has_buffered() => {
                    let read = match ready {
                        Ok(()) => conn.read(settings.protocol, |packet, reply| self.on_packet(ctx, packet, reply)),
                        Err(e) => Err(connection::io_reason(&e)),
                    };
                    match read {
                        Ok(true) => {}
                        Ok(false) => return failed(ctx, "closed_by_broker".into()),
                        Err(reason) => return failed(ctx, reason),
                    }
                }
                ready = conn.stream.writable(), if conn.has_pending() => {
                    let flushed = match ready {
                        Ok(()) => conn.flush(),
                        Err(e) => Err(connection::io_reason(&e)),
                    };
                    if let Err(reason) = flushed {
                        return failed(ctx, reason);
                    }
                }
                _ = &mut sleep => {
                    let pinged = conn.send(|buf| {
                        codec::pingreq(buf);
                        Ok(())
                    });
                    if let Err(reason) = pinged {
                        return failed(ctx, reason);
                    }
                    last_sent = Instant::now();
                }
            }
        }
    }

    fn on_packet(
        &mut self,
        ctx: &Ctx,
        packet: Incoming,
        reply: &mut BytesMut,
    ) -> Result<(), Reason> {
        let protocol = ctx.settings.protocol;
        let encoded = match packet {
            Incoming::Publish { qos, pkid, payload } => match qos {
                1 => {
                    self.verify(ctx, &payload);
                    codec::ack(reply, protocol, Ack::Puback, pkid)
                }
                2 => {
                    if !self.awaiting_release.contains(&pkid) {
                        self.awaiting_release.push(pkid);
                        self.verify(ctx, &payload);
                    }
                    codec::ack(reply, protocol, Ack::Pubrec, pkid)
                }
                _ => {
                    self.verify(ctx, &payload);
                    Ok(())
                }
            },
            Incoming::PubRel { pkid } => {
                self.awaiting_release.retain(|&p| p != pkid);
                codec::ack(reply, protocol, Ack::Pubcomp, pkid)
            }
            Incoming::SubAck { refused: true } => return Err(Reason::Borrowed("suback_refused")),
            Incoming::SubAck { refused: false } => {
                if !self.counted_ready {
                    self.counted_ready = true;
                    ctx.stats.subscribers_ready.fetch_add(1, Relaxed);
                }
                Ok(())
            }
            Incoming::Disconnect { reason } => {
                return Err(Reason::Owned(format!("server_disconnect_0x{reason:02x}")))
            }
            _ => Ok(()),
        };
        encoded.map_err(|_| Reason::Borrowed("encode_error"))
    }

    fn verify(&mut self, ctx: &Ctx, payload: &Bytes) {
        let stats = &ctx.stats;
        let Some(stamp) = ctx.settings.payload.decode(payload) else {
            stats.foreign.fetch_add(1, Relaxed);
            return;
        };
        if stamp.sent_us < ctx.run_start_us {
            stats.stale.fetch_add(1, Relaxed);
            return;
        }
        stats.received.fetch_add(1, Relaxed);
        let verdict = self.tracker.lock().observe(stamp.device, stamp.seq);
        match verdict {
            Verdict::InOrder => {}
            Verdict::Ahead { skipped } => {
                stats.open_gaps.fetch_add(skipped, Relaxed);
            }
            Verdict::OutOfOrder => {
                stats.out_of_order.fetch_add(1, Relaxed);
                stats.open_gaps.fetch_sub(1, Relaxed);
            }
            Verdict::Duplicate => {
                stats.duplicates.fetch_add(1, Relaxed);
                return;
            }
        }
        if let Some(seen) = ctx.seen() {
            seen.seen(stamp.device, ctx.timers());
        }
        let latency = now_us().saturating_sub(stamp.sent_us);
        stats.hists.lock().latency.saturating_record(latency.max(1));
    }
}

fn failed(ctx: &Ctx, reason: Reason) -> Outcome {
    ctx.stats.disconnected(&reason);
    Outcome::Failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Stamp;
    use crate::scenario::Settings;

    /// A QoS 2 PUBLISH that comes again before its PUBREL (a broker that restarted without
    /// learning of the PUBREC resends it) is the same message; after the release, the same
    /// message again is a duplicate.
    #[test]
    fn a_qos2_message_resent_before_its_release_is_delivered_once() {
        let settings = Settings::resolve(&crate::cli::RunArgs::default()).expect("valid");
        let ctx = Ctx::new(settings, None, 0..1, 0, None);
        let mut payload = Vec::new();
        let stamp = Stamp {
            device: 0,
            seq: 0,
            sent_us: now_us(),
        };
        ctx.settings.payload.encode(stamp, &mut payload);
        let payload = Bytes::from(payload);
        let mut s = Subscriber {
            index: 0,
            tracker: Arc::default(),
            counted_ready: false,
            awaiting_release: Vec::new(),
            moved: 0,
        };
        let mut reply = BytesMut::new();
        let publish = || Incoming::Publish {
            qos: 2,
            pkid: 7,
            payload: payload.clone(),
        };
        for packet in [publish(), publish()] {
            s.on_packet(&ctx, packet, &mut reply).expect("PUBREC");
        }
        assert_eq!(ctx.stats.received.load(Relaxed), 1);
        assert_eq!(ctx.stats.duplicates.load(Relaxed), 0);
        s.on_packet(&ctx, Incoming::PubRel { pkid: 7 }, &mut reply)
            .expect("PUBCOMP");
        s.on_packet(&ctx, publish(), &mut reply).expect("PUBREC");
        assert_eq!(ctx.stats.duplicates.load(Relaxed), 1);
    }
}
