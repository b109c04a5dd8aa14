//! `NatsCluster`: this node's side of the cluster, over one NATS connection.
//!
//! Routing (the `Cluster` seam, called on the publishers' tasks): a message leaves the node only
//! when `interest` says another node wants it. Plain interest costs one NATS message on the
//! topic's subject, whatever the number of nodes; NATS fans it out to the nodes subscribed to a
//! matching subject. A shared group with members on other nodes gets its own copy on the
//! group's subject, where a NATS queue group picks one node; a group with members here too
//! takes turns between this node and the others (`share`), so every message reaches exactly one
//! member cluster-wide. Messages are encoded on the publisher's task and queued for the link
//! task; a full queue, or a link that is down, drops and counts (never blocks a publisher). A
//! client's QoS 1/2 message carries its publisher's ticket (`confirm`): the link completes it
//! once the batch it went out in is written to the connection, and refuses it if the message
//! was dropped after all, so nothing is acknowledged that a crash of this node could still lose
//! on its way to NATS; a message for other nodes' persistent subscribers also waits for their
//! answers (`watermark`), which the link sends and receives on the nodes' own subjects.
//!
//! The link task (`Link::run`) owns the connection's work in one place, in order: publishing
//! the queue, the NATS subscriptions that mirror this node's filters (one per filter, two for a
//! `#` filter below the root, one queue subscription per shared group), receiving into the
//! local router with `Router::deliver_remote`/`deliver_shared` (which never forward again: a
//! message crosses NATS once), and the interest protocol (`interest`).
//!
//! One node, one copy: NATS delivers a message once per matching subscription, so a node with
//! overlapping filters (`a/+` and `a/#`) gets it twice. Each forwarded message carries its
//! sender's instance and a sequence number, and the receiver keeps a window of the sequence
//! numbers it has seen per sender (`Dedup`); the local router then gives each subscriber one
//! copy, as on one node. The window is far larger than a subscription's buffer
//! (`nats::SUBSCRIPTION_CAPACITY`), so copies of one message never lag each other past it.
//! The connection uses no_echo: this node's own messages never come back to it.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_nats::client::PublishErrorKind;
use async_nats::{Client, Event};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tokio_stream::StreamMap;
use tracing::{debug, info, warn};

use super::adoption;
use super::envelope;
use super::handover::Handover;
use super::interest::{snapshot_parts, Announced, Control, Entry, RemoteInterest, Reply};
use super::owners::Owner;
use super::probe;
use super::retained::RetainedStream;
use super::subject::{filter_subjects, group_subject, topic_of, topic_subject};
use super::watermark::{Awaiting, Receipts, ANY};
use super::{Claiming, Cluster, ClusterState, Confirm, Interest, Sessions};
use crate::clock::unix_millis;
use crate::config::Config;
use crate::message::Message;
use crate::metrics::{ClusterDrop, ClusterRefusal, DropReason, Metrics};
use crate::nats::{Nats, NatsError, EVENT_BACKLOG};
use crate::router::{Router, Subscriber};
use crate::session::SessionId;
use crate::store::JetStreamStore;
use crate::ticket::{Refusal, Ticket};
use crate::topic;
use crate::topic_index::{Matches, SharedGroup};

/// Messages waiting for the link task; beyond it they are dropped and counted.
const OUTBOX: usize = 16_384;
/// How often a node says it is alive (with its interest version).
const BEAT_EVERY: Duration = Duration::from_secs(1);
/// nats-server refuses a protocol line longer than max_control_line (4 KiB by default); a
/// subject longer than this would get the connection closed, so the message is dropped instead.
const MAX_SUBJECT: usize = 3_584;
/// Sequence numbers remembered per sender; see the module comment.
const DEDUP_WINDOW: u64 = 1 << 16;
/// Messages published per wake of the link task before it looks at its other work again.
const PUBLISH_BATCH: usize = 256;
/// Control messages already received that a beat reads before it expires silent nodes (a
/// bound, so that a flood of them cannot hold the beat).
const CONTROL_BEFORE_EXPIRY: usize = 1_024;
/// The NATS queue group name of shared-group subscriptions (each group has its own subject).
const QUEUE: &str = "share";
/// How long a clean shutdown waits for its goodbye to reach NATS.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a batch's publishers wait for it to be written to the NATS connection before they
/// are refused (and send again).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A message on its way to NATS.
struct Outgoing {
    subject: String,
    payload: Bytes,
    /// The publisher's acknowledgement waiting for it (`confirm`).
    ticket: Option<Arc<Ticket>>,
}

/// The numbering of what this node sends: a message's sequence number and the tallies of the
/// node starts it asks to answer (`watermark`) are taken together with its place in the
/// outbox, so that the order in which NATS delivers them is the order of their numbers.
#[derive(Default)]
struct Order {
    seq: u64,
    /// Asking messages sent to each node start.
    tallies: HashMap<u64, u64>,
}

/// This node in a cluster: the `Cluster` the router calls.
pub(crate) struct NatsCluster {
    node: String,
    prefix: String,
    /// Random per process start: tells a restarted node from the one before.
    instance: u64,
    /// Sequence numbers and tallies, taken in the order messages enter the outbox.
    order: Mutex<Order>,
    remote: RemoteInterest,
    nats: Arc<Nats>,
    /// Filters whose local interest changed since the link last looked (the router's reports;
    /// the link reads the truth from the router).
    dirty: Mutex<HashSet<Entry>>,
    /// Persistent sessions' subscriptions per entry (the router's `PersistentIn` and
    /// `PersistentOut`): an entry here is announced durable.
    persistent: Mutex<HashMap<Entry, u32>>,
    wake: Notify,
    outbox: mpsc::Sender<Outgoing>,
    /// Round-robin between this node and the others for shared groups present on both.
    turn: AtomicUsize,
    /// Messages queued or written whose publishers wait for them to be in NATS.
    unconfirmed: Arc<AtomicUsize>,
    /// Messages whose publishers wait for nodes holding persistent subscribers to answer.
    awaiting: Awaiting,
    /// Retained messages in JetStream.
    retained: RetainedStream,
    /// Client ids claimed across the cluster, sessions moved between nodes.
    handover: Arc<Handover>,
    /// Persistent sessions' state, in JetStream.
    state: Arc<JetStreamStore>,
    metrics: Arc<Metrics>,
}

/// The link task's own state; `run` it.
pub(crate) struct Link {
    cluster: Arc<NatsCluster>,
    events: mpsc::Receiver<Event>,
    outbox: mpsc::Receiver<Outgoing>,
    /// Whether the duplicate-name warning was logged (once is enough).
    warned_name: bool,
}

impl NatsCluster {
    /// Starts connecting to `[nats]` (in the background: a node starts and serves its local
    /// clients while NATS is unreachable) and returns the cluster and its link task.
    pub(crate) async fn connect(
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<(Arc<NatsCluster>, Link), NatsError> {
        let node = config.cluster.node_name.clone();
        let (event_tx, events) = mpsc::channel(EVENT_BACKLOG);
        let nats = Arc::new(
            Nats::connect(&config.nats, &format!("gateway-{node}"), true, event_tx).await?,
        );
        let (outbox_tx, outbox) = mpsc::channel(OUTBOX);
        let instance = RandomState::new().hash_one((std::process::id(), Instant::now()));
        info!(
            node,
            instance, "cluster: connecting to NATS in the background"
        );
        let me = Owner {
            node: node.clone(),
            instance,
        };
        let state = JetStreamStore::start(
            &config.cluster.subject_prefix,
            format!("{node}.{instance}"),
            nats.clone(),
            metrics.store.clone(),
        );
        let handover = Handover::new(
            &config.cluster.subject_prefix,
            me,
            nats.clone(),
            state.clone(),
            metrics.clone(),
        );
        let cluster = Arc::new(NatsCluster {
            node,
            prefix: config.cluster.subject_prefix.clone(),
            instance,
            order: Mutex::new(Order::default()),
            remote: RemoteInterest::default(),
            nats,
            dirty: Mutex::new(HashSet::new()),
            persistent: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            outbox: outbox_tx,
            turn: AtomicUsize::new(0),
            unconfirmed: Arc::new(AtomicUsize::new(0)),
            awaiting: Awaiting::default(),
            retained: RetainedStream::new(
                &config.cluster.subject_prefix,
                instance,
                metrics.clone(),
            ),
            handover: Arc::new(handover),
            state,
            metrics,
        });
        let link = Link {
            cluster: cluster.clone(),
            events,
            outbox,
            warned_name: false,
        };
        Ok((cluster, link))
    }

    /// The store of this node's persistent sessions: in JetStream, so that another node can
    /// take them over when this one dies.
    pub(crate) fn session_store(&self) -> Arc<JetStreamStore> {
        self.state.clone()
    }

    /// Tells the other nodes this one leaves (a clean shutdown), so they stop sending at once
    /// instead of after `PEER_TIMEOUT`.
    pub(crate) async fn leave(&self) {
        if !self.nats.is_connected() {
            return;
        }
        let bye = Control::Bye {
            node: self.node.clone(),
            instance: self.instance,
        };
        let client = &self.nats.client;
        let sent = async {
            client
                .publish(self.all_subject(), control_bytes(&bye))
                .await
                .ok()?;
            client.flush().await.ok()
        };
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, sent).await;
    }

    fn all_subject(&self) -> String {
        format!("{}.c.all", self.prefix)
    }

    fn node_subject(&self, node: &str) -> String {
        format!("{}.c.node.{node}", self.prefix)
    }

    /// Encodes `msg` for `subject` and queues it for the link, with a ticket from `confirm`
    /// when its publisher waits, which then also waits for the answers of `durable` (the nodes
    /// whose persistent subscribers it goes to: `watermark`). Dropped, it gives back the ticket
    /// (if any) for the caller to complete. A message is not held for NATS that is down (the
    /// README's outage terms) or can never go (too large): it is dropped, counted, and nobody
    /// waits, unless it was for persistent subscribers elsewhere, whose publisher is refused.
    fn send(
        &self,
        subject: String,
        msg: &Message,
        with_topic: bool,
        confirm: &mut Confirm,
        durable: &[u32],
    ) -> Result<(), Option<Arc<Ticket>>> {
        let m = &self.metrics.cluster;
        if !self.nats.is_connected() {
            m.dropped(ClusterDrop::LinkDown);
            return Err((!durable.is_empty()).then(|| confirm.send()).flatten());
        }
        if subject.len() > MAX_SUBJECT {
            m.dropped(ClusterDrop::TooLarge);
            return Err(None);
        }
        let ack = !durable.is_empty() && confirm.waits();
        let asked = if ack {
            self.remote.instances_of(durable)
        } else {
            Vec::new()
        };
        let mut order = self.order.lock();
        order.seq += 1;
        let seq = order.seq;
        let tallies: Vec<(u64, u64)> = asked
            .iter()
            .map(|instance| {
                let tally = order.tallies.entry(*instance).or_default();
                *tally += 1;
                (*instance, *tally)
            })
            .collect();
        let ask = ack.then_some(&tallies[..]);
        let payload = envelope::encode(msg, self.instance, seq, with_topic, ask, unix_millis());
        if ack {
            // Before the message can go: its answer cannot come before this.
            if let Some(part) = confirm.send() {
                self.awaiting
                    .expect(seq, part, durable.to_vec(), Instant::now());
            }
        }
        let ticket = confirm.send();
        let waits = ticket.is_some();
        let out = Outgoing {
            subject,
            payload,
            ticket,
        };
        match self.outbox.try_send(out) {
            Ok(()) => {
                if waits {
                    self.unconfirmed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(e) => {
                // Never sent: the next message to those starts follows on without a gap.
                for (instance, _) in &tallies {
                    if let Some(tally) = order.tallies.get_mut(instance) {
                        *tally -= 1;
                    }
                }
                drop(order);
                m.dropped(ClusterDrop::Overflow);
                if let Some(part) = self.awaiting.cancel(seq) {
                    part.complete(Err(Refusal::Unavailable));
                }
                Err(e.into_inner().ticket)
            }
        }
    }
}

impl Cluster for NatsCluster {
    fn forward(
        &self,
        msg: &Arc<Message>,
        local: &Matches<SessionId, Subscriber>,
        confirm: &mut Confirm,
    ) {
        if confirm.waits() && self.remote.owes(&msg.topic) {
            // A silent or leaving node's persistent sessions want it and have no home yet.
            if let Some(part) = confirm.send() {
                self.metrics.cluster.refused(ClusterRefusal::Owed, 1);
                part.complete(Err(Refusal::Unavailable));
            }
        }
        let remote = self.remote.matches(&msg.topic);
        if remote.is_empty() {
            return;
        }
        // A send dropped with a waiting publisher refuses it: the other nodes lost the message.
        let refuse = |dropped: Result<(), Option<Arc<Ticket>>>| {
            if let Err(Some(ticket)) = dropped {
                self.metrics.cluster.refused(ClusterRefusal::Unconfirmed, 1);
                ticket.complete(Err(Refusal::Unavailable));
            }
        };
        if !remote.plain.is_empty() {
            let durable: Vec<u32> = remote
                .plain
                .iter()
                .filter(|(_, durable)| *durable)
                .map(|(node, _)| *node)
                .collect();
            let subject = topic_subject(&self.prefix, &msg.topic);
            refuse(self.send(subject, msg, false, confirm, &durable));
        }
        for group in &remote.shared {
            // A group with members here too was settled by `share` during local delivery.
            let settled = local
                .shared
                .iter()
                .any(|l| l.name() == group.name() && l.filter() == group.filter());
            if !settled {
                let subject = group_subject(&self.prefix, group.name(), group.filter());
                refuse(self.send(subject, msg, true, confirm, asked_of(group)));
            }
        }
    }

    fn share(&self, msg: &Arc<Message>, group: &str, filter: &str, confirm: &mut Confirm) -> bool {
        let remote = self.remote.matches(&msg.topic);
        let remote_group = remote
            .shared
            .iter()
            .find(|g| g.name() == group && g.filter() == filter);
        let nodes = remote_group.map_or(0, |g| g.len());
        if nodes == 0 || !self.nats.is_connected() {
            return true;
        }
        // This node's turn one time in (nodes + 1); on the others' turns the message goes to
        // the group's NATS queue, which picks one of them. If it cannot be sent, a member
        // here takes it after all.
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        if turn % (nodes + 1) == 0 {
            return true;
        }
        match self.send(
            group_subject(&self.prefix, group, filter),
            msg,
            true,
            confirm,
            remote_group.map_or(&[][..], |g| asked_of(g)),
        ) {
            Ok(()) => false,
            Err(ticket) => {
                // Nothing lost for the publisher to wait on: a member here takes it.
                if let Some(ticket) = ticket {
                    ticket.complete(Ok(()));
                }
                true
            }
        }
    }

    fn interest(&self, filter: &str, group: Option<&str>, change: Interest) {
        let entry = Entry {
            group: group.map(str::to_owned),
            filter: filter.to_owned(),
        };
        // Counted here, in the order the router reports them (each under the index's lock of
        // its filter); only a count leaving or reaching zero changes the announcement.
        let durability_changed = match change {
            Interest::Appeared | Interest::Gone => true,
            Interest::PersistentIn => {
                let mut counts = self.persistent.lock();
                let n = counts.entry(entry.clone()).or_insert(0);
                *n += 1;
                *n == 1
            }
            Interest::PersistentOut => {
                let mut counts = self.persistent.lock();
                match counts.get_mut(&entry) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        false
                    }
                    Some(_) => {
                        counts.remove(&entry);
                        true
                    }
                    None => false,
                }
            }
        };
        if !durability_changed {
            return;
        }
        // The report is a hint: the link asks the router what holds now (`has_interest`), so
        // reports arriving out of order cannot leave a stale announcement behind.
        self.dirty.lock().insert(entry);
        self.wake.notify_one();
    }

    fn retained(&self, msg: &Arc<Message>) -> bool {
        self.retained.write(msg);
        true
    }

    fn claim(&self, client_id: &str, deadline: tokio::time::Instant) -> Claiming {
        Box::pin(self.handover.clone().claim(Arc::from(client_id), deadline))
    }

    fn state(&self) -> ClusterState {
        let connected = self.nats.is_connected();
        ClusterState {
            connected,
            down: !connected,
            remote_interest: self.remote.len(),
            nodes: self.remote.nodes(),
            unconfirmed: self.unconfirmed.load(Ordering::Relaxed) + self.awaiting.len(),
            retained_behind: !self.retained.ready(),
        }
    }
}

fn control_bytes(c: &Control) -> Bytes {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(c).map(Bytes::from).unwrap_or_default()
}

/// A node name from the wire becomes part of a subject: only what the configuration allows.
fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// What a data subscription receives.
enum Kind {
    /// Messages on topics matching one of this node's plain filters.
    Plain,
    /// Messages for one member of this node's shared group.
    Group(Entry),
}

/// The sequence numbers seen from one sender instance, as a ring of bits over the last
/// `DEDUP_WINDOW` of them.
struct Window {
    top: u64,
    seen: Box<[u64]>,
}

impl Window {
    fn new() -> Window {
        Window {
            top: 0,
            seen: vec![0u64; (DEDUP_WINDOW / 64) as usize].into_boxed_slice(),
        }
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % DEDUP_WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Whether `seq` is seen for the first time (and marks it seen).
    fn fresh(&mut self, seq: u64) -> bool {
        if seq > self.top {
            if seq - self.top >= DEDUP_WINDOW {
                self.seen.fill(0);
            } else {
                for s in self.top + 1..seq {
                    let (w, b) = Window::bit(s);
                    self.seen[w] &= !b;
                }
            }
            self.top = seq;
            let (w, b) = Window::bit(seq);
            self.seen[w] |= b;
            return true;
        }
        if self.top - seq >= DEDUP_WINDOW {
            // Older than anything remembered: cannot be told apart, and a copy this late is
            // far likelier a duplicate than a message (see the module comment).
            return false;
        }
        let (w, b) = Window::bit(seq);
        let fresh = self.seen[w] & b == 0;
        self.seen[w] |= b;
        fresh
    }
}

#[derive(Default)]
struct Dedup {
    senders: HashMap<u64, Window>,
}

impl Dedup {
    fn fresh(&mut self, instance: u64, seq: u64) -> bool {
        self.senders
            .entry(instance)
            .or_insert_with(Window::new)
            .fresh(seq)
    }

    /// Forgets the senders that are no longer nodes of the cluster.
    fn keep(&mut self, instances: &HashSet<u64>) {
        self.senders.retain(|i, _| instances.contains(i));
    }
}

/// The link task's working state.
struct State {
    data: StreamMap<u64, async_nats::Subscriber>,
    kinds: HashMap<u64, Kind>,
    next_sid: u64,
    /// This node's announced interest: the data subscriptions serving each entry, and whether
    /// it was announced durable.
    local: HashMap<Entry, (Vec<u64>, bool)>,
    /// Deltas announced so far.
    version: u64,
    dedup: Dedup,
    /// What this node owes other nodes' asking messages (`watermark`).
    receipts: Receipts,
}

impl Link {
    /// Runs until the broker stops (aborted with its `Background`): the routing link, the
    /// retained stream and the answers to other nodes' claims of local sessions.
    pub(crate) async fn run(self, router: Weak<Router>, sessions: Weak<dyn Sessions>) {
        let c = self.cluster.clone();
        let js = async_nats::jetstream::new(c.nats.client.clone());
        let peers = {
            let c = c.clone();
            move || c.remote.node_names()
        };
        let probe = probe::run(
            c.nats.client.clone(),
            c.prefix.clone(),
            c.node.clone(),
            peers,
            c.metrics.cluster.round_trip.clone(),
        );
        futures_util::future::join4(
            self.route(router.clone()),
            c.retained.run(js, router),
            c.handover.clone().serve(sessions),
            probe,
        )
        .await;
    }

    async fn route(mut self, router: Weak<Router>) {
        let c = self.cluster.clone();
        let client = c.nats.client.clone();
        let subscribed = async {
            let all = client.subscribe(c.all_subject()).await?;
            let direct = client.subscribe(c.node_subject(&c.node)).await?;
            Ok::<_, async_nats::SubscribeError>((all, direct))
        };
        let (mut all, mut direct) = match subscribed.await {
            Ok(subs) => subs,
            Err(e) => {
                warn!("cluster: cannot subscribe to the control subjects: {e}");
                return;
            }
        };
        let mut st = State {
            data: StreamMap::new(),
            kinds: HashMap::new(),
            next_sid: 0,
            local: HashMap::new(),
            version: 0,
            dedup: Dedup::default(),
            receipts: Receipts::default(),
        };
        let mut committed = router.upgrade().and_then(|r| r.store.committed());
        let mut beat = tokio::time::interval(BEAT_EVERY);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Since when the NATS connection has been up without a break, as its events (or the
        // beats, should an event be dropped) saw it.
        let mut steady_since: Option<Instant> = None;
        // Nodes fallen silent (with when they were last heard) whose sessions wait for adoption
        // until this node's connection is steady (`adoption::STEADY`), unless they were heard
        // on it; one heard from again is taken off.
        let mut silent: Vec<(String, Instant)> = Vec::new();
        // The sessions of this node's earlier start are taken back once, when NATS is first up.
        let mut own_taken_back = false;
        // Slow-consumer drops already counted.
        let mut slow_seen = 0;
        loop {
            tokio::select! {
                Some(event) = self.events.recv() => match event {
                    Event::Connected => {
                        info!(node = %c.node, "cluster: connected to NATS");
                        // What is heard from now on was sent after any outage this node saw.
                        steady_since.get_or_insert_with(Instant::now);
                        c.retained.connection(true);
                        self.hello(&client, &st).await;
                    }
                    Event::Disconnected => {
                        steady_since = None;
                        c.retained.connection(false);
                        warn!(node = %c.node, "cluster: NATS connection lost; routing to other nodes stops until it returns");
                    }
                    other => debug!("cluster: NATS event: {other}"),
                },
                Some(msg) = all.next() => self.control(&client, &st, msg).await,
                Some(msg) = direct.next() => self.control(&client, &st, msg).await,
                Some(first) = st.data.next(), if receiving(&c.node) => {
                    if let Some(router) = router.upgrade() {
                        receive_ready(&c, &router, &mut st, first);
                        answer(&c, &client, &router, &mut st).await;
                    }
                }
                changed = async {
                    match committed.as_mut() {
                        Some(marks) => marks.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                }, if st.receipts.waiting() => {
                    if !changed {
                        // The store stopped: what waits for it is never answered.
                        committed = None;
                    } else if let Some(router) = router.upgrade() {
                        answer(&c, &client, &router, &mut st).await;
                    }
                }
                Some(out) = self.outbox.recv() => {
                    let mut waiting = Vec::new();
                    self.publish(&client, out, &mut waiting).await;
                    for _ in 1..PUBLISH_BATCH {
                        match self.outbox.try_recv() {
                            Ok(out) => self.publish(&client, out, &mut waiting).await,
                            Err(_) => break,
                        }
                    }
                    if !waiting.is_empty() {
                        tokio::spawn(confirm_flushed(client.clone(), waiting, c.clone()));
                    }
                }
                _ = c.wake.notified() => {
                    if let Some(router) = router.upgrade() {
                        self.reconcile(&client, &router, &mut st).await;
                    }
                }
                _ = beat.tick() => {
                    // Events can be dropped under a burst: the client's own state is the truth.
                    let now = Instant::now();
                    let slow = c.nats.slow_consumer_drops();
                    c.metrics
                        .cluster
                        .dropped_many(ClusterDrop::SlowConsumer, slow - slow_seen);
                    slow_seen = slow;
                    if c.nats.refresh() {
                        let beat = Control::Beat {
                            node: c.node.clone(),
                            instance: c.instance,
                            version: st.version,
                        };
                        let _ = client.publish(c.all_subject(), control_bytes(&beat)).await;
                        steady_since.get_or_insert(now);
                        if !own_taken_back {
                            own_taken_back = true;
                            tokio::spawn(adoption::adopt_own(
                                c.handover.clone(),
                                c.node.clone(),
                                c.instance,
                            ));
                        }
                    } else {
                        steady_since = None;
                    }
                    // A node is judged by what it sent, not by how long this loop was busy:
                    // beats already received are read before anyone is taken as silent.
                    for _ in 0..CONTROL_BEFORE_EXPIRY {
                        let Some(Some(msg)) = all.next().now_or_never() else { break };
                        self.control(&client, &st, msg).await;
                    }
                    for gone in c.remote.expire(Instant::now()) {
                        info!(node = %gone.0, "cluster: node silent, its interest dropped");
                        silent.push(gone);
                    }
                    let known = c.remote.node_names();
                    silent.retain(|(n, _)| !known.contains(n));
                    // A node heard since this connection came up was on NATS after any outage
                    // this node went through: its silence is not a late reconnection, and its
                    // sessions are taken up at once (what they match is refused meanwhile).
                    let adoptable = |heard: &Instant| {
                        steady_since.is_some_and(|t| {
                            *heard >= t || now.saturating_duration_since(t) >= adoption::STEADY
                        })
                    };
                    let (dead, waiting): (Vec<_>, Vec<_>) =
                        silent.drain(..).partition(|(_, heard)| adoptable(heard));
                    silent = waiting;
                    for (gone, _) in dead {
                        let survivor = adoption::Survivor {
                            handover: c.handover.clone(),
                            client: client.clone(),
                            prefix: c.prefix.clone(),
                            me: c.node.clone(),
                        };
                        let (c, alive) = (c.clone(), known.clone());
                        tokio::spawn(async move {
                            adoption::adopt_from(survivor, gone.clone(), alive).await;
                            c.remote.settle(&gone);
                        });
                    }
                    let instances = c.remote.instances();
                    c.order.lock().tallies.retain(|i, _| instances.contains(i));
                    st.dedup.keep(&instances);
                    st.receipts.keep(&instances);
                    let refusals = c.awaiting.expire(now);
                    c.metrics
                        .cluster
                        .refused(ClusterRefusal::Unanswered, refusals);
                }
            }
        }
    }

    /// This node's hello and its whole interest, to every node (which answer with theirs).
    async fn hello(&self, client: &Client, st: &State) {
        let c = &self.cluster;
        let hello = Control::Hello {
            node: c.node.clone(),
            instance: c.instance,
        };
        let _ = client.publish(c.all_subject(), control_bytes(&hello)).await;
        self.snapshot(client, st, c.all_subject()).await;
    }

    /// This node's whole interest, in parts, to `subject`.
    async fn snapshot(&self, client: &Client, st: &State, subject: String) {
        let c = &self.cluster;
        let entries = st.local.iter().map(|(entry, (_, durable))| Announced {
            entry: entry.clone(),
            durable: *durable,
        });
        for part in snapshot_parts(&c.node, c.instance, st.version, entries) {
            let _ = client.publish(subject.clone(), control_bytes(&part)).await;
        }
    }

    async fn control(&mut self, client: &Client, st: &State, msg: async_nats::Message) {
        let c = &self.cluster;
        let parsed = serde_json::from_slice::<Control>(&msg.payload);
        let Ok(control) = parsed else {
            c.metrics.cluster.dropped(ClusterDrop::Malformed);
            return;
        };
        if control.sender() == c.node && control.instance().is_some_and(|i| i != c.instance) {
            // no_echo keeps this node's own messages away: another node uses its name.
            if !self.warned_name {
                warn!(node = %c.node, "cluster: another node uses this node's name; node names must be unique");
                self.warned_name = true;
            }
            return;
        }
        if let Control::Ack {
            node,
            to,
            from,
            seq,
            refused,
            took,
        } = &control
        {
            if *to == c.instance {
                if let Some(id) = c.remote.node_id(node) {
                    let refusals = c.awaiting.answered(id, (*from, *seq), refused, took);
                    c.metrics
                        .cluster
                        .refused(ClusterRefusal::Unanswered, refusals);
                }
            }
            return;
        }
        let reply = c.remote.apply(control, &c.node, Instant::now());
        let (Reply::SnapshotTo(to) | Reply::SyncFrom(to)) = &reply else {
            return;
        };
        if !valid_node_name(to) {
            c.metrics.cluster.dropped(ClusterDrop::Malformed);
            return;
        }
        if !c.nats.is_connected() {
            return;
        }
        let subject = c.node_subject(to);
        match reply {
            Reply::SnapshotTo(_) => self.snapshot(client, st, subject).await,
            _ => {
                let sync = Control::Sync {
                    node: c.node.clone(),
                };
                let _ = client.publish(subject, control_bytes(&sync)).await;
            }
        }
    }

    /// Publishes `out`; its ticket goes to `waiting` (for the batch's flush) or, dropped, is
    /// completed here.
    async fn publish(&self, client: &Client, out: Outgoing, waiting: &mut Vec<Arc<Ticket>>) {
        let c = &self.cluster;
        let m = &c.metrics.cluster;
        let Outgoing {
            subject,
            payload,
            ticket,
        } = out;
        let dropped = |outcome: Result<(), Refusal>| {
            if let Some(ticket) = &ticket {
                c.unconfirmed.fetch_sub(1, Ordering::Relaxed);
                ticket.complete(outcome);
            }
        };
        // A publish while disconnected would wait in the client's buffer and then block this
        // task: the message is dropped instead (NATS being down is counted, not hidden), and
        // its publisher, already waiting, refused.
        if !c.nats.is_connected() {
            m.dropped(ClusterDrop::LinkDown);
            dropped(Err(Refusal::Unavailable));
            return;
        }
        let len = payload.len() as u64;
        match client.publish(subject, payload).await {
            Ok(()) => {
                m.sent.increment(1);
                m.sent_bytes.increment(len);
                waiting.extend(ticket);
            }
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                // It can never go: a resend would be dropped again.
                m.dropped(ClusterDrop::TooLarge);
                dropped(Ok(()));
            }
            Err(e) => {
                debug!("cluster: publish failed: {e}");
                m.dropped(ClusterDrop::LinkDown);
                dropped(Err(Refusal::Unavailable));
            }
        }
    }

    /// Brings the NATS subscriptions and the announced interest in line with the router for
    /// every filter reported since the last time.
    async fn reconcile(&self, client: &Client, router: &Router, st: &mut State) {
        let c = &self.cluster;
        let dirty: Vec<Entry> = c.dirty.lock().drain().collect();
        for entry in dirty {
            let want = router.has_interest(&entry.filter, entry.group.as_deref());
            let durable = want && c.persistent.lock().contains_key(&entry);
            let have = st.local.get(&entry).map(|(_, d)| *d);
            let add = if let (true, Some(announced)) = (want, have) {
                if announced == durable {
                    continue;
                }
                // Announced again with the new flag: the subscriptions stay.
                if let Some(local) = st.local.get_mut(&entry) {
                    local.1 = durable;
                }
                true
            } else if want {
                let subjects = match &entry.group {
                    None => filter_subjects(&c.prefix, &entry.filter),
                    Some(group) => vec![group_subject(&c.prefix, group, &entry.filter)],
                };
                // A SUB line beyond the server's max_control_line closes the connection: such a
                // filter (possible only with limits.max_topic_length far above its default)
                // stays local, said once here.
                if subjects.iter().any(|s| s.len() > MAX_SUBJECT) {
                    warn!(filter = %entry.filter, "cluster: filter too long for a NATS subject; it gets no messages from other nodes");
                    c.metrics.cluster.dropped(ClusterDrop::TooLarge);
                    continue;
                }
                let mut sids = Vec::new();
                let mut subscribed = Vec::with_capacity(subjects.len());
                for subject in subjects {
                    subscribed.push(match &entry.group {
                        None => client.subscribe(subject).await,
                        Some(_) => client.queue_subscribe(subject, QUEUE.to_owned()).await,
                    });
                }
                for sub in subscribed {
                    match sub {
                        Ok(sub) => {
                            st.next_sid += 1;
                            let kind = match &entry.group {
                                None => Kind::Plain,
                                Some(_) => Kind::Group(entry.clone()),
                            };
                            st.kinds.insert(st.next_sid, kind);
                            st.data.insert(st.next_sid, sub);
                            sids.push(st.next_sid);
                        }
                        Err(e) => {
                            warn!(filter = %entry.filter, "cluster: NATS subscribe failed: {e}")
                        }
                    }
                }
                st.local.insert(entry.clone(), (sids, durable));
                true
            } else if have.is_some() {
                let (sids, _) = st.local.remove(&entry).unwrap_or_default();
                for sid in sids {
                    // Dropping the subscriber unsubscribes it.
                    st.data.remove(&sid);
                    st.kinds.remove(&sid);
                }
                false
            } else {
                continue;
            };
            st.version += 1;
            let (node, instance, version) = (c.node.clone(), c.instance, st.version);
            let delta = if add {
                Control::Add {
                    node,
                    instance,
                    version,
                    entry,
                    durable,
                }
            } else {
                Control::Remove {
                    node,
                    instance,
                    version,
                    entry,
                }
            };
            // While disconnected the delta is not sent: the hello on reconnection carries the
            // whole set, and the others' beats would notice the version gap anyway.
            if c.nats.is_connected() {
                let _ = client.publish(c.all_subject(), control_bytes(&delta)).await;
            }
        }
    }
}

/// Answers the other nodes' asking messages whose routing the store now holds.
async fn answer(c: &NatsCluster, client: &Client, router: &Router, st: &mut State) {
    for due in st.receipts.due(|mark| router.store.is_durable(mark)) {
        // A sender not known (yet) cannot be answered: its publishers time out and resend.
        let Some(node) = c.remote.node_of(due.origin) else {
            continue;
        };
        let ack = Control::Ack {
            node: c.node.clone(),
            to: due.origin,
            from: due.from,
            seq: due.seq,
            refused: due.refused,
            took: due.took,
        };
        let _ = client
            .publish(c.node_subject(&node), control_bytes(&ack))
            .await;
    }
}

/// Whom a message for a shared group across nodes asks to answer: whichever member node NATS's
/// queue group gives it to (`watermark::ANY`), when a persistent session is among the members.
fn asked_of(group: &SharedGroup<u32, bool>) -> &'static [u32] {
    if group.any(|_, durable| *durable) {
        &[ANY]
    } else {
        &[]
    }
}

/// Whether the link takes messages from other nodes in now: always, but for a test holding
/// them back (`fault::set_cluster_receive_held`) to make this node a slow consumer.
fn receiving(node: &str) -> bool {
    #[cfg(feature = "fault-injection")]
    if crate::fault::cluster_receive_held(node) {
        return false;
    }
    let _ = node;
    true
}

/// Completes the tickets of a published batch once the client has written it to the NATS
/// connection, or refuses them when that does not happen within `FLUSH_TIMEOUT`. A task of its
/// own: a slow connection holds these publishers, not the link.
async fn confirm_flushed(client: Client, tickets: Vec<Arc<Ticket>>, c: Arc<NatsCluster>) {
    let flushed = async {
        #[cfg(feature = "fault-injection")]
        while crate::fault::cluster_flush_held(&c.node) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        client.flush().await
    };
    let outcome = match tokio::time::timeout(FLUSH_TIMEOUT, flushed).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Refusal::Unavailable),
    };
    c.unconfirmed.fetch_sub(tickets.len(), Ordering::Relaxed);
    if outcome.is_err() {
        c.metrics
            .cluster
            .refused(ClusterRefusal::Unconfirmed, tickets.len());
    }
    for ticket in tickets {
        ticket.complete(outcome);
    }
}

/// Every message ready on the data subscriptions, `first` among them, into the local router in
/// the order each node sent them. async-nats gives each subscription its own channel and fills
/// them one message at a time as they come off the connection, which carries one node's
/// messages in the order it sent them: once a message is ready, every earlier one of its sender
/// is ready too, maybe in another subscription's channel (`w` through `w/#`'s subject for its
/// parent level, `w/x` through its wildcard). Taking all that is ready and ordering it by the
/// sender's sequence number keeps a publisher's order across subscriptions.
fn receive_ready(
    c: &NatsCluster,
    router: &Router,
    st: &mut State,
    first: (u64, async_nats::Message),
) {
    let mut ready = vec![first];
    // Outside tokio's budget: a receive over budget says "nothing ready" while messages wait.
    while let Some(Some(next)) = tokio::task::unconstrained(st.data.next()).now_or_never() {
        ready.push(next);
    }
    let mut decoded = Vec::with_capacity(ready.len());
    for (sid, msg) in ready {
        let bytes = msg.payload.len() as u64;
        match envelope::decode(msg.payload) {
            Ok(env) => decoded.push((sid, msg.subject, bytes, env)),
            Err(_) => c.metrics.cluster.dropped(ClusterDrop::Malformed),
        }
    }
    // Stable: copies of one message through several subscriptions stay adjacent, the first
    // taken and the others counted as duplicates.
    decoded.sort_by_key(|(_, _, _, env)| (env.origin, env.seq));
    for (sid, subject, bytes, env) in decoded {
        receive(c, router, st, sid, &subject, bytes, env);
    }
}

/// One message from a data subscription into the local router.
fn receive(
    c: &NatsCluster,
    router: &Router,
    st: &mut State,
    sid: u64,
    subject: &str,
    bytes: u64,
    env: envelope::Envelope,
) {
    let m = &c.metrics.cluster;
    let Some(kind) = st.kinds.get(&sid) else {
        return;
    };
    let topic = match kind {
        Kind::Plain => topic_of(&c.prefix, subject).ok(),
        Kind::Group(_) => env.topic.as_ref().map(|t| t.to_string()),
    };
    let Some(topic) =
        topic.filter(|t| topic::validate_topic_name(t, router.max_topic_levels()).is_ok())
    else {
        m.dropped(ClusterDrop::Malformed);
        return;
    };
    if matches!(kind, Kind::Plain) && !st.dedup.fresh(env.origin, env.seq) {
        m.duplicates.increment(1);
        return;
    }
    let (origin, seq, ack) = (env.origin, env.seq, env.ack);
    let tally = env
        .tallies
        .iter()
        .find(|(instance, _)| *instance == c.instance)
        .map(|(_, tally)| *tally);
    m.received.increment(1);
    m.received_bytes.increment(bytes);
    let now = unix_millis();
    let message = env.into_message(topic.into(), now);
    if message.is_expired(now) {
        c.metrics.dropped(DropReason::Expired, 1);
        st.receipts.took(origin, seq, 0, ack, false, tally);
        return;
    }
    let delivered = match kind {
        Kind::Plain => {
            let taken = router.deliver_remote(Arc::new(message));
            st.receipts
                .took(origin, seq, taken.mark, ack, taken.refused, tally);
            taken.delivered
        }
        Kind::Group(e) => {
            let group = e.group.as_deref().unwrap_or_default();
            let taken = router.deliver_shared(Arc::new(message), group, &e.filter);
            if ack {
                st.receipts
                    .took_shared(origin, seq, taken.mark, taken.refused);
            }
            taken.delivered
        }
    };
    if delivered == 0 {
        c.metrics.dropped(DropReason::NoSubscribers, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nats::SUBSCRIPTION_CAPACITY;

    #[test]
    fn the_window_passes_each_sequence_number_once_in_any_order() {
        let mut w = Window::new();
        assert!(w.fresh(1));
        assert!(!w.fresh(1));
        assert!(w.fresh(3));
        assert!(w.fresh(2));
        assert!(!w.fresh(3) && !w.fresh(2));
        // A jump beyond the window forgets everything before it...
        assert!(w.fresh(3 + DEDUP_WINDOW + 5));
        // ...and what is older than the window is refused.
        assert!(!w.fresh(4));
        let top = 3 + DEDUP_WINDOW + 5;
        assert!(w.fresh(top - 10) && !w.fresh(top - 10));
        // Bits of numbers skipped by an advance are cleared, not left from a lap before.
        let mut w = Window::new();
        assert!(w.fresh(5));
        assert!(w.fresh(5 + DEDUP_WINDOW - 1));
        assert!(w.fresh(5 + DEDUP_WINDOW + 1));
        // 5 + DEDUP_WINDOW shares 5's bit, which the advance past it cleared.
        assert!(w.fresh(5 + DEDUP_WINDOW));
    }

    #[test]
    fn wire_node_names_are_subject_tokens() {
        assert!(valid_node_name("node-1_a"));
        for bad in ["", "a.b", "a*", ">", "a b", &"x".repeat(65)] {
            assert!(!valid_node_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_dedup_window_is_larger_than_a_subscription_buffer() {
        assert!(DEDUP_WINDOW as usize > 4 * SUBSCRIPTION_CAPACITY);
    }
}
