//! The cluster's round trip: how long a request takes from this node to another and back over
//! NATS, which every cross-node message and session hand-over pays. Once a second the node asks
//! the next of the other nodes it knows, in turn, on that node's ping subject and records the
//! time to the answer in `gateway_cluster_round_trip_seconds`; it answers the others' pings on
//! its own subject. One ping at a time, so a node that does not answer costs one pending
//! request, never a pile of them.

use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use metrics::Histogram;
use tracing::warn;

const EVERY: Duration = Duration::from_secs(1);
/// A ping not answered within this is not recorded (the node is slow, gone, or NATS is down).
const TIMEOUT: Duration = Duration::from_secs(1);

fn ping_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.c.ping.{node}")
}

/// Runs until the broker stops. `peers` names the other nodes known now.
pub(super) async fn run(
    client: Client,
    prefix: String,
    node: String,
    peers: impl Fn() -> Vec<String> + Send,
    round_trip: Histogram,
) {
    let mut pings = loop {
        match client.subscribe(ping_subject(&prefix, &node)).await {
            Ok(pings) => break pings,
            Err(e) => warn!("cluster: cannot subscribe to pings: {e}"),
        }
        tokio::time::sleep(EVERY).await;
    };
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut turn = 0usize;
    let mut asking: Option<BoxFuture<'static, Option<Duration>>> = None;
    loop {
        tokio::select! {
            Some(ping) = pings.next() => {
                if let Some(reply) = ping.reply {
                    let _ = client.publish(reply, Bytes::new()).await;
                }
            }
            answered = async { asking.as_mut()?.await }, if asking.is_some() => {
                asking = None;
                if let Some(rtt) = answered {
                    round_trip.record(rtt.as_secs_f64());
                }
            }
            _ = tick.tick(), if asking.is_none() => {
                let mut nodes = peers();
                if nodes.is_empty() {
                    continue;
                }
                nodes.sort_unstable();
                turn = turn.wrapping_add(1);
                let subject = ping_subject(&prefix, &nodes[turn % nodes.len()]);
                asking = Some(ask(client.clone(), subject).boxed());
            }
        }
    }
}

/// Whether `node` answers a ping now: a node taken as gone that answers is not.
pub(super) async fn answers(client: &Client, prefix: &str, node: &str) -> bool {
    ask(client.clone(), ping_subject(prefix, node))
        .await
        .is_some()
}

async fn ask(client: Client, subject: String) -> Option<Duration> {
    let start = Instant::now();
    tokio::time::timeout(TIMEOUT, client.request(subject, Bytes::new()))
        .await
        .ok()?
        .ok()?;
    Some(start.elapsed())
}
