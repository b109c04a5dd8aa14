//! One process's part of a run: its slice of devices and subscribers, driving them through the
//! phases (subscribe, publish, drain, stop) of their shared [`Ctx`], connection pacing, when
//! the disconnect event fires, and the snapshots it reports. A single-process run and each
//! worker process both run one.

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::context::{now_us, Ctx, Phase};
use crate::scenario::Settings;
use crate::stats::Snapshot;
use crate::tls::{TlsClient, TlsError};
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

pub struct Engine {
    ctx: Arc<Ctx>,
    slice: Slice,
    /// Every subscriber and every device of the run are in this process.
    whole_run: bool,
    /// The subscribers' trackers (one per `$share` group), for `unacked_missing`.
    trackers: Mutex<Vec<Arc<Mutex<Tracker>>>>,
}

impl Engine {
    /// The engine of `slice`; fails when its TLS files cannot be read.
    pub fn new(settings: Settings, slice: Slice, run_start_us: u64) -> Result<Engine, TlsError> {
        let targets = settings.targets.len();
        let devices = slice.devices.end - slice.devices.start;
        let subscribers = u64::from(slice.subscribers.end - slice.subscribers.start);
        let tls = settings
            .tls
            .as_ref()
            .map(|tls| TlsClient::new(tls, devices + subscribers))
            .transpose()?;
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
        Ok(Engine {
            ctx: Arc::new(Ctx::new(
                settings,
                tls,
                slice.devices.clone(),
                run_start_us,
                seen,
            )),
            slice,
            whole_run,
            trackers: Mutex::new(Vec::new()),
        })
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
        if self.ctx.settings.share_group.is_some() {
            self.trackers.lock().push(shared.clone());
        }
        for index in range {
            let tracker = if self.ctx.settings.share_group.is_some() {
                shared.clone()
            } else {
                let own = Arc::new(Mutex::new(Tracker::default()));
                self.trackers.lock().push(own.clone());
                own
            };
            self.ctx.task_started();
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
            async move { ctx.timers().drive().await }
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
                    ctx.disconnect_event();
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
        while ctx.live_tasks() > 0 && Instant::now() < stopped {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Counters that settle while connections close (unacknowledged messages) come from
        // now; who was connected comes from before the stop.
        let closed = self.snapshot();
        last.unacked = closed.unacked;
        last.unacked_missing = self.unacked_missing();
        timers.abort();
        last
    }

    /// Of the deliveries the unacknowledged messages were due, how many never arrived: what a
    /// broker that went away may lose. Known only with the whole run here and every
    /// unacknowledged message remembered.
    fn unacked_missing(&self) -> Option<u64> {
        let stats = &self.ctx.stats;
        if !self.whole_run || !stats.unacked_all_tracked() {
            return None;
        }
        let trackers = self.trackers.lock();
        let unacked = stats.unacked_seqs.lock();
        let missing = unacked
            .iter()
            .map(|&(device, seq)| {
                // Where it went last is not known here; which target does not matter with
                // `--cluster`, the only case where a device moves.
                let (target, _, _) = self.ctx.device_route(device, 0);
                let due = self.ctx.settings.deliveries_per_message(target);
                let seen = trackers
                    .iter()
                    .filter(|t| t.lock().has_seen(device, seq))
                    .count() as u64;
                due.saturating_sub(seen)
            })
            .sum();
        Some(missing)
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
            _ = ctx.handshake_finished(), if window > 0 => {}
        }
        if ctx.phase() >= Phase::Draining {
            break;
        }
        let due = devices.start + (start.elapsed().as_secs_f64() * slice.connect_rate) as u64 + 1;
        while next < due.min(devices.end) && (window == 0 || ctx.connecting() < window) {
            ctx.handshake_started();
            ctx.task_started();
            tokio::spawn(device::run(ctx.clone(), next));
            next += 1;
        }
    }
}
