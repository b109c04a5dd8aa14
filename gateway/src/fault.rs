//! Test-only fault injection (feature `fault-injection`): failures a test cannot cause from
//! outside the process. A PUBLISH to `$fault/panic` panics its session's task (`client`), and a
//! session whose client id starts with `PANIC_ON_RESUME` panics when the parker resumes it from
//! hibernation (inside the parker's task); this file holds them and the process-wide switches
//! (a store that cannot write, a cluster link whose writes to NATS are not confirmed, a node
//! slow to adopt a dead node's sessions, one that stops taking messages from the others in).

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

static CLUSTER_FLUSH_HELD: AtomicBool = AtomicBool::new(false);

/// Holds the cluster link's confirmations that a batch is written to NATS (the messages still
/// go out) until switched off again: publishers' acknowledgements wait meanwhile.
pub fn set_cluster_flush_held(held: bool) {
    CLUSTER_FLUSH_HELD.store(held, Ordering::Relaxed);
}

pub(crate) fn cluster_flush_held() -> bool {
    CLUSTER_FLUSH_HELD.load(Ordering::Relaxed)
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

static CLUSTER_RECEIVE_HELD: Mutex<Option<String>> = Mutex::new(None);

/// Holds the cluster link of node `node` (one node of the process; None: none) from taking
/// messages from other nodes in, until switched off again: they pile up in its NATS
/// subscriptions, and beyond their capacity the client drops them as a slow consumer.
pub fn set_cluster_receive_held(node: Option<&str>) {
    if let Ok(mut held) = CLUSTER_RECEIVE_HELD.lock() {
        *held = node.map(str::to_owned);
    }
}

pub(crate) fn cluster_receive_held(node: &str) -> bool {
    CLUSTER_RECEIVE_HELD
        .lock()
        .is_ok_and(|held| held.as_deref() == Some(node))
}
