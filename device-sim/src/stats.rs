//! What one process counts while it runs, and the snapshot of it that crosses process
//! boundaries (histograms as base64 of their V2 serialization) and merges into one view.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// At most this many unacknowledged messages are remembered one by one (16 MiB); beyond, the
/// loss among acknowledged messages is not known (`Snapshot::unacked_missing` is absent).
const UNACKED_TRACKED: usize = 1 << 20;

/// Histograms hold microseconds, from 1 µs to one hour at 3 significant digits.
const HIST_MAX_US: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[derive(Debug)]
pub struct Hists {
    pub latency: Histogram<u64>,
    pub connect: Histogram<u64>,
    pub puback: Histogram<u64>,
}

#[derive(Debug)]
pub struct Stats {
    pub devices_connected: AtomicI64,
    pub subscribers_connected: AtomicI64,
    pub subscribers_ready: AtomicU64,
    pub connect_attempts: AtomicU64,
    /// Per target, because each broker's subscribers only see that broker's devices.
    pub published: Vec<AtomicU64>,
    pub acked: AtomicU64,
    /// Messages the broker refused (a v5 PUBACK / PUBREC / PUBCOMP reason code of 0x80 or
    /// above); also in `unacked`.
    pub refused: AtomicU64,
    pub skipped: AtomicU64,
    pub unacked: AtomicU64,
    /// Which messages were left unacknowledged (device, seq), up to `UNACKED_TRACKED`: a run
    /// whose broker went away may lose those and only those (`Snapshot::unacked_missing`).
    pub unacked_seqs: Mutex<Vec<(u64, u64)>>,
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    pub out_of_order: AtomicU64,
    pub stale: AtomicU64,
    pub foreign: AtomicU64,
    pub open_gaps: AtomicU64,
    /// When the first device started connecting, and when every device had connected once
    /// (µs since the epoch; 0 until then).
    pub connect_started_us: AtomicU64,
    pub all_connected_us: AtomicU64,
    /// When the disconnect event struck (µs since the epoch), 0 before.
    pub event_at_us: AtomicU64,
    /// The last time after the event at which every device of the process was connected.
    pub back_at_us: AtomicU64,
    /// TLS handshakes completed in full and resumed (a session ticket or id of an earlier one).
    pub tls_full: AtomicU64,
    pub tls_resumed: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    disconnects: Mutex<BTreeMap<String, u64>>,
    pub hists: Mutex<Hists>,
}

impl Stats {
    pub fn new(targets: usize) -> Stats {
        Stats {
            devices_connected: AtomicI64::new(0),
            subscribers_connected: AtomicI64::new(0),
            subscribers_ready: AtomicU64::new(0),
            connect_attempts: AtomicU64::new(0),
            published: (0..targets).map(|_| AtomicU64::new(0)).collect(),
            acked: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            unacked: AtomicU64::new(0),
            unacked_seqs: Mutex::new(Vec::new()),
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            open_gaps: AtomicU64::new(0),
            connect_started_us: AtomicU64::new(0),
            all_connected_us: AtomicU64::new(0),
            event_at_us: AtomicU64::new(0),
            back_at_us: AtomicU64::new(0),
            tls_full: AtomicU64::new(0),
            tls_resumed: AtomicU64::new(0),
            failures: Mutex::new(BTreeMap::new()),
            disconnects: Mutex::new(BTreeMap::new()),
            hists: Mutex::new(Hists {
                latency: new_histogram(),
                connect: new_histogram(),
                puback: new_histogram(),
            }),
        }
    }

    /// Messages of `device` that will never be acknowledged (its connection ended first).
    pub fn unacknowledged(&self, device: u64, seqs: impl ExactSizeIterator<Item = u64>) {
        self.unacked.fetch_add(seqs.len() as u64, Relaxed);
        let mut tracked = self.unacked_seqs.lock();
        let room = UNACKED_TRACKED.saturating_sub(tracked.len());
        tracked.extend(seqs.take(room).map(|seq| (device, seq)));
    }

    /// Whether every unacknowledged message is in `unacked_seqs`.
    pub fn unacked_all_tracked(&self) -> bool {
        self.unacked.load(Relaxed) == self.unacked_seqs.lock().len() as u64
    }

    pub fn connect_failed(&self, reason: &str) {
        *self.failures.lock().entry(reason.to_string()).or_default() += 1;
    }

    pub fn disconnected(&self, reason: &str) {
        *self
            .disconnects
            .lock()
            .entry(reason.to_string())
            .or_default() += 1;
    }

    pub fn snapshot(&self, devices_target: u64, subscribers_target: u64) -> Snapshot {
        let hists = self.hists.lock();
        Snapshot {
            devices_target,
            devices_connected: self.devices_connected.load(Relaxed).max(0) as u64,
            subscribers_target,
            subscribers_connected: self.subscribers_connected.load(Relaxed).max(0) as u64,
            subscribers_ready: self.subscribers_ready.load(Relaxed),
            connect_attempts: self.connect_attempts.load(Relaxed),
            connect_failures: self.failures.lock().clone(),
            disconnects: self.disconnects.lock().clone(),
            published: self.published.iter().map(|p| p.load(Relaxed)).collect(),
            acked: self.acked.load(Relaxed),
            refused: self.refused.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            unacked: self.unacked.load(Relaxed),
            unacked_missing: None,
            received: self.received.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            out_of_order: self.out_of_order.load(Relaxed),
            stale: self.stale.load(Relaxed),
            foreign: self.foreign.load(Relaxed),
            open_gaps: self.open_gaps.load(Relaxed),
            all_connected_ms: {
                let started = self.connect_started_us.load(Relaxed);
                let done = self.all_connected_us.load(Relaxed);
                (started > 0 && done >= started).then(|| (done - started) as f64 / 1000.0)
            },
            all_back_ms: {
                let event = self.event_at_us.load(Relaxed);
                let back = self.back_at_us.load(Relaxed);
                (event > 0 && back >= event).then(|| (back - event) as f64 / 1000.0)
            },
            tls_full: self.tls_full.load(Relaxed),
            tls_resumed: self.tls_resumed.load(Relaxed),
            latency: hists.latency.clone(),
            connect: hists.connect.clone(),
            puback: hists.puback.clone(),
        }
    }
}

/// Cumulative figures of one process (or, merged, of the whole fleet) at one moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub devices_target: u64,
    pub devices_connected: u64,
    pub subscribers_target: u64,
    pub subscribers_connected: u64,
    pub subscribers_ready: u64,
    pub connect_attempts: u64,
    pub connect_failures: BTreeMap<String, u64>,
    pub disconnects: BTreeMap<String, u64>,
    pub published: Vec<u64>,
    pub acked: u64,
    /// Of `unacked`, those the broker refused (v5 reason code 0x80 or above).
    #[serde(default)]
    pub refused: u64,
    pub skipped: u64,
    pub unacked: u64,
    /// Deliveries of the unacknowledged messages that never arrived, when known: only a
    /// process that holds every device and every subscriber can tell, once the run is over.
    /// Loss beyond it is loss of acknowledged messages (`Report::lost_acknowledged`).
    #[serde(default)]
    pub unacked_missing: Option<u64>,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub stale: u64,
    pub foreign: u64,
    pub open_gaps: u64,
    /// From the first connection attempt until every device had connected once.
    pub all_connected_ms: Option<f64>,
    /// From the disconnect event until every device was connected again (the latest such
    /// moment), when it has happened.
    pub all_back_ms: Option<f64>,
    /// TLS handshakes completed in full and resumed.
    #[serde(default)]
    pub tls_full: u64,
    #[serde(default)]
    pub tls_resumed: u64,
    #[serde(with = "histogram_b64")]
    pub latency: Histogram<u64>,
    #[serde(with = "histogram_b64")]
    pub connect: Histogram<u64>,
    #[serde(with = "histogram_b64")]
    pub puback: Histogram<u64>,
}

impl Snapshot {
    pub fn empty(targets: usize) -> Snapshot {
        Stats::new(targets).snapshot(0, 0)
    }

    pub fn merge(&mut self, other: &Snapshot) {
        // The fleet is back when the last process's devices are; a process without devices
        // has no say, one whose devices are not all back yet keeps the fleet's figure open.
        let slowest = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        self.unacked_missing = if self.devices_target == 0 && self.subscribers_target == 0 {
            other.unacked_missing
        } else {
            self.unacked_missing
                .zip(other.unacked_missing)
                .map(|(a, b)| a + b)
        };
        if self.devices_target == 0 {
            self.all_connected_ms = other.all_connected_ms;
            self.all_back_ms = other.all_back_ms;
        } else if other.devices_target > 0 {
            self.all_connected_ms = slowest(self.all_connected_ms, other.all_connected_ms);
            self.all_back_ms = slowest(self.all_back_ms, other.all_back_ms);
        }
        self.devices_target += other.devices_target;
        self.devices_connected += other.devices_connected;
        self.subscribers_target += other.subscribers_target;
        self.subscribers_connected += other.subscribers_connected;
        self.subscribers_ready += other.subscribers_ready;
        self.connect_attempts += other.connect_attempts;
        for (k, v) in &other.connect_failures {
            *self.connect_failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.disconnects {
            *self.disconnects.entry(k.clone()).or_default() += v;
        }
        if self.published.len() < other.published.len() {
            self.published.resize(other.published.len(), 0);
        }
        for (mine, theirs) in self.published.iter_mut().zip(&other.published) {
            *mine += theirs;
        }
        self.acked += other.acked;
        self.refused += other.refused;
        self.skipped += other.skipped;
        self.unacked += other.unacked;
        self.received += other.received;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.stale += other.stale;
        self.foreign += other.foreign;
        self.open_gaps += other.open_gaps;
        self.tls_full += other.tls_full;
        self.tls_resumed += other.tls_resumed;
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.connect.add(&other.connect);
        let _ = self.puback.add(&other.puback);
    }

    pub fn connect_failures_total(&self) -> u64 {
        self.connect_failures.values().sum()
    }

    pub fn published_total(&self) -> u64 {
        self.published.iter().sum()
    }
}

mod histogram_b64 {
    use base64::Engine;
    use hdrhistogram::serialization::{
        Deserializer as HDeserializer, Serializer as _, V2Serializer,
    };
    use hdrhistogram::Histogram;
    use serde::{de::Error as _, ser::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &Histogram<u64>, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(h, &mut bytes)
            .map_err(|e| S::Error::custom(format!("{e:?}")))?;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Histogram<u64>, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(D::Error::custom)?;
        HDeserializer::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| D::Error::custom(format!("{e:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_survive_json_and_merge() {
        let stats = Stats::new(2);
        stats.published[1].fetch_add(5, Relaxed);
        stats.connect_failed("refused");
        stats.hists.lock().latency.record(1500).expect("in range");
        let json = serde_json::to_string(&stats.snapshot(10, 1)).expect("serializes");
        let back: Snapshot = serde_json::from_str(&json).expect("deserializes");
        let mut total = Snapshot::empty(2);
        total.merge(&back);
        total.merge(&back);
        assert_eq!(total.devices_target, 20);
        assert_eq!(total.published, vec![0, 10]);
        assert_eq!(total.connect_failures["refused"], 2);
        assert_eq!(total.latency.len(), 2);
        assert_eq!(
            total.latency.value_at_quantile(0.5),
            back.latency.value_at_quantile(0.5)
        );
    }
}
