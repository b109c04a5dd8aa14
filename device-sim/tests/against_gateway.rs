//! The simulator against the gateway (in-process, on a free port): a clean QoS 1 run, an MQTT 5
//! QoS 2 run whose connections the gateway must see coming from the given source addresses, a
//! deliberately lossy one the verifier must catch, closed-loop windows (clean, and over a
//! dropping broker), persistent sessions that must get their queued messages, a fleet split
//! across worker processes, and refusals (v5 reason codes) told apart from acknowledgements.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use common::{scenario, simulate, Gateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_scenario_connects_everyone_and_loses_nothing() {
    let gateway = Gateway::start(|_| {}).await;
    let target = gateway.addr.to_string();
    let smoke = scenario("smoke");
    let run = simulate(
        &[
            "--scenario",
            smoke.to_str().expect("utf-8 path"),
            "--target",
            &target,
            "--duration",
            "3s",
            "--max-loss",
            "0",
        ],
        &[],
    )
    .await;
    run.assert_clean(200);
    assert_eq!(run.n("messages_acked"), run.n("messages_published"));
    assert!(
        run.stdout.contains("lost"),
        "a summary table: {}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_qos2_json_payloads_and_source_addresses() {
    let gateway = Gateway::start(|_| {}).await;
    let target = gateway.addr.to_string();
    // Sampled while the run goes on: a clean session leaves the registry when it disconnects.
    let (run, peers) = gateway
        .peers_during(simulate(
            &[
                "--target",
                &target,
                "--devices",
                "100",
                "--protocol",
                "5",
                "--qos",
                "2",
                "--payload",
                r#"{"id":"{id}","seq":{seq},"ts":{ts},"temp":{rand:10..40}}"#,
                "--publish-interval",
                "200ms",
                "--source-ips",
                "127.0.0.2-127.0.0.5",
                "--duration",
                "2s",
                "--drain",
                "1s",
            ],
            &[],
        ))
        .await;
    run.assert_clean(100);
    // The gateway saw every device, and every connection (devices and the subscriber) came
    // from the given source addresses, all four of them in use.
    let devices = peers.keys().filter(|id| id.starts_with("dev-")).count();
    assert_eq!(devices, 100, "sessions the gateway saw: {:?}", peers.keys());
    let given: BTreeSet<IpAddr> = (2..=5)
        .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .collect();
    let used: BTreeSet<IpAddr> = peers.values().flatten().copied().collect();
    assert_eq!(
        used, given,
        "peer addresses the gateway saw (left) against --source-ips 127.0.0.2-127.0.0.5 (right)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_into_a_one_message_queue_is_reported_as_loss() {
    let gateway = Gateway::start(|config| config.mqtt.max_queued_messages = 1).await;
    let target = gateway.addr.to_string();
    let run = simulate(
        &[
            "--target",
            &target,
            "--devices",
            "300",
            "--qos",
            "0",
            "--payload",
            "1000",
            "--publish-interval",
            "5ms",
            "--duration",
            "2s",
            "--drain",
            "1s",
            "--max-loss",
            "0",
        ],
        &[],
    )
    .await;
    assert!(
        run.n("lost") > 0,
        "the verifier must see the drops: {}",
        run.report
    );
    assert!(
        run.n("lost") + run.n("messages_received") >= run.n("messages_published"),
        "{}",
        run.report
    );
    assert!(!run.success, "--max-loss 0 must fail the run");
    assert!(run.stderr.contains("--max-loss"), "{}", run.stderr);
}

/// A v5 PUBACK with a reason code of 0x80 or above is a refusal, not an acknowledgement: here
/// every publish is refused (0x87, the ACL lets anonymous clients read but not write), so
/// nothing counts as acknowledged and none of the losses as a loss of acknowledged messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_messages_are_counted_as_refused_not_acknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic read #\n").expect("write acl");
    let gateway = Gateway::start(move |config| config.auth.acl_file = Some(acl)).await;
    let target = gateway.addr.to_string();
    let run = simulate(
        &[
            "--target",
            &target,
            "--devices",
            "10",
            "--protocol",
            "5",
            "--qos",
            "1",
            "--publish-interval",
            "100ms",
            "--duration",
            "2s",
            "--drain",
            "1s",
        ],
        &[],
    )
    .await;
    let published = run.n("messages_published");
    assert!(published >= 10 * 10, "{}", run.report);
    assert_eq!(run.n("messages_refused"), published, "{}", run.report);
    assert_eq!(run.n("messages_unacked"), published, "{}", run.report);
    assert_eq!(run.n("messages_acked"), 0, "{}", run.report);
    assert_eq!(run.n("lost"), published, "{}", run.report);
    assert_eq!(run.n("lost_acknowledged"), 0, "{}", run.report);
    assert!(run.stdout.contains("refused"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_loop_publishes_as_fast_as_deliveries_complete() {
    let gateway = Gateway::start(|_| {}).await;
    let target = gateway.addr.to_string();
    let run = simulate(
        &[
            "--target",
            &target,
            "--devices",
            "20",
            "--qos",
            "1",
            "--publish-interval",
            "0",
            "--window",
            "4",
            "--duration",
            "2s",
            "--drain",
            "1s",
            "--max-loss",
            "0",
        ],
        &[],
    )
    .await;
    run.assert_clean(20);
    // Far more than one window per device, and nothing left unacknowledged or unseen.
    assert!(run.n("messages_published") > 20 * 4 * 10, "{}", run.report);
    assert_eq!(run.n("messages_acked"), run.n("messages_published"));
    assert_eq!(run.n("messages_skipped"), 0, "{}", run.report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_loop_over_a_dropping_broker_reports_loss_and_does_not_stall() {
    let gateway = Gateway::start(|config| config.mqtt.max_queued_messages = 1).await;
    let target = gateway.addr.to_string();
    let run = simulate(
        &[
            "--target",
            &target,
            "--devices",
            "50",
            "--qos",
            "0",
            "--publish-interval",
            "0",
            "--window",
            "1",
            "--payload",
            "1000",
            "--duration",
            "4s",
            "--drain",
            "1s",
        ],
        &[],
    )
    .await;
    // With a window of 1, a device whose message was dropped waits for it; only the write-off
    // after 1 s lets it go on and lose more, so more losses than devices prove it went on.
    assert!(run.n("lost") > 50, "{}", run.report);
    assert!(
        run.n("lost") + run.n("messages_received") >= run.n("messages_published"),
        "{}",
        run.report
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_above_the_per_process_cap_splits_into_workers_and_merges() {
    let gateway = Gateway::start(|_| {}).await;
    let target = gateway.addr.to_string();
    let run = simulate(
        &[
            "--target",
            &target,
            "--devices",
            "300",
            "--subscribers",
            "1",
            "--publish-interval",
            "300ms",
            "--duration",
            "3s",
            "--drain",
            "1s",
        ],
        // 300 devices + 1 subscriber at 110 per process: three processes.
        &[("DEVICE_SIM_MAX_PER_PROCESS", "110")],
    )
    .await;
    assert_eq!(run.n("processes"), 3, "{}", run.report);
    run.assert_clean(300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_subscribers_get_what_was_queued_while_offline() {
    let gateway = Gateway::start(|_| {}).await;
    let run = common::persistent_offline(gateway.addr).await;
    assert_eq!(
        run.report["disconnects_by_reason"]["disconnect_event"], 1,
        "{}",
        run.report
    );
    assert_eq!(run.n("lost"), 0, "{}\n{}", run.report, run.stderr);
}

/// `--subscriber-clean-session=false`: a persistent subscriber beside clean-session devices
/// (the durability benchmark's shape): only the subscriber's session outlives the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_subscriber_beside_clean_devices() {
    let gateway = Gateway::start(|_| {}).await;
    let target = gateway.addr.to_string();
    let run = simulate(
        &[
            "--target",
            &target,
            "--devices",
            "20",
            "--qos",
            "1",
            "--publish-interval",
            "50ms",
            "--subscriber-clean-session=false",
            "--duration",
            "1s",
            "--drain",
            "1s",
        ],
        &[],
    )
    .await;
    run.assert_clean(20);
    assert_eq!(
        gateway.offline_sessions(),
        1,
        "only the subscriber's session stays"
    );
}
