//! Shared subscriptions (`$share/{group}/{filter}`): each message goes to exactly one member of
//! the group, members may mix 3.1.1 and 5.0 clients, load reaches every member, and when a member
//! leaves the remaining ones receive everything published afterwards.

mod clients;
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use clients::{unique_id, v3, v5, within, QUIET, WAIT};
use common::TestBroker;

const GROUP: &str = "$share/g/t/#";

enum Member {
    V3(Box<v3::Client>),
    V5(Box<v5::Client>),
}

impl Member {
    async fn join(addr: std::net::SocketAddr, v5: bool) -> Member {
        if v5 {
            let mut c = v5::connect(addr, &unique_id("m5")).await;
            c.subscribe(GROUP, v5::QoS::AtLeastOnce).await;
            Member::V5(Box::new(c))
        } else {
            let mut c = v3::connect(addr, &unique_id("m3")).await;
            c.subscribe(GROUP, v3::QoS::AtLeastOnce).await;
            Member::V3(Box::new(c))
        }
    }

    /// The next message's sequence number, or None after `d` of silence.
    async fn next(&mut self, d: Duration) -> Option<u32> {
        let payload = match self {
            Member::V3(c) => c.try_next_publish(d).await.map(|p| p.payload),
            Member::V5(c) => c.try_next_publish(d).await.map(|p| p.payload),
        }?;
        Some(u32::from_be_bytes(
            payload[..].try_into().expect("4-byte payload"),
        ))
    }
}

/// Reads from every member until `expected` messages arrived in total and then a quiet period
/// passed; returns what each member got.
async fn collect(members: &mut [Member], expected: usize) -> Vec<Vec<u32>> {
    let mut got = vec![Vec::new(); members.len()];
    within(
        Duration::from_secs(30),
        "shared subscription deliveries",
        async {
            let mut total = 0;
            while total < expected {
                let mut progressed = false;
                for (i, m) in members.iter_mut().enumerate() {
                    while let Some(s) = m.next(Duration::from_millis(20)).await {
                        got[i].push(s);
                        total += 1;
                        progressed = true;
                    }
                }
                if !progressed {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        },
    )
    .await;
    // Nothing beyond: a duplicate would show up here.
    for (i, m) in members.iter_mut().enumerate() {
        while let Some(s) = m.next(QUIET).await {
            got[i].push(s);
        }
    }
    got
}

fn check_exactly_once(got: &[Vec<u32>], range: std::ops::Range<u32>) {
    let total: usize = got.iter().map(Vec::len).sum();
    let distinct: BTreeSet<u32> = got.iter().flatten().copied().collect();
    let expected: BTreeSet<u32> = range.clone().collect();
    let per_member: Vec<usize> = got.iter().map(Vec::len).collect();
    println!("shared deliveries per member: {per_member:?}");
    assert_eq!(
        distinct, expected,
        "every message of {range:?} delivered to some member"
    );
    assert_eq!(
        total,
        range.len(),
        "each message delivered to exactly one member: {per_member:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_goes_to_exactly_one_member() {
    const N: u32 = 300;
    let broker = TestBroker::start().await;
    let mut members = vec![
        Member::join(broker.addr, false).await,
        Member::join(broker.addr, true).await,
        Member::join(broker.addr, false).await,
    ];
    // A plain subscriber to the same topics still gets every message.
    let mut plain = v3::connect(broker.addr, &unique_id("plain")).await;
    plain.subscribe("t/#", v3::QoS::AtLeastOnce).await;

    let publ = v5::connect(broker.addr, &unique_id("pub")).await;
    for i in 0..N {
        publ.publish(
            &format!("t/{}", i % 7),
            v5::QoS::AtLeastOnce,
            false,
            i.to_be_bytes().to_vec(),
        )
        .await;
    }
    let got = collect(&mut members, N as usize).await;
    check_exactly_once(&got, 0..N);
    for (i, g) in got.iter().enumerate() {
        assert!(
            !g.is_empty(),
            "member {i} received nothing: the group does not spread the load"
        );
    }
    for i in 0..N {
        let p = plain.next_publish(WAIT).await;
        assert_eq!(&p.payload[..], &i.to_be_bytes(), "non-shared subscriber");
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_keep_flowing_to_the_remaining_members_after_one_leaves() {
    let broker = TestBroker::start().await;
    let mut members = vec![
        Member::join(broker.addr, true).await,
        Member::join(broker.addr, false).await,
        Member::join(broker.addr, true).await,
    ];
    let mut publ = v3::connect(broker.addr, &unique_id("pub")).await;
    for i in 0..30u32 {
        publ.publish("t/a", v3::QoS::AtLeastOnce, false, i.to_be_bytes().to_vec())
            .await;
    }
    let got = collect(&mut members, 30).await;
    check_exactly_once(&got, 0..30);

    // The 3.1.1 member leaves (clean session: its subscription ends with it).
    let Member::V3(leaving) = members.remove(1) else {
        unreachable!("member 1 is the 3.1.1 client")
    };
    leaving.disconnect().await;
    for i in 30..120u32 {
        publ.publish_confirmed("t/b", v3::QoS::AtLeastOnce, false, i.to_be_bytes().to_vec())
            .await;
    }
    let got = collect(&mut members, 90).await;
    check_exactly_once(&got, 30..120);

    // And when a member drops abruptly, the last one gets everything.
    let Member::V5(dropped) = members.remove(0) else {
        unreachable!("member 0 is a 5.0 client")
    };
    dropped.abort().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 120..150u32 {
        publ.publish_confirmed("t/c", v3::QoS::AtLeastOnce, false, i.to_be_bytes().to_vec())
            .await;
    }
    let got = collect(&mut members, 30).await;
    check_exactly_once(&got, 120..150);
    broker.shutdown().await;
}
