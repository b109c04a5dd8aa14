//! The context every device and subscriber task of one process shares: the run's phase and
//! the wake-ups on its changes and on the disconnect event, the process's counters and timers,
//! how a device or subscriber is routed (target, source address) and backs off, and the
//! wall clock that stamps the run. The engine drives it; the tasks read it.

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::codec::ConnectOptions;
use crate::scenario::{Settings, Who};
use crate::stats::Stats;
use crate::timer::Timers;
use crate::tls::{Peer, TlsClient, TlsDial};
use crate::window::Seen;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Subscribing,
    Publishing,
    Draining,
    Stopping,
}

/// Wall-clock microseconds since the Unix epoch: message stamps and the run's moments, which
/// compare across processes.
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
    /// The TLS client of every connection of the process, with `--tls`.
    pub tls: Option<TlsClient>,
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
    /// The context of a process holding `devices`, in the subscribing phase.
    pub(crate) fn new(
        settings: Settings,
        tls: Option<TlsClient>,
        devices: Range<u64>,
        run_start_us: u64,
        seen: Option<Seen>,
    ) -> Ctx {
        Ctx {
            stats: Stats::new(settings.targets.len()),
            settings,
            tls,
            run_start_us,
            phase: AtomicU8::new(Phase::Subscribing as u8),
            wake: Notify::new(),
            disconnect_epoch: AtomicU32::new(0),
            live_tasks: AtomicUsize::new(0),
            connecting: AtomicUsize::new(0),
            handshake_done: Notify::new(),
            devices: devices.end - devices.start,
            timers: Timers::new(devices),
            seen,
        }
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Relaxed) {
            0 => Phase::Subscribing,
            1 => Phase::Publishing,
            2 => Phase::Draining,
            _ => Phase::Stopping,
        }
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Relaxed);
        self.wake_all();
    }

    /// Wakes every waiting subscriber and device. The change is stored before the lock is
    /// taken, so a device either sees it or is registered and gets woken.
    pub(crate) fn wake_all(&self) {
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

    /// Device `id` goes to target `(id + moved) mod T` from source address `(id / T) mod S`,
    /// so every (source, target) pair gets an even share of the ephemeral ports. `moved`
    /// counts the targets it failed over from (`next_target`).
    pub fn device_route(&self, id: u64, moved: u16) -> (usize, SocketAddr, Option<Ipv4Addr>) {
        let s = &self.settings;
        let t = s.targets.len() as u64;
        let target = ((id + u64::from(moved)) % t) as usize;
        let source = (!s.source_ips.is_empty())
            .then(|| s.source_ips[((id / t) % s.source_ips.len() as u64) as usize]);
        (target, s.targets[target], source)
    }

    /// Subscriber `index`'s target (its index and address) and source address; `moved` as
    /// for devices. With `--subscriber-target` the subscribers have nodes of their own.
    pub fn subscriber_route(
        &self,
        index: u32,
        moved: u16,
    ) -> (usize, SocketAddr, Option<Ipv4Addr>) {
        let s = &self.settings;
        let targets = if s.subscriber_targets.is_empty() {
            &s.targets
        } else {
            &s.subscriber_targets
        };
        let k = u64::from(index);
        let target = ((k + u64::from(moved)) % targets.len() as u64) as usize;
        let source = (!s.source_ips.is_empty())
            .then(|| s.source_ips[(k % s.source_ips.len() as u64) as usize]);
        (target, targets[target], source)
    }

    /// After a failed connect, where a client goes next: with `--cluster` the targets are nodes
    /// of one broker, so a client whose node is gone (killed, or refusing) fails over to the
    /// next one, and stays there while it works. Without it, each target is its own broker and
    /// a client keeps to its own.
    pub fn next_target(&self, moved: u16) -> u16 {
        let t = self.settings.targets.len();
        if !self.settings.cluster || t < 2 {
            return 0;
        }
        let wrap = u16::try_from(t).unwrap_or(u16::MAX);
        (moved + 1) % wrap
    }

    /// How `peer` speaks TLS to target `target`, with `--tls`.
    pub fn tls_dial(&self, target: usize, peer: Peer) -> Option<TlsDial<'_>> {
        self.tls.as_ref().map(|client| TlsDial {
            client,
            target,
            peer,
            stats: &self.stats,
        })
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

    /// A subscriber's CONNECT: its own session settings (`--subscriber-clean-session`).
    pub fn subscriber_connect_options<'a>(&'a self, client_id: &'a str) -> ConnectOptions<'a> {
        let s = &self.settings;
        ConnectOptions {
            clean_session: s.subscriber_clean_session,
            session_expiry: s.subscriber_session_expiry,
            ..self.connect_options(client_id)
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

    /// The disconnect event: parked devices and subscribers wake to see whether it takes them.
    pub(crate) fn disconnect_event(&self) {
        self.disconnect_epoch.fetch_add(1, Relaxed);
        self.wake_all();
    }

    /// A device or subscriber task is spawned; it calls [`Ctx::task_done`] when it ends.
    pub(crate) fn task_started(&self) {
        self.live_tasks.fetch_add(1, Relaxed);
    }

    pub(crate) fn live_tasks(&self) -> usize {
        self.live_tasks.load(Relaxed)
    }

    /// A device is spawned to make its first handshake; it calls
    /// [`Ctx::first_handshake_done`] when that is over.
    pub(crate) fn handshake_started(&self) {
        self.connecting.fetch_add(1, Relaxed);
    }

    /// First handshakes in flight.
    pub(crate) fn connecting(&self) -> usize {
        self.connecting.load(Relaxed)
    }

    /// Completes when a first handshake finishes.
    pub(crate) fn handshake_finished(&self) -> Notified<'_> {
        self.handshake_done.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RunArgs;

    #[test]
    fn subscribers_go_to_their_own_targets_and_devices_never_do() {
        let args = RunArgs {
            targets: vec!["127.0.0.1:1001".into(), "127.0.0.1:1002".into()],
            subscriber_targets: vec!["127.0.0.1:2001".into(), "127.0.0.1:2002".into()],
            cluster: Some(true),
            ..RunArgs::default()
        };
        let settings = Settings::resolve(&args).expect("valid");
        let ctx = Ctx::new(settings, None, 0..10, 0, None);
        let port = |a: SocketAddr| a.port();
        let subs: Vec<u16> = (0..4).map(|k| port(ctx.subscriber_route(k, 0).1)).collect();
        assert_eq!(subs, [2001, 2002, 2001, 2002]);
        // Failing over keeps a subscriber among the subscriber targets.
        assert_eq!(port(ctx.subscriber_route(0, ctx.next_target(0)).1), 2002);
        assert!((0..10).all(|id| port(ctx.device_route(id, 0).1) < 2000));
    }
}
