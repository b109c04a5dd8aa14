//! The gateway's Grafana dashboard, proven against a real Prometheus: Debian's `prometheus`
//! binary, started on a free loopback port with a 1 s scrape interval, scrapes a gateway while
//! real clients (rumqttc) publish through it; then every panel's query of
//! `dashboards/gateway-overview.json` (and every template variable's query) goes through
//! Prometheus's HTTP query API. A query Prometheus rejects fails the test, and so does one that
//! returns no series. `device-sim/tests/metrics.rs` does the same for `dashboards/device-sim.json`
//! with device-sim publishing through a gateway.
//!
//! Without the `prometheus` package the tests are skipped with a loud message, and fail under CI;
//! `scripts/test.sh` installs it (see `observe::prometheus`).

mod clients;
mod observe;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clients::{unique_id, v3, v5};
use observe::prometheus::{required, Prometheus};
use observe::{repo_root, Observed};

/// Publishes through the gateway until stopped: every QoS, a shared subscription, retained
/// messages and messages nobody subscribed to, so that every panel has data.
async fn traffic(addr: SocketAddr, stop: Arc<AtomicBool>) {
    let mut sub = v5::connect(addr, &unique_id("dash-sub")).await;
    sub.subscribe("dash/#", v5::QoS::ExactlyOnce).await;
    let mut member = v3::connect(addr, &unique_id("dash-member")).await;
    member
        .subscribe("$share/g/dash/shared", v3::QoS::AtLeastOnce)
        .await;
    let publ = v3::connect(addr, &unique_id("dash-pub")).await;
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
    let obs = Observed::start(|_| {}).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(traffic(obs.mqtt, stop.clone()));
    if let Some(prometheus) = Prometheus::start(&[("gateway", obs.http)]).await {
        prometheus.prove_dashboard("gateway-overview.json").await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    obs.shutdown().await;
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
