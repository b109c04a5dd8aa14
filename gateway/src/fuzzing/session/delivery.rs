//! Whether what the broker acknowledged to publishers reached the subscribers: every QoS 1/2
//! PUBLISH acknowledged with success reaches every client subscribed to its topic at QoS 1 or 2
//! at least once, and a QoS 2 one at QoS 2 exactly once, when the subscriber's limits allow.
//!
//! Judged only where the outcome is certain from the wire: the subscription's SUBACK came back
//! before the PUBLISH was sent and nothing changed it (UNSUBSCRIBE, SUBSCRIBE to the same filter)
//! before the publisher's acknowledgement came back; the subscriber is still connected at the
//! end and has acknowledged everything; the broker dropped nothing by its limits (counted);
//! the message is not retained (a new subscription gets a retained copy again), cannot
//! expire and is not for `$SYS/` (refused to clients); No Local and shared subscriptions are left out. Each PUBLISH carries a tag of its
//! own in its payload; exactly once is judged for a tag the broker only read in QoS 2 PUBLISHes
//! of one connection under one packet id not released (PUBREL) in between: resends of one
//! message, which the broker must route once, and routes when it first reads it: a resend is
//! owed only to the subscriptions in place before the first.

use std::collections::HashMap;

use super::peer::{Peer, Published};
use crate::codec::QoS;
use crate::topic;

pub(super) fn check(peers: &[&Peer], dropped: bool) {
    let mut origins: HashMap<u64, Vec<(usize, &Published)>> = HashMap::new();
    for (c, p) in peers.iter().enumerate() {
        for publish in &p.log.publishes {
            if let Some(tag) = publish.tag {
                origins.entry(tag).or_default().push((c, publish));
            }
        }
    }
    for (a, publisher) in peers.iter().enumerate() {
        for publish in &publisher.log.publishes {
            let (Some(acked), Some(tag), Some(topic)) =
                (publish.acked_at, publish.tag, &publish.topic)
            else {
                continue;
            };
            // Without an ACL file a client may not write `$SYS/`: the broker drops it (counted as
            // `not_authorized`), and a 3.x PUBACK, having no reason code, reads as success.
            if publish.qos == QoS::AtMostOnce
                || publish.retain
                || publish.expires
                || topic::is_sys(topic)
            {
                continue;
            }
            let once = exactly_once(&origins[&tag], publisher, a);
            let sent = first_sent(&origins[&tag], publish);
            let owed = !id_unreleased(peers, publisher, publish);
            for subscriber in peers.iter().filter(|p| p.attached()) {
                let received = subscriber
                    .log
                    .receipts
                    .iter()
                    .filter(|r| r.tag == Some(tag))
                    .count();
                let granted = granted(subscriber, topic, sent, acked);
                if !dropped
                    && owed
                    && granted
                        .is_some_and(|g| g != QoS::AtMostOnce && publish.qos != QoS::AtMostOnce)
                {
                    assert!(
                        received >= 1,
                        "client {}: message <{tag:x}> on {topic:?}, acknowledged to client {} at step {acked}, never arrived",
                        subscriber.slot,
                        publisher.slot
                    );
                }
                if once && !shares(subscriber) {
                    assert!(
                        received <= 1,
                        "client {}: QoS 2 message <{tag:x}> from client {} arrived {received} times",
                        subscriber.slot,
                        publisher.slot
                    );
                }
            }
        }
    }
}

/// When the broker may have routed `publish`: a QoS 2 PUBLISH sent again under its packet id
/// before the PUBREL is the message the broker took the first time (MQTT-4.3.3-10), routed then to
/// the subscriptions of then, not again. Whether a resend is such a one (the same session, the
/// id not released in between) is not always certain from the wire, so the first send counts.
fn first_sent(origins: &[(usize, &Published)], publish: &Published) -> u64 {
    if publish.qos != QoS::ExactlyOnce {
        return publish.sent_at;
    }
    origins
        .iter()
        .filter(|(_, p)| p.qos == QoS::ExactlyOnce && p.packet_id == publish.packet_id)
        .map(|(_, p)| p.sent_at)
        .min()
        .unwrap_or(publish.sent_at)
}

/// Whether `publish` (QoS 2) came under a packet id its client id had already used for a QoS 2
/// PUBLISH without a PUBREL since, on any connection of that client id: the broker may still
/// hold that id's first message (a persistent session keeps it across connections) and then
/// takes this one for it sent again [MQTT-4.3.3-10]. A client may not reuse such an id for a
/// new message, so nothing is owed for one that does.
fn id_unreleased(peers: &[&Peer], publisher: &Peer, publish: &Published) -> bool {
    let Some(client_id) = &publisher.log.client_id else {
        return false;
    };
    if publish.qos != QoS::ExactlyOnce {
        return false;
    }
    let same_client: Vec<&&Peer> = peers
        .iter()
        .filter(|p| p.log.client_id.as_ref() == Some(client_id))
        .collect();
    same_client.iter().any(|p| {
        p.log.publishes.iter().any(|earlier| {
            earlier.qos == QoS::ExactlyOnce
                && earlier.packet_id == publish.packet_id
                && earlier.sent_at < publish.sent_at
                && !same_client.iter().any(|q| {
                    q.log.pubrels.iter().any(|&(step, id)| {
                        id == publish.packet_id
                            && (earlier.sent_at..=publish.sent_at).contains(&step)
                    })
                })
        })
    })
}

/// Whether every PUBLISH with this tag is one QoS 2 message of connection `a` sent again.
fn exactly_once(origins: &[(usize, &Published)], publisher: &Peer, a: usize) -> bool {
    let first = origins[0].1;
    if !origins.iter().all(|&(c, p)| {
        c == a && p.qos == QoS::ExactlyOnce && p.packet_id == first.packet_id && !p.retain
    }) {
        return false;
    }
    let from = origins.iter().map(|(_, p)| p.sent_at).min().unwrap_or(0);
    let until = origins.iter().map(|(_, p)| p.sent_at).max().unwrap_or(0);
    !publisher
        .log
        .pubrels
        .iter()
        .any(|&(step, id)| id == first.packet_id && (from..=until).contains(&step))
}

/// The highest QoS granted to `subscriber` by a subscription certain to have been in place from
/// before `sent` to `acked` that matches `topic` (leaving out No Local and shared ones).
fn granted(subscriber: &Peer, topic: &str, sent: u64, acked: u64) -> Option<QoS> {
    let log = &subscriber.log;
    let mut best = None;
    for s in &log.subscribes {
        let Some((at, codes)) = &s.granted else {
            continue;
        };
        if *at >= sent {
            continue;
        }
        for (i, ((filter, options), &code)) in s.filters.iter().zip(codes).enumerate() {
            // A filter named again in the same SUBSCRIBE takes its last entry's options.
            if s.filters[i + 1..].iter().any(|(f, _)| f == filter) {
                continue;
            }
            let Some(qos) = QoS::from_u8(code) else {
                continue;
            };
            if options.no_local || filter.starts_with("$share/") || !topic::matches(filter, topic) {
                continue;
            }
            let changed = log
                .unsubscribes
                .iter()
                .any(|(step, f)| f == filter && *step > *at && *step <= acked)
                || log.subscribes.iter().any(|other| {
                    other.sent_at > s.sent_at
                        && other.sent_at <= acked
                        && other.filters.iter().any(|(f, _)| f == filter)
                });
            if !changed {
                best = best.max(Some(qos));
            }
        }
    }
    best
}

/// Whether `subscriber` ever asked for a shared subscription (a second copy by design).
fn shares(subscriber: &Peer) -> bool {
    subscriber
        .log
        .subscribes
        .iter()
        .any(|s| s.filters.iter().any(|(f, _)| f.starts_with("$share/")))
}
