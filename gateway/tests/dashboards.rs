//! The gateway's Grafana dashboard, proven against a real Prometheus: Debian's `prometheus`
//! binary, started on a free loopback port with a 1 s scrape interval, scrapes two gateway nodes
//! of one cluster (over a real nats-server) while real clients (rumqttc) publish through one to
//! subscribers on the other; then every panel's query of
//! `dashboards/gateway-overview.json` (and every template variable's query) goes through
//! Prometheus's HTTP query API. A query Prometheus rejects fails the test, and so does one that
//! returns no series. `device-sim/tests/metrics.rs` does the same for `dashboards/device-sim.json`
//! with device-sim publishing through a gateway.
//!
//! Without the `prometheus` or `nats-server` package the tests are skipped with a loud message,
//! and fail under CI; `scripts/test.sh` installs both (see `observe::prometheus`,
//! `common::nats`). The cluster row is also checked for the traffic itself, not only for series.

mod clients;
mod common;
mod observe;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clients::{unique_id, v3, v5};
use common::nats::NatsServer;
use observe::prometheus::{required, Prometheus};
use observe::{repo_root, Observed};

/// Publishes through node `publish_to` until stopped: every QoS, a shared subscription,
/// retained messages and messages nobody subscribed to, so that every panel has data. The
/// subscribers are on node `subscribe_to`, so the messages cross the cluster.
async fn traffic(publish_to: SocketAddr, subscribe_to: SocketAddr, stop: Arc<AtomicBool>) {
    let mut sub = v5::connect(subscribe_to, &unique_id("dash-sub")).await;
    sub.subscribe("dash/#", v5::QoS::ExactlyOnce).await;
    let mut member = v3::connect(subscribe_to, &unique_id("dash-member")).await;
    member
        .subscribe("$share/g/dash/shared", v3::QoS::AtLeastOnce)
        .await;
    let publ = v3::connect(publish_to, &unique_id("dash-pub")).await;
    let qos = [
        v3::QoS::AtMostOnce,
        v3::QoS::AtLeastOnce,
        v3::QoS::ExactlyOnce,
    ];
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        publ.publish("dash/a", qos[i % 3], false, format!("m{i}"))
            .await;
        publ.publish("dash/shared", v3::QoS::AtLeastOnce, false, "s")
            .await;
        publ.publish("dash/retained", v3::QoS::AtMostOnce, true, "r")
            .await;
        publ.publish("nobody/listens", v3::QoS::AtMostOnce, false, "x")
            .await;
        // Consume what arrived so the clients' event channels stay short.
        while sub.try_next_publish(Duration::ZERO).await.is_some() {}
        while member.try_next_publish(Duration::ZERO).await.is_some() {}
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_dashboard_query_returns_series_from_a_real_prometheus() {
    // Two nodes of one cluster, so that the cluster row has traffic of its own.
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let node = |name: &str| {
        let (url, name) = (nats.url(), name.to_owned());
        Observed::start(move |c| {
            c.nats.servers = vec![url];
            c.cluster.enabled = true;
            c.cluster.node_name = name;
        })
    };
    let (a, b) = (node("a").await, node("b").await);
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(traffic(a.mqtt, b.mqtt, stop.clone()));
    if let Some(prometheus) = Prometheus::start(&[("gateway", a.http), ("gateway", b.http)]).await {
        prometheus.prove_dashboard("gateway-overview.json").await;
        // The cluster panels show the traffic, not only zeros.
        let crossing = |metric: &str| format!("sum(rate({metric}[5s])) > 0");
        prometheus
            .holds(&crossing("gateway_cluster_messages_sent_total"))
            .await;
        prometheus
            .holds(&crossing("gateway_cluster_messages_received_total"))
            .await;
        prometheus
            .holds("sum(gateway_cluster_connected) == 2")
            .await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn the_example_prometheus_config_is_valid() {
    let Some(promtool) = required("promtool") else {
        return;
    };
    let out = Command::new(promtool)
        .args(["check", "config"])
        .arg(repo_root().join("dashboards/prometheus.yml"))
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
