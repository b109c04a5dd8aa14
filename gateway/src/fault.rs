//! Test-only fault injection (feature `fault-injection`): failures a test cannot cause from
//! outside the process. A PUBLISH to `$fault/panic` panics its session's task (`client`), and a
//! session whose client id starts with `PANIC_ON_RESUME` panics when the parker resumes it from
//! hibernation (inside the parker's task); this file holds them and the switches: process-wide
//! (a store that cannot write, adoption of a dead node's sessions held back) or for one cluster
//! node by name (its writes to NATS not confirmed, its taking in of other nodes' messages
//! held).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Client ids starting with this panic on leaving hibernation (`Sleeper::resume`).
pub const PANIC_ON_RESUME: &str = "fault-resume-panic";

static STORE_WRITES_FAIL: AtomicBool = AtomicBool::new(false);

/// Makes every store commit fail as on a full disk (ENOSPC) until switched off again.
pub fn set_store_writes_fail(fail: bool) {
    STORE_WRITES_FAIL.store(fail, Ordering::Relaxed);
}

pub(crate) fn store_writes_fail() -> bool {
    STORE_WRITES_FAIL.load(Ordering::Relaxed)
}

/// A switch that holds one cluster node of the process (by its `node_name`), or none: tests
/// running side by side in one process each hold only their own node.
struct NodeSwitch(Mutex<Option<String>>);

impl NodeSwitch {
    const fn new() -> NodeSwitch {
        NodeSwitch(Mutex::new(None))
    }

    fn set(&self, node: Option<&str>) {
        if let Ok(mut held) = self.0.lock() {
            *held = node.map(str::to_owned);
        }
    }

    fn holds(&self, node: &str) -> bool {
        self.0
            .lock()
            .is_ok_and(|held| held.as_deref() == Some(node))
    }
}

static CLUSTER_FLUSH_HELD: NodeSwitch = NodeSwitch::new();

/// Holds the confirmations of node `node`'s cluster link that a batch is written to NATS (the
/// messages still go out) until switched off again (None): publishers' acknowledgements wait
/// meanwhile.
pub fn set_cluster_flush_held(node: Option<&str>) {
    CLUSTER_FLUSH_HELD.set(node);
}

pub(crate) fn cluster_flush_held(node: &str) -> bool {
    CLUSTER_FLUSH_HELD.holds(node)
}

static ADOPTION_HELD: AtomicBool = AtomicBool::new(false);

/// Holds this process's adoption of a silent node's sessions (`cluster::adoption`) until
/// switched off again: the time between the node's interest expiring and its sessions having a
/// new home, which a node with many sessions to adopt takes anyway.
pub fn set_adoption_held(held: bool) {
    ADOPTION_HELD.store(held, Ordering::Relaxed);
}

pub(crate) fn adoption_held() -> bool {
    ADOPTION_HELD.load(Ordering::Relaxed)
}

static CLUSTER_RECEIVE_HELD: NodeSwitch = NodeSwitch::new();

/// Holds the cluster link of node `node` from taking messages from other nodes in, until
/// switched off again (None): they pile up in its NATS subscriptions, and beyond their capacity
/// the client drops them as a slow consumer.
pub fn set_cluster_receive_held(node: Option<&str>) {
    CLUSTER_RECEIVE_HELD.set(node);
}

pub(crate) fn cluster_receive_held(node: &str) -> bool {
    CLUSTER_RECEIVE_HELD.holds(node)
}
