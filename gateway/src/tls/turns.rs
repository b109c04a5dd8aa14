//! How much of the session workers TLS handshakes may take at once: rustls's work on an arriving
//! flight (ECDHE and a P-256 signature, ~0.28 ms of CPU here; an RSA 2048 signature, ~0.57 ms)
//! runs in turns, at most `TURNS` at a time, half the workers.
//!
//! tokio's workers cannot preempt a task, and their queues are first in, first out: with 100
//! handshakes in flight an established session's PUBLISH waited behind dozens of signatures.
//! QoS 1 p99 of 100 established TLS publishers went from 0.4 ms to 27 ms (ECDSA) and 80 ms (RSA)
//! while 10,000 TLS devices connected (`bench/harness.py --workloads n`). A handshake waiting
//! for its turn waits off the run queues, so the other workers stay free for the sessions. A
//! handshake's turns come in arrival order (the semaphore is fair). With turns: 8.6 / 6.5 ms
//! during the same storm; with the yield after a turn is taken (`handshake`), 3.9 / 3.8 ms.
//!
//! Handshakes on threads of their own at nice +10 did about as well for the sessions (2.3-3.9
//! ms, the kernel preempting them), but left ~1 KB of RSS per idle TLS session in those
//! threads' malloc arenas (2,532 against 1,447 B at 9,000): BENCHMARKS.md, TLS section.

use std::sync::OnceLock;

use tokio::sync::{Semaphore, SemaphorePermit};

static TURNS: OnceLock<Semaphore> = OnceLock::new();

/// Handshake steps at once: half the workers (tokio's default, one per core), at least one.
fn count() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).max(1)
}

fn turns() -> &'static Semaphore {
    TURNS.get_or_init(|| Semaphore::new(count()))
}

/// Waits for a turn; the step it allows lasts until the permit drops. (`None` only if the
/// semaphore were closed, which it never is: the step then goes without a turn.)
pub(crate) async fn take() -> Option<SemaphorePermit<'static>> {
    turns().acquire().await.ok()
}

/// Every turn, for a test that holds handshakes back.
#[cfg(test)]
pub(crate) async fn take_all() -> SemaphorePermit<'static> {
    let all = u32::try_from(count()).expect("a few turns");
    turns().acquire_many(all).await.expect("never closed")
}
