//! One process's part of a run: its slice of devices and subscribers, the phases they go
//! through (subscribe, publish, drain, stop), connection pacing, the disconnect event, and
//! the snapshots it reports. A single-process run and each worker process both run one.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::codec::ConnectOptions;
use crate::scenario::{Settings, Who};
use crate::stats::{Snapshot, Stats};
use crate::timer::Timers;
use crate::verify::Tracker;
use crate::window::Seen;
use crate::{device, subscriber};

/// How long stopping connections get to send DISCONNECT and close.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A process's share of the fleet: global device numbers and subscriber numbers, so that
/// client ids, targets and source addresses are the same whichever process holds a device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Slice {
    pub devices: Range<u64>,
    pub subscribers: Range<u32>,
    /// This process's share of the fleet's connect rate.
    pub connect_rate: f64,
    /// This process's share of the fleet's connect window (0: no bound).
    pub connect_window: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Subscribing,
    Publishing,
    Draining,
    Stopping,
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// State every device and subscriber task of the process shares.
pub struct Ctx {
    pub settings: Settings,
    pub stats: Stats,
    /// Messages stamped earlier belong to an earlier run (a persistent session's backlog).
    pub run_start_us: u64,
    phase: AtomicU8,
    /// Woken on every phase change and on the disconnect event.
    wake: Notify,
    disconnect_epoch: AtomicU32,
    live_tasks: AtomicUsize,
    /// Devices started whose first handshake has not finished: bounded by the connect window.
    connecting: AtomicUsize,
    handshake_done: Notify,
    /// Devices in this process's slice.
    devices: u64,
    /// The devices' deadlines and wakers: phase changes and the disconnect event wake devices
    /// through them too, which costs an idle device a 16-byte waker slot instead of a
    /// `Notified` future (~70 bytes) in its task.
    timers: Timers,
    /// Closed-loop completions seen by the subscribers, in a one-process closed-loop run.
    seen: Option<Seen>,
}

impl Ctx {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Relaxed) {
            0 => Phase::Subscribing,
            1 => Phase::Publishing,
            2 => Phase::Draining,
            _ => Phase::Stopping,
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Relaxed);
        self.wake_all();
    }

    /// Wakes every waiting subscriber and device. The change is stored before the lock is
    /// taken, so a device either sees it or is registered and gets woken.
    fn wake_all(&self) {
        self.wake.notify_waiters();
        self.timers.wake_all();
    }

    /// Where a device registers its waker (for [`Ctx::signal`] changes) and its deadlines.
    pub fn timers(&self) -> &Timers {
        &self.timers
    }

    /// Where subscribers report what they see and devices find their window, in a one-process
    /// closed-loop run.
    pub fn seen(&self) -> Option<&Seen> {
        self.seen.as_ref()
    }

    /// Changes on every phase change and disconnect event: what parked devices are woken for.
    pub fn signal(&self) -> u32 {
        u32::from(self.phase.load(Relaxed)) | (self.disconnect_epoch.load(Relaxed) << 8)
    }

    pub fn stopping(&self) -> bool {
        self.phase() == Phase::Stopping
    }

    pub fn wake(&self) -> &Notify {
        &self.wake
    }

    pub fn disconnect_epoch(&self) -> u32 {
        self.disconnect_epoch.load(Relaxed)
    }

    /// Whether the disconnect event takes this device or subscriber offline (a stable,
    /// evenly spread choice by number).
    pub fn dropped_by_event(&self, who: Who, number: u64) -> bool {
        match &self.settings.disconnect {
            Some(d) if d.who == who => {
                let spread = number.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
                (spread as f64) < d.share * (1u64 << 53) as f64
            }
            _ => false,
        }
    }

    pub fn offline_for(&self) -> Duration {
        self.settings
            .disconnect
            .as_ref()
            .map(|d| d.offline_for)
            .unwrap_or_default()
    }

    /// Device `id` goes to target `id mod T` from source address `(id / T) mod S`, so every
    /// (source, target) pair gets an even share of the ephemeral ports.
    pub fn device_route(&self, id: u64) -> (usize, SocketAddr, Option<Ipv4Addr>) {
        let s = &self.settings;
        let t = s.targets.len() as u64;
        let target = (id % t) as usize;
        let source = (!s.source_ips.is_empty())
            .then(|| s.source_ips[((id / t) % s.source_ips.len() as u64) as usize]);
        (target, s.targets[target], source)
    }

    pub fn subscriber_route(&self, index: u32) -> (SocketAddr, Option<Ipv4Addr>) {
        let s = &self.settings;
        let k = u64::from(index);
        let target = s.targets[(k % s.targets.len() as u64) as usize];
        let source = (!s.source_ips.is_empty())
            .then(|| s.source_ips[(k % s.source_ips.len() as u64) as usize]);
        (target, source)
    }

    pub fn connect_options<'a>(&'a self, client_id: &'a str) -> ConnectOptions<'a> {
        let s = &self.settings;
        ConnectOptions {
            client_id,
            keep_alive: s.keep_alive,
            clean_session: s.clean_session,
            session_expiry: s.session_expiry,
            username: s.username.as_deref(),
            password: s.password.as_deref(),
        }
    }

    /// Exponential backoff with full jitter, so a dropped crowd does not return in step.
    pub fn backoff(&self, failures: u32) -> Duration {
        let s = &self.settings;
        let ceiling = s
            .backoff_min
            .saturating_mul(1u32 << failures.min(16))
            .min(s.backoff_max);
        s.backoff_min
            + ceiling
                .saturating_sub(s.backoff_min)
                .mul_f64(fastrand::f64())
    }

    /// Sleeps unless the run stops first; `false` if it did.
    pub async fn pause(&self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.stopping() {
                return false;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return true,
                _ = woken => {}
            }
        }
    }

    /// Counts a device's new connection; the moment the whole slice is connected again after
    /// the disconnect event is the storm's end.
    pub fn device_connected(&self) {
        let connected = self.stats.devices_connected.fetch_add(1, Relaxed) + 1;
        if connected as u64 == self.devices {
            let now = now_us();
            // Only the first time: reconnections after drops do not move it.
            let _ = self
                .stats
                .all_connected_us
                .compare_exchange(0, now, Relaxed, Relaxed);
            if self.stats.event_at_us.load(Relaxed) > 0 {
                self.stats.back_at_us.store(now, Relaxed);
            }
        }
    }

    pub fn first_handshake_done(&self) {
        self.connecting.fetch_sub(1, Relaxed);
        self.handshake_done.notify_one();
    }

    pub fn task_done(&self) {
        self.live_tasks.fetch_sub(1, Relaxed);
    }
}

pub struct Engine {
    ctx: Arc<Ctx>,
    slice: Slice,
}

impl Engine {
    pub fn new(settings: Settings, slice: Slice, run_start_us: u64) -> Engine {
        let targets = settings.targets.len();
        let devices = slice.devices.end - slice.devices.start;
        // Every subscriber in this process: they see every device's messages that reach them.
        let whole_run = devices == settings.devices
            && u64::from(slice.subscribers.end - slice.subscribers.start)
                == u64::from(settings.subscribers);
        let seen = (settings.window > 0 && whole_run).then(|| {
            let copies = (0..targets)
                .map(|t| settings.deliveries_per_message(t))
                .collect();
            Seen::new(slice.devices.start, devices, copies)
        });
        Engine {
            ctx: Arc::new(Ctx {
                settings,
                stats: Stats::new(targets),
                run_start_us,
                phase: AtomicU8::new(Phase::Subscribing as u8),
                wake: Notify::new(),
                disconnect_epoch: AtomicU32::new(0),
                live_tasks: AtomicUsize::new(0),
                connecting: AtomicUsize::new(0),
                handshake_done: Notify::new(),
                devices,
                timers: Timers::new(slice.devices.clone()),
                seen,
            }),
            slice,
        }
    }

    #[cfg(test)]
    pub fn ctx_for_test(&self) -> Arc<Ctx> {
        self.ctx.clone()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.ctx.stats.snapshot(
            self.slice.devices.end - self.slice.devices.start,
            u64::from(self.slice.subscribers.end - self.slice.subscribers.start),
        )
    }

    /// Starts the slice's subscribers and waits until each has its SUBACK (or `within`).
    pub async fn connect_subscribers(&self, within: Duration) -> bool {
        let range = self.slice.subscribers.clone();
        let count = u64::from(range.end - range.start);
        // Members of one `$share` group see parts of every device's stream, so they verify
        // against one tracker; plain subscribers each see everything and verify alone.
        let shared = Arc::new(Mutex::new(Tracker::default()));
        for index in range {
            let tracker = if self.ctx.settings.share_group.is_some() {
                shared.clone()
            } else {
                Arc::new(Mutex::new(Tracker::default()))
            };
            self.ctx.live_tasks.fetch_add(1, Relaxed);
            tokio::spawn(subscriber::run(self.ctx.clone(), index, tracker));
        }
        let deadline = Instant::now() + within;
        while self.ctx.stats.subscribers_ready.load(Relaxed) < count {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Connects the devices at the slice's rate, publishes for the run's duration, drains,
    /// stops every connection, and returns the final snapshot. `report` gets a snapshot
    /// every second; `stop` ends the publishing early.
    pub async fn run(
        &self,
        stop: impl Future<Output = ()>,
        mut report: impl FnMut(Snapshot),
    ) -> Snapshot {
        let ctx = &self.ctx;
        let settings = &ctx.settings;
        ctx.set_phase(Phase::Publishing);
        let timers = tokio::spawn({
            let ctx = ctx.clone();
            async move { ctx.timers.drive().await }
        });
        let start = Instant::now();
        tokio::spawn(pace(ctx.clone(), self.slice.clone()));
        let end = start + settings.duration;
        let event_at = settings.disconnect.as_ref().map(|d| start + d.at);
        let mut event_pending = event_at.is_some_and(|at| at < end);
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = ticker.tick() => report(self.snapshot()),
                _ = tokio::time::sleep_until(event_at.unwrap_or(end)), if event_pending => {
                    event_pending = false;
                    ctx.stats.event_at_us.store(now_us(), Relaxed);
                    ctx.disconnect_epoch.fetch_add(1, Relaxed);
                    ctx.wake_all();
                }
                _ = tokio::time::sleep_until(end) => break,
                _ = &mut stop => break,
            }
        }
        ctx.set_phase(Phase::Draining);
        let drained = Instant::now() + settings.drain;
        loop {
            tokio::select! {
                _ = ticker.tick() => report(self.snapshot()),
                _ = tokio::time::sleep_until(drained) => break,
            }
        }
        let mut last = self.snapshot();
        ctx.set_phase(Phase::Stopping);
        let stopped = Instant::now() + STOP_GRACE;
        while ctx.live_tasks.load(Relaxed) > 0 && Instant::now() < stopped {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Counters that settle while connections close (unacknowledged messages) come from
        // now; who was connected comes from before the stop.
        let closed = self.snapshot();
        last.unacked = closed.unacked;
        timers.abort();
        last
    }
}

/// Spawns device tasks at the slice's rate, with at most its connect window of first
/// handshakes in flight, until the slice is connected or publishing ends.
async fn pace(ctx: Arc<Ctx>, slice: Slice) {
    let devices = slice.devices;
    let window = slice.connect_window as usize;
    let start = Instant::now();
    ctx.stats.connect_started_us.store(now_us(), Relaxed);
    let mut next = devices.start;
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    while next < devices.end {
        tokio::select! {
            _ = ticker.tick() => {}
            // A finished handshake frees a place in the window at once.
            _ = ctx.handshake_done.notified(), if window > 0 => {}
        }
        if ctx.phase() >= Phase::Draining {
            break;
        }
        let due = devices.start + (start.elapsed().as_secs_f64() * slice.connect_rate) as u64 + 1;
        while next < due.min(devices.end) && (window == 0 || ctx.connecting.load(Relaxed) < window)
        {
            ctx.connecting.fetch_add(1, Relaxed);
            ctx.live_tasks.fetch_add(1, Relaxed);
            tokio::spawn(device::run(ctx.clone(), next));
            next += 1;
        }
    }
}
