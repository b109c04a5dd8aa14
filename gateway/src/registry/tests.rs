//! The registry's decisions, over a `Router` built directly: attach and takeover, what becomes of
//! a session when its connection goes (`detach`), and the stored state made live at start
//! (`restore`), with a store that records what it is told.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;

use super::{Departure, Registry};
use crate::clock::unix_millis;
use crate::codec::{QoS, SubscriptionOptions};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::session::{Delivery, Pending, QueueLimits, Stage, SubscriptionRecord};
use crate::store::recording::Recording;
use crate::store::{Restored, SessionRecord, Store, StoredSession, StoredWill};

fn router(store: &Arc<Recording>) -> Router {
    let limits = QueueLimits {
        max_queued: 100,
        max_queued_bytes: 0,
        queue_qos0_offline: false,
    };
    Router::new(limits, 100, 32, Arc::new(Metrics::new())).with_store(store.clone())
}

/// A handshake deadline that never matters here (a standalone router grants every claim).
fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(3600)
}

fn message(topic: &'static str, qos: QoS) -> Arc<Message> {
    let (topic, payload) = (ByteString::from_static(topic), Bytes::from_static(b"x"));
    Arc::new(Message::new(&topic, &payload, qos, false, 1, None))
}

fn qos1() -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..SubscriptionOptions::default()
    }
}

#[tokio::test]
async fn a_clean_session_ends_with_its_connection_and_stores_nothing() {
    let store = Arc::new(Recording::default());
    let (registry, router) = (Registry::new(), router(&store));
    let a = registry.attach("dev-1", true, &router, far()).await;
    assert!(!a.present);
    router
        .subscribe(&a.session, &"t/#".into(), qos1(), None)
        .expect("valid filter");
    let will = Some((message("will/dev-1", QoS::AtMostOnce), 0));
    let departure = Departure {
        generation: a.generation,
        taken_over: false,
        will,
    };
    registry.detach(&a.session, departure, &router);
    drop(a.owner);
    assert!(registry.get("dev-1").is_none(), "ended: out of the map");
    assert_eq!(router.subscription_len(), 0, "and out of the index");
    assert!(
        store.saved.lock().is_empty() && store.lines("removed").is_empty(),
        "a clean session is never saved, so never removed"
    );
}

#[tokio::test]
async fn a_persistent_session_lives_on_offline_queues_and_is_saved() {
    let store = Arc::new(Recording::default());
    let (registry, router) = (Registry::new(), router(&store));
    let a = registry.attach("dev-2", false, &router, far()).await;
    a.session.set_expiry_interval(3600);
    router
        .subscribe(&a.session, &"t/#".into(), qos1(), None)
        .expect("valid filter");
    // One message in flight, one still queued behind a window of 1, one inbound QoS 2 id.
    router.publish(message("t/0", QoS::AtLeastOnce));
    router.publish(message("t/00", QoS::AtLeastOnce));
    let mut out = Vec::new();
    a.session
        .take_ready(unix_millis(), 1, 10, &mut out, &mut Vec::new());
    a.session.incoming_qos2(7, 10);
    store.log.lock().clear();
    let departure = Departure {
        generation: a.generation,
        taken_over: false,
        will: Some((message("will/dev-2", QoS::AtLeastOnce), 60)),
    };
    registry.detach(&a.session, departure, &router);
    drop(a.owner);
    let saved = store.saved.lock().clone();
    assert_eq!(saved.len(), 1);
    let record = &saved[0];
    assert_eq!(&*record.client_id, "dev-2");
    assert_eq!(record.subscriptions.len(), 1);
    let now = unix_millis();
    let expires = record.expires_at.expect("an hour");
    assert!(expires > now + 3_590_000 && expires <= now + 3_600_000);
    let Some(StoredWill::Due { due: will_due, .. }) = record.will.as_ref() else {
        panic!("the delayed will");
    };
    assert!(*will_due <= now + 60_000 && *will_due > now + 50_000);

    assert_eq!(router.publish(message("t/1", QoS::AtLeastOnce)), 1);
    assert_eq!(registry.get("dev-2").map(|s| s.queue_len()), Some(2));
    assert_eq!(
        store.lines("queued"),
        ["dev-2 t/1"],
        "QoS 1 for a persistent session is stored"
    );
    router.publish(message("t/2", QoS::AtMostOnce));
    assert_eq!(store.lines("queued").len(), 1, "QoS 0 never is");

    let b = registry.attach("dev-2", false, &router, far()).await;
    assert!(b.present, "the session carried over");
    assert_ne!(
        b.generation, a.generation,
        "voids the pending will and expiry"
    );
}

#[tokio::test]
async fn a_takeover_keeps_the_session_and_sends_only_an_undelayed_will() {
    let store = Arc::new(Recording::default());
    let (registry, router) = (Registry::new(), router(&store));
    let watcher = registry.attach("watcher", true, &router, far()).await;
    router
        .subscribe(&watcher.session, &"will/#".into(), qos1(), None)
        .expect("valid filter");
    let a = registry.attach("dev-3", true, &router, far()).await;
    for (delay, sent) in [(5, 0), (0, 1)] {
        let departure = Departure {
            generation: a.generation,
            taken_over: true,
            will: Some((message("will/dev-3", QoS::AtLeastOnce), delay)),
        };
        registry.detach(&a.session, departure, &router);
        assert_eq!(watcher.session.queue_len(), sent, "will delay {delay}");
    }
    assert!(
        registry.get("dev-3").is_some(),
        "not ended: the new connection has it"
    );
    assert!(store.lines("removed").is_empty());
    assert!(
        store.saved.lock().is_empty(),
        "not offline either: nothing to save"
    );
}

#[tokio::test]
async fn restore_makes_stored_sessions_routable_and_ends_expired_ones() {
    let store = Arc::new(Recording::default());
    let router = router(&store);
    let now = unix_millis();
    let queued = Delivery {
        msg: message("cmd/1", QoS::AtLeastOnce),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: Vec::new(),
        seq: 1,
    };
    let stored = |id: &str, expires_at, will, queue| StoredSession {
        record: SessionRecord {
            client_id: id.into(),
            expiry_interval: 3600,
            expires_at: Some(expires_at),
            subscriptions: vec![SubscriptionRecord {
                filter: "cmd/#".into(),
                options: qos1(),
                id: None,
            }],
            will,
        },
        pending: Pending {
            queue,
            ..Pending::default()
        },
        stored: 0,
        stored_from: 0,
        stored_last: 0,
    };
    *store.restored.lock() = Some(Restored {
        sessions: vec![
            stored("alive", now + 3_600_000, None, vec![queued]),
            stored(
                "gone",
                now - 1,
                Some(StoredWill::Due {
                    message: message("cmd/will", QoS::AtLeastOnce),
                    due: now,
                }),
                Vec::new(),
            ),
        ],
        retained: Vec::new(),
    });
    let registry = Registry::new();
    registry.restore(store.load().expect("loads"), &router);

    let alive = registry.get("alive").expect("restored");
    assert!(!alive.is_online() && alive.is_persistent());
    // The stored queue, then the expired session's will: routed to the restored subscription.
    assert_eq!(alive.queue_len(), 2);
    assert!(
        registry.get("gone").is_none(),
        "expired while the broker was down"
    );
    assert_eq!(store.lines("removed"), ["gone"]);
    assert_eq!(router.publish(message("cmd/2", QoS::AtLeastOnce)), 1);
    assert_eq!(alive.queue_len(), 3);
}

#[tokio::test]
async fn restore_gives_a_session_back_its_queue_window_and_qos2_ids() {
    let store = Arc::new(Recording::default());
    let router = router(&store);
    let delivery = |topic, seq| Delivery {
        msg: message(topic, QoS::AtLeastOnce),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: Vec::new(),
        seq,
    };
    *store.restored.lock() = Some(Restored {
        sessions: vec![StoredSession {
            record: SessionRecord {
                client_id: "dev-5".into(),
                expiry_interval: u32::MAX,
                expires_at: None,
                subscriptions: Vec::new(),
                will: None,
            },
            pending: Pending {
                queue: vec![delivery("q/1", 2), delivery("q/2", 3)],
                inflight: vec![(41, Stage::PubAck, delivery("f/1", 1))],
                incoming_qos2: vec![9],
                ..Pending::default()
            },
            stored: 0,
            stored_from: 0,
            stored_last: 0,
        }],
        retained: Vec::new(),
    });
    let registry = Registry::new();
    registry.restore(store.load().expect("loads"), &router);

    let a = registry.attach("dev-5", false, &router, far()).await;
    assert!(a.present);
    let mut resend = Vec::new();
    a.session.inflight_for_resend(usize::MAX, &mut resend);
    let resent: Vec<_> = resend
        .iter()
        .map(|o| (o.packet_id, o.dup, &o.delivery.msg.topic[..]))
        .collect();
    assert_eq!(resent, [(41, true, "f/1")], "in flight again, with DUP");
    let mut out = Vec::new();
    a.session
        .take_ready(unix_millis(), 10, 10, &mut out, &mut Vec::new());
    let sent: Vec<_> = out
        .iter()
        .map(|o| (o.packet_id, &o.delivery.msg.topic[..]))
        .collect();
    assert_eq!(
        sent,
        [(42, "q/1"), (43, "q/2")],
        "the stored queue, then what came after"
    );
    assert_eq!(
        a.session.incoming_qos2(9, 10),
        crate::session::IncomingQos2::Resent
    );
}

#[tokio::test]
async fn a_client_reconnecting_in_a_loop_leaves_a_bounded_number_of_timers() {
    let store = Arc::new(Recording::default());
    let (registry, router) = (Registry::new(), router(&store));
    for _ in 0..1000 {
        let a = registry.attach("flapper", false, &router, far()).await;
        a.session.set_expiry_interval(86_400);
        let departure = Departure {
            generation: a.generation,
            taken_over: false,
            will: Some((message("will/flapper", QoS::AtMostOnce), 3600)),
        };
        registry.detach(&a.session, departure, &router);
    }
    // One session: its will and its expiry are valid, the 1,998 others void.
    let pending = registry.later.len();
    assert!(pending <= 4 + 64 + 1, "{pending} timers for one session");
}
