//! The simulator against Mosquitto (a broker it shares no code with): every device connects
//! and nothing is lost at QoS 1, in MQTT 3.1.1 and 5.0, including what was queued for
//! persistent subscribers while they were offline; over TLS (OpenSSL on the broker side), a
//! reconnect storm whose reconnections resume their sessions.

mod common;

use common::pki::Pki;
use common::{simulate, tls_storm_scenario, Mosquitto};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_over_tls_resumes_sessions_in_a_reconnect_storm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(dir.path(), "ca");
    let (cert, key) = pki.server();
    let mosquitto = Mosquitto::start_with(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\n",
        pki.ca_path().display(),
        cert.display(),
        key.display()
    ));
    let devices = 100;
    let storm = tls_storm_scenario(
        dir.path(),
        &mosquitto.addr.to_string(),
        &pki.ca_path(),
        devices,
    );
    let run = simulate(&["--scenario", storm.to_str().expect("utf-8 path")], &[]).await;
    let context = format!("{}\n{}", run.report, run.stderr);
    assert_eq!(run.n("lost"), 0, "{context}");
    assert_eq!(
        run.report["disconnects_by_reason"]["disconnect_event"], devices,
        "{context}"
    );
    assert_eq!(run.n("tls_full"), devices + 1, "{context}");
    assert_eq!(run.n("tls_resumed"), devices, "{context}");
}
