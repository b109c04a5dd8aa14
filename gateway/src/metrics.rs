//! The broker's metric handles, registered once through the `metrics` facade.
//!
//! Hot paths hold these handles and increment them directly: no name formatting and no registry
//! look-up per message. Label values are bounded sets (reasons, kinds, QoS levels), never a client
//! id, topic or address. Which recorder receives them (Prometheus) is the binary's choice.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

/// Why a message that reached the broker was not delivered to one receiver.
#[derive(Debug, Clone, Copy)]
pub enum DropReason {
    QueueFull,
    Expired,
    TooLarge,
    NoSubscribers,
    OfflineQos0,
    RetainedFull,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Normal,
    KeepAlive,
    TakenOver,
    ProtocolError,
    SlowConsumer,
    Shutdown,
    Administrative,
    Network,
    Panic,
    ConnectTimeout,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::KeepAlive => "keep_alive",
            CloseReason::TakenOver => "takeover",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Administrative => "administrative",
            CloseReason::Network => "network",
            CloseReason::Panic => "panic",
            CloseReason::ConnectTimeout => "connect_timeout",
        }
    }
}

pub struct Metrics {
    pub connections_accepted: Counter,
    pub connections_current: Gauge,
    pub accept_errors: Counter,
    pub messages_received: [Counter; 3],
    pub messages_delivered: [Counter; 3],
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub dropped_queue_full: Counter,
    pub dropped_expired: Counter,
    pub dropped_too_large: Counter,
    pub dropped_no_subscribers: Counter,
    pub dropped_offline_qos0: Counter,
    pub dropped_retained_full: Counter,
    pub task_panics: Counter,
    pub delivery_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let qos = |name: &'static str| {
            [
                counter!(name, "qos" => "0"),
                counter!(name, "qos" => "1"),
                counter!(name, "qos" => "2"),
            ]
        };
        let dropped =
            |reason: &'static str| counter!("gateway_messages_dropped_total", "reason" => reason);
        Metrics {
            connections_accepted: counter!("gateway_connections_accepted_total"),
            connections_current: gauge!("gateway_connections"),
            accept_errors: counter!("gateway_accept_errors_total"),
            messages_received: qos("gateway_messages_received_total"),
            messages_delivered: qos("gateway_messages_delivered_total"),
            bytes_received: counter!("gateway_received_bytes_total"),
            bytes_sent: counter!("gateway_sent_bytes_total"),
            dropped_queue_full: dropped("queue_full"),
            dropped_expired: dropped("expired"),
            dropped_too_large: dropped("too_large"),
            dropped_no_subscribers: dropped("no_subscribers"),
            dropped_offline_qos0: dropped("offline_qos0"),
            dropped_retained_full: dropped("retained_full"),
            task_panics: counter!("gateway_task_panics_total"),
            delivery_seconds: histogram!("gateway_delivery_latency_seconds"),
        }
    }

    pub fn dropped(&self, reason: DropReason, n: u64) {
        let c = match reason {
            DropReason::QueueFull => &self.dropped_queue_full,
            DropReason::Expired => &self.dropped_expired,
            DropReason::TooLarge => &self.dropped_too_large,
            DropReason::NoSubscribers => &self.dropped_no_subscribers,
            DropReason::OfflineQos0 => &self.dropped_offline_qos0,
            DropReason::RetainedFull => &self.dropped_retained_full,
        };
        c.increment(n);
    }

    /// Rare paths (errors, closes) look their counter up by label; the label sets are bounded.
    pub fn closed(&self, reason: CloseReason) {
        counter!("gateway_connections_closed_total", "reason" => reason.label()).increment(1);
    }

    pub fn rejected(&self, reason: &'static str) {
        counter!("gateway_connections_rejected_total", "reason" => reason).increment(1);
    }

    pub fn bad_input(&self, kind: &'static str) {
        counter!("gateway_malformed_packets_total", "kind" => kind).increment(1);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
