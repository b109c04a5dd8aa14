//! device-sim over TLS against the gateway (in-process, a `tls` listener with an rcgen CA and a
//! server certificate for `DNS:localhost, IP:127.0.0.1`): a clean run by IP literal, by name,
//! with a server name given and with `--insecure`,
//! mutual TLS with one certificate per device (`%i`, proven by an ACL that lets each device
//! publish only under its own certificate's name), failures counted by kind (an unknown CA, a
//! name the certificate does not carry, a plain-TCP port, no client certificate), and a reconnect storm whose handshakes
//! resume the devices' earlier sessions (and do not without resumption).

mod common;

use std::path::Path;

use common::pki::Pki;
use common::{simulate, tls_storm_scenario, Gateway, Run};
use gateway::config::{ListenerConfig, ListenerKind};

fn tls_listener(cert: &Path, key: &Path) -> ListenerConfig {
    ListenerConfig {
        cert: Some(cert.to_owned()),
        key: Some(key.to_owned()),
        ..ListenerConfig::new(ListenerKind::Tls, "127.0.0.1:0".parse().expect("literal"))
    }
}

/// A gateway with one server-authenticated TLS listener on `pki`'s server certificate.
async fn tls_gateway(pki: &Pki) -> Gateway {
    let (cert, key) = pki.server();
    let listener = tls_listener(&cert, &key);
    Gateway::start(move |c| {
        c.auth.allow_anonymous = true;
        c.listeners = vec![listener];
    })
    .await
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn reason(run: &Run, key: &str, reason: &str) -> u64 {
    run.report[key][reason].as_u64().unwrap_or(0)
}

/// By IP literal (verified against the certificate's IP address, no SNI), by name (verified and
/// sent as SNI), by IP with `--tls-server-name localhost`, and with `--insecure` (no CA file:
/// nothing verified).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_by_ip_literal_and_by_name_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(dir.path(), "ca");
    let gateway = tls_gateway(&pki).await;
    let port = gateway.listeners[0].port();
    let ca = pki.ca_path();
    let verified = ["--cafile", path(&ca)];
    let cases: [(&str, &str, &[&str]); 4] = [
        ("ip", "127.0.0.1", &verified),
        ("name", "localhost", &verified),
        (
            "server-name",
            "127.0.0.1",
            &["--cafile", path(&ca), "--tls-server-name", "localhost"],
        ),
        ("insecure", "127.0.0.1", &["--insecure"]),
    ];
    for (case, host, tls) in cases {
        let target = format!("{host}:{port}");
        let client_id = format!("tls-{case}-{{id}}");
        let mut args = vec![
            "--target",
            &target,
            "--tls",
            "--devices",
            "100",
            "--client-id",
            &client_id,
            "--publish-interval",
            "250ms",
            "--duration",
            "2s",
            "--drain",
            "1s",
            "--max-loss",
            "0",
        ];
        args.extend_from_slice(tls);
        let run = simulate(&args, &[]).await;
        run.assert_clean(100);
        assert_eq!(run.report["tls"], true, "{}", run.report);
        // 100 devices and the subscriber, each one full handshake.
        assert_eq!(run.n("tls_full"), 101, "{case}: {}", run.report);
        assert!(run.stdout.contains("TLS handshakes"), "{}", run.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_one_certificate_per_device() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(dir.path(), "ca");
    let (cert, key) = pki.server();
    let devices = 30u64;
    let (cert_template, key_template) = pki.clients(
        (0..devices)
            .map(|i| i.to_string())
            .chain(["sub-0".to_string()]),
    );
    // Each device may publish only under the name in its own certificate, so a device that
    // presented another one loses its messages (the gateway refuses the PUBLISH).
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "user sub-0\ntopic read devices/#\npattern write devices/%u/telemetry\n",
    )
    .expect("acl");
    let mut listener = tls_listener(&cert, &key);
    listener.ca = Some(pki.ca_path());
    listener.require_client_cert = true;
    listener.use_identity_as_username = true;
    let gateway = Gateway::start(move |c| {
        c.auth.acl_file = Some(acl);
        c.listeners = vec![listener];
    })
    .await;
    let target = gateway.listeners[0].to_string();
    let ca = pki.ca_path();
    let run = simulate(
        &[
            "--target",
            &target,
            "--tls",
            "--cafile",
            path(&ca),
            "--cert",
            &cert_template,
            "--key",
            &key_template,
            "--devices",
            &devices.to_string(),
            "--publish-interval",
            "200ms",
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
    run.assert_clean(devices);
    assert_eq!(run.n("tls_full"), devices + 1, "{}", run.report);

    // Without a certificate the listener refuses the devices, counted as a TLS reason.
    let refused = simulate(
        &[
            "--target",
            &target,
            "--tls",
            "--cafile",
            path(&ca),
            "--devices",
            "5",
            "--subscribers",
            "0",
            "--duration",
            "1s",
            "--drain",
            "0s",
        ],
        &[],
    )
    .await;
    assert!(!refused.success, "{}", refused.report);
    let failures = &refused.report["connect_failures_by_reason"];
    assert!(
        reason(
            &refused,
            "connect_failures_by_reason",
            "tls_alert_certificate_required"
        ) > 0,
        "{failures}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_failures_are_counted_by_kind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(dir.path(), "ca");
    let other = Pki::new(dir.path(), "other-ca");
    let gateway = tls_gateway(&pki).await;
    let tls_target = gateway.listeners[0].to_string();
    // The plain MQTT port takes the ClientHello for a malformed packet and closes.
    let plain_target = gateway.addr.to_string();
    let (ca, other_ca) = (pki.ca_path(), other.ca_path());
    for (target, cafile, server_name, expected) in [
        (&tls_target, &other_ca, None, "tls_unknown_ca"),
        (
            &tls_target,
            &ca,
            Some("elsewhere.example"),
            "tls_name_mismatch",
        ),
        (&plain_target, &ca, None, "tls_closed_in_handshake"),
    ] {
        let mut args = vec![
            "--target",
            target,
            "--tls",
            "--cafile",
            path(cafile),
            "--devices",
            "10",
            "--subscribers",
            "0",
            "--duration",
            "1s",
            "--drain",
            "0s",
        ];
        if let Some(name) = server_name {
            args.extend_from_slice(&["--tls-server-name", name]);
        }
        let run = simulate(&args, &[]).await;
        assert!(!run.success, "{}", run.report);
        assert_eq!(run.n("devices_connected"), 0, "{}", run.report);
        let failures = &run.report["connect_failures_by_reason"];
        assert!(
            reason(&run, "connect_failures_by_reason", expected) >= 10,
            "{expected}: {failures}"
        );
        assert_eq!(
            run.n("connect_failures"),
            reason(&run, "connect_failures_by_reason", expected)
        );
    }
}

/// Every device dropped at once and reconnecting: with resumption (the default) the
/// reconnections resume the sessions of the first handshakes; without, all are full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_resumes_tls_sessions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(dir.path(), "ca");
    let gateway = tls_gateway(&pki).await;
    let target = gateway.listeners[0].to_string();
    let devices = 200u64;
    let storm = tls_storm_scenario(dir.path(), &target, &pki.ca_path(), devices);
    for resumption in ["true", "false"] {
        let run = simulate(
            &[
                "--scenario",
                path(&storm),
                "--tls-resumption",
                resumption,
                "--client-id",
                &format!("storm-{resumption}-{{id}}"),
            ],
            &[],
        )
        .await;
        let context = format!("{}\n{}", run.report, run.stderr);
        assert_eq!(run.n("lost"), 0, "{context}");
        assert_eq!(
            run.report["disconnects_by_reason"]["disconnect_event"], devices,
            "{context}"
        );
        assert!(run.report["reconnect_all_back_ms"].is_number(), "{context}");
        let (full, resumed) = (run.n("tls_full"), run.n("tls_resumed"));
        if resumption == "true" {
            // The first connections are full; every reconnection finds its device's ticket.
            assert_eq!(full, devices + 1, "{context}");
            assert_eq!(resumed, devices, "{context}");
        } else {
            assert_eq!((full, resumed), (2 * devices + 1, 0), "{context}");
        }
    }
}
