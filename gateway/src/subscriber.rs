//! What the topic index stores for one subscription: the session it delivers to, with the
//! subscription's options and identifier. Its own module so that the router and the cluster,
//! which forwards what a message matched locally, both name it without naming each other.

use std::sync::Arc;

use crate::codec::SubscriptionOptions;
use crate::session::Session;

#[derive(Clone)]
pub struct Subscriber {
    pub session: Arc<Session>,
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
    /// Its session was persistent when it subscribed (a session goes from persistent to clean,
    /// never back, so this may say persistent of one that no longer is, never the reverse):
    /// counted for the cluster's durable interest (`Interest::PersistentIn`).
    pub durable: bool,
}
