//! Authorization with real clients: a client denied a topic reads and writes nothing there by any
//! route (direct and wildcard subscriptions, shared subscriptions, retained messages, its will,
//! PUBLISH), `%c`/`%u` patterns, and rules reloaded on SIGHUP by the real binary.

mod binary;
mod clients;
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clients::raw::{self, Raw};
use clients::{unique_id, v3, v5, QUIET, WAIT};
use common::TestBroker;
use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode as V5Code};
use rumqttc::SubscribeReasonCode as V3Code;

/// alice may read and write everything but `admin/`; eve reads `#` but is denied `secret/`, and
/// writes only `open/`; bob and anonymous clients read `public/`; every client owns
/// `devices/{client id}/` and reads its user's inbox.
const RULES: &str = "\
# anonymous clients (as in Mosquitto, the lines before the first `user`)
topic read public/#
# every client
pattern readwrite devices/%c/#
pattern read users/%u/inbox

user alice
topic readwrite secret/#
topic readwrite open/#
topic read devices/#
topic write users/#

user eve
topic read #
topic write open/#
topic deny secret/#

user bob
topic read public/#
";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gateway-acl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Password file (real mosquitto_passwd, cheap `$7$` entries) and ACL file.
fn files(name: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let passwd = dir.join("passwd");
    std::fs::write(&passwd, "").expect("create password file");
    for user in ["alice", "eve", "bob"] {
        let status = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(&passwd)
            .args([user, &format!("{user}-pw")])
            .status()
            .expect("mosquitto_passwd runs (apt install mosquitto)");
        assert!(status.success());
    }
    let acl = dir.join("acl");
    std::fs::write(&acl, RULES).expect("write acl");
    (passwd, acl)
}

async fn broker(name: &str) -> TestBroker {
    let (passwd, acl) = files(name);
    TestBroker::with(move |c| {
        c.auth.password_file = Some(passwd);
        c.auth.acl_file = Some(acl);
    })
    .await
}

fn v5_opts(b: &TestBroker, user: &str, id: &str) -> v5::MqttOptions {
    let mut o = v5::options(b.addr, id);
    o.set_credentials(user, format!("{user}-pw"));
    o
}

fn v3_opts(b: &TestBroker, user: &str, id: &str) -> v3::MqttOptions {
    let mut o = v3::options(b.addr, id);
    o.set_credentials(user, format!("{user}-pw"));
    o
}

async fn v5_as(b: &TestBroker, user: &str) -> v5::Client {
    v5::Client::connect(v5_opts(b, user, &unique_id(user))).await
}

async fn v3_as(b: &TestBroker, user: &str) -> v3::Client {
    v3::Client::connect(v3_opts(b, user, &unique_id(user))).await
}

/// Subscribes through a bare v5 event loop and returns the SUBACK code (rumqttc turns a refusal
/// into an error that ends its event loop).
async fn v5_suback(o: v5::MqttOptions, filter: &str) -> V5Code {
    let (client, mut eventloop) = v5::AsyncClient::new(o, 10);
    client
        .subscribe(filter, v5::QoS::AtLeastOnce)
        .await
        .expect("queue subscribe");
    clients::within(WAIT, "SUBACK", async {
        loop {
            match eventloop.poll().await {
                Ok(v5::Event::Incoming(rumqttc::v5::Incoming::SubAck(a))) => {
                    return a.return_codes[0]
                }
                Ok(_) => {}
                Err(e) => panic!("connection failed: {e}"),
            }
        }
    })
    .await
}

#[tokio::test]
async fn denied_subscriptions_get_the_failure_code() {
    let b = broker("suback").await;
    for (filter, code) in [
        ("secret/x", V5Code::NotAuthorized),
        ("secret/#", V5Code::NotAuthorized),
        ("$share/g/secret/#", V5Code::NotAuthorized),
        ("open/x", V5Code::Success(v5::QoS::AtLeastOnce)),
        ("#", V5Code::Success(v5::QoS::AtLeastOnce)),
    ] {
        let o = v5_opts(&b, "eve", &unique_id("eve"));
        assert_eq!(v5_suback(o, filter).await, code, "{filter}");
    }
    let mut eve3 = v3_as(&b, "eve").await;
    assert_eq!(
        eve3.subscribe("secret/x", v3::QoS::AtLeastOnce).await,
        vec![V3Code::Failure]
    );
    assert_eq!(
        eve3.subscribe("open/x", v3::QoS::AtLeastOnce).await,
        vec![V3Code::Success(v3::QoS::AtLeastOnce)]
    );
    // alice has no rule for admin/: default deny.
    let o = v5_opts(&b, "alice", &unique_id("alice"));
    assert_eq!(v5_suback(o, "admin/x").await, V5Code::NotAuthorized);
}

#[tokio::test]
async fn wildcard_shared_and_retained_routes_never_carry_a_denied_topic() {
    let b = broker("routes").await;
    let mut alice = v5_as(&b, "alice").await;
    alice
        .publish_confirmed("secret/retained", v5::QoS::AtLeastOnce, true, "s")
        .await;
    alice
        .publish_confirmed("open/retained", v5::QoS::AtLeastOnce, true, "o")
        .await;

    // Wildcard subscription: granted, gets the retained open/ message only.
    let mut eve = v5_as(&b, "eve").await;
    assert_eq!(
        eve.subscribe("#", v5::QoS::AtLeastOnce).await,
        vec![V5Code::Success(v5::QoS::AtLeastOnce)]
    );
    let first = eve.next_publish(WAIT).await;
    assert_eq!(v5::topic_of(&first), "open/retained");
    eve.expect_no_publish(QUIET).await;

    // A shared subscription whose only member is eve.
    let mut eve_shared = v3_as(&b, "eve").await;
    assert_eq!(
        eve_shared
            .subscribe("$share/g/#", v3::QoS::AtLeastOnce)
            .await,
        vec![V3Code::Success(v3::QoS::AtLeastOnce)]
    );

    for qos in [
        v5::QoS::AtMostOnce,
        v5::QoS::AtLeastOnce,
        v5::QoS::ExactlyOnce,
    ] {
        alice.publish("secret/live", qos, false, "no").await;
    }
    alice
        .publish_confirmed("open/live", v5::QoS::AtLeastOnce, false, "yes")
        .await;
    // open/live arrives on both routes (so they work), secret/live on neither.
    let got = eve.next_publish(WAIT).await;
    assert_eq!(v5::topic_of(&got), "open/live");
    let got = eve_shared.next_publish(WAIT).await;
    assert_eq!(got.topic, "open/live");
    eve.expect_no_publish(QUIET).await;
    eve_shared.expect_no_publish(QUIET).await;
}

/// Publishes at QoS 1 through a bare event loop and returns the PUBACK reason.
async fn puback_reason(o: v5::MqttOptions, topic: &str) -> PubAckReason {
    let (client, mut eventloop) = v5::AsyncClient::new(o, 10);
    client
        .publish(topic, v5::QoS::AtLeastOnce, false, "payload")
        .await
        .expect("queue publish");
    clients::within(WAIT, "PUBACK", async {
        loop {
            match eventloop.poll().await {
                Ok(v5::Event::Incoming(rumqttc::v5::Incoming::PubAck(a))) => return a.reason,
                Ok(_) => {}
                Err(e) => panic!("connection failed: {e}"),
            }
        }
    })
    .await
}

#[tokio::test]
async fn denied_publishes_are_refused_and_never_delivered() {
    let b = broker("publish").await;
    let mut alice = v5_as(&b, "alice").await;
    alice.subscribe("secret/#", v5::QoS::AtLeastOnce).await;
    alice.subscribe("open/#", v5::QoS::AtLeastOnce).await;

    assert_eq!(
        puback_reason(v5_opts(&b, "eve", "eve-pub"), "secret/x").await,
        PubAckReason::NotAuthorized
    );
    assert_eq!(
        puback_reason(v5_opts(&b, "eve", "eve-pub2"), "open/x").await,
        PubAckReason::Success
    );
    let got = alice.next_publish(WAIT).await;
    assert_eq!(v5::topic_of(&got), "open/x");
    // 3.1.1 has no reason code: the PUBACK comes, the message goes nowhere.
    let mut eve3 = v3_as(&b, "eve").await;
    eve3.publish_confirmed("secret/y", v3::QoS::AtLeastOnce, false, "no")
        .await;
    eve3.publish("secret/z", v3::QoS::AtMostOnce, false, "no")
        .await;
    // Reading rights do not imply writing: eve reads public/ but may not write it.
    eve3.publish_confirmed("public/x", v3::QoS::AtLeastOnce, false, "no")
        .await;
    eve3.publish_confirmed("open/y", v3::QoS::AtLeastOnce, false, "yes")
        .await;
    let got = alice.next_publish(WAIT).await;
    assert_eq!(v5::topic_of(&got), "open/y");
    alice.expect_no_publish(QUIET).await;
    let mut reader = v5_as(&b, "bob").await;
    reader.subscribe("public/#", v5::QoS::AtMostOnce).await;
    reader.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn a_will_on_a_denied_topic_is_refused_at_connect() {
    let b = broker("will").await;
    let mut alice = v5_as(&b, "alice").await;
    alice.subscribe("secret/#", v5::QoS::AtLeastOnce).await;
    alice.subscribe("open/#", v5::QoS::AtLeastOnce).await;

    let mut o = v5_opts(&b, "eve", "eve-will");
    o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        "secret/will",
        "w",
        v5::QoS::AtLeastOnce,
        false,
        None,
    ));
    let (_c, mut eventloop) = v5::AsyncClient::new(o, 10);
    match clients::within(WAIT, "CONNACK", eventloop.poll()).await {
        Err(v5::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(format!("{code:?}"), "NotAuthorized")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    let mut o = v3_opts(&b, "eve", "eve-will3");
    o.set_last_will(rumqttc::LastWill::new(
        "secret/will",
        "w",
        v3::QoS::AtLeastOnce,
        false,
    ));
    let (_c, mut eventloop) = v3::AsyncClient::new(o, 10);
    match clients::within(WAIT, "CONNACK", eventloop.poll()).await {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(format!("{code:?}"), "NotAuthorized")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Control: a will on a topic eve may write is accepted and published when she vanishes.
    let mut o = v3_opts(&b, "eve", "eve-will-ok");
    o.set_last_will(rumqttc::LastWill::new(
        "open/will",
        "w",
        v3::QoS::AtLeastOnce,
        false,
    ));
    let eve = v3::Client::connect(o).await;
    eve.abort().await;
    let got = alice.next_publish(WAIT).await;
    assert_eq!(v5::topic_of(&got), "open/will");
    alice.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn client_id_and_username_patterns() {
    let b = broker("patterns").await;
    let mut alice = v5_as(&b, "alice").await;
    alice.subscribe("devices/#", v5::QoS::AtLeastOnce).await;
    let mut bob = v3::Client::connect(v3_opts(&b, "bob", "dev1")).await;
    bob.publish_confirmed("devices/dev1/t", v3::QoS::AtLeastOnce, false, "own")
        .await;
    bob.publish_confirmed("devices/dev2/t", v3::QoS::AtLeastOnce, false, "other")
        .await;
    let got = alice.next_publish(WAIT).await;
    assert_eq!(v5::topic_of(&got), "devices/dev1/t");
    alice.expect_no_publish(QUIET).await;

    assert_eq!(
        bob.subscribe("users/bob/inbox", v3::QoS::AtLeastOnce).await,
        vec![V3Code::Success(v3::QoS::AtLeastOnce)]
    );
    assert_eq!(
        bob.subscribe("users/alice/inbox", v3::QoS::AtLeastOnce)
            .await,
        vec![V3Code::Failure]
    );
    assert_eq!(
        bob.subscribe("devices/dev2/#", v3::QoS::AtLeastOnce).await,
        vec![V3Code::Failure]
    );
    alice
        .publish_confirmed("users/bob/inbox", v5::QoS::AtLeastOnce, false, "hi")
        .await;
    let got = bob.next_publish(WAIT).await;
    assert_eq!(got.topic, "users/bob/inbox");
}

fn write_rules(path: &Path, text: &str) {
    // Through a rename, as editors and config management do, so a reload never reads half a file.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write rules");
    std::fs::rename(&tmp, path).expect("replace rules");
}

/// Whether an anonymous v5 client is granted a subscription to `filter` now.
async fn granted(addr: std::net::SocketAddr, filter: &str) -> bool {
    let code = v5_suback(v5::options(addr, &unique_id("anon")), filter).await;
    matches!(code, V5Code::Success(_))
}

#[tokio::test]
async fn sighup_reloads_the_rules_and_a_bad_file_keeps_the_old_ones() {
    let dir = temp_dir("sighup");
    let acl = dir.join("acl");
    write_rules(&acl, "topic readwrite a/#\n");
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!("[auth]\nacl_file = {:?}\n", acl.display().to_string()),
    )
    .expect("write config");
    // Loopback without a password file: anonymous clients, subject to the rules before `user`.
    let gw = binary::Gateway::start(&["--config", config.to_str().expect("UTF-8 path")]);
    assert!(granted(gw.addr, "a/x").await);
    assert!(!granted(gw.addr, "b/x").await);

    write_rules(&acl, "topic readwrite b/#\n");
    gw.signal(libc::SIGHUP);
    let mut reloaded = false;
    for _ in 0..50 {
        if granted(gw.addr, "b/x").await {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "the new rule was not applied after SIGHUP");
    assert!(!granted(gw.addr, "a/x").await);

    write_rules(&acl, "topic readwrite c/#\nnonsense\n");
    gw.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        granted(gw.addr, "b/x").await,
        "a bad file replaced the rules"
    );
    assert!(!granted(gw.addr, "c/x").await);
}

/// `$SYS/` is the broker's own: without an ACL file no client may publish there (a retained fake
/// `$SYS/broker/version` would sit beside the broker's own and outlive it), nor leave a will
/// there; with an ACL file only a rule naming `$SYS` can grant it, since `#` never reaches `$`
/// topics.
#[tokio::test]
async fn clients_may_not_publish_to_sys_topics_without_an_acl_naming_them() {
    let b = TestBroker::start().await;
    let mut watcher = v5::Client::connect(v5::options(b.addr, &unique_id("sys-watch"))).await;
    watcher.subscribe("$SYS/#", v5::QoS::AtLeastOnce).await;
    watcher.subscribe("fine/#", v5::QoS::AtLeastOnce).await;

    let publisher = v5::options(b.addr, &unique_id("sys-fake"));
    assert_eq!(
        puback_reason(publisher.clone(), "$SYS/broker/version").await,
        PubAckReason::NotAuthorized
    );
    assert_eq!(
        puback_reason(publisher, "fine/x").await,
        PubAckReason::Success
    );
    let got = watcher.next_publish(WAIT).await;
    assert_eq!(
        v5::topic_of(&got),
        "fine/x",
        "only the allowed one is delivered"
    );
    let mut v3c = v3::Client::connect(v3::options(b.addr, &unique_id("sys-fake3"))).await;
    v3c.publish_confirmed("$SYS/broker/uptime", v3::QoS::AtLeastOnce, true, "0")
        .await;
    watcher.expect_no_publish(QUIET).await;

    // A will aimed at `$SYS/` is refused at CONNECT as not authorized (v5 CONNACK 0x87).
    let id = unique_id("sys-will");
    let mut connect = raw::Connect::v5(&id, true, 60);
    connect.will = Some(raw::Will::qos1("$SYS/broker/clients", b"x"));
    let mut client = Raw::open_with(b.addr, &raw::encode_connect(&connect)).await;
    let ack = client.expect_packet("CONNACK").await;
    assert_eq!(
        (ack.first, ack.body.get(1)),
        (raw::CONNACK, Some(&0x87)),
        "{ack:?}"
    );
    b.shutdown().await;
}
