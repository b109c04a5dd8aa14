//! Client id -> session, and the hand-over of a session between connections.
//!
//! Attaching to a session means owning it (`Ownership`); a second CONNECT with the same client id
//! kicks the current owner and waits until it lets go, so takeover is one atomic hand-over: the old
//! connection has stopped touching the session (queue, inflight, QoS 2 state stay in it) before the
//! new one starts. Sessions leave the map when they end (expiry 0 at close, or their expiry timer),
//! never while a connection holds them. DashMap guards are never held across an `.await`.
//!
//! The registry also decides a session's fate when its connection goes (`detach`): the session
//! ends at once, or lives on offline until its expiry; the will goes out at once or after its
//! delay. What happens later is an entry in one `Timers` (wall-clock deadlines), fired by one
//! task per broker (`run_timers`), and it fires only if no connection attached in between.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::clock::{unix_millis, UnixMillis};
use crate::cluster::HandedOver;
use crate::message::Message;
use crate::router::Router;
use crate::session::{Delivery, Kick, Ownership, Session};
use crate::store::{Restored, SessionRecord, StoredWill};
use crate::timers::Timers;

/// How often an attacher checks whether the kicked holder has let go: from quickly (a takeover
/// usually completes within a millisecond) backing off to a bound.
const TAKEOVER_POLL_MIN: Duration = Duration::from_millis(1);
const TAKEOVER_POLL_MAX: Duration = Duration::from_millis(20);

pub(crate) struct Registry {
    /// A set of sessions looked up by client id: each slot is one pointer, not a key and a value.
    sessions: DashMap<Mapped, ()>,
    next_id: AtomicU64,
    later: Timers<Later>,
}

/// What the registry does later for a session whose connection went, only if no connection
/// attached to the session since (`generation` is the departed connection's).
struct Later {
    session: Arc<Session>,
    generation: u32,
    what: Due,
}

enum Due {
    Will(Arc<Message>),
    Expiry,
}

/// How a connection left its session, for `Registry::detach`.
pub(crate) struct Departure {
    pub(crate) generation: u32,
    /// Another connection took the session over: it lives on, whatever its expiry.
    pub(crate) taken_over: bool,
    /// The will to publish and its delay in seconds; `None` when the close does not publish it.
    pub(crate) will: Option<(Arc<Message>, u32)>,
}

/// A session as the map holds it, hashed and compared by its client id, so that the map finds it
/// by a `&str` without storing the id a second time.
struct Mapped(Arc<Session>);

impl Hash for Mapped {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes: `Borrow<str>` requires the same hash for the same id.
        self.0.client_id[..].hash(state);
    }
}

impl PartialEq for Mapped {
    fn eq(&self, other: &Mapped) -> bool {
        self.0.client_id == other.0.client_id
    }
}

impl Eq for Mapped {}

impl Borrow<str> for Mapped {
    fn borrow(&self) -> &str {
        &self.0.client_id
    }
}

/// A session now owned by the calling connection.
pub(crate) struct Attached {
    pub session: Arc<Session>,
    pub owner: Ownership,
    /// Session state was carried over (CONNACK session present).
    pub present: bool,
    pub generation: u32,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    pub(crate) fn new() -> Registry {
        Registry {
            sessions: DashMap::new(),
            next_id: AtomicU64::new(1),
            later: Timers::default(),
        }
    }

    pub(crate) fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions.get(client_id).map(|s| s.key().0.clone())
    }

    /// Every session, for shutdown and statistics.
    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        self.sessions.iter().map(|s| s.key().0.clone()).collect()
    }

    /// Finds or creates the session for `client_id` and takes ownership of it, kicking a
    /// connection that holds it. With `clean_start` the session's previous state is discarded.
    /// `deadline` bounds the cluster's claim (the handshake's), not the local takeover.
    pub(crate) async fn attach(
        &self,
        client_id: &str,
        clean_start: bool,
        router: &Router,
        deadline: tokio::time::Instant,
    ) -> Attached {
        // Held until attached: another node's take request for this client id waits for it.
        let mut claim = router.cluster.claim(client_id, deadline).await;
        loop {
            let (session, existed) = match self.sessions.get(client_id) {
                Some(s) => (s.key().0.clone(), true),
                None => self.insert(client_id),
            };
            let mut pause = TAKEOVER_POLL_MIN;
            let owner = loop {
                if let Some(o) = session.try_own() {
                    break o;
                }
                // Repeated: the holder may have been between its kick check and letting go.
                session.kick(Kick::TakenOver);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(TAKEOVER_POLL_MAX);
            };
            if session.is_discarded() {
                continue;
            }
            // A kick aimed at the previous holder must not hit this connection.
            // Bumping the generation also voids a pending delayed will and expiry: the client
            // came back in time.
            session.take_kick();
            let generation = session.begin_generation();
            let handed_over = claim.handed_over.take();
            let came_over = handed_over.is_some();
            if clean_start || came_over {
                let stored = session.is_persistent();
                let old = session.reset();
                router.unsubscribe_all(&session, &old);
                // A session that came over and is not taken up is gone everywhere: its
                // previous node left its records to this one (`store::jetstream`).
                if stored || (came_over && clean_start) {
                    router.store.session_removed(&session.client_id);
                }
            }
            if let (Some(h), false) = (handed_over, clean_start) {
                install(&session, h, router);
            }
            return Attached {
                present: (existed || came_over) && !clean_start,
                session,
                owner,
                generation,
            };
        }
    }

    /// Gives `client_id`'s session up to another node: kicks its connection (taken over), waits
    /// until it let go (no later than `deadline`) and ends the session here, returning its
    /// state. A delayed will of its last connection is voided: its client is back, elsewhere.
    pub(crate) async fn surrender(
        &self,
        client_id: &str,
        router: &Router,
        deadline: tokio::time::Instant,
    ) -> Option<HandedOver> {
        let session = self.get(client_id)?;
        let mut pause = TAKEOVER_POLL_MIN;
        let _owner = loop {
            if let Some(o) = session.try_own() {
                break o;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(client = %client_id, "cluster: connection did not let go of its session in time; not handed over");
                return None;
            }
            session.kick(Kick::TakenOver);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(TAKEOVER_POLL_MAX);
        };
        if session.is_discarded() {
            return None;
        }
        session.take_kick();
        session.begin_generation();
        let record = SessionRecord {
            client_id: session.client_id.clone(),
            expiry_interval: session.expiry_interval(),
            expires_at: None,
            subscriptions: session.subscriptions(),
            will: None,
        };
        let pending = session.export_pending(read_stored(&session, router));
        self.end(&session, router);
        Some(HandedOver { record, pending })
    }

    /// Hosts a session whose node died (`cluster::adoption`): offline and routable at once, as
    /// at a restore, its expiry counted from now. The will of the connection that died with
    /// the node goes out as at a detach: after its delay, not beyond the session's end. Left
    /// alone when `client_id` has a session here already (its client came back meanwhile).
    pub(crate) fn adopt(&self, mut state: HandedOver, router: &Router) {
        let (session, existed) = self.insert(&state.record.client_id);
        if existed {
            return;
        }
        let generation = session.begin_generation();
        let expiry = state.record.expiry_interval;
        let will = state.record.will.take();
        install(&session, state, router);
        let now = unix_millis();
        let pending_will = match WillAfterLoss::of(will, expiry, now) {
            WillAfterLoss::Now(message) => {
                router.publish_will(message, &session.client_id);
                None
            }
            WillAfterLoss::Due(message, due) => {
                self.schedule(due, &session, generation, Due::Will(message.clone()));
                Some(StoredWill::Due { message, due })
            }
            WillAfterLoss::None => None,
        };
        let expires_at = (expiry != u32::MAX).then(|| now + u64::from(expiry) * 1000);
        router.save_session(&session, expires_at, pending_will);
        if let Some(due) = expires_at {
            self.schedule(due, &session, generation, Due::Expiry);
        }
    }

    /// A new session for `client_id`, or the one another connection mapped first. The map is keyed
    /// by sessions, so the candidate exists before the map is asked; a lost race only discards it.
    fn insert(&self, client_id: &str) -> (Arc<Session>, bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let fresh = Arc::new(Session::new(id, Arc::from(client_id)));
        match self.sessions.entry(Mapped(fresh.clone())) {
            Entry::Occupied(e) => (e.key().0.clone(), true),
            Entry::Vacant(v) => {
                v.insert(());
                (fresh, false)
            }
        }
    }

    /// Ends a session: out of the map (if still mapped to it), out of the index. The caller owns it.
    pub(crate) fn end(&self, session: &Arc<Session>, router: &Router) {
        self.sessions
            .remove_if(&session.client_id[..], |s, _| Arc::ptr_eq(&s.0, session));
        session.mark_discarded();
        let stored = session.is_persistent();
        let subs = session.reset();
        router.unsubscribe_all(session, &subs);
        if stored {
            router.store.session_removed(&session.client_id);
        }
    }

    /// The connection that owned `session` is gone: publishes or schedules its will, and ends
    /// the session or schedules its expiry. The caller still owns the session.
    pub(crate) fn detach(&self, session: &Arc<Session>, departure: Departure, router: &Router) {
        let Departure {
            generation,
            taken_over,
            will,
        } = departure;
        let expiry = session.expiry_interval();
        let ends = !taken_over && expiry == 0;
        let now = unix_millis();
        let mut pending_will = None;
        if let Some((will, delay)) = will {
            // A takeover is a reconnection within any will delay: only an undelayed will goes out.
            if !(taken_over && delay > 0) {
                // The will waits for its delay, but not beyond the session's end [MQTT-3.1.3-9].
                let wait = if ends { 0 } else { delay.min(expiry) };
                if wait == 0 {
                    router.publish_will(will, &session.client_id);
                } else {
                    let due = now + u64::from(wait) * 1000;
                    pending_will = Some(StoredWill::Due {
                        message: will.clone(),
                        due,
                    });
                    self.schedule(due, session, generation, Due::Will(will));
                }
            }
        }
        if taken_over {
            return;
        }
        if ends {
            self.end(session, router);
            return;
        }
        // u32::MAX is "never expires" (v5), and the 3.1.1 persistent session's expiry.
        let expires_at = (expiry != u32::MAX).then(|| now + u64::from(expiry) * 1000);
        router.save_session(session, expires_at, pending_will);
        if let Some(due) = expires_at {
            self.schedule(due, session, generation, Due::Expiry);
        }
    }

    fn schedule(&self, due: UnixMillis, session: &Arc<Session>, generation: u32, what: Due) {
        let session = session.clone();
        let entry = Later {
            session,
            generation,
            what,
        };
        self.later.schedule(due, entry);
        // At most a will and an expiry per session are valid at once; the rest were voided by a
        // reconnect and only hold their session until their deadline.
        let bound = 4 * self.sessions.len() + 64;
        self.later
            .sweep_beyond(bound, |l| l.session.generation() == l.generation);
    }

    /// Makes the stored state live again at start, before any client connects: every session
    /// offline and routable at once (its subscriptions in the index, its queue and packet ids as
    /// they were: the inflight ones go out again with DUP when its client is back), its
    /// expiry and pending will due when they were; a session that expired while the broker was
    /// down ends now, and its will goes out. A session whose connection was open when the
    /// broker went down lost it then: its expiry counts from now.
    pub(crate) fn restore(&self, restored: Restored, router: &Router) {
        let now = unix_millis();
        // Published once every session is back, so that each reaches every subscriber.
        let mut wills = Vec::new();
        for stored in restored.sessions {
            let record = stored.record;
            if record.expires_at.is_some_and(|at| at <= now) {
                if let Some(StoredWill::Due { message, .. } | StoredWill::Armed { message, .. }) =
                    record.will
                {
                    wills.push((message, record.client_id.clone()));
                }
                router.store.session_removed(&record.client_id);
                continue;
            }
            let (session, _) = self.insert(&record.client_id);
            session.set_expiry_interval(record.expiry_interval);
            let generation = session.begin_generation();
            for sub in &record.subscriptions {
                if let Err(e) = router.subscribe(&session, &sub.filter, sub.options, sub.id) {
                    tracing::warn!(client = %record.client_id, filter = %sub.filter, "stored subscription not restored: {e}");
                }
            }
            session.restore_pending(stored.pending);
            session.restore_stored(stored.stored, stored.stored_from, stored.stored_last);
            // A connection open when the broker went down was lost then.
            match WillAfterLoss::of(record.will, record.expiry_interval, now) {
                WillAfterLoss::Now(message) => wills.push((message, record.client_id.clone())),
                WillAfterLoss::Due(message, due) => {
                    self.schedule(due, &session, generation, Due::Will(message));
                }
                WillAfterLoss::None => {}
            }
            let expires_at = record.expires_at.or_else(|| {
                (record.expiry_interval != u32::MAX)
                    .then(|| now + u64::from(record.expiry_interval) * 1000)
            });
            if let Some(due) = expires_at {
                self.schedule(due, &session, generation, Due::Expiry);
            }
        }
        router.restore_retained(restored.retained);
        for (will, client_id) in wills {
            router.publish_will(will, &client_id);
        }
    }

    /// Fires delayed wills and expiries as they come due; runs until dropped.
    pub(crate) async fn run_timers(&self, router: &Router) {
        self.later.run(|later| self.fire(later, router)).await;
    }

    fn fire(&self, later: Later, router: &Router) {
        let Later {
            session,
            generation,
            what,
        } = later;
        if session.generation() != generation {
            return;
        }
        match what {
            Due::Will(will) => {
                router.publish_will(will, &session.client_id);
            }
            Due::Expiry => {
                let Some(_owner) = session.try_own() else {
                    return;
                };
                // Checked again while owning: an attach may have come in between.
                if session.generation() == generation && !session.is_discarded() {
                    self.end(&session, router);
                }
            }
        }
    }
}

/// The queue a restart left in the store for `session` (owned) and not read yet, all of it:
/// bounded by the session's queue limit, as when it was queued.
fn read_stored(session: &Session, router: &Router) -> Vec<Delivery> {
    let mut stored = Vec::new();
    let Some((mut from, until, count)) = session.stored_left() else {
        return stored;
    };
    while stored.len() < count {
        match router
            .store
            .read_queued(&session.client_id, from, until, count - stored.len())
        {
            Ok(chunk) => {
                let Some(last) = chunk.last() else { break };
                from = last.seq + 1;
                stored.extend(chunk);
            }
            Err(e) => {
                tracing::error!(client = %session.client_id, "stored queue not handed over: {e}");
                break;
            }
        }
    }
    stored
}

/// What becomes of a stored will once its connection is known lost with its broker or node (at
/// a restore, at an adoption): as at a detach, it goes out after its delay, but not beyond the
/// session's end; one already waiting keeps its time.
enum WillAfterLoss {
    Now(Arc<Message>),
    Due(Arc<Message>, UnixMillis),
    None,
}

impl WillAfterLoss {
    fn of(will: Option<StoredWill>, expiry: u32, now: UnixMillis) -> WillAfterLoss {
        match will {
            Some(StoredWill::Armed { message, delay }) => match delay.min(expiry) {
                0 => WillAfterLoss::Now(message),
                wait => WillAfterLoss::Due(message, now + u64::from(wait) * 1000),
            },
            Some(StoredWill::Due { message, due }) => WillAfterLoss::Due(message, due),
            None => WillAfterLoss::None,
        }
    }
}

/// Puts a session handed over by another node into `session` (owned, empty): its queue and
/// flows first, while nothing can reach it, then its subscriptions.
fn install(session: &Arc<Session>, mut h: HandedOver, router: &Router) {
    session.set_expiry_interval(h.record.expiry_interval);
    // Kept here from now on: the previous node (gone, or live and surrendered) keeps nothing.
    // Not waited for: until the store has it, the previous node's records still hold it.
    crate::store::jetstream::number(&mut h.pending);
    if h.record.expiry_interval > 0 {
        router.store.adopted(&h.record, &h.pending);
    }
    session.restore_pending(h.pending);
    for sub in &h.record.subscriptions {
        if let Err(e) = router.subscribe(session, &sub.filter, sub.options, sub.id) {
            tracing::warn!(client = %session.client_id, filter = %sub.filter, "handed-over subscription not installed: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
