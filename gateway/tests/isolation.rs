//! Fault isolation between sessions: when one session's task panics (test-only fault injection,
//! a PUBLISH to `$fault/panic`), only that connection closes. Fifty other clients exchanging
//! QoS 1 messages lose nothing and see no stall, the failed client's will is published once,
//! and it can reconnect with the same client id and work normally. The same for a panic in
//! the hibernation parker's task while it resumes one session (client ids starting with
//! `fault::PANIC_ON_RESUME`): every other hibernating session stays parked and is resumed.

mod clients;
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clients::raw::{self, Connect, Raw, V};
use clients::v3::{self, AsyncClient, Event, MqttOptions, Packet, QoS};
use clients::WAIT;
use common::TestBroker;
use rumqttc::LastWill;

const CLIENTS: usize = 50;
const VICTIM: usize = 0;
const PUBLISH_EVERY: Duration = Duration::from_millis(20);
/// Longest silence tolerated between two messages to one receiver (they arrive every 20 ms).
const MAX_GAP: Duration = Duration::from_millis(1000);
const WILL_TOPIC: &str = "iso/will";
/// Messages of every panic in this test binary, to prove the fault really was a panic.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(info.to_string());
            previous(info);
        }));
    });
}

/// Waits until a session task panicked with fault injection for `client_id`.
async fn wait_for_panic_of(client_id: &str) {
    let needle = format!("panic requested by {client_id}\n");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = PANICS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|p| format!("{p}\n").contains(&needle));
        if found {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no fault-injection panic for {client_id}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
const WILL_PAYLOAD: &[u8] = b"victim gone";

/// What one client's event loop saw.
#[derive(Default)]
struct Seen {
    /// (arrival, sender, sequence number) of every message on its own topic.
    messages: Vec<(Instant, usize, u64)>,
    /// Other messages (topic, payload).
    other: Vec<(String, Vec<u8>)>,
    failed: Option<(Instant, String)>,
}

struct Peer {
    client: AsyncClient,
    seen: Arc<Mutex<Seen>>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn options(id: &str, addr: std::net::SocketAddr, will: bool) -> MqttOptions {
    let mut opts = v3::options(addr, id);
    if will {
        opts.set_last_will(LastWill::new(
            WILL_TOPIC,
            WILL_PAYLOAD,
            QoS::AtLeastOnce,
            false,
        ));
    }
    opts
}

/// Connects `id`, subscribes it to `topic` and records what it receives.
async fn connect(addr: std::net::SocketAddr, id: &str, topic: &str, will: bool) -> Peer {
    let mut c = v3::Client::connect(options(id, addr, will)).await;
    c.subscribe(topic, QoS::AtLeastOnce).await;
    let client = c.client.clone();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    // Owns the client: its event loop ends on its own at the first error.
    let collector = tokio::spawn(async move {
        loop {
            let ev = c.next_event().await;
            let mut seen = record.lock().expect("seen lock");
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let (topic, payload) = (p.topic, p.payload.to_vec());
                    let parsed = std::str::from_utf8(&payload).ok().and_then(|s| {
                        let (from, seq) = s.split_once(':')?;
                        Some((from.parse().ok()?, seq.parse().ok()?))
                    });
                    match parsed {
                        Some((from, seq)) if topic.starts_with("iso/c/") => {
                            seen.messages.push((Instant::now(), from, seq));
                        }
                        _ => seen.other.push((topic, payload)),
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    seen.failed = Some((Instant::now(), e));
                    return;
                }
            }
        }
    });
    Peer {
        client,
        seen,
        sent: Arc::new(AtomicU64::new(0)),
        task: collector,
    }
}

fn topic_of(i: usize) -> String {
    format!("iso/c/{i}")
}

/// Waits until `cond` holds on `peer`'s record, or fails with `what`.
async fn wait_for(peer: &Peer, what: &str, cond: impl Fn(&Seen) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond(&peer.seen.lock().expect("seen lock")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_session_affects_no_other_session() {
    record_panics();
    let broker = TestBroker::start().await;
    let addr = broker.addr;

    let mut peers = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        peers.push(connect(addr, &format!("iso-{i}"), &topic_of(i), i == VICTIM).await);
    }
    let observer = connect(addr, "observer", WILL_TOPIC, false).await;

    // Every client publishes to the next one, QoS 1, every 20 ms, until told to stop.
    let running = Arc::new(AtomicBool::new(true));
    let mut publishers = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let client = peer.client.clone();
        let sent = peer.sent.clone();
        let running = running.clone();
        let to = topic_of((i + 1) % CLIENTS);
        publishers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(PUBLISH_EVERY);
            while running.load(Ordering::Relaxed) {
                tick.tick().await;
                let seq = sent.load(Ordering::Relaxed);
                if client
                    .publish(&to, QoS::AtLeastOnce, false, format!("{i}:{seq}"))
                    .await
                    .is_err()
                {
                    return; // the victim's event loop is gone
                }
                sent.store(seq + 1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    for (i, peer) in peers.iter().enumerate() {
        wait_for(
            peer,
            &format!("client {i} receives traffic before the fault"),
            |s| !s.messages.is_empty(),
        )
        .await;
    }

    // The fault: the victim's session task panics.
    let victim_sent_before = peers[VICTIM].sent.load(Ordering::Relaxed);
    let fault_at = Instant::now();
    peers[VICTIM]
        .client
        .publish("$fault/panic", QoS::AtMostOnce, false, "boom")
        .await
        .expect("queue fault PUBLISH");
    wait_for_panic_of("iso-0").await;
    wait_for(&peers[VICTIM], "victim's connection is closed", |s| {
        s.failed.is_some()
    })
    .await;
    wait_for(&observer, "victim's will is published", |s| {
        !s.other.is_empty()
    })
    .await;

    // Traffic goes on for a while after the fault, then stops and drains.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.store(false, Ordering::Relaxed);
    for p in publishers {
        let _ = tokio::time::timeout(WAIT, p).await;
    }
    let end = Instant::now();

    // Every message between two healthy clients arrives exactly once (QoS 1, no reconnects),
    // so wait for the counts to match, then check contiguity and stalls.
    for sender in 0..CLIENTS {
        let receiver = (sender + 1) % CLIENTS;
        if sender == VICTIM || receiver == VICTIM {
            continue;
        }
        let sent = peers[sender].sent.load(Ordering::Relaxed);
        let what = format!("client {receiver} receives all {sent} messages of client {sender}");
        wait_for(&peers[receiver], &what, |s| {
            s.messages.iter().filter(|m| m.1 == sender).count() as u64 >= sent
        })
        .await;
        let seen = peers[receiver].seen.lock().expect("seen lock");
        let seqs: Vec<u64> = seen
            .messages
            .iter()
            .filter(|m| m.1 == sender)
            .map(|m| m.2)
            .collect();
        let unique: BTreeSet<u64> = seqs.iter().copied().collect();
        assert_eq!(seqs.len(), unique.len(), "{what}: duplicates in {seqs:?}");
        assert_eq!(
            unique,
            (0..sent).collect::<BTreeSet<u64>>(),
            "{what}: lost or unexpected messages"
        );
        assert!(sent > 80, "{what}: only {sent} messages were sent in 2.3 s");
        // No stall around the fault: from 0.5 s before it to the end, arrivals keep coming.
        let window_start = fault_at - Duration::from_millis(500);
        let mut last = window_start;
        for &(at, _, _) in seen
            .messages
            .iter()
            .filter(|m| m.1 == sender && m.0 >= window_start)
        {
            assert!(
                at - last < MAX_GAP,
                "{what}: {:?} without a message around the fault",
                at - last
            );
            last = at;
        }
        assert!(
            end - last < MAX_GAP,
            "{what}: last message {:?} before the end",
            end - last
        );
    }
    for (i, peer) in peers.iter().enumerate() {
        if i != VICTIM {
            let seen = peer.seen.lock().expect("seen lock");
            assert!(
                seen.failed.is_none(),
                "client {i} lost its connection: {:?}",
                seen.failed
            );
            assert!(
                seen.other.is_empty(),
                "client {i} received stray messages: {:?}",
                seen.other
            );
        }
    }
    {
        let seen = peers[VICTIM].seen.lock().expect("seen lock");
        let (failed_at, why) = seen.failed.clone().expect("victim failed");
        assert!(
            failed_at - fault_at < WAIT,
            "victim closed {:?} after the fault ({why})",
            failed_at - fault_at
        );
        assert!(victim_sent_before > 0, "victim published before the fault");
    }

    // The will went out exactly once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let will = observer.seen.lock().expect("seen lock");
        assert_eq!(
            will.other,
            vec![(WILL_TOPIC.to_owned(), WILL_PAYLOAD.to_vec())],
            "observer should see the will once"
        );
        assert!(
            will.failed.is_none(),
            "observer lost its connection: {:?}",
            will.failed
        );
    }

    // The victim comes back under the same client id and works again in both directions.
    let back = connect(addr, "iso-0", &topic_of(VICTIM), false).await;
    back.client
        .publish(topic_of(1), QoS::AtLeastOnce, false, "0:1000000")
        .await
        .expect("queue PUBLISH");
    wait_for(
        &peers[1],
        "client 1 receives from the reconnected victim",
        |s| s.messages.iter().any(|m| m.1 == VICTIM && m.2 == 1_000_000),
    )
    .await;
    peers[CLIENTS - 1]
        .client
        .publish(
            topic_of(VICTIM),
            QoS::AtLeastOnce,
            false,
            format!("{}:2000000", CLIENTS - 1),
        )
        .await
        .expect("queue PUBLISH");
    wait_for(&back, "reconnected victim receives", |s| {
        s.messages.iter().any(|m| m.2 == 2_000_000)
    })
    .await;
    assert!(back.seen.lock().expect("seen lock").failed.is_none());
    // Its will was not published a second time by the reconnection.
    assert_eq!(
        observer.seen.lock().expect("seen lock").other.len(),
        1,
        "will published again"
    );

    for peer in peers.iter().chain([&observer, &back]) {
        peer.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_of_a_persistent_session_keeps_its_subscriptions() {
    record_panics();
    // A 3.1.1 persistent session (clean session 0) survives its task's panic: after
    // reconnecting without subscribing again, the client still receives on its old topic.
    let broker = TestBroker::start().await;
    let addr = broker.addr;
    let mut opts = options("persistent", addr, true);
    opts.set_clean_session(false);
    let mut client = v3::Client::connect(opts).await;
    client.subscribe("keep/t", QoS::AtLeastOnce).await;
    let observer = connect(addr, "observer", WILL_TOPIC, false).await;

    client
        .publish("$fault/panic", QoS::AtLeastOnce, false, "boom")
        .await;
    let failed = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(e) = client.next_event().await {
                return e;
            }
        }
    })
    .await
    .expect("persistent client's connection closed after the panic");
    assert!(!failed.is_empty());
    wait_for_panic_of("persistent").await;
    wait_for(&observer, "will of the persistent session", |s| {
        !s.other.is_empty()
    })
    .await;

    // Published while it is away (QoS 1 is queued for the persistent session).
    let other = connect(addr, "other", "unused/t", false).await;
    other
        .client
        .publish("keep/t", QoS::AtLeastOnce, false, "while away")
        .await
        .expect("queue PUBLISH");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut opts = options("persistent", addr, false);
    opts.set_clean_session(false);
    let (got, back) = tokio::time::timeout(WAIT, async {
        let mut back = v3::Client::connect(opts).await;
        loop {
            match back.next_event().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    return ((p.topic, p.payload.to_vec()), back)
                }
                Ok(_) => {}
                Err(e) => panic!("reconnection failed: {e}"),
            }
        }
    })
    .await
    .expect("queued message delivered after reconnecting");
    assert_eq!(got, ("keep/t".to_owned(), b"while away".to_vec()));
    drop(back);
    other.task.abort();
    observer.task.abort();
}

/// The parker's task resumes every hibernating session: a panic there while resuming one (test
/// fault: its client id) closes that one, publishes its will, and nobody else notices. The
/// others are still parked and resumed by their packets, a takeover of one works, and sessions
/// park and wake again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_resuming_a_hibernating_session_affects_no_other() {
    const OTHERS: usize = 10;
    record_panics();
    let broker =
        TestBroker::with(|c| c.mqtt.hibernate_after = Some(Duration::from_millis(100))).await;
    let addr = broker.addr;
    let hibernating = || broker.ctx.state().sessions_hibernating;
    let observer = connect(addr, "parked-observer", WILL_TOPIC, false).await;
    let victim_id = format!("{}-victim", gateway::fault::PANIC_ON_RESUME);
    let mut connect_victim = Connect::v311(&victim_id, true, 60);
    connect_victim.will = Some(raw::Will::qos1(WILL_TOPIC, WILL_PAYLOAD));
    let (mut victim, _) = Raw::connect(addr, &connect_victim).await;
    let mut others = Vec::new();
    for i in 0..OTHERS {
        others.push(Raw::connected(addr, V::V311, &format!("parked-{i}")).await);
    }
    assert!(
        common::eventually(WAIT, || hibernating() == OTHERS + 2).await,
        "{} hibernating, expected {}",
        hibernating(),
        OTHERS + 2
    );

    // The victim's PINGREQ makes the parker resume it: the panic.
    victim.send(&raw::encode_pingreq()).await;
    wait_for_panic_of(&victim_id).await;
    victim.expect_closed("the victim's connection").await;
    wait_for(&observer, "the victim's will is published", |s| {
        !s.other.is_empty()
    })
    .await;

    // Every other session is still parked and comes back on its own packet.
    for (i, other) in others.iter_mut().enumerate() {
        tokio::time::timeout(WAIT, other.ping())
            .await
            .unwrap_or_else(|_| panic!("parked session {i} not resumed"));
    }
    // A takeover of a parked session: the new connection gets it, the old one is closed.
    assert!(common::eventually(WAIT, || hibernating() >= OTHERS).await);
    let mut back = Raw::connected(addr, V::V311, "parked-0").await;
    others[0].expect_closed("the session taken over").await;
    back.ping().await;
    // Parking and waking go on.
    assert!(common::eventually(WAIT, || hibernating() >= OTHERS).await);
    others[1].ping().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        observer.seen.lock().expect("seen lock").other,
        vec![(WILL_TOPIC.to_owned(), WILL_PAYLOAD.to_vec())],
        "the will once"
    );
    observer.task.abort();
    broker.shutdown().await;
}
