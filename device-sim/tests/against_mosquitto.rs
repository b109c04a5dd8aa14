//! The simulator against Mosquitto (a broker it shares no code with): every device connects
//! and nothing is lost at QoS 1, in MQTT 3.1.1 and 5.0, including what was queued for
//! persistent subscribers while they were offline.

mod common;

use common::{simulate, Mosquitto};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_qos1_loses_nothing_in_both_protocols() {
    let mosquitto = Mosquitto::start();
    let target = mosquitto.addr.to_string();
    for protocol in ["3.1.1", "5"] {
        let run = simulate(
            &[
                "--target",
                &target,
                "--devices",
                "200",
                "--qos",
                "1",
                "--protocol",
                protocol,
                "--client-id",
                &format!("mosq-{protocol}-{{id}}"),
                "--publish-interval",
                "250ms",
                "--duration",
                "3s",
                "--drain",
                "1s",
                "--max-loss",
                "0",
            ],
            &[],
        )
        .await;
        run.assert_clean(200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_keeps_messages_for_offline_persistent_subscribers() {
    let mosquitto = Mosquitto::start();
    let run = common::persistent_offline(mosquitto.addr).await;
    assert_eq!(
        run.report["disconnects_by_reason"]["disconnect_event"], 1,
        "{}",
        run.report
    );
    assert_eq!(run.n("lost"), 0, "{}\n{}", run.report, run.stderr);
    // QoS 1 is at least once: what was in flight to the subscriber when it left comes again
    // (DUP) when it is back, at most Mosquitto's window (max_inflight_messages, 20 by default).
    assert!(run.n("duplicates") <= 20, "{}", run.report);
}
