//! Client id -> session, and the hand-over of a session between connections.
//!
//! Attaching to a session means holding its owner lock; a second CONNECT with the same client id
//! kicks the current holder and waits for the lock, so takeover is one atomic hand-over: the old
//! connection has stopped touching the session (queue, inflight, QoS 2 state stay in it) before the
//! new one starts. Sessions leave the map when they end (expiry 0 at close, or their expiry timer),
//! never while a connection holds them. DashMap guards are never held across an `.await`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::OwnedMutexGuard;

use crate::router::Router;
use crate::session::{Kick, Session};

/// How often a waiting attacher repeats its kick, in case the holder missed it while handing over.
const REKICK_EVERY: Duration = Duration::from_millis(50);

pub struct Registry {
    sessions: DashMap<ByteString, Arc<Session>>,
    next_id: AtomicU64,
}

/// A session now owned by the calling connection.
pub struct Attached {
    pub session: Arc<Session>,
    pub owner: OwnedMutexGuard<()>,
    /// Session state was carried over (CONNACK session present).
    pub present: bool,
    pub generation: u64,
    /// Another connection held the session and was kicked.
    pub took_over: bool,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            sessions: DashMap::new(),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions.get(client_id).map(|s| s.value().clone())
    }

    /// Every session, for shutdown and statistics.
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.sessions.iter().map(|s| s.value().clone()).collect()
    }

    /// Finds or creates the session for `client_id` and takes ownership of it, kicking a
    /// connection that holds it. With `clean_start` the session's previous state is discarded.
    pub async fn attach(
        &self,
        client_id: &ByteString,
        clean_start: bool,
        router: &Router,
    ) -> Attached {
        loop {
            let (session, existed) = match self.sessions.entry(client_id.clone()) {
                Entry::Occupied(e) => (e.get().clone(), true),
                Entry::Vacant(v) => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let s = Arc::new(Session::new(id, client_id.clone()));
                    v.insert(s.clone());
                    (s, false)
                }
            };
            let lock = session.owner_lock();
            let mut took_over = false;
            let owner = match lock.clone().try_lock_owned() {
                Ok(g) => g,
                Err(_) => loop {
                    took_over = true;
                    session.kick(Kick::TakenOver);
                    if let Ok(g) =
                        tokio::time::timeout(REKICK_EVERY, lock.clone().lock_owned()).await
                    {
                        break g;
                    }
                },
            };
            if session.is_discarded() {
                continue;
            }
            // A kick aimed at the previous holder must not hit this connection.
            session.take_kick();
            session.set_will_timer(None);
            let generation = session.begin_generation();
            if clean_start {
                let old = session.reset();
                router.unsubscribe_all(&session, &old);
            }
            return Attached {
                present: existed && !clean_start,
                session,
                owner,
                generation,
                took_over,
            };
        }
    }

    /// Ends a session: out of the map (if still mapped to it), out of the index. The caller owns it.
    pub fn end(&self, session: &Arc<Session>, router: &Router) {
        self.sessions
            .remove_if(&session.client_id, |_, s| Arc::ptr_eq(s, session));
        session.mark_discarded();
        let subs = session.reset();
        router.unsubscribe_all(session, &subs);
    }

    /// Ends the session after `after` unless a connection attached to it in the meantime.
    pub fn expire_later(
        self: &Arc<Self>,
        session: Arc<Session>,
        generation: u64,
        after: Duration,
        router: Arc<Router>,
    ) {
        let registry = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let Ok(_owner) = session.owner_lock().try_lock_owned() else {
                return;
            };
            if session.generation() == generation && !session.is_discarded() {
                registry.end(&session, &router);
            }
        });
    }
}
