//! Time on the broker's clock: the keep-alive deadline (for a client without keep-alive, the idle
//! bound `mqtt.idle_timeout`), the time a half-arrived packet has left (`mqtt.packet_timeout`),
//! the silence after which a session hibernates, hibernating (and waking up from the parker).

use std::time::{Duration, Instant};

use tracing::debug;

use super::{Client, Close, READ_PAUSE_BYTES};
use crate::codec::reason;
use crate::context::Context;
use crate::hibernate::Sleeper;
use crate::metrics::CloseReason;
use crate::task::spawn_isolated;

/// How long a session just attached waits for its first packet before it hibernates (unless
/// `mqtt.hibernate_after` is shorter). A client's first packets (its SUBSCRIBE, mostly) come
/// within a round trip of CONNACK; hibernating at once sent them through the parker's wake-up
/// (an epoll event, the parker's task, a new task) while other clients' running tasks handled
/// theirs at once, so a PUBLISH another client sent after the SUBSCRIBE could be routed first
/// and miss it (issue 18, item 10). A second covers any round trip but a satellite's.
const FIRST_PACKET_GRACE: Duration = Duration::from_secs(1);

/// New sessions that may wait out their grace at once; beyond (a connection storm), a new
/// session hibernates right after CONNACK. Each one waiting keeps its task and its reactor
/// registration (~1 KB), so an unbounded grace kept a whole storm awake for its last second:
/// 19,000 sessions connected at 23,000/s, whose long-lived state was allocated among those
/// buffers, and glibc's heap kept the peak's pages: 1.5 KB RSS per idle session afterwards
/// instead of 0.6 KB. Bounded, the peak is a few hundred kilobytes whatever the storm; the
/// first packets that miss the grace in a storm take the parker's way, as every session's
/// first packet after a silence does. 128 rather than 1,024 (BENCHMARKS.md, issue 17): RSS per
/// idle session 1,294 / 672 / 630 B at 1,000 / 10,000 / 19,000 sessions against 2,101 / 758 /
/// 675 B, the connect rate unchanged.
pub(super) const GRACE_SLOTS: usize = 128;

/// Now on the broker's clock: nanoseconds since `ctx.started`, the unit of a client's
/// `last_read` / `last_write` (eight bytes each where an `Instant` takes sixteen). Read from
/// tokio's clock, which is the system's unless a test paused it (the session fuzz target runs
/// the broker on paused time): the timers the task sleeps on are tokio's too.
pub(super) fn broker_nanos(ctx: &Context) -> u64 {
    let now = tokio::time::Instant::now().into_std();
    u64::try_from(now.saturating_duration_since(ctx.started).as_nanos()).unwrap_or(u64::MAX)
}

impl Client {
    /// The silence (nanoseconds) after which this session hibernates; `None`: never. `fresh`:
    /// just attached and no packet read yet (`FIRST_PACKET_GRACE`).
    pub(super) fn hibernation(&self, fresh: bool) -> Option<u64> {
        let after = self.ctx.policy.hibernate_after?;
        Some(duration_nanos(if fresh {
            after.min(FIRST_PACKET_GRACE)
        } else {
            after
        }))
    }

    /// The silence a client may keep, in nanoseconds: 1.5 times its keep-alive or, for one
    /// without keep-alive, `mqtt.idle_timeout`. `None`: no bound (keep-alive 0, idle bound off).
    fn keep_alive_period(&self) -> Option<u64> {
        match self.keep_alive_ms {
            Some(ms) => Some(u64::from(ms.get()) * 1_000_000),
            None => self.ctx.policy.idle_timeout.map(duration_nanos),
        }
    }

    /// When the client was last heard from, as its silence is counted: with keep-alive, its
    /// last bytes (it promised to send within the period); without, traffic either way, so a
    /// client that only receives, and takes what it is sent, is not idle.
    fn last_heard(&self) -> u64 {
        match self.keep_alive_ms {
            Some(_) => self.last_read,
            None => self.last_read.max(self.last_write),
        }
    }

    /// The close a silent client (or one that stopped reading) has earned by `now`, if any.
    pub(super) fn keep_alive_expired(&self, now: u64) -> Option<Close> {
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
        let read_paused = self.conn.pending_memory() >= READ_PAUSE_BYTES;
        if !read_paused && now >= self.last_heard().saturating_add(period) {
            let why = if self.keep_alive_ms.is_some() {
                debug!(client = %self.session.client_id, "keep-alive expired");
                CloseReason::KeepAlive
            } else {
                debug!(client = %self.session.client_id, "no keep-alive, idle past the idle timeout");
                CloseReason::Idle
            };
            return Some(Close {
                reason: why,
                code: Some(reason::KEEP_ALIVE_TIMEOUT),
                will: true,
            });
        }
        None
    }

    /// When the packet now half read must be whole (broker clock); `None` when none is. Bytes
    /// arriving keep the keep-alive satisfied, so without this a client sending one byte at a
    /// time could hold a packet (its buffer, its task) open for ever.
    pub(super) fn packet_deadline(&self) -> Option<u64> {
        let since = self.conn.partial_since()?;
        let started = duration_nanos(since.saturating_duration_since(self.ctx.started));
        Some(started.saturating_add(duration_nanos(self.ctx.policy.packet_timeout)))
    }

    /// The close a packet left incomplete past `mqtt.packet_timeout` has earned by `now`.
    pub(super) fn packet_expired(&self, now: u64) -> Option<Close> {
        if now < self.packet_deadline()? {
            return None;
        }
        debug!(client = %self.session.client_id, "packet not complete within the packet timeout");
        Some(Close {
            reason: CloseReason::PacketTimeout,
            code: Some(reason::QUOTA_EXCEEDED),
            will: true,
        })
    }

    /// When the timer must fire next (nanoseconds on the broker's clock): the keep-alive check,
    /// the packet timeout of a half-read packet and, with hibernation on, the end of a silent
    /// period (`fresh`: see `hibernation`). `None` when none applies.
    pub(super) fn next_timer(&self, now: u64, fresh: bool) -> Option<u64> {
        let keep_alive = self.keep_alive_period().map(|period| {
            let waiting = self.conn.has_pending();
            let read_paused = self.conn.pending_memory() >= READ_PAUSE_BYTES;
            match (waiting, read_paused) {
                (true, true) => self.last_write,
                (true, false) => self.last_heard().min(self.last_write),
                _ => self.last_heard(),
            }
            .saturating_add(period)
        });
        let silent = self.hibernation(fresh).map(|after| {
            let at = self.last_read.max(self.last_write).saturating_add(after);
            // Past it without hibernating (busy or refused), or just resumed after a long
            // silence: the next look is a whole period away.
            if at <= now {
                now.saturating_add(after)
            } else {
                at
            }
        });
        [keep_alive, silent, self.packet_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// A time on the broker's clock as an `Instant` (far in the future for `u64::MAX`).
    pub(super) fn instant(&self, nanos: u64) -> Instant {
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        self.ctx
            .started
            .checked_add(Duration::from_nanos(nanos))
            .map_or(far, |at| at.min(far))
    }

    /// Right after CONNACK, without a grace (`GRACE_SLOTS`): writes what is queued and
    /// hibernates when the socket took everything and the session has nothing waiting, so a
    /// storm's sessions cost no task. Gives the client back otherwise, for its task.
    pub(super) fn hibernate_at_once(mut self: Box<Self>) -> Result<(), Box<Self>> {
        if self.ctx.policy.hibernate_after.is_none() || self.session.queue_len() > 0 {
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
    pub(super) fn hibernate(mut self: Box<Self>) -> Result<(), Box<Self>> {
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
            .map(|period| self.instant(self.last_heard().saturating_add(period)));
        let parker = self.ctx.parker.clone();
        parker.park(self, deadline).map_err(|mut me| {
            if let Err(e) = me.conn.resume() {
                debug!(client = %me.session.client_id, "cannot resume after a refused hibernation: {e}");
            }
            me
        })
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
        #[cfg(feature = "fault-injection")]
        if self
            .session
            .client_id
            .starts_with(crate::fault::PANIC_ON_RESUME)
        {
            panic!(
                "fault injection: panic requested by {}",
                self.session.client_id
            );
        }
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
        spawn_isolated(metrics, peer, self.run(None));
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
