//! Tasks the broker spawns that must not take anything else down with them.
//!
//! `Background` is a task that runs beside the broker (the parker, `$SYS` topics, the memory
//! watch, the HTTP endpoint) and stops when whatever holds it is dropped; `spawn_isolated` runs a
//! connection's task so that a panic in it ends that connection only. Both are plumbing shared by
//! the broker's parts, kept here so none of them has to import the broker to get them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::FutureExt;
use tracing::error;

use crate::metrics::Metrics;

/// A task that runs beside the broker and stops when dropped, with whatever holds it.
pub(crate) struct Background(tokio::task::JoinHandle<()>);

impl Background {
    pub(crate) fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Background {
        Background(tokio::spawn(task))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Spawns a connection's task so that a panic in it ends that task only: caught, logged and
/// counted; its `Drop`s still run (session cleanup, will, connection count).
pub(crate) fn spawn_isolated(
    metrics: Arc<Metrics>,
    peer: SocketAddr,
    task: impl Future<Output = ()> + Send + 'static,
) {
    // Combinators rather than an `async` block: a block would hold the task future twice (as
    // captured value and as awaited value), doubling every session task's size.
    let guarded = std::panic::AssertUnwindSafe(task)
        .catch_unwind()
        .map(move |outcome| {
            if let Err(panic) = outcome {
                metrics.task_panics.increment(1);
                error!(%peer, "connection task panicked: {}", panic_message(&*panic));
            }
        });
    tokio::spawn(guarded);
}

/// What a caught panic said, for the log.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown")
}
