//! The cluster seam: what a node tells the other nodes of one logical broker, and asks of them.
//!
//! A node forwards a locally published message to the nodes that want it, announces when it gains
//! its first or loses its last local subscriber for a filter (the topic index reports both, as
//! nats-server's sublist does for route interest), and claims a client id before attaching its
//! session, so that a client id is unique across the cluster. `Standalone`, the default, is a
//! single node: nobody else wants anything, and every claim is granted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::message::Message;

/// A change of a node's interest in one filter (with its shared group, if any). Changes to one
/// filter made by two tasks at once (a subscribe racing the last unsubscribe) may be reported in
/// either order: a cluster that mirrors interest reconciles rather than trusting the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    /// The first local subscriber appeared.
    Appeared,
    /// The last local subscriber went.
    Gone,
}

/// Resolves when the claim is settled: any session of the client id elsewhere was handed over.
pub(crate) type Claiming = Pin<Box<dyn Future<Output = ()> + Send>>;

pub(crate) trait Cluster: Send + Sync + 'static {
    /// A message published on this node, after local delivery: sent to the nodes with interest.
    fn forward(&self, message: &Arc<Message>);
    /// This node's interest in `filter` (in shared group `group`) changed: the router reports the
    /// topic index's first subscriber in, last subscriber out.
    fn interest(&self, filter: &str, group: Option<&str>, change: Interest);
    /// Resolves when this node may attach the session of `client_id`.
    fn claim(&self, client_id: &str) -> Claiming;
}

/// A single node: nothing to forward or announce, every claim granted.
pub(crate) struct Standalone;

impl Cluster for Standalone {
    fn forward(&self, _: &Arc<Message>) {}

    fn interest(&self, _: &str, _: Option<&str>, _: Interest) {}

    fn claim(&self, _: &str) -> Claiming {
        Box::pin(std::future::ready(()))
    }
}
