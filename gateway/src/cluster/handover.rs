//! Claiming a client id across the cluster and moving its session to the claiming node.
//!
//! A CONNECT's claim (`Handover::claim`): write this node as the client id's owner (`owners`,
//! compare-and-swap), then, when another node owned it, ask that node on its take subject
//! (`{prefix}.c.take.{node}`) to give the session up. That node closes the connection attached
//! to it (v5 DISCONNECT 0x8E, as a local takeover), waits until the connection let go of the
//! session, ends the session there and answers with its state in the store's encoding
//! (`store::handover`); the claiming node installs it before CONNACK.
//!
//! One claim or surrender of a client id at a time per node (`busy`): a node answers a take
//! request only once its own claim of that client id in progress has attached its session.
//! Two nodes claiming one client id at once each wait for the other only if the other's epoch is
//! older: a node whose claim in progress is newer than the request answers `superseded` at once
//! (the requester's connection is then closed by the newer claim's own take request), so two
//! claims never wait for each other.
//!
//! A take request can reach this node between its own claim's win of the owner record and that
//! claim marking the client id busy; it then finds nothing to give up. So the node remembers,
//! for `SURRENDERED_FOR`, the epoch of every take request it answered (`Surrendered`): its own
//! claim of an older epoch is then stale: once attached, its session is given up as a take
//! request would have had it (connection closed with 0x8E, session ended here), so that the
//! newer claim's connection is the only one left.
//!
//! Bounds: the owner record within `CLAIM_TIMEOUT`, the previous owner's answer within
//! `TAKE_TIMEOUT`, both within the CONNECT's handshake deadline; past either the CONNECT goes
//! on with what this node has (counted), so a claim never holds a handshake beyond its
//! connect timeout.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::owners::{ClaimError, Owned, Owner, Owners};
use super::{Claim, HandedOver, Sessions};
use crate::metrics::{ClaimOutcome, ClusterDrop, Metrics, Takeover};
use crate::nats::Nats;
use crate::store::{self, JetStreamStore};

/// How long the owner record may take to be written.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(2);
/// Owner-record writes this node has in flight at most. In a connect storm the key-value
/// bucket serves a few thousand writes a second on a small box: sending every CONNECT's write
/// at once queues them beyond their deadline, so that nearly all are granted locally anyway
/// while the backlog delays every other message on the NATS connection (the 300,000-device
/// run: 85% of claims too late, beats and routed messages held up for half a minute). Claims
/// waiting for a place beyond `CLAIM_TIMEOUT` are granted locally, as a late write is.
const CLAIMS_IN_FLIGHT: usize = 64;
/// At most one warning per this time about claims granted locally for want of the owner record
/// (a storm would otherwise write one per CONNECT); `gateway_cluster_claims_total` counts each.
const LOCAL_WARNING_EVERY: Duration = Duration::from_secs(10);
/// How long the previous owner may take to give the session up.
const TAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// What of the handshake's deadline is kept for reading a session from the state stream when
/// its previous owner does not answer in time.
const READ_RESERVE: Duration = Duration::from_millis(1_000);
/// How long a take request waits for this node's claim in progress, and for the connection it
/// closes to let go. Below `TAKE_TIMEOUT`, so the answer reaches the requester in time.
const SURRENDER_TIMEOUT: Duration = Duration::from_millis(2_500);
/// How long an answered take request is remembered: longer than any claim of this node takes
/// from its owner record to its hold (both within a handshake's deadline).
const SURRENDERED_FOR: Duration = Duration::from_secs(30);
/// How long adopting one orphaned session may take, from its owner record to hosting it.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Waits for a busy client id: from quickly (a claim usually settles within milliseconds)
/// backing off to a bound.
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(20);

/// Answers to a take request, in their first byte.
const NONE: u8 = 0;
const STATE: u8 = 1;
const SUPERSEDED: u8 = 2;

/// A take request: `node`'s claim of `client_id` won with owner epoch `epoch`.
#[derive(Debug, Serialize, Deserialize)]
struct Take {
    client_id: String,
    epoch: u64,
    node: String,
}

pub(crate) struct Handover {
    prefix: String,
    me: Owner,
    owners: Owners,
    nats: Arc<Nats>,
    /// Client ids with a claim (its epoch) or a surrender (0) in progress on this node. Bounded
    /// by the connections in their handshakes and the take requests being answered.
    busy: Mutex<HashMap<Arc<str>, u64>>,
    surrendered: Mutex<Surrendered>,
    /// The local sessions, once `serve` runs.
    sessions: Mutex<Option<Weak<dyn Sessions>>>,
    /// Persistent sessions' state in JetStream, for those whose owner is gone.
    state: Arc<JetStreamStore>,
    metrics: Arc<Metrics>,
    /// Places for owner-record writes (`CLAIMS_IN_FLIGHT`).
    writes: Semaphore,
    /// When a claim granted locally was last warned about.
    warned_local: Mutex<Option<Instant>>,
}

/// What a take request to the previous owner came to.
enum Taken {
    State(HandedOver),
    /// A newer claim of another node wins: nothing to take.
    Superseded,
    /// The previous owner has no session (it ended, or the owner is a later start of that
    /// node), or did not answer: whatever the state stream holds is the session.
    Nothing,
}

/// The take requests this node answered lately: client id -> the requester's epoch, and the
/// order they expire in. Bounded by the take requests of `SURRENDERED_FOR`.
#[derive(Default)]
struct Surrendered {
    epochs: HashMap<Arc<str>, (u64, Instant)>,
    expiry: VecDeque<(Instant, Arc<str>)>,
}

impl Surrendered {
    fn record(&mut self, client_id: &Arc<str>, epoch: u64) {
        let now = Instant::now();
        while let Some((at, _)) = self.expiry.front() {
            if now.duration_since(*at) < SURRENDERED_FOR {
                break;
            }
            if let Some((at, id)) = self.expiry.pop_front() {
                if self.epochs.get(&id).is_some_and(|(_, when)| *when == at) {
                    self.epochs.remove(&id);
                }
            }
        }
        let entry = self.epochs.entry(client_id.clone()).or_insert((0, now));
        *entry = (entry.0.max(epoch), now);
        self.expiry.push_back((now, client_id.clone()));
    }

    /// Whether a take request newer than `epoch` was answered for `client_id`.
    fn newer_than(&self, client_id: &str, epoch: u64) -> bool {
        self.epochs
            .get(client_id)
            .is_some_and(|(taken, _)| *taken > epoch)
    }
}

/// A client id held busy on this node until dropped.
pub(crate) struct Hold {
    handover: Arc<Handover>,
    client_id: Arc<str>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.handover.busy.lock().remove(&self.client_id);
    }
}

impl Handover {
    pub(crate) fn new(
        prefix: &str,
        me: Owner,
        nats: Arc<Nats>,
        state: Arc<JetStreamStore>,
        metrics: Arc<Metrics>,
    ) -> Handover {
        let js = async_nats::jetstream::new(nats.client.clone());
        Handover {
            prefix: prefix.to_owned(),
            owners: Owners::new(prefix, me.clone(), js),
            me,
            nats,
            busy: Mutex::new(HashMap::new()),
            surrendered: Mutex::new(Surrendered::default()),
            sessions: Mutex::new(None),
            state,
            metrics,
            writes: Semaphore::new(CLAIMS_IN_FLIGHT),
            warned_local: Mutex::new(None),
        }
    }

    /// Warns that a claim was granted on this node alone, once per `LOCAL_WARNING_EVERY`.
    fn warn_local(&self, client_id: &str, why: &dyn std::fmt::Display) {
        let now = Instant::now();
        let mut last = self.warned_local.lock();
        if last.is_some_and(|t| now.duration_since(t) < LOCAL_WARNING_EVERY) {
            debug!(client = %client_id, "cluster: claim granted on this node alone: {why}");
            return;
        }
        *last = Some(now);
        warn!(client = %client_id, "cluster: claim granted on this node alone: {why} (more such claims are counted in gateway_cluster_claims_total{{outcome=\"local\"}}, warned at most every {} s)", LOCAL_WARNING_EVERY.as_secs());
    }

    fn take_subject(&self, node: &str) -> String {
        format!("{}.c.take.{node}", self.prefix)
    }

    /// Claims `client_id` for a CONNECT on this node (see the module comment).
    pub(crate) async fn claim(self: Arc<Self>, client_id: Arc<str>, deadline: Instant) -> Claim {
        let m = &self.metrics.cluster;
        if !self.nats.is_connected() {
            m.claimed(ClaimOutcome::Local);
            return Claim::granted();
        }
        let written_by = deadline.min(Instant::now() + CLAIM_TIMEOUT);
        let claimed = tokio::time::timeout_at(written_by, async {
            // The semaphore is never closed.
            let _place = self.writes.acquire().await;
            self.owners.claim(&client_id).await
        });
        let won = match claimed.await {
            Ok(Ok(won)) => won,
            Ok(Err(e)) => {
                if !matches!(e, ClaimError::KeyTooLong) {
                    self.warn_local(&client_id, &e);
                }
                m.claimed(ClaimOutcome::Local);
                return Claim::granted();
            }
            Err(_) => {
                self.warn_local(&client_id, &"owner record not written in time");
                m.claimed(ClaimOutcome::Local);
                return Claim::granted();
            }
        };
        m.claimed(if won.retried {
            ClaimOutcome::WonAfterRetry
        } else {
            ClaimOutcome::Won
        });
        let read_by = deadline;
        let deadline = deadline.min(Instant::now() + TAKE_TIMEOUT);
        let hold = self.clone().hold(&client_id, won.epoch, deadline).await;
        if self.surrendered.lock().newer_than(&client_id, won.epoch) {
            m.took_over(Takeover::Superseded);
            tokio::spawn(self.clone().give_up(client_id.clone(), won.epoch));
            return Claim {
                handed_over: None,
                _hold: hold,
            };
        }
        let taken = match won.previous {
            // Never claimed, or this node (this start of it) held it: the local registry's
            // takeover does the rest.
            None => Taken::Superseded,
            Some(p) if p == self.me => Taken::Superseded,
            // Another start of this node held it: what that process held is in the stream.
            Some(p) if p.node == self.me.node => Taken::Nothing,
            Some(p) => {
                // Room left to read the stream if the owner is hung rather than gone.
                let asked_by = deadline.min(read_by.checked_sub(READ_RESERVE).unwrap_or(read_by));
                self.take(&client_id, won.epoch, &p, asked_by).await
            }
        };
        let handed_over = match taken {
            Taken::State(h) => Some(h),
            Taken::Superseded => None,
            Taken::Nothing => self.read_kept(&client_id, read_by).await,
        };
        Claim {
            handed_over,
            _hold: hold,
        }
    }

    /// Marks `client_id` busy with this node's claim of `epoch`, once nothing else holds it.
    /// `None` (the claim goes on unheld) when the holder keeps it past `deadline`.
    async fn hold(
        self: Arc<Self>,
        client_id: &Arc<str>,
        epoch: u64,
        deadline: Instant,
    ) -> Option<Hold> {
        let mut pause = POLL_MIN;
        loop {
            {
                let mut busy = self.busy.lock();
                if !busy.contains_key(client_id) {
                    busy.insert(client_id.clone(), epoch);
                    drop(busy);
                    return Some(Hold {
                        handover: self,
                        client_id: client_id.clone(),
                    });
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    /// Asks `previous` to give `client_id`'s session up to this node's claim of `epoch`.
    async fn take(
        &self,
        client_id: &str,
        epoch: u64,
        previous: &Owner,
        deadline: Instant,
    ) -> Taken {
        let m = &self.metrics.cluster;
        let request = Take {
            client_id: client_id.to_owned(),
            epoch,
            node: self.me.node.clone(),
        };
        // Serializing a plain struct cannot fail.
        let payload = Bytes::from(serde_json::to_vec(&request).unwrap_or_default());
        let asked = self
            .nats
            .client
            .request(self.take_subject(&previous.node), payload);
        let answer = match tokio::time::timeout_at(deadline, asked).await {
            Ok(Ok(answer)) => answer,
            // No responders: the node is gone (its take subscription died with its connection).
            Ok(Err(e)) => {
                debug!(client = %client_id, node = %previous.node, "cluster: take request failed: {e}");
                m.took_over(Takeover::Unreachable);
                return Taken::Nothing;
            }
            Err(_) => {
                warn!(client = %client_id, node = %previous.node, "cluster: previous owner did not hand the session over in time");
                m.took_over(Takeover::Unreachable);
                return Taken::Nothing;
            }
        };
        match answer.payload.split_first() {
            Some((&STATE, state)) => match store::read_handover(client_id, state) {
                Ok((record, pending)) => {
                    m.took_over(Takeover::State);
                    Taken::State(HandedOver { record, pending })
                }
                Err(e) => {
                    warn!(client = %client_id, node = %previous.node, "cluster: handed-over session does not decode: {e}");
                    m.took_over(Takeover::Unreachable);
                    Taken::Nothing
                }
            },
            Some((&SUPERSEDED, _)) => {
                m.took_over(Takeover::Superseded);
                Taken::Superseded
            }
            Some((&NONE, _)) => {
                m.took_over(Takeover::Empty);
                Taken::Nothing
            }
            _ => {
                m.dropped(ClusterDrop::Malformed);
                m.took_over(Takeover::Unreachable);
                Taken::Nothing
            }
        }
    }

    /// `client_id`'s session as the state stream keeps it, read by `deadline`; none when the
    /// stream holds none or cannot be read in time (the client then starts afresh, counted).
    async fn read_kept(&self, client_id: &str, deadline: Instant) -> Option<HandedOver> {
        let m = &self.metrics.cluster;
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, self.state.read(client_id)).await {
            Ok(Ok(Some((record, pending)))) => {
                m.took_over(Takeover::Stored);
                m.read_seconds.record(started.elapsed().as_secs_f64());
                debug!(client = %client_id, took = ?started.elapsed(), "cluster: session read back from the state stream");
                Some(HandedOver { record, pending })
            }
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                warn!(client = %client_id, "cluster: stored session unreadable, starting afresh: {e}");
                m.took_over(Takeover::Lost);
                None
            }
            Err(_) => {
                warn!(client = %client_id, "cluster: stored session not read within the handshake's deadline, starting afresh");
                m.took_over(Takeover::Lost);
                None
            }
        }
    }

    /// The owner records naming `node`: what it held when it died.
    pub(crate) async fn orphans(&self, node: &str) -> Result<Vec<Owned>, ClaimError> {
        self.owners.owned_by(node).await
    }

    /// Takes up `owned`'s session, whose node is gone (`adoption`): this node becomes its owner
    /// if the owner record is still as the scan read it, reads the session from the state
    /// stream and hosts it offline. Whether it did; a client id without a stored session (a
    /// clean one, or ended) is left as it is.
    pub(crate) async fn adopt(self: Arc<Self>, owned: Owned) -> bool {
        let Some(sessions) = self.sessions.lock().as_ref().and_then(Weak::upgrade) else {
            return false;
        };
        match self.state.holds(&owned.client_id).await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                warn!(client = %owned.client_id, "cluster: orphaned session not adopted: {e}");
                return false;
            }
        }
        let epoch = match self.owners.claim_at(&owned.client_id, owned.revision).await {
            Ok(Some(epoch)) => epoch,
            // Its client (or another node) claimed it since the scan.
            Ok(None) => return false,
            Err(e) => {
                warn!(client = %owned.client_id, "cluster: orphaned session not adopted: {e}");
                return false;
            }
        };
        let client_id: Arc<str> = Arc::from(owned.client_id);
        let deadline = Instant::now() + ADOPT_TIMEOUT;
        let Some(_hold) = self.clone().hold(&client_id, epoch, deadline).await else {
            return false;
        };
        // A client's claim since ours already asked for the session: it reads the stream.
        if self.surrendered.lock().newer_than(&client_id, epoch) {
            return false;
        }
        let read = tokio::time::timeout_at(deadline, self.state.read(&client_id)).await;
        match read {
            Ok(Ok(Some((record, pending)))) => {
                sessions.adopt(HandedOver { record, pending });
                self.metrics.cluster.adopted.increment(1);
                debug!(client = %client_id, from = %owned.owner.node, "cluster: orphaned session adopted");
                true
            }
            Ok(Ok(None)) => false,
            Ok(Err(e)) => {
                warn!(client = %client_id, "cluster: orphaned session unreadable, not adopted: {e}");
                false
            }
            Err(_) => {
                warn!(client = %client_id, "cluster: orphaned session not read in time, not adopted");
                false
            }
        }
    }

    /// Answers the take requests of other nodes until the broker stops; each in its own task,
    /// so that a surrender waiting for its connection holds up no other.
    pub(crate) async fn serve(self: Arc<Self>, sessions: Weak<dyn Sessions>) {
        *self.sessions.lock() = Some(sessions.clone());
        let mut requests = match self
            .nats
            .client
            .subscribe(self.take_subject(&self.me.node))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                warn!("cluster: cannot subscribe to the take subject: {e}");
                return;
            }
        };
        while let Some(msg) = requests.next().await {
            let (Some(reply), Some(sessions)) = (msg.reply, sessions.upgrade()) else {
                continue;
            };
            let Ok(take) = serde_json::from_slice::<Take>(&msg.payload) else {
                self.metrics.cluster.dropped(ClusterDrop::Malformed);
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let answer = this.surrender(take, &*sessions).await;
                if let Err(e) = this.nats.client.publish(reply, answer).await {
                    debug!("cluster: take answer not sent: {e}");
                }
            });
        }
    }

    /// This node's answer to `take`: the session given up, none, or superseded.
    async fn surrender(self: &Arc<Self>, take: Take, sessions: &dyn Sessions) -> Bytes {
        let deadline = Instant::now() + SURRENDER_TIMEOUT;
        let client_id: Arc<str> = Arc::from(take.client_id);
        self.surrendered.lock().record(&client_id, take.epoch);
        let _hold = match self
            .hold_for_surrender(&client_id, take.epoch, deadline)
            .await
        {
            Ok(hold) => hold,
            Err(answer) => return Bytes::from_static(answer),
        };
        // Its removal here is the claiming node's to record (it writes the session anew); and
        // whatever this node recorded of it is in the stream before the answer goes.
        let released = self.state.releasing(&client_id);
        let surrendered = sessions.surrender(&client_id, deadline).await;
        self.state.flushed(deadline).await;
        drop(released);
        let Some(state) = surrendered else {
            return Bytes::from_static(&[NONE]);
        };
        self.metrics.cluster.handed_over.increment(1);
        debug!(client = %client_id, to = %take.node, "cluster: session handed over");
        Bytes::from(encode(
            state,
            self.nats.client.server_info().max_payload,
            &self.metrics,
        ))
    }
}

impl Handover {
    /// Marks `client_id` busy with a surrender once this node's claim in progress (older than
    /// `epoch`) is attached; the answer to send instead when that claim is newer, or when it
    /// holds on past `deadline`.
    async fn hold_for_surrender(
        self: &Arc<Self>,
        client_id: &Arc<str>,
        epoch: u64,
        deadline: Instant,
    ) -> Result<Hold, &'static [u8]> {
        let mut pause = POLL_MIN;
        loop {
            {
                let mut busy = self.busy.lock();
                match busy.get(client_id) {
                    Some(&mine) if mine > epoch => return Err(&[SUPERSEDED]),
                    Some(_) => {}
                    None => {
                        busy.insert(client_id.clone(), 0);
                        return Ok(Hold {
                            handover: self.clone(),
                            client_id: client_id.clone(),
                        });
                    }
                }
            }
            if Instant::now() >= deadline {
                // The requester goes on without this node's state; counted there.
                return Err(&[NONE]);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    /// A stale claim of this node (of `epoch`; see the module comment): once its connection has
    /// attached, the session is given up as to a take request, and its state dropped: the newer
    /// claim went on without it.
    async fn give_up(self: Arc<Self>, client_id: Arc<str>, epoch: u64) {
        let deadline = Instant::now() + SURRENDER_TIMEOUT;
        let Ok(_hold) = self
            .hold_for_surrender(&client_id, epoch.saturating_add(1), deadline)
            .await
        else {
            return;
        };
        let sessions = self.sessions.lock().as_ref().and_then(Weak::upgrade);
        if let Some(sessions) = sessions {
            let _ = sessions.surrender(&client_id, deadline).await;
        }
    }
}

/// `state` as a take answer within `max_payload`: queued messages (never the outbound window
/// or the QoS 2 state) are left out from the newest back until it fits, each counted.
fn encode(mut state: HandedOver, max_payload: usize, metrics: &Metrics) -> Vec<u8> {
    // Room for the NATS header of a reply and the answer byte.
    let room = max_payload.saturating_sub(1_024);
    loop {
        let bytes = store::handover(&state.record, &state.pending);
        if bytes.len() <= room || state.pending.queue.is_empty() {
            let mut answer = Vec::with_capacity(bytes.len() + 1);
            answer.push(STATE);
            answer.extend_from_slice(&bytes);
            return answer;
        }
        let keep = state.pending.queue.len() / 2;
        for _ in keep..state.pending.queue.len() {
            metrics.cluster.dropped(ClusterDrop::TooLarge);
        }
        state.pending.queue.truncate(keep);
    }
}
