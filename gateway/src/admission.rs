//! The node's connection counters, as the accept loop checks them and shutdown drains them.
//!
//! Open connections are counted from accept until a connection's last task ends (see
//! `context::ConnectionSlot`), handshakes from accept until CONNACK (`limits::Handshake`). The
//! accept loop refuses at `max_connections` (the open-file limit minus a reserve) before the
//! kernel would refuse for it; shutdown waits on `idle` for the count to reach zero.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

pub(crate) struct Admission {
    connections: AtomicUsize,
    /// Connections refused beyond this (open-file limit minus reserve).
    max_connections: usize,
    /// Accepted connections not yet answered with CONNACK (`limits.max_handshakes`).
    handshakes: AtomicUsize,
    /// Notified when the last connection closes.
    idle: Notify,
}

impl Admission {
    pub(crate) fn new(max_connections: usize) -> Admission {
        Admission {
            connections: AtomicUsize::new(0),
            max_connections,
            handshakes: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// Open client connections.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Whether `open` connections leave no room under the open-file limit.
    pub(crate) fn at_fd_limit(&self, open: usize) -> bool {
        open >= self.max_connections
    }

    pub(crate) fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }

    pub(crate) fn handshake_started(&self) {
        self.handshakes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handshake_ended(&self) {
        self.handshakes.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn opened(&self) {
        self.connections.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn closed(&self) {
        if self.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Runs `close_all`, then resolves once no connection is open. The wait is registered
    /// before `close_all` starts closing them, so the last close cannot slip past it.
    pub(crate) async fn drain(&self, close_all: impl FnOnce()) {
        let idle = self.idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        close_all();
        if self.connections() > 0 {
            idle.await;
        }
    }
}
