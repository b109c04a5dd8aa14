//! The simulator's own Prometheus metrics (`--http-listen`), fed from the merged snapshot once
//! a second, so one process exposes the whole fleet whether it runs alone or with workers.
//! Histograms get the per-second difference of the merged HDR histograms, in seconds.

use std::net::SocketAddr;

use hdrhistogram::Histogram;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

use crate::scenario::Settings;
use crate::stats::Snapshot;

/// Bucket bounds in seconds, from 100 µs to 60 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

pub struct Exporter {
    previous: Snapshot,
}

pub fn install(addr: SocketAddr, targets: usize) -> Result<Exporter, BuildError> {
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
        "device_sim_messages_received_total",
        "Deliveries of this run's messages to subscribers."
    );
    describe_counter!(
        "device_sim_messages_lost_total",
        "Deliveries never received (set when the run ends)."
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
    Ok(Exporter {
        previous: Snapshot::empty(targets),
    })
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
        counter!("device_sim_messages_received_total").absolute(s.received);
        counter!("device_sim_messages_duplicate_total").absolute(s.duplicates);
        counter!("device_sim_messages_out_of_order_total").absolute(s.out_of_order);
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
