//! The password-check slots, one per core, handed out to the newest waiter first.
//!
//! In a login storm more handshakes wait than the slots can check within the connect timeout.
//! Served oldest first, each check went to the handshake closest to its timeout: its client had
//! given up, or did so while it was hashed, and no login completed. `scripts/soak.py` saw it:
//! 9,500 devices logging in against argon2 entries beside a wrong-password flood, 660 connected
//! after five minutes. Served newest first, a check goes to the handshake with the most time
//! left; the oldest time out waiting, never hashed, and their clients retry at the top.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Waiters are pruned of those gone (timed out) when their number reaches this, then twice
/// what is left: a storm's dead waiters at the bottom of the stack cost memory only briefly.
const PRUNE_FROM: usize = 64;

pub(crate) struct HashingSlots {
    state: Mutex<State>,
}

struct State {
    free: usize,
    /// Newest last.
    waiting: Vec<oneshot::Sender<()>>,
    prune_at: usize,
}

/// A slot held; given to the newest live waiter (or back to the free count) when dropped.
pub(crate) struct Slot(Arc<HashingSlots>);

impl HashingSlots {
    pub(crate) fn new(slots: usize) -> Arc<HashingSlots> {
        Arc::new(HashingSlots {
            state: Mutex::new(State {
                free: slots,
                waiting: Vec::new(),
                prune_at: PRUNE_FROM,
            }),
        })
    }

    /// A slot, once one is free for this caller.
    pub(crate) fn acquire(self: &Arc<Self>) -> Acquire {
        let mut st = self.state.lock();
        if st.free > 0 {
            st.free -= 1;
            return Acquire {
                slots: self.clone(),
                rx: None,
            };
        }
        if st.waiting.len() >= st.prune_at {
            st.waiting.retain(|w| !w.is_closed());
            st.prune_at = (st.waiting.len() * 2).max(PRUNE_FROM);
        }
        let (tx, rx) = oneshot::channel();
        st.waiting.push(tx);
        Acquire {
            slots: self.clone(),
            rx: Some(rx),
        }
    }

    fn release(&self) {
        let mut st = self.state.lock();
        while let Some(next) = st.waiting.pop() {
            if next.send(()).is_ok() {
                return;
            }
        }
        st.free += 1;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Waiting for a slot. Dropped before it resolves (the handshake timed out), it gives back a
/// slot handed to it in the meantime.
pub(crate) struct Acquire {
    slots: Arc<HashingSlots>,
    rx: Option<oneshot::Receiver<()>>,
}

impl Future for Acquire {
    type Output = Slot;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Slot> {
        if let Some(rx) = &mut self.rx {
            // The sender is only ever dropped after sending: Err cannot come, and would mean
            // no slot was handed over.
            if Pin::new(rx).poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.rx = None;
        }
        Poll::Ready(Slot(self.slots.clone()))
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if let Some(rx) = &mut self.rx {
            rx.close();
            if rx.try_recv().is_ok() {
                self.slots.release();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn resolved(a: &mut Acquire) -> Option<Slot> {
        tokio::time::timeout(Duration::from_millis(20), a)
            .await
            .ok()
    }

    /// A freed slot goes to the newest waiter; the oldest waits longest.
    #[tokio::test]
    async fn the_newest_waiter_is_served_first() {
        let slots = HashingSlots::new(1);
        let held = slots.acquire().await;
        let (mut old, mut mid, mut new) = (slots.acquire(), slots.acquire(), slots.acquire());
        assert!(resolved(&mut old).await.is_none());
        drop(held);
        let got = resolved(&mut new).await.expect("the newest");
        assert!(resolved(&mut old).await.is_none() && resolved(&mut mid).await.is_none());
        drop(got);
        let got = resolved(&mut mid).await.expect("then the next newest");
        drop(got);
        assert!(resolved(&mut old).await.is_some());
    }

    /// A waiter that gives up, before or after a slot was handed to it, loses no slot.
    #[tokio::test]
    async fn a_waiter_that_gives_up_loses_no_slot() {
        let slots = HashingSlots::new(1);
        let held = slots.acquire().await;
        let gone_before = slots.acquire();
        drop(gone_before);
        let handed = slots.acquire();
        drop(held); // handed over to `handed`, which never polls again
        drop(handed);
        let again = slots.acquire();
        assert!(tokio::time::timeout(Duration::from_millis(20), again)
            .await
            .is_ok());
        assert_eq!(slots.state.lock().free, 1, "every slot is back");
    }

    /// Waiters gone for good do not pile up under a long storm.
    #[tokio::test]
    async fn gone_waiters_are_pruned() {
        let slots = HashingSlots::new(1);
        let _held = slots.acquire().await;
        for _ in 0..10_000 {
            drop(slots.acquire());
        }
        assert!(slots.state.lock().waiting.len() <= 2 * PRUNE_FROM);
    }
}
