//! The broker's `$SYS/` status topics, in Mosquitto's layout, for MQTT-only tooling.
//!
//! Every `[sys] interval` seconds the broker publishes, retained at QoS 0, what it knows about
//! itself: clients, messages and bytes with their 1/5/15-minute load averages, subscriptions,
//! retained messages, uptime and version. Like Mosquitto it publishes a topic only when its
//! value changed, so a quiet broker sends `$SYS` subscribers nothing. The values come from the
//! same state and totals as `/metrics`; Prometheus remains the place for history and alerting.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;

use crate::codec::QoS;
use crate::context::Context;
use crate::message::Message;
use crate::task::Background;

/// Averaging windows of the load topics, in seconds, with their topic suffix.
const LOAD_WINDOWS: [(f64, &str); 3] = [(60.0, "1min"), (300.0, "5min"), (900.0, "15min")];

/// Publishes the status topics every `interval` until dropped.
pub(crate) fn spawn(ctx: Arc<Context>, interval: Duration) -> Background {
    Background::spawn(async move {
        let mut status = Status::new(interval);
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            for (topic, value) in status.update(&ctx) {
                let msg = Message::new(
                    &ByteString::from(topic),
                    &Bytes::from(value),
                    QoS::AtMostOnce,
                    true,
                    0,
                    None,
                );
                ctx.router.publish(Arc::new(msg));
            }
        }
    })
}

/// Exponentially decaying per-minute rates of one total, as Mosquitto computes its load topics.
struct Load {
    last_total: Option<u64>,
    averages: [f64; 3],
}

impl Load {
    fn new() -> Load {
        Load {
            last_total: None,
            averages: [0.0; 3],
        }
    }

    /// Folds in the total seen `interval` seconds after the previous one.
    fn update(&mut self, total: u64, interval: f64) {
        // The first sample only sets the baseline: everything before start-up is not a rate.
        if let Some(last) = self.last_total {
            let per_minute = total.saturating_sub(last) as f64 * 60.0 / interval;
            for (avg, (window, _)) in self.averages.iter_mut().zip(LOAD_WINDOWS) {
                let keep = (-interval / window).exp();
                *avg = *avg * keep + per_minute * (1.0 - keep);
            }
        }
        self.last_total = Some(total);
    }
}

/// What was last published, to publish changes only.
struct Status {
    interval: f64,
    /// Loads of messages received, messages sent, bytes received, bytes sent.
    loads: [Load; 4],
    max_connected: usize,
    published: HashMap<String, String>,
}

impl Status {
    fn new(interval: Duration) -> Status {
        Status {
            interval: interval.as_secs_f64(),
            loads: [Load::new(), Load::new(), Load::new(), Load::new()],
            max_connected: 0,
            published: HashMap::new(),
        }
    }

    /// The topics whose value changed since the last call, with their new value.
    fn update(&mut self, ctx: &Context) -> Vec<(String, String)> {
        let state = ctx.state();
        let t = &ctx.metrics.totals;
        let totals = [
            t.messages_received.load(Ordering::Relaxed),
            t.messages_sent.load(Ordering::Relaxed),
            t.bytes_received.load(Ordering::Relaxed),
            t.bytes_sent.load(Ordering::Relaxed),
        ];
        self.max_connected = self.max_connected.max(state.sessions_online);
        let mut values = vec![
            (
                "$SYS/broker/version".to_owned(),
                format!("gateway version {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "$SYS/broker/uptime".to_owned(),
                format!("{} seconds", state.uptime_seconds),
            ),
            count("clients/connected", state.sessions_online),
            count("clients/disconnected", state.sessions_offline),
            count(
                "clients/total",
                state.sessions_online + state.sessions_offline,
            ),
            count("clients/maximum", self.max_connected),
            count("subscriptions/count", state.subscriptions),
            count("retained messages/count", state.retained_messages),
            count("messages/queued", state.queued_messages),
            count("messages/inflight", state.inflight_messages),
        ];
        let names = [
            "messages/received",
            "messages/sent",
            "bytes/received",
            "bytes/sent",
        ];
        for ((load, name), total) in self.loads.iter_mut().zip(names).zip(totals) {
            load.update(total, self.interval);
            values.push((format!("$SYS/broker/{name}"), total.to_string()));
            for (avg, (_, window)) in load.averages.iter().zip(LOAD_WINDOWS) {
                values.push((
                    format!("$SYS/broker/load/{name}/{window}"),
                    format!("{avg:.2}"),
                ));
            }
        }
        values.retain(|(topic, value)| self.published.get(topic) != Some(value));
        for (topic, value) in &values {
            self.published.insert(topic.clone(), value.clone());
        }
        values
    }
}

fn count(topic: &str, n: usize) -> (String, String) {
    (format!("$SYS/broker/{topic}"), n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_starts_at_a_baseline_and_approaches_a_steady_rate() {
        let mut load = Load::new();
        load.update(1_000, 10.0);
        assert_eq!(load.averages, [0.0; 3], "no rate from the first sample");
        // 100 messages every 10 s is 600 per minute; three hours settle even the 15-minute load.
        for i in 1..=1080 {
            load.update(1_000 + i * 100, 10.0);
        }
        for avg in load.averages {
            assert!((avg - 600.0).abs() < 1.0, "{avg}");
        }
        let mut fresh = Load::new();
        fresh.update(0, 10.0);
        fresh.update(100, 10.0);
        assert!(fresh.averages[0] > fresh.averages[1] && fresh.averages[1] > fresh.averages[2]);
    }
}
