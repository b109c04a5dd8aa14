//! Adoption: the persistent sessions of a node that died are taken up by the nodes that survive
//! it, so that what is published for them while their clients are away is queued, and stored,
//! somewhere, as one broker queues for an offline session.
//!
//! When a node falls silent (`interest::PEER_TIMEOUT`) and still does not answer a ping, once
//! this node's own NATS connection has been up for `STEADY` or at once when the silent node was
//! heard on that connection (it was back from any outage this node saw), every surviving node
//! scans the owner records for the client ids the dead node owned and takes up its share of
//! them: the nodes it knows alive, itself included, split them by a hash of the client id. Each adoption is a
//! compare-and-swap of the owner record at the revision the scan read (`Handover::adopt`), so a
//! client that came back meanwhile, or a survivor that sees other nodes alive, never has its
//! claim undone: the loser of the swap leaves the session alone. A client id without a stored
//! session (a clean one) is not claimed. The adopter publishes the will of the connection that
//! died with its node, as a single broker does when a connection drops (`Registry::adopt`).
//!
//! A node that restarts under its name before that takes its earlier start's sessions back the
//! same way (`adopt_own`).
//!
//! Not covered: a survivor that dies before it has taken up its share leaves that share without
//! a node until the clients come back (their claims read the state stream, as before adoption,
//! and the dead connections' wills are not published then); a node that
//! left cleanly (`bye`) is not adopted from, as it is expected back. A node alive but cut off
//! from NATS (not fenced) has its sessions adopted like a dead one's: until its clients come
//! back elsewhere, a message for one of them may reach both its old connection and the
//! adopter's queue.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use futures_util::StreamExt;
use tracing::{info, warn};

use super::handover::Handover;
use super::owners::Owned;
use super::probe;

/// Sessions adopted at once: each is a few round trips to JetStream.
const CONCURRENCY: usize = 16;

/// How long this node's NATS connection must have been up before it takes a silent node not
/// heard on it for dead: after a NATS outage every node reconnects on its own schedule, and one
/// not back yet is silent but alive, its clients still attached.
pub(super) const STEADY: Duration = Duration::from_secs(15);

/// Who is adopting, and where the dead node would answer if it were not.
pub(super) struct Survivor {
    pub(super) handover: Arc<Handover>,
    pub(super) client: Client,
    pub(super) prefix: String,
    pub(super) me: String,
}

/// Takes up this node's share of the sessions `dead` owned; `alive` are the other nodes known.
pub(super) async fn adopt_from(survivor: Survivor, dead: String, alive: Vec<String>) {
    let Survivor {
        handover,
        client,
        prefix,
        me,
    } = survivor;
    #[cfg(feature = "fault-injection")]
    while crate::fault::adoption_held() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if probe::answers(&client, &prefix, &dead).await {
        info!(node = %dead, "cluster: a silent node answers its pings: its sessions stay its own");
        return;
    }
    let mut survivors = alive;
    survivors.push(me.clone());
    survivors.retain(|n| *n != dead);
    survivors.sort();
    survivors.dedup();
    let orphans = match handover.orphans(&dead).await {
        Ok(o) => o,
        Err(e) => {
            warn!(node = %dead, "cluster: a silent node's sessions not adopted: {e}");
            return;
        }
    };
    let found = orphans.len();
    let mine = orphans
        .into_iter()
        .filter(|o| survivors[share(&o.client_id, survivors.len())] == me);
    let adopted = adopt_all(&handover, mine).await;
    info!(node = %dead, found, adopted, "cluster: a silent node's persistent sessions taken up");
}

/// Takes back, at start, the sessions an earlier start of this node still owns (it was killed
/// and came back before the other nodes took them up): they queue here again from now on,
/// rather than only once their clients return. Two processes never share a node name.
pub(super) async fn adopt_own(handover: Arc<Handover>, me: String, instance: u64) {
    let orphans = match handover.orphans(&me).await {
        Ok(o) => o,
        Err(e) => {
            warn!("cluster: the sessions of this node's earlier start not taken back: {e}");
            return;
        }
    };
    let earlier = orphans.into_iter().filter(|o| o.owner.instance != instance);
    let adopted = adopt_all(&handover, earlier).await;
    if adopted > 0 {
        info!(
            adopted,
            "cluster: the sessions of this node's earlier start taken back"
        );
    }
}

async fn adopt_all(handover: &Arc<Handover>, owned: impl Iterator<Item = Owned>) -> usize {
    futures_util::stream::iter(owned)
        .map(|o| handover.clone().adopt(o))
        .buffer_unordered(CONCURRENCY)
        .filter(|adopted| std::future::ready(*adopted))
        .count()
        .await
}

/// Which of `n` survivors takes up `client_id`: FNV-1a, the same on every node.
fn share(client_id: &str, n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in client_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    usize::try_from(h % n.max(1) as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survivors_split_the_client_ids_evenly_and_alike() {
        let mut counts = [0usize; 3];
        for i in 0..3_000 {
            let id = format!("device-{i}");
            let s = share(&id, 3);
            assert_eq!(s, share(&id, 3), "the same on every node");
            counts[s] += 1;
        }
        for c in counts {
            assert!((800..1_200).contains(&c), "{counts:?}");
        }
        assert_eq!(share("x", 1), 0);
    }
}
