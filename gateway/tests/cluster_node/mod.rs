//! Gateway cluster nodes as processes of their own (`binary::Gateway`), ready once they claim
//! client ids through NATS: for the tests that kill one with SIGKILL.
//!
//! The owner records say which node holds a client id's session. A test crate using it
//! declares `mod binary; mod clients; mod common;` beside it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::binary::{scratch::Scratch, Gateway};
use super::clients::{unique_id, v5, QUIET, WAIT};
use super::common::nats::NatsServer;

/// A node of the cluster on `nats`, named `name`, with `more` in its configuration (TOML
/// tables of its own), once it claims client ids through NATS.
pub async fn ready_node_with(nats: &NatsServer, name: &str, dir: &Scratch, more: &str) -> Gateway {
    let node = Gateway::cluster_node_with(&nats.url(), name, dir, more);
    cluster_ready(nats, node.addr).await;
    node
}

/// Waits until the node at `addr` claims client ids across the cluster (its NATS connection
/// comes up in the background): a probe's CONNECT there writes its owner record.
pub async fn cluster_ready(nats: &NatsServer, addr: SocketAddr) {
    let client = async_nats::connect(nats.url()).await.expect("NATS connect");
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + WAIT;
    loop {
        let id = unique_id("probe");
        v5::connect(addr, &id).await.disconnect().await;
        if let Ok(kv) = js.get_key_value("gateway_sessions").await {
            let key = format!("c{}", URL_SAFE_NO_PAD.encode(&id));
            if matches!(kv.get(key).await, Ok(Some(_))) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "node never claimed through NATS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node that owns `client_id` once `dead` no longer does: a survivor that adopted its
/// session (`cluster::adoption`), after `dead` fell silent and the owner records were scanned.
pub async fn adopted_by(nats: &NatsServer, client_id: &str, dead: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((node, _)) = owner_of(nats, client_id).await {
            if node != dead {
                return node;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{client_id}: still owned by the dead node {dead} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `client_id`'s owner record: node and instance (which start of it); `None` while it has none.
pub async fn owner_of(nats: &NatsServer, client_id: &str) -> Option<(String, u64)> {
    let client = async_nats::connect(nats.url()).await.expect("NATS connect");
    let kv = async_nats::jetstream::new(client)
        .get_key_value("gateway_sessions")
        .await
        .expect("owner records");
    let key = format!("c{}", URL_SAFE_NO_PAD.encode(client_id));
    let value = kv.get(&key).await.expect("owner record")?;
    let owner: serde_json::Value = serde_json::from_slice(&value).expect("owner record");
    Some((
        owner["node"].as_str().expect("node").to_owned(),
        owner["instance"].as_u64().expect("instance"),
    ))
}

/// Connects the persistent v5 session `id` again on `addr` (it must find its session there)
/// and returns the messages of `acked` (each payload its number) it is not given.
pub async fn never_delivered(addr: SocketAddr, id: &str, expiry: u32, acked: &[u32]) -> Vec<u32> {
    let mut back = v5::Client::connect(v5::persistent(addr, id, expiry)).await;
    assert!(back.connack.session_present, "{id}: its session was kept");
    let mut got = std::collections::BTreeSet::new();
    while let Some(p) = back.try_next_publish(QUIET).await {
        got.insert(String::from_utf8(p.payload.to_vec()).expect("UTF-8"));
    }
    back.disconnect().await;
    acked
        .iter()
        .copied()
        .filter(|seq| !got.contains(&seq.to_string()))
        .collect()
}
