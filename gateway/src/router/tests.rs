//! The delivery rules of `Router`, checked over a router built directly (no sockets, no tasks):
//! what each session finds in its queue after a publish or a subscribe.

use parking_lot::Mutex;
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;

use super::{Router, Subscriber};
use crate::clock::unix_millis;
use crate::cluster::{Claim, Claiming, Cluster, Confirm, Interest};
use crate::codec::{QoS, SubscriptionOptions};
use crate::message::Message;
use crate::metrics::{BrokerState, Exporter, Metrics};
use crate::session::SessionId;
use crate::session::{BacklogFull, BacklogLimits, Outgoing, QueueLimits, Room, Session};
use crate::store::recording::Recording;
use crate::topic_index::Matches;

const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;

/// A router whose metrics can be read back (`dropped`).
struct Fixture {
    router: Router,
    exporter: Exporter,
}

impl Fixture {
    fn new(max_queued: usize, queue_qos0_offline: bool) -> Fixture {
        let (metrics, exporter) = Metrics::prometheus().expect("prometheus recorder");
        let limits = QueueLimits {
            max_queued,
            max_queued_bytes: 0,
            queue_qos0_offline,
        };
        Fixture {
            router: Router::new(limits, 100, 16, Arc::new(metrics)),
            exporter,
        }
    }

    fn subscribe(
        &self,
        s: &Arc<Session>,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) {
        if let Err(e) = self.router.subscribe(s, &filter.into(), options, id) {
            panic!("subscription to {filter} refused: {e}");
        }
    }

    fn publish(
        &self,
        topic: &str,
        payload: &'static [u8],
        qos: QoS,
        retain: bool,
        origin: u64,
    ) -> usize {
        self.router
            .publish(message(topic, payload, qos, retain, origin))
    }

    /// `gateway_messages_dropped_total` for one reason.
    fn dropped(&self, reason: &str) -> f64 {
        let text = self.exporter.render(&BrokerState::default());
        let series = format!("gateway_messages_dropped_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap_or(0.0)
    }
}

fn message(
    topic: &str,
    payload: &'static [u8],
    qos: QoS,
    retain: bool,
    origin: u64,
) -> Arc<Message> {
    Arc::new(Message::new(
        &ByteString::from(topic),
        &Bytes::from_static(payload),
        qos,
        retain,
        origin,
        None,
    ))
}

fn session(id: u64, online: bool) -> Arc<Session> {
    let s = Arc::new(Session::new(id, format!("client-{id}").into()));
    s.set_online(online);
    s
}

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

/// The subscription identifiers on a copy, sorted (their order follows the index).
fn ids(o: &Outgoing) -> Vec<u32> {
    let mut ids = o.delivery.subscription_ids.clone();
    ids.sort_unstable();
    ids
}

/// Everything queued for the session, in order (no inflight window in the way).
fn take(s: &Session) -> Vec<Outgoing> {
    let mut out = Vec::new();
    s.take_ready(
        unix_millis(),
        usize::MAX,
        usize::MAX,
        &mut out,
        &mut Vec::new(),
    );
    out
}

#[test]
fn one_copy_per_session_at_the_highest_granted_qos_capped_by_the_publish_qos() {
    // (subscriptions of the one session as (filter, granted QoS), publish QoS, delivered QoS)
    type Row = (&'static [(&'static str, QoS)], QoS, QoS);
    let table: &[Row] = &[
        (&[("a/b", Q1)], Q2, Q1),
        (&[("a/b", Q2)], Q0, Q0),
        (&[("a/b", Q2)], Q1, Q1),
        (&[("a/b", Q0), ("a/+", Q1)], Q2, Q1),
        (&[("a/b", Q2), ("a/#", Q0)], Q1, Q1),
        (&[("a/+", Q0), ("#", Q2), ("a/b", Q1)], Q2, Q2),
        (&[("+/+", Q0), ("a/#", Q0), ("#", Q0)], Q2, Q0),
        (&[("#", Q1), ("a/+", Q2)], Q0, Q0),
    ];
    for (row, (subs, published, expected)) in table.iter().enumerate() {
        let f = Fixture::new(100, false);
        let s = session(1, true);
        for (filter, qos) in subs.iter() {
            f.subscribe(&s, filter, opts(*qos), None);
        }
        assert_eq!(
            f.publish("a/b", b"x", *published, false, 99),
            1,
            "row {row}"
        );
        let got = take(&s);
        assert_eq!(got.len(), 1, "row {row}: one copy per session");
        assert_eq!(got[0].delivery.qos, *expected, "row {row}");
        assert_eq!(s.queue_len(), 0, "row {row}");
    }
}

#[test]
fn the_one_copy_carries_every_matching_subscription_identifier() {
    // (subscriptions as (filter, identifier), identifiers on the copy, sorted)
    type Row = (&'static [(&'static str, Option<u32>)], &'static [u32]);
    let table: &[Row] = &[
        (&[("a/b", None)], &[]),
        (&[("a/b", Some(7))], &[7]),
        (&[("a/b", Some(1)), ("a/+", Some(2))], &[1, 2]),
        (&[("a/b", Some(1)), ("a/+", None), ("#", Some(3))], &[1, 3]),
        // A filter that does not match contributes nothing.
        (&[("a/b", Some(1)), ("x/#", Some(9))], &[1]),
    ];
    for (row, (subs, expected)) in table.iter().enumerate() {
        let f = Fixture::new(100, false);
        let s = session(1, true);
        for (filter, id) in subs.iter() {
            f.subscribe(&s, filter, opts(Q1), *id);
        }
        f.publish("a/b", b"x", Q1, false, 99);
        let got = take(&s);
        assert_eq!(got.len(), 1, "row {row}");
        assert_eq!(ids(&got[0]), *expected, "row {row}");
    }
}

#[test]
fn every_session_gets_its_own_copy() {
    let f = Fixture::new(100, false);
    let sessions: Vec<_> = (1..=3).map(|id| session(id, true)).collect();
    f.subscribe(&sessions[0], "a/b", opts(Q0), None);
    f.subscribe(&sessions[1], "a/+", opts(Q1), None);
    f.subscribe(&sessions[1], "#", opts(Q2), None);
    f.subscribe(&sessions[2], "x/y", opts(Q2), None);
    assert_eq!(f.publish("a/b", b"x", Q2, false, 99), 2);
    let qos: Vec<Vec<QoS>> = sessions
        .iter()
        .map(|s| take(s).iter().map(|o| o.delivery.qos).collect())
        .collect();
    assert_eq!(qos, vec![vec![Q0], vec![Q2], vec![]]);
}

#[test]
fn no_local_keeps_a_sessions_own_messages_from_it() {
    // (subscriptions as (filter, QoS, no local, id), publisher is the subscriber,
    //  delivered as (QoS, identifiers) or None)
    type Row = (
        &'static [(&'static str, QoS, bool, Option<u32>)],
        bool,
        Option<(QoS, &'static [u32])>,
    );
    let table: &[Row] = &[
        (&[("a/b", Q1, true, None)], true, None),
        (&[("a/b", Q1, true, None)], false, Some((Q1, &[]))),
        (&[("a/b", Q1, false, None)], true, Some((Q1, &[]))),
        (&[("a/b", Q1, false, None)], false, Some((Q1, &[]))),
        // Only the subscription without No Local counts for the own message: its QoS, its id.
        (
            &[("a/b", Q2, true, Some(1)), ("a/+", Q1, false, Some(2))],
            true,
            Some((Q1, &[2])),
        ),
        (
            &[("a/b", Q2, true, Some(1)), ("a/+", Q1, false, Some(2))],
            false,
            Some((Q2, &[1, 2])),
        ),
        (
            &[("a/b", Q2, true, Some(1)), ("#", Q0, true, Some(2))],
            true,
            None,
        ),
    ];
    for (row, (subs, own, expected)) in table.iter().enumerate() {
        let f = Fixture::new(100, false);
        let s = session(5, true);
        for (filter, qos, no_local, id) in subs.iter() {
            let options = SubscriptionOptions {
                no_local: *no_local,
                ..opts(*qos)
            };
            f.subscribe(&s, filter, options, *id);
        }
        let origin = if *own { s.id } else { 6 };
        let queued = f.publish("a/b", b"x", Q2, false, origin);
        let got = take(&s);
        match expected {
            None => {
                assert_eq!((queued, got.len()), (0, 0), "row {row}");
            }
            Some((qos, expected_ids)) => {
                assert_eq!((queued, got.len()), (1, 1), "row {row}");
                assert_eq!(got[0].delivery.qos, *qos, "row {row}");
                assert_eq!(ids(&got[0]), *expected_ids, "row {row}");
            }
        }
    }
}

#[test]
fn retain_as_published_keeps_the_flag_of_a_live_message_only_with_the_option() {
    // (message retained, Retain As Published on a plain subscription, on a shared one, RETAIN sent)
    let table = [
        (false, false, false),
        (false, true, false),
        (true, false, false),
        (true, true, true),
    ];
    for (row, (retain, rap, expected)) in table.into_iter().enumerate() {
        for filter in ["a/b", "$share/g/a/b"] {
            let f = Fixture::new(100, false);
            let s = session(1, true);
            let options = SubscriptionOptions {
                retain_as_published: rap,
                ..opts(Q1)
            };
            f.subscribe(&s, filter, options, None);
            assert_eq!(
                f.publish("a/b", b"x", Q1, retain, 99),
                1,
                "row {row} {filter}"
            );
            let got = take(&s);
            assert_eq!(got.len(), 1, "row {row} {filter}");
            assert_eq!(got[0].delivery.retain, expected, "row {row} {filter}");
        }
    }
}

#[test]
fn retain_as_published_on_any_one_overlapping_subscription_keeps_the_flag() {
    let f = Fixture::new(100, false);
    let s = session(1, true);
    let rap = SubscriptionOptions {
        retain_as_published: true,
        ..opts(Q0)
    };
    f.subscribe(&s, "a/b", opts(Q1), None);
    f.subscribe(&s, "a/+", rap, None);
    f.publish("a/b", b"x", Q1, true, 99);
    let got = take(&s);
    assert_eq!(got.len(), 1);
    assert!(got[0].delivery.retain);
    assert_eq!(got[0].delivery.qos, Q1);
}

#[test]
fn a_shared_group_gets_each_message_once_spread_over_its_members() {
    let f = Fixture::new(100, false);
    let members: Vec<_> = (1..=3).map(|id| session(id, true)).collect();
    for m in &members {
        f.subscribe(m, "$share/g/a/+", opts(Q1), Some(m.id as u32));
    }
    for i in 0..6 {
        assert_eq!(f.publish("a/b", b"x", Q1, false, 99), 1, "message {i}");
    }
    let got: Vec<Vec<Outgoing>> = members.iter().map(|m| take(m)).collect();
    // Round robin: two each, with the member's own identifier only.
    for (m, out) in members.iter().zip(&got) {
        assert_eq!(out.len(), 2, "member {}", m.id);
        for o in out {
            assert_eq!(o.delivery.subscription_ids, vec![m.id as u32]);
            assert_eq!(o.delivery.qos, Q1);
        }
    }
}

#[test]
fn a_shared_group_prefers_online_members() {
    let f = Fixture::new(100, false);
    let online = session(1, true);
    let offline = session(2, false);
    f.subscribe(&online, "$share/g/a/b", opts(Q1), None);
    f.subscribe(&offline, "$share/g/a/b", opts(Q1), None);
    for _ in 0..4 {
        assert_eq!(f.publish("a/b", b"x", Q1, false, 99), 1);
    }
    assert_eq!((online.queue_len(), offline.queue_len()), (4, 0));
}

#[test]
fn each_shared_group_and_each_plain_subscriber_gets_a_copy() {
    // (shared/plain subscriptions as (session, filter, QoS), publish QoS,
    //  copies returned, per session (copies, QoS of the first))
    type Row = (
        &'static [(usize, &'static str, QoS)],
        QoS,
        usize,
        [(usize, Option<QoS>); 4],
    );
    let table: &[Row] = &[
        // Two groups on the same filter: one copy each.
        (
            &[(0, "$share/g1/a/b", Q1), (1, "$share/g2/a/b", Q2)],
            Q2,
            2,
            [(1, Some(Q1)), (1, Some(Q2)), (0, None), (0, None)],
        ),
        // Same group name, different filters: two groups.
        (
            &[(0, "$share/g/a/b", Q1), (1, "$share/g/a/+", Q1)],
            Q1,
            2,
            [(1, Some(Q1)), (1, Some(Q1)), (0, None), (0, None)],
        ),
        // A plain subscriber beside a group of two.
        (
            &[(0, "$share/g/#", Q2), (1, "$share/g/#", Q2), (2, "a/b", Q0)],
            Q1,
            2,
            [(1, Some(Q1)), (0, None), (1, Some(Q0)), (0, None)],
        ),
        // A session both in a group and subscribed plainly gets both copies.
        (
            &[(3, "$share/g/a/b", Q1), (3, "a/b", Q2)],
            Q2,
            2,
            [(0, None), (0, None), (0, None), (2, Some(Q2))],
        ),
    ];
    for (row, (subs, published, queued, expected)) in table.iter().enumerate() {
        let f = Fixture::new(100, false);
        let sessions: Vec<_> = (1..=4).map(|id| session(id, true)).collect();
        for (i, filter, qos) in subs.iter() {
            f.subscribe(&sessions[*i], filter, opts(*qos), None);
        }
        assert_eq!(
            f.publish("a/b", b"x", *published, false, 99),
            *queued,
            "row {row}"
        );
        for (i, s) in sessions.iter().enumerate() {
            let got = take(s);
            let mut qos: Vec<QoS> = got.iter().map(|o| o.delivery.qos).collect();
            qos.sort_unstable_by(|a, b| b.cmp(a));
            assert_eq!(
                (got.len(), qos.first().copied()),
                expected[i],
                "row {row} session {i}"
            );
        }
    }
}

#[test]
fn retained_messages_are_set_replaced_and_cleared_by_an_empty_payload() {
    let f = Fixture::new(100, false);
    let retained = |filter: &str| -> Vec<(String, Bytes)> {
        let mut v: Vec<_> = f
            .router
            .retained_for(filter, opts(Q2), None, &mut Room::unbounded())
            .0
            .into_iter()
            .map(|d| (d.msg.topic.to_string(), d.msg.payload.clone()))
            .collect();
        v.sort();
        v
    };
    // (topic, payload, retain flag, retained store afterwards for `#`)
    type Step = (
        &'static str,
        &'static [u8],
        bool,
        &'static [(&'static str, &'static [u8])],
    );
    let steps: &[Step] = &[
        ("a/b", b"one", true, &[("a/b", b"one")]),
        ("a/b", b"two", true, &[("a/b", b"two")]),
        // Without the flag the store is untouched.
        ("a/b", b"live", false, &[("a/b", b"two")]),
        ("a/c", b"three", true, &[("a/b", b"two"), ("a/c", b"three")]),
        ("a/b", b"", true, &[("a/c", b"three")]),
        // Clearing what is not there is harmless; an empty payload without the flag clears nothing.
        ("x", b"", true, &[("a/c", b"three")]),
        ("a/c", b"", false, &[("a/c", b"three")]),
        ("a/c", b"", true, &[]),
    ];
    for (step, (topic, payload, retain, expected)) in steps.iter().enumerate() {
        f.publish(topic, payload, Q1, *retain, 99);
        let expected: Vec<(String, Bytes)> = expected
            .iter()
            .map(|(t, p)| (t.to_string(), Bytes::from_static(p)))
            .collect();
        assert_eq!(retained("#"), expected, "step {step}");
        assert_eq!(f.router.retained_len(), expected.len(), "step {step}");
    }
}

#[test]
fn retained_for_a_subscribe_sets_retain_at_the_lower_of_granted_and_message_qos() {
    // (granted QoS, retained message QoS, delivered QoS)
    let table = [
        (Q0, Q2, Q0),
        (Q1, Q2, Q1),
        (Q2, Q2, Q2),
        (Q2, Q0, Q0),
        (Q2, Q1, Q1),
        (Q1, Q1, Q1),
    ];
    for (row, (granted, stored, expected)) in table.into_iter().enumerate() {
        let f = Fixture::new(100, false);
        f.publish("a/b", b"kept", stored, true, 99);
        let (found, _) =
            f.router
                .retained_for("a/+", opts(granted), Some(4), &mut Room::unbounded());
        assert_eq!(found.len(), 1, "row {row}");
        let d = &found[0];
        assert_eq!(d.qos, expected, "row {row}");
        assert!(
            d.retain,
            "row {row}: RETAIN set on a message sent for a subscribe"
        );
        assert_eq!(d.subscription_ids, vec![4], "row {row}");
        assert_eq!(&d.msg.payload[..], b"kept", "row {row}");
    }
}

#[test]
fn retained_for_matches_the_filter() {
    let f = Fixture::new(100, false);
    for topic in ["a/b", "a/c", "a/b/c", "x/b", "$SYS/uptime"] {
        f.publish(topic, b"v", Q0, true, 99);
    }
    // (filter, topics found, sorted)
    let table: &[(&str, &[&str])] = &[
        ("a/b", &["a/b"]),
        ("a/+", &["a/b", "a/c"]),
        ("a/#", &["a/b", "a/b/c", "a/c"]),
        ("+/b", &["a/b", "x/b"]),
        ("#", &["a/b", "a/b/c", "a/c", "x/b"]),
        ("$SYS/#", &["$SYS/uptime"]),
        ("nothing/here", &[]),
    ];
    for (filter, expected) in table {
        let mut topics: Vec<String> = f
            .router
            .retained_for(filter, opts(Q1), None, &mut Room::unbounded())
            .0
            .iter()
            .map(|d| d.msg.topic.to_string())
            .collect();
        topics.sort();
        assert_eq!(topics, *expected, "{filter}");
    }
}

/// A subscribe's retained messages stop at the session's room, and say which bound they met.
#[test]
fn retained_for_stops_at_the_room_it_is_given() {
    let f = Fixture::new(100, false);
    for i in 0..5 {
        f.publish(&format!("r/{i}"), b"12345", Q0, true, 99);
    }
    let session = Session::new(7, "room".into());
    let mut room = session.retained_room(BacklogLimits {
        messages: 3,
        bytes: 0,
    });
    let (found, full) = f.router.retained_for("r/#", opts(Q0), None, &mut room);
    assert_eq!((found.len(), full), (3, Some(BacklogFull::Messages)));
    session.add_retained(found);
    // What waits counts: the next subscribe finds the backlog full.
    let mut room = session.retained_room(BacklogLimits {
        messages: 3,
        bytes: 0,
    });
    let (found, full) = f.router.retained_for("r/#", opts(Q0), None, &mut room);
    assert_eq!((found.len(), full), (0, Some(BacklogFull::Messages)));
    // 8 bytes of topic and payload each: 20 bytes hold two.
    let mut room = Session::new(8, "bytes".into()).retained_room(BacklogLimits {
        messages: 0,
        bytes: 20,
    });
    let (found, full) = f.router.retained_for("r/#", opts(Q0), None, &mut room);
    assert_eq!((found.len(), full), (2, Some(BacklogFull::Bytes)));
    let (found, full) = f.router.retained_for("nothing", opts(Q0), None, &mut room);
    assert_eq!((found.len(), full), (0, None));
}

#[test]
fn qos0_for_an_offline_session_is_dropped_and_counted_unless_configured() {
    // (online, queue_qos0_offline, publish QoS, queued)
    let table = [
        (true, false, Q0, true),
        (false, false, Q0, false),
        (false, true, Q0, true),
        (false, false, Q1, true),
        (false, false, Q2, true),
        (true, true, Q0, true),
    ];
    for (row, (online, qos0_offline, qos, queued)) in table.into_iter().enumerate() {
        let f = Fixture::new(100, qos0_offline);
        let s = session(1, online);
        f.subscribe(&s, "a/b", opts(Q2), None);
        assert_eq!(
            f.publish("a/b", b"x", qos, false, 99),
            usize::from(queued),
            "row {row}"
        );
        assert_eq!(s.queue_len(), usize::from(queued), "row {row}");
        let dropped = if queued { 0.0 } else { 1.0 };
        assert_eq!(f.dropped("offline_qos0"), dropped, "row {row}");
    }
}

#[test]
fn a_qos0_subscription_downgrades_to_qos0_and_is_then_dropped_offline() {
    let f = Fixture::new(100, false);
    let s = session(1, false);
    f.subscribe(&s, "a/b", opts(Q0), None);
    assert_eq!(f.publish("a/b", b"x", Q2, false, 99), 0);
    assert_eq!(s.queue_len(), 0);
    assert_eq!(f.dropped("offline_qos0"), 1.0);
}

#[test]
fn a_full_queue_drops_and_publish_counts_only_the_sessions_queued_for() {
    // (queue bound, copies already queued per session, online, QoS, queued now, reason counted)
    let table = [
        (2, [0, 1, 2], true, Q1, 2, Some("queue_full")),
        (2, [2, 2, 2], true, Q1, 0, Some("queue_full")),
        (2, [0, 2, 2], true, Q0, 1, Some("slow_consumer_qos0")),
        (2, [0, 2, 2], false, Q1, 1, Some("queue_full")),
        (1, [0, 0, 0], true, Q2, 3, None),
    ];
    for (row, (bound, before, online, qos, queued, reason)) in table.into_iter().enumerate() {
        let f = Fixture::new(bound, true);
        let sessions: Vec<_> = (1..=3).map(|id| session(id, online)).collect();
        for (s, n) in sessions.iter().zip(before) {
            f.subscribe(s, "a/b", opts(Q2), None);
            for _ in 0..n {
                let d = crate::session::Delivery {
                    msg: message("a/b", b"old", Q1, false, 99),
                    qos: Q1,
                    retain: false,
                    subscription_ids: Vec::new(),
                    seq: 0,
                };
                let limits = QueueLimits {
                    max_queued: bound,
                    max_queued_bytes: 0,
                    queue_qos0_offline: true,
                };
                s.enqueue(d, limits, |_| 0);
            }
        }
        assert_eq!(
            f.publish("a/b", b"new", qos, false, 99),
            queued,
            "row {row}"
        );
        let lens: Vec<usize> = sessions.iter().map(|s| s.queue_len()).collect();
        assert!(lens.iter().all(|&l| l <= bound), "row {row}: {lens:?}");
        let dropped = 3 - queued;
        match reason {
            Some(r) => assert_eq!(f.dropped(r), dropped as f64, "row {row}"),
            None => assert_eq!(dropped, 0, "row {row}"),
        }
    }
}

#[test]
fn the_queue_keeps_the_older_messages_when_full() {
    let f = Fixture::new(2, false);
    let s = session(1, true);
    f.subscribe(&s, "a/b", opts(Q1), None);
    let counts: Vec<usize> = [&b"1"[..], b"2", b"3"]
        .iter()
        .map(|p| {
            f.router.publish(Arc::new(Message::new(
                &"a/b".into(),
                &Bytes::copy_from_slice(p),
                Q1,
                false,
                99,
                None,
            )))
        })
        .collect();
    assert_eq!(counts, vec![1, 1, 0]);
    let payloads: Vec<Bytes> = take(&s)
        .into_iter()
        .map(|o| o.delivery.msg.payload.clone())
        .collect();
    assert_eq!(
        payloads,
        vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")]
    );
}

#[test]
fn no_subscribers_is_counted_except_for_the_brokers_own_messages() {
    // (origin, dropped counted)
    for (origin, counted) in [(99, 1.0), (0, 0.0)] {
        let f = Fixture::new(100, false);
        assert_eq!(f.publish("a/b", b"x", Q1, false, origin), 0);
        assert_eq!(f.dropped("no_subscribers"), counted, "origin {origin}");
    }
}

#[test]
fn subscribing_after_a_publish_and_unsubscribing_take_effect_at_once() {
    // The index caches matches per topic: a later subscribe or unsubscribe must not be hidden.
    let f = Fixture::new(100, false);
    let a = session(1, true);
    let b = session(2, true);
    f.subscribe(&a, "a/+", opts(Q1), None);
    assert_eq!(f.publish("a/b", b"x", Q1, false, 99), 1);
    f.subscribe(&b, "a/#", opts(Q1), None);
    assert_eq!(f.publish("a/b", b"x", Q1, false, 99), 2);
    assert!(f.router.unsubscribe(&a, "a/+"));
    assert!(!f.router.unsubscribe(&a, "a/+"));
    assert_eq!(f.publish("a/b", b"x", Q1, false, 99), 1);
    assert_eq!((a.queue_len(), b.queue_len()), (2, 2));
    assert!(f.router.unsubscribe(&b, "a/#"));
    assert_eq!(f.publish("a/b", b"x", Q1, false, 99), 0);
    assert_eq!(f.router.subscription_len(), 0);
}

#[test]
fn a_resubscribe_replaces_the_options() {
    let f = Fixture::new(100, false);
    let s = session(1, true);
    assert!(
        !f.router
            .subscribe(&s, &"a/b".into(), opts(Q2), Some(1))
            .unwrap()
            .replaced
    );
    assert!(
        f.router
            .subscribe(&s, &"a/b".into(), opts(Q0), Some(2))
            .unwrap()
            .replaced
    );
    assert_eq!(f.router.subscription_len(), 1);
    f.publish("a/b", b"x", Q2, false, 99);
    let got = take(&s);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (
            got[0].delivery.qos,
            got[0].delivery.subscription_ids.clone()
        ),
        (Q0, vec![2])
    );
}

/// The cluster's side of what the router announces, into the log the store records into too.
#[derive(Default)]
struct Heard(Arc<Mutex<Vec<String>>>);

impl Cluster for Heard {
    fn forward(&self, m: &Arc<Message>, _: &Matches<SessionId, Subscriber>, _: &mut Confirm) {
        self.0.lock().push(format!("forward {}", m.topic));
    }
    fn share(&self, _: &Arc<Message>, _: &str, _: &str, _: &mut Confirm) -> bool {
        true
    }
    fn interest(&self, filter: &str, group: Option<&str>, change: Interest) {
        self.0.lock().push(format!("{change:?} {filter} {group:?}"));
    }
    fn claim(&self, _: &str, _: tokio::time::Instant) -> Claiming {
        Box::pin(std::future::ready(Claim::granted()))
    }
}

#[test]
fn the_seams_hear_interest_forwards_retained_writes_and_persistent_queues() {
    let cluster = Arc::new(Heard::default());
    let store = Arc::new(Recording::into(cluster.0.clone()));
    let f = Fixture::new(10, false);
    let router = f.router.with_store(store).with_cluster(cluster.clone());
    let (a, b) = (session(1, true), session(2, false));
    b.set_expiry_interval(60);
    let sub = |s: &Arc<Session>, filter: &str| {
        let filter = ByteString::from(filter);
        if let Err(e) = router.subscribe(s, &filter, opts(Q1), None) {
            panic!("{filter} refused: {e}");
        }
    };
    let publish = |topic: &str, payload: &'static [u8], qos, retain, origin| {
        router.publish(message(topic, payload, qos, retain, origin));
    };
    let heard = |what: &str, want: &[&str]| {
        let heard = std::mem::take(&mut *cluster.0.lock());
        assert_eq!(heard, want, "{what}");
    };
    sub(&a, "t/#");
    heard("a subscribes t/#", &["Appeared t/# None"]);
    sub(&b, "t/#");
    heard("b too, persistent", &["PersistentIn t/# None"]);
    sub(&a, "t/#");
    heard("a again: a replacement", &[]);
    sub(&b, "t/#");
    heard("b again: still the same persistent subscriber", &[]);
    sub(&b, "$share/g/t/#");
    heard(
        "b in a group",
        &["Appeared t/# Some(\"g\")", "PersistentIn t/# Some(\"g\")"],
    );
    publish("t/1", b"x", Q1, true, 1);
    // Stored before delivery; b twice (plain and group), a is a clean session.
    let to_b = ["queued client-2 t/1", "queued client-2 t/1"];
    heard(
        "a retained QoS 1",
        &[&["retained t/1 true"][..], &to_b, &["forward t/1"]].concat(),
    );
    publish("t/2", b"x", Q0, false, 1);
    heard("a QoS 0", &["forward t/2"]);
    publish("t/3", b"x", Q1, false, 0);
    // Delivered locally (b is persistent), but never forwarded.
    heard(
        "the broker's own",
        &["queued client-2 t/3", "queued client-2 t/3"],
    );
    publish("t/1", b"", Q1, true, 1);
    // The empty message itself is delivered like any other [MQTT-3.3.1-10].
    heard(
        "a clears",
        &[&["retained t/1 false"][..], &to_b, &["forward t/1"]].concat(),
    );
    router.unsubscribe(&a, "t/#");
    heard("a leaves", &[]);
    router.unsubscribe(&b, "t/#");
    heard("b leaves", &["PersistentOut t/# None", "Gone t/# None"]);
    router.unsubscribe(&b, "t/#");
    heard("b leaves again", &[]);
    router.unsubscribe(&b, "$share/g/t/#");
    heard(
        "b leaves its group",
        &["PersistentOut t/# Some(\"g\")", "Gone t/# Some(\"g\")"],
    );
}
