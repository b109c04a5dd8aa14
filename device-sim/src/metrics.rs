//! The simulator's own Prometheus metrics (`--http-listen`), fed from the merged snapshot once
//! a second, so one process exposes the whole fleet whether it runs alone or with workers.
//! Histograms get the per-second difference of the merged HDR histograms, in seconds.
//! Every series the device-sim dashboard queries exists from `install` on (at 0 until it moves),
//! including the labelled failure counters for each reason in `CONNECT_FAILURE_REASONS` and
//! `DISCONNECT_REASONS`, so a panel shows zero rather than no data.

use std::net::SocketAddr;

use hdrhistogram::Histogram;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

use crate::scenario::Settings;
use crate::stats::Snapshot;
use crate::tls;

/// Bucket bounds in seconds, from 100 µs to 60 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Reasons any connect attempt or connection can end with: `connection::io_reason`'s and the
/// codec's.
const IO_REASONS: &[&str] = &[
    "too_many_open_files",
    "address_not_available",
    "address_in_use",
    "refused",
    "reset",
    "timeout",
    "broken_pipe",
    "io_error",
    "malformed_packet",
    "encode_error",
];

/// `device_sim_connect_failures_total{reason}` series present at 0 from the start. Other reasons
/// (`connack_*` with the broker's refusal) appear when they first happen.
const CONNECT_FAILURE_REASONS: &[&[&str]] = &[IO_REASONS, &["closed_before_connack"]];

/// `device_sim_disconnects_total{reason}` series present at 0 from the start. Other reasons
/// (`server_disconnect_0x..` with the broker's reason code) appear when they first happen.
const DISCONNECT_REASONS: &[&[&str]] = &[
    IO_REASONS,
    &["closed_by_broker", "disconnect_event", "suback_refused"],
];

pub struct Exporter {
    previous: Snapshot,
}

pub fn install(addr: SocketAddr, settings: &Settings) -> Result<Exporter, BuildError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), BUCKETS)?
        .install()?;
    describe_gauge!("device_sim_devices_connected", "Devices connected now.");
    describe_gauge!("device_sim_devices_target", "Devices the run simulates.");
    describe_gauge!(
        "device_sim_subscribers_connected",
        "Verifying subscribers connected now."
    );
    describe_gauge!(
        "device_sim_messages_missing",
        "Deliveries expected but not (yet) received: in flight, or lost."
    );
    describe_counter!(
        "device_sim_connect_attempts_total",
        "Connection attempts (TCP connect + CONNECT)."
    );
    describe_counter!(
        "device_sim_connect_failures_total",
        "Failed connection attempts, by reason."
    );
    describe_counter!(
        "device_sim_disconnects_total",
        "Connections ended other than by the run's stop, by reason."
    );
    describe_counter!(
        "device_sim_messages_published_total",
        "Messages the devices published."
    );
    describe_counter!(
        "device_sim_messages_acked_total",
        "QoS 1/2 messages acknowledged by the broker."
    );
    describe_counter!(
        "device_sim_messages_refused_total",
        "QoS 1/2 messages the broker refused (a v5 acknowledgement with a reason code of 0x80 or above)."
    );
    describe_counter!(
        "device_sim_messages_received_total",
        "Deliveries of this run's messages to subscribers."
    );
    describe_counter!(
        "device_sim_messages_lost_total",
        "Deliveries never received (0 until the run ends, then set)."
    );
    describe_counter!(
        "device_sim_messages_duplicate_total",
        "Deliveries seen more than once."
    );
    describe_counter!(
        "device_sim_messages_out_of_order_total",
        "Deliveries that arrived after a later one of the same device."
    );
    describe_histogram!(
        "device_sim_latency_seconds",
        Unit::Seconds,
        "End-to-end latency, publish to delivery."
    );
    describe_histogram!(
        "device_sim_connect_seconds",
        Unit::Seconds,
        "TCP connect start to CONNACK."
    );
    describe_histogram!(
        "device_sim_ack_seconds",
        Unit::Seconds,
        "PUBLISH to PUBACK (QoS 1) or PUBCOMP (QoS 2)."
    );
    describe_counter!(
        "device_sim_tls_handshakes_total",
        "TLS handshakes completed, by kind: full or resumed (an earlier session's ticket or id)."
    );
    register_at_zero(settings);
    Ok(Exporter {
        previous: Snapshot::empty(settings.targets.len()),
    })
}

/// Creates every series of the dashboard before the run starts: gauges and counters at 0 (the
/// target at its value), the histograms with empty buckets.
fn register_at_zero(settings: &Settings) {
    for name in [
        "device_sim_devices_connected",
        "device_sim_subscribers_connected",
        "device_sim_messages_missing",
    ] {
        gauge!(name).set(0.0);
    }
    gauge!("device_sim_devices_target").set(settings.devices as f64);
    for name in [
        "device_sim_connect_attempts_total",
        "device_sim_messages_published_total",
        "device_sim_messages_acked_total",
        "device_sim_messages_refused_total",
        "device_sim_messages_received_total",
        "device_sim_messages_lost_total",
        "device_sim_messages_duplicate_total",
        "device_sim_messages_out_of_order_total",
    ] {
        counter!(name).absolute(0);
    }
    for reason in CONNECT_FAILURE_REASONS.iter().copied().flatten() {
        counter!("device_sim_connect_failures_total", "reason" => *reason).absolute(0);
    }
    for reason in DISCONNECT_REASONS.iter().copied().flatten() {
        counter!("device_sim_disconnects_total", "reason" => *reason).absolute(0);
    }
    if settings.tls.is_some() {
        for reason in tls::REASONS {
            counter!("device_sim_connect_failures_total", "reason" => *reason).absolute(0);
            counter!("device_sim_disconnects_total", "reason" => *reason).absolute(0);
        }
        for kind in ["full", "resumed"] {
            counter!("device_sim_tls_handshakes_total", "kind" => kind).absolute(0);
        }
    }
    for name in [
        "device_sim_latency_seconds",
        "device_sim_connect_seconds",
        "device_sim_ack_seconds",
    ] {
        // Registering is enough: the exporter renders a histogram without samples as 0 buckets.
        let _ = histogram!(name);
    }
}

fn record_difference(name: &'static str, now: &Histogram<u64>, before: &Histogram<u64>) {
    let mut delta = now.clone();
    // Cumulative histograms only grow, so the difference exists; if not, skip this second.
    if delta.subtract(before).is_err() {
        return;
    }
    let h = histogram!(name);
    for v in delta.iter_recorded() {
        h.record_many(
            v.value_iterated_to() as f64 / 1e6,
            v.count_at_value() as usize,
        );
    }
}

impl Exporter {
    pub fn update(&mut self, settings: &Settings, s: &Snapshot, missing: u64) {
        gauge!("device_sim_devices_connected").set(s.devices_connected as f64);
        gauge!("device_sim_devices_target").set(settings.devices as f64);
        gauge!("device_sim_subscribers_connected").set(s.subscribers_connected as f64);
        gauge!("device_sim_messages_missing").set(missing as f64);
        counter!("device_sim_connect_attempts_total").absolute(s.connect_attempts);
        for (reason, n) in &s.connect_failures {
            counter!("device_sim_connect_failures_total", "reason" => reason.clone()).absolute(*n);
        }
        for (reason, n) in &s.disconnects {
            counter!("device_sim_disconnects_total", "reason" => reason.clone()).absolute(*n);
        }
        counter!("device_sim_messages_published_total").absolute(s.published_total());
        counter!("device_sim_messages_acked_total").absolute(s.acked);
        counter!("device_sim_messages_refused_total").absolute(s.refused);
        counter!("device_sim_messages_received_total").absolute(s.received);
        counter!("device_sim_messages_duplicate_total").absolute(s.duplicates);
        counter!("device_sim_messages_out_of_order_total").absolute(s.out_of_order);
        if settings.tls.is_some() {
            counter!("device_sim_tls_handshakes_total", "kind" => "full").absolute(s.tls_full);
            counter!("device_sim_tls_handshakes_total", "kind" => "resumed")
                .absolute(s.tls_resumed);
        }
        record_difference(
            "device_sim_latency_seconds",
            &s.latency,
            &self.previous.latency,
        );
        record_difference(
            "device_sim_connect_seconds",
            &s.connect,
            &self.previous.connect,
        );
        record_difference("device_sim_ack_seconds", &s.puback, &self.previous.puback);
        self.previous = s.clone();
    }

    pub fn finish(&mut self, lost: u64) {
        counter!("device_sim_messages_lost_total").absolute(lost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::io_reason;

    #[test]
    fn every_io_reason_is_registered_at_zero() {
        for errno in 0..=libc::EHWPOISON {
            let reason = io_reason(&std::io::Error::from_raw_os_error(errno));
            assert!(IO_REASONS.contains(&&*reason), "{reason} (errno {errno})");
        }
        let custom = std::io::Error::other("no errno");
        assert!(IO_REASONS.contains(&&*io_reason(&custom)));
    }
}
