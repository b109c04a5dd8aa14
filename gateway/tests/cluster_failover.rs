//! A fleet on a cluster whose node dies: two gateway processes form one broker over a real
//! nats-server, device-sim spreads its devices and subscribers over both (`--cluster`, one
//! `--target` per node), and one node is killed with SIGKILL while they publish. The devices and
//! subscribers of the dead node must fail over to the other target by themselves and go on
//! publishing and receiving there. With persistent sessions (devices and subscriber), what the
//! dead node acknowledged is not lost: the sessions are read back from JetStream on the
//! surviving node; and a persistent subscriber on the dead node loses nothing the surviving
//! node acknowledged to its publishers.
//!
//! Without `nats-server` the test is skipped with a loud message, and fails under CI.

mod binary;
mod common;

use std::time::Duration;

use binary::{device_sim_run, Gateway};
use common::nats::NatsServer;

/// Scenario keys of persistent MQTT 5 sessions, devices and subscribers.
const PERSISTENT_V5: &str = "protocol = \"5\"\nclean_session = false\nsession_expiry = \"300s\"\n";

/// A node of the cluster on `nats`, named `name`, as its own process.
fn node(nats: &NatsServer, name: &str, dir: &binary::scratch::Scratch) -> Gateway {
    Gateway::cluster_node(&nats.url(), name, dir)
}

/// A scenario of `devices` QoS 1 devices publishing 10 messages a second for `seconds` over
/// both `targets` (failing over from one to the other), `subscribers` verifying subscribers on
/// the first, client ids starting with `name`, and the scenario keys in `more`.
fn fleet(
    dir: &binary::scratch::Scratch,
    name: &str,
    targets: [&Gateway; 2],
    devices: u64,
    subscribers: u64,
    seconds: u64,
    more: &str,
) -> std::path::PathBuf {
    let scenario = dir.path().join("fleet.toml");
    std::fs::write(
        &scenario,
        format!(
            "targets = [{:?}, {:?}]\ncluster = true\ndevices = {devices}\nconnect_rate = 400\n\
             client_id = \"{name}-{{id}}\"\ntopic = \"{name}/{{id}}\"\npayload = 32\n\
             publish_interval = \"100ms\"\nqos = 1\nsubscribers = {subscribers}\n\
             subscriber_client_id = \"{name}-sub-{{id}}\"\nkeep_alive = \"5s\"\n\
             connect_timeout = \"2s\"\nduration = \"{seconds}s\"\ndrain = \"3s\"\n{more}",
            targets[0].addr.to_string(),
            targets[1].addr.to_string(),
        ),
    )
    .expect("write scenario");
    scenario
}

/// Runs device-sim on `scenario` (a run of `seconds`), kills node `a` with SIGKILL a third of
/// the way in, and gives back what device-sim said and its report.
async fn run_killing(
    a: &mut Gateway,
    scenario: &std::path::Path,
    dir: &binary::scratch::Scratch,
    seconds: u64,
) -> (String, serde_json::Value) {
    let report = dir.path().join("report.json");
    let sim = device_sim_run(scenario, &report);
    tokio::time::sleep(Duration::from_secs(seconds / 3)).await;
    a.child.kill().expect("SIGKILL node a");
    a.child.wait().expect("reaped");
    let out = tokio::time::timeout(Duration::from_secs(seconds + 30), sim.wait_with_output())
        .await
        .expect("device-sim ends by itself")
        .expect("device-sim ran");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = std::fs::read_to_string(&report).unwrap_or_else(|_| panic!("no report: {out:?}"));
    println!("{said}");
    (said, serde_json::from_str(&json).expect("report JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_sim_fails_over_to_the_surviving_node_when_one_is_killed() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let dir = binary::scratch::Scratch::new("failover");
    let mut a = node(&nats, "a", &dir);
    let b = node(&nats, "b", &dir);
    const DEVICES: u64 = 40;
    const SECONDS: u64 = 14;
    let more = "protocol = \"3.1.1\"\n";
    let scenario = fleet(&dir, "fo", [&a, &b], DEVICES, 2, SECONDS, more);
    // Half the fleet (and one subscriber) is on `a` when it dies, a third of the way in.
    let (said, r) = run_killing(&mut a, &scenario, &dir, SECONDS).await;
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
    // Everyone is on `b` at the end: nobody waits for the dead node to come back.
    assert_eq!(n("devices_connected"), DEVICES, "{said}");
    assert_eq!(n("subscribers_connected"), 2, "{said}");
    // The dead node's devices were cut off and found it gone before they moved on.
    assert!(n("connect_failures") > 0, "{said}");
    // 10 messages a second per device: had `a`'s half stopped at the kill, at most two thirds
    // of the run's messages would be acknowledged; failed over, nearly all of them are.
    let full = DEVICES * 10 * SECONDS;
    assert!(
        n("messages_acked") > full * 8 / 10,
        "{} acknowledged of about {full}: {said}",
        n("messages_acked")
    );
    // The surviving node's subscribers receive from every device after the fail-over.
    assert!(n("messages_received") > full, "{said}");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_sessions_of_a_killed_node_lose_nothing_acknowledged() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let dir = binary::scratch::Scratch::new("failover-persist");
    let mut a = node(&nats, "a", &dir);
    let b = node(&nats, "b", &dir);
    const DEVICES: u64 = 20;
    const SECONDS: u64 = 12;
    // The subscriber is on b (the first target); half the devices are on a, persistent: what a
    // acknowledged to them before it died reaches the subscriber, and their sessions follow
    // them to b.
    let scenario = fleet(&dir, "fp", [&b, &a], DEVICES, 1, SECONDS, PERSISTENT_V5);
    let (said, r) = run_killing(&mut a, &scenario, &dir, SECONDS).await;
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
    assert_eq!(n("devices_connected"), DEVICES, "{said}");
    assert!(n("connect_failures") > 0, "{said}");
    assert_eq!(n("lost_acknowledged"), 0, "{said}");
    drop(b);
}

/// The subscriber's side: a persistent subscriber on the node that dies. Its node had taken in
/// everything the surviving node acknowledged to its publishers (they wait for its answer),
/// so what it gets after moving to the survivor, with its session read back from JetStream,
/// leaves nothing acknowledged lost; what the dead node could no longer answer for is refused
/// to its publishers (v5 PUBACK 0x80), counted by device-sim as refused, not acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_subscriber_on_a_killed_node_loses_nothing_acknowledged() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let dir = binary::scratch::Scratch::new("failover-subscriber");
    let mut a = node(&nats, "a", &dir);
    let b = node(&nats, "b", &dir);
    const DEVICES: u64 = 20;
    const SECONDS: u64 = 15;
    // The subscriber is on a (the first target), the devices on both.
    let scenario = fleet(&dir, "fs", [&a, &b], DEVICES, 1, SECONDS, PERSISTENT_V5);
    let (said, r) = run_killing(&mut a, &scenario, &dir, SECONDS).await;
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
    assert_eq!(n("subscribers_connected"), 1, "{said}");
    assert_eq!(n("lost_acknowledged"), 0, "{said}");
    // Most of the run was acknowledged: publishers wait and are refused only around the kill.
    assert!(n("messages_acked") > n("messages_published") / 2, "{said}");
    drop(b);
}
