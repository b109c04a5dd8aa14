//! The cluster seam: what a node tells the other nodes of one logical broker, and asks of them.
//!
//! A node forwards a locally published message to the nodes that want it, announces when it gains
//! its first or loses its last local subscriber for a filter (the topic index reports both, as
//! nats-server's sublist does for route interest), and claims a client id before attaching its
//! session, so that a client id is unique across the cluster: the claim brings along the state
//! another node held for it (`Claim`), which that node gives up through `Sessions`.
//! `Standalone`, the default, is a single node: nobody else wants anything, and every claim is
//! granted.
//!
//! `[cluster] enabled` puts `NatsCluster` (`link`) in its place: nodes form one broker over
//! NATS. One concept a file: `subject` maps MQTT topics and filters to NATS subjects,
//! `envelope` is the wire form of a forwarded message, `interest` the other nodes' filters as
//! this node learns them, and `link` the NATS connection's work: forwarding, receiving into the
//! local router (which never forwards again), and keeping this node's interest announced.
//! `owners` is the record of which node holds each client id, `handover` the moving of a
//! session from the node that held it to the one that claimed it, `adoption` the taking up of
//! a dead node's persistent sessions by the survivors. `confirm` holds a publisher's
//! acknowledgement until what it sent to other nodes is in NATS, and `watermark` until the
//! nodes holding persistent subscribers of it have taken it in.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::message::Message;
use crate::session::{Pending, SessionId};
use crate::store::SessionRecord;
use crate::subscriber::Subscriber;
use crate::topic_index::Matches;

mod adoption;
mod confirm;
mod envelope;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod handover;
mod interest;
mod link;
mod owed;
mod owners;
mod probe;
mod retained;
mod subject;
mod watermark;

pub(crate) use confirm::Confirm;
pub(crate) use link::{Link, NatsCluster};

/// What the cluster reports to `/metrics` and `/readyz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ClusterState {
    /// This node is clustered and its NATS connection is up.
    pub(crate) connected: bool,
    /// This node is clustered and its NATS connection is down: routing to other nodes stops.
    pub(crate) down: bool,
    /// (node, group, filter) entries of other nodes' interest.
    pub(crate) remote_interest: usize,
    /// Other nodes known.
    pub(crate) nodes: usize,
    /// Messages published here whose acknowledgements wait for the link to hand them to NATS.
    pub(crate) unconfirmed: usize,
    /// This node is clustered and its retained messages are not (yet, or no longer) those of
    /// the cluster's retained stream: loading at start, or the stream is unreachable.
    pub(crate) retained_behind: bool,
}

/// A change of a node's interest in one filter (with its shared group, if any). Changes to one
/// filter made by two tasks at once (a subscribe racing the last unsubscribe) may be reported in
/// either order: a cluster that mirrors interest reconciles rather than trusting the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    /// The first local subscriber appeared.
    Appeared,
    /// The last local subscriber went.
    Gone,
    /// A persistent session subscribed (or a subscription of one was replaced by one of a
    /// persistent session): whether the entry is durable may have changed.
    PersistentIn,
    /// A persistent session's subscription went (as it was when it subscribed).
    PersistentOut,
}

/// Resolves when the claim is settled: any session of the client id elsewhere was handed over.
pub(crate) type Claiming = Pin<Box<dyn Future<Output = Claim> + Send>>;

/// A settled claim of a client id: the session state another node gave up for it, if any. Held
/// until the session is attached here: meanwhile this node answers another node's claim of the
/// same client id only after it (so a hand-over never reads a session half attached).
pub(crate) struct Claim {
    pub(crate) handed_over: Option<HandedOver>,
    _hold: Option<handover::Hold>,
}

impl Claim {
    /// Nothing to take over and nothing held: the client id is this node's.
    pub(crate) fn granted() -> Claim {
        Claim {
            handed_over: None,
            _hold: None,
        }
    }
}

/// A session as one node hands it to another: subscriptions and expiry interval (the record's
/// will is never set: a will belongs to the connection that gave it), queue, outbound window and
/// inbound QoS 2 state.
#[derive(Debug)]
pub(crate) struct HandedOver {
    pub(crate) record: SessionRecord,
    pub(crate) pending: Pending,
}

/// The local sessions as the cluster sees them: the node that claims a client id asks the
/// previous owner to give its session up.
pub(crate) trait Sessions: Send + Sync + 'static {
    /// Closes the connection attached to `client_id`'s session here (taken over), waits until it
    /// let go (no later than `deadline`), and ends the session here, returning its state; `None`
    /// when there is none, or its holder did not let go in time.
    fn surrender<'a>(
        &'a self,
        client_id: &'a str,
        deadline: tokio::time::Instant,
    ) -> Pin<Box<dyn Future<Output = Option<HandedOver>> + Send + 'a>>;
    /// Hosts a session whose node is gone, offline (its client is away), unless a client
    /// attached `client_id` here meanwhile.
    fn adopt(&self, state: HandedOver);
}

pub(crate) trait Cluster: Send + Sync + 'static {
    /// A message published on this node, after local delivery: sent to the nodes with interest.
    /// `local` is what it matched here; shared groups with local members were settled by
    /// `share` already. What the publisher's acknowledgement must wait for goes in `confirm`.
    fn forward(
        &self,
        message: &Arc<Message>,
        local: &Matches<SessionId, Subscriber>,
        confirm: &mut Confirm,
    );
    /// Whether a member of the local shared group (`group`, `filter`) takes `message`; false
    /// when the cluster sent it to a member on another node instead (each message to exactly
    /// one member cluster-wide), and then `confirm` waits for that send.
    fn share(
        &self,
        message: &Arc<Message>,
        group: &str,
        filter: &str,
        confirm: &mut Confirm,
    ) -> bool;
    /// This node's interest in `filter` (in shared group `group`) changed: the router reports the
    /// topic index's first subscriber in, last subscriber out.
    fn interest(&self, filter: &str, group: Option<&str>, change: Interest);
    /// A client's retained set or clear (empty payload), applied to this node's copy already;
    /// true when the cluster keeps it (then the local store does not).
    fn retained(&self, _message: &Arc<Message>) -> bool {
        false
    }
    /// Resolves when this node may attach the session of `client_id`, no later than
    /// `deadline` (the CONNECT's handshake deadline): past it the claim is granted locally.
    fn claim(&self, client_id: &str, deadline: tokio::time::Instant) -> Claiming;
    /// The cluster's state for metrics and readiness.
    fn state(&self) -> ClusterState {
        ClusterState::default()
    }
}

/// A single node: nothing to forward or announce, every claim granted.
pub(crate) struct Standalone;

impl Cluster for Standalone {
    fn forward(&self, _: &Arc<Message>, _: &Matches<SessionId, Subscriber>, _: &mut Confirm) {}

    fn share(&self, _: &Arc<Message>, _: &str, _: &str, _: &mut Confirm) -> bool {
        true
    }

    fn interest(&self, _: &str, _: Option<&str>, _: Interest) {}

    fn claim(&self, _: &str, _: tokio::time::Instant) -> Claiming {
        Box::pin(std::future::ready(Claim::granted()))
    }
}
