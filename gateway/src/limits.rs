//! Overload protection (`[limits]`): the connect pacer, per-client publish quotas and the
//! memory watch. The checks themselves sit where the events happen (`listener::admit`,
//! `client`, `router`); this module holds the little state they need.
//!
//! Rates are enforced with GCRA (the "theoretical arrival time" form of a token bucket): one
//! timestamp per bucket instead of a token count plus a refill time, so a per-client quota costs
//! 16 bytes in `Client` and a comparison and an addition per message.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::context::Context;
use crate::task::Background;

/// Longest a connection may wait for its connect-rate slot. Kept well under the connect timeouts
/// of common clients (rumqttc 5 s, Paho 30 s), so that a paced client is still waiting when its
/// turn comes; a connection that would wait longer is closed at once and retries on its backoff.
pub(crate) const CONNECT_MAX_WAIT: Duration = Duration::from_secs(1);
/// A publish quota allows a burst of one second's worth of its rate.
const QUOTA_WINDOW_NS: u64 = 1_000_000_000;
/// How often RSS is sampled against `memory_high_water`: fast enough to react to a surge within
/// a fraction of a second, rare enough to cost nothing measurable.
const MEMORY_SAMPLE: Duration = Duration::from_millis(200);

/// What the connect pacer decided for one accepted socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// Within the rate (or the burst): serve at once.
    Now,
    /// Over the rate: start the handshake at this instant (at most `CONNECT_MAX_WAIT` away).
    At(Instant),
    /// The wait would exceed `CONNECT_MAX_WAIT`: close at once.
    Refuse,
}

/// `connect_rate` with `connect_burst`, owned by the accept loop (one task: no atomics).
///
/// Sockets are always accepted at once, so the kernel backlog never overflows into SYN retries
/// and never fills with sockets whose clients gave up. Over the rate, a socket's handshake is
/// postponed to its slot instead, up to `CONNECT_MAX_WAIT`; beyond that it is closed at once,
/// which clients see as a failed attempt and retry on their own backoff.
#[derive(Debug)]
pub(crate) struct ConnectPacer {
    interval: Duration,
    tolerance: Duration,
    /// When the next connection would be due if connections arrived exactly at the rate.
    tat: Instant,
}

impl ConnectPacer {
    /// `None` when `rate` is 0 (no pacing).
    pub(crate) fn new(rate: u32, burst: u32, now: Instant) -> Option<ConnectPacer> {
        if rate == 0 {
            return None;
        }
        let interval = Duration::from_secs(1) / rate;
        Some(ConnectPacer {
            interval,
            tolerance: interval * burst.saturating_sub(1),
            tat: now,
        })
    }

    pub(crate) fn pace(&mut self, now: Instant) -> Pace {
        let tat = self.tat.max(now);
        // Before the first `tolerance` has elapsed since start the subtraction may underflow:
        // then the whole burst is still available.
        let start = tat.checked_sub(self.tolerance).unwrap_or(now).max(now);
        if start - now > CONNECT_MAX_WAIT {
            return Pace::Refuse;
        }
        self.tat = tat + self.interval;
        if start > now {
            Pace::At(start)
        } else {
            Pace::Now
        }
    }
}

/// A connection in its handshake: counted against `max_handshakes` from accept until dropped
/// (CONNACK sent, or the connection refused or closed before), with the instant its connect-rate
/// slot begins when it was paced.
pub(crate) struct Handshake {
    ctx: Arc<Context>,
    pub not_before: Option<Instant>,
}

impl Handshake {
    pub(crate) fn new(ctx: Arc<Context>, not_before: Option<Instant>) -> Handshake {
        ctx.admission.handshake_started();
        Handshake { ctx, not_before }
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.ctx.admission.handshake_ended();
    }
}

/// Which publish quota a client exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuotaExceeded {
    Messages,
    Bytes,
}

/// A client's `max_publish_rate` and `max_publish_bytes_rate` buckets: theoretical arrival
/// times in nanoseconds since the broker started.
#[derive(Debug, Default)]
pub(crate) struct PublishQuota {
    messages_tat: u64,
    bytes_tat: u64,
}

impl PublishQuota {
    /// Charges one PUBLISH of `bytes` at `now_ns`; a rate of 0 is unlimited. A single message
    /// larger than one second's byte quota always exceeds it.
    pub(crate) fn charge(
        &mut self,
        now_ns: u64,
        bytes: usize,
        messages_per_sec: u32,
        bytes_per_sec: u64,
    ) -> Result<(), QuotaExceeded> {
        let messages = charge(
            self.messages_tat,
            now_ns,
            1,
            u64::from(messages_per_sec),
            QuotaExceeded::Messages,
        )?;
        let bytes = charge(
            self.bytes_tat,
            now_ns,
            bytes as u64,
            bytes_per_sec,
            QuotaExceeded::Bytes,
        )?;
        self.messages_tat = messages;
        self.bytes_tat = bytes;
        Ok(())
    }
}

/// One GCRA step: the bucket's new arrival time, or `exceeded` when the cost does not fit into
/// the one-second window.
fn charge(
    tat: u64,
    now_ns: u64,
    cost: u64,
    per_sec: u64,
    exceeded: QuotaExceeded,
) -> Result<u64, QuotaExceeded> {
    if per_sec == 0 {
        return Ok(tat);
    }
    let cost_ns = u128::from(cost) * u128::from(QUOTA_WINDOW_NS) / u128::from(per_sec);
    let next = u128::from(tat.max(now_ns)) + cost_ns;
    if next > u128::from(now_ns) + u128::from(QUOTA_WINDOW_NS) {
        return Err(exceeded);
    }
    // `next` is at most a second past `now_ns`, which is a u64: it fits.
    Ok(next as u64)
}

/// Samples RSS every `MEMORY_SAMPLE` and raises the router's overload flag while it is above
/// `high_water` bytes: the data path reads one relaxed atomic, never /proc.
pub(crate) fn watch_memory(ctx: Arc<Context>, high_water: u64) -> Background {
    Background::spawn(async move {
        // SAFETY: sysconf only reads a configuration value.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
        let mut tick = tokio::time::interval(MEMORY_SAMPLE);
        loop {
            tick.tick().await;
            let Some(rss) = resident_bytes(page) else {
                continue;
            };
            let over = rss > high_water;
            if ctx.router.overloaded.swap(over, Ordering::Relaxed) != over {
                if over {
                    warn!(rss, high_water, "memory above the high-water mark: refusing new connections, shedding QoS 0");
                } else {
                    warn!(rss, high_water, "memory back below the high-water mark");
                }
            }
        }
    })
}

/// RSS from /proc/self/statm (its second field, in pages): one small read, no parsing of
/// /proc/self/status.
pub(crate) fn resident_bytes(page: u64) -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_allows_the_burst_then_spaces_and_refuses_beyond_the_wait() {
        let t0 = Instant::now();
        let mut p = ConnectPacer::new(10, 3, t0).expect("rate > 0");
        for _ in 0..3 {
            assert_eq!(p.pace(t0), Pace::Now);
        }
        // Then one per 100 ms, for at most a second of waiting.
        for k in 1..=10 {
            assert_eq!(p.pace(t0), Pace::At(t0 + Duration::from_millis(100) * k));
        }
        assert_eq!(p.pace(t0), Pace::Refuse);
        // A second later the queue has moved by ten slots.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(p.pace(t1), Pace::At(t1 + Duration::from_millis(100)));
        assert!(ConnectPacer::new(0, 5, t0).is_none());
    }

    #[test]
    fn publish_quota_allows_one_second_of_burst() {
        let mut q = PublishQuota::default();
        let now = 5_000_000_000;
        for _ in 0..10 {
            q.charge(now, 10, 10, 0).expect("within the burst");
        }
        assert_eq!(q.charge(now, 10, 10, 0), Err(QuotaExceeded::Messages));
        // 100 ms later one more message fits.
        q.charge(now + 100_000_000, 10, 10, 0).expect("refilled");

        let mut q = PublishQuota::default();
        q.charge(now, 600, 0, 1000).expect("600 of 1000 bytes");
        assert_eq!(q.charge(now, 600, 0, 1000), Err(QuotaExceeded::Bytes));
        q.charge(now, 400, 0, 1000).expect("the rest of the second");
        assert_eq!(
            PublishQuota::default().charge(now, 1001, 0, 1000),
            Err(QuotaExceeded::Bytes)
        );
        // Unlimited.
        let mut q = PublishQuota::default();
        for _ in 0..10_000 {
            q.charge(now, 1 << 20, 0, 0).expect("no quota");
        }
    }
}
