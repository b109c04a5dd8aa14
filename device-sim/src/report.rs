//! The verdict of a run: the figures of the merged snapshot with loss worked out, as a human
//! summary table and as the JSON report (`--report`), plus the CI thresholds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::scenario::Settings;
use crate::stats::Snapshot;

/// Latency quantiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Quantiles {
    fn of(h: &Histogram<u64>) -> Quantiles {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Quantiles {
                count: 0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        Quantiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub devices_target: u64,
    pub devices_connected: u64,
    pub subscribers_target: u64,
    pub subscribers_connected: u64,
    pub connect_attempts: u64,
    pub connect_failures: u64,
    pub connect_failures_by_reason: BTreeMap<String, u64>,
    pub disconnects_by_reason: BTreeMap<String, u64>,
    /// From the first connection attempt until every device had connected once, and the
    /// fleet's connect rate over that time; absent when not every device connected.
    pub all_connected_ms: Option<f64>,
    pub connect_rate_per_s: Option<f64>,
    /// From the disconnect event until every device was connected again; absent without an
    /// event or when the fleet was not all back by the end.
    pub reconnect_all_back_ms: Option<f64>,
    /// With `--tls`: handshakes completed in full and resumed (devices and subscribers, every
    /// attempt that got through the TLS handshake); 0 without TLS.
    pub tls: bool,
    pub tls_full: u64,
    pub tls_resumed: u64,
    pub messages_published: u64,
    /// QoS 1/2 messages acknowledged (PUBACK / PUBCOMP), unacknowledged at the end, skipped
    /// because the device's window (or, without one, its bound of 64) was full.
    pub messages_acked: u64,
    pub messages_unacked: u64,
    /// Of `messages_unacked`, those the broker refused (a v5 PUBACK / PUBREC / PUBCOMP reason
    /// code of 0x80 or above): not taken, and not sent again.
    #[serde(default)]
    pub messages_refused: u64,
    pub messages_skipped: u64,
    /// Deliveries the subscribers should have seen: each message times the subscribers that
    /// match it on its broker (one per `$share` group).
    pub messages_expected: u64,
    /// Deliveries of this run's messages, duplicates included.
    pub messages_received: u64,
    pub lost: u64,
    /// Of `lost`, the deliveries of messages the broker had acknowledged (PUBACK / PUBCOMP):
    /// what a broker that crashed or went away must not lose. Absent where it cannot be told
    /// (devices and subscribers in several processes).
    pub lost_acknowledged: Option<u64>,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Messages of earlier runs (stamped before this one started) and of other publishers.
    pub stale: u64,
    pub foreign: u64,
    pub publish_rate: f64,
    pub receive_rate: f64,
    pub latency_ms: Quantiles,
    pub connect_ms: Quantiles,
    pub puback_ms: Quantiles,
    pub processes: usize,
    pub targets: Vec<String>,
    pub protocol: String,
    pub qos: u8,
    pub duration_s: f64,
    pub drain_s: f64,
}

/// Deliveries the subscribers should see for what `snapshot` says was published.
pub fn expected_deliveries(settings: &Settings, snapshot: &Snapshot) -> u64 {
    snapshot
        .published
        .iter()
        .enumerate()
        .map(|(target, n)| n * settings.deliveries_per_message(target))
        .sum()
}

impl Report {
    /// `window` is how long devices were publishing.
    pub fn build(settings: &Settings, s: &Snapshot, processes: usize, window: Duration) -> Report {
        let expected = expected_deliveries(settings, s);
        let unique = s.received.saturating_sub(s.duplicates);
        let secs = window.as_secs_f64().max(1e-3);
        Report {
            devices_target: settings.devices,
            devices_connected: s.devices_connected,
            subscribers_target: u64::from(settings.subscribers),
            subscribers_connected: s.subscribers_connected,
            connect_attempts: s.connect_attempts,
            connect_failures: s.connect_failures_total(),
            connect_failures_by_reason: s.connect_failures.clone(),
            disconnects_by_reason: s.disconnects.clone(),
            all_connected_ms: s.all_connected_ms,
            connect_rate_per_s: s
                .all_connected_ms
                .filter(|ms| *ms > 0.0)
                .map(|ms| settings.devices as f64 * 1000.0 / ms),
            reconnect_all_back_ms: s.all_back_ms,
            tls: settings.tls.is_some(),
            tls_full: s.tls_full,
            tls_resumed: s.tls_resumed,
            messages_published: s.published_total(),
            messages_acked: s.acked,
            messages_unacked: s.unacked,
            messages_refused: s.refused,
            messages_skipped: s.skipped,
            messages_expected: expected,
            messages_received: s.received,
            lost: expected.saturating_sub(unique),
            lost_acknowledged: s
                .unacked_missing
                .map(|m| expected.saturating_sub(unique).saturating_sub(m)),
            duplicates: s.duplicates,
            out_of_order: s.out_of_order,
            stale: s.stale,
            foreign: s.foreign,
            publish_rate: s.published_total() as f64 / secs,
            receive_rate: s.received as f64 / secs,
            latency_ms: Quantiles::of(&s.latency),
            connect_ms: Quantiles::of(&s.connect),
            puback_ms: Quantiles::of(&s.puback),
            processes,
            targets: settings.targets.iter().map(|t| t.to_string()).collect(),
            protocol: settings.protocol.label().to_string(),
            qos: settings.qos,
            duration_s: window.as_secs_f64(),
            drain_s: settings.drain.as_secs_f64(),
        }
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let row = |t: &mut String, k: &str, v: String| {
            let _ = writeln!(t, "  {k:<22} {v}");
        };
        let q = |q: &Quantiles| {
            format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms  (n={})",
                q.p50, q.p90, q.p99, q.p999, q.max, q.count
            )
        };
        let _ = writeln!(
            t,
            "device-sim summary: {} devices, {} subscribers, MQTT {} QoS {}, {} process(es), {:.1} s",
            self.devices_target, self.subscribers_target, self.protocol, self.qos, self.processes, self.duration_s
        );
        row(
            &mut t,
            "devices connected",
            format!("{} / {}", self.devices_connected, self.devices_target),
        );
        row(
            &mut t,
            "subscribers connected",
            format!(
                "{} / {}",
                self.subscribers_connected, self.subscribers_target
            ),
        );
        row(
            &mut t,
            "connect attempts",
            self.connect_attempts.to_string(),
        );
        row(
            &mut t,
            "connect failures",
            format!(
                "{} {}",
                self.connect_failures,
                reasons(&self.connect_failures_by_reason)
            ),
        );
        row(&mut t, "disconnects", reasons(&self.disconnects_by_reason));
        if let (Some(ms), Some(rate)) = (self.all_connected_ms, self.connect_rate_per_s) {
            row(
                &mut t,
                "all connected after",
                format!("{ms:.1} ms ({rate:.0} connects/s)"),
            );
        }
        if let Some(ms) = self.reconnect_all_back_ms {
            row(&mut t, "all back after event", format!("{ms:.1} ms"));
        }
        if self.tls {
            row(
                &mut t,
                "TLS handshakes",
                format!("{} full, {} resumed", self.tls_full, self.tls_resumed),
            );
        }
        row(
            &mut t,
            "published",
            format!("{} ({:.0}/s)", self.messages_published, self.publish_rate),
        );
        if self.qos > 0 {
            row(
                &mut t,
                "acknowledged",
                format!(
                    "{} (unacked {}, of them refused {}; skipped {})",
                    self.messages_acked,
                    self.messages_unacked,
                    self.messages_refused,
                    self.messages_skipped
                ),
            );
        }
        row(
            &mut t,
            "expected deliveries",
            self.messages_expected.to_string(),
        );
        row(
            &mut t,
            "received",
            format!("{} ({:.0}/s)", self.messages_received, self.receive_rate),
        );
        row(
            &mut t,
            "lost",
            match self.lost_acknowledged {
                Some(acked) if self.lost > 0 => format!("{} ({acked} acknowledged)", self.lost),
                _ => self.lost.to_string(),
            },
        );
        row(&mut t, "duplicates", self.duplicates.to_string());
        row(&mut t, "out of order", self.out_of_order.to_string());
        if self.stale + self.foreign > 0 {
            row(
                &mut t,
                "stale / foreign",
                format!("{} / {}", self.stale, self.foreign),
            );
        }
        row(&mut t, "end-to-end latency", q(&self.latency_ms));
        row(&mut t, "connect latency", q(&self.connect_ms));
        if self.qos > 0 {
            row(&mut t, "ack latency", q(&self.puback_ms));
        }
        t
    }

    /// The thresholds this run broke, for a non-zero exit.
    /// What makes the run fail: the limits given, and, when nothing was meant to take devices
    /// or subscribers offline (`expect_connected`), any of them not connected at the end.
    pub fn violations(
        &self,
        max_loss: Option<u64>,
        max_p99: Option<Duration>,
        expect_connected: bool,
    ) -> Vec<String> {
        let mut out = Vec::new();
        if expect_connected && self.devices_connected < self.devices_target {
            out.push(format!(
                "{} of {} devices connected at the end",
                self.devices_connected, self.devices_target
            ));
        }
        if expect_connected && self.subscribers_connected < self.subscribers_target {
            out.push(format!(
                "{} of {} subscribers connected at the end",
                self.subscribers_connected, self.subscribers_target
            ));
        }
        if let Some(limit) = max_loss {
            if self.lost > limit {
                out.push(format!(
                    "lost {} messages, more than --max-loss {limit}",
                    self.lost
                ));
            }
        }
        if let Some(limit) = max_p99 {
            let limit_ms = limit.as_secs_f64() * 1000.0;
            if self.latency_ms.p99 > limit_ms {
                out.push(format!(
                    "end-to-end p99 {:.2} ms exceeds --max-p99 {limit_ms:.2} ms",
                    self.latency_ms.p99
                ));
            }
        }
        out
    }
}

fn reasons(by_reason: &BTreeMap<String, u64>) -> String {
    if by_reason.is_empty() {
        return "none".to_string();
    }
    by_reason
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RunArgs;
    use crate::stats::Stats;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn loss_is_expected_minus_unique_per_broker() {
        let args = RunArgs {
            targets: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            subscribers: Some(3),
            ..RunArgs::default()
        };
        let settings = Settings::resolve(&args).expect("valid");
        let stats = Stats::new(2);
        // Subscribers 0 and 2 are on target 0, subscriber 1 on target 1.
        stats.published[0].store(10, Relaxed);
        stats.published[1].store(10, Relaxed);
        stats.received.store(29, Relaxed);
        stats.duplicates.store(2, Relaxed);
        let r = Report::build(&settings, &stats.snapshot(5, 3), 1, Duration::from_secs(1));
        assert_eq!(r.messages_expected, 30);
        assert_eq!(r.lost, 3);
        let violations = r.violations(Some(2), None, false);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(r
            .violations(Some(3), Some(Duration::from_secs(1)), false)
            .is_empty());
        // None of the 5 devices and 3 subscribers is connected.
        assert_eq!(r.violations(None, None, true).len(), 2);
    }
}
