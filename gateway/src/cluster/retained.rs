//! Retained messages cluster-wide: kept in one JetStream stream, served from each node's copy.
//!
//! The stream (`{prefix}_retained`, subjects `{prefix}.r.>`) keeps one message per subject
//! (`max_msgs_per_subject = 1`, which nats-server 2.9 has): a topic's retained message is the
//! envelope (`envelope`) of its latest set on `{prefix}.r` + the topic's subject (`subject`), a
//! clear is an empty message there (a tombstone: it replaces the value, and every node that
//! follows the stream removes its copy). The router keeps serving subscribers from its own
//! `RetainStore`; this node writes what its clients retain (`write`, in order, resent until
//! JetStream acknowledges) and follows the stream into the store (`run`): at start from the
//! last message of every subject, then every new one, resuming after the last sequence seen
//! when the consumer is lost. Every node applies the stream in its order, its own writes
//! included, so two nodes setting one topic at once end with the same value everywhere: the
//! one with the higher stream sequence. The stream is file-backed: it outlives every node.
//!
//! Expiry travels as the time left when the message was written; a node counts it down from
//! the time JetStream stored the message, so a retained message expires at the same moment
//! cluster-wide and after a restart of every node.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::envelope;
use super::subject::{topic_of, topic_subject};
use crate::clock::{unix_millis, UnixMillis};
use crate::message::Message;
use crate::metrics::{ClusterDrop, Metrics};
use crate::router::Router;

/// Retained writes waiting for JetStream (NATS down or slow), in number and in bytes (subjects
/// and payloads); beyond either they are dropped and counted, and the topic keeps its value on
/// this node only.
const MAX_PENDING: usize = 65_536;
const MAX_PENDING_BYTES: usize = 64 << 20;
/// Writes sent before their acknowledgements are awaited.
const BATCH: usize = 256;
/// Pauses between attempts while JetStream is unreachable.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// nats-server refuses a protocol line beyond max_control_line (4 KiB by default).
const MAX_SUBJECT: usize = 3_584;

/// A set (an envelope) or a clear (empty) of one topic, on its way to the stream.
struct Write {
    subject: String,
    payload: Bytes,
}

/// The writes waiting for JetStream and their bytes.
#[derive(Default)]
struct Pending {
    writes: VecDeque<Write>,
    bytes: usize,
}

impl Write {
    fn size(&self) -> usize {
        self.subject.len() + self.payload.len()
    }
}

/// This node's side of the retained stream.
pub(crate) struct RetainedStream {
    /// `{prefix}.r`: the topics' subjects follow it.
    subjects: String,
    stream: String,
    instance: u64,
    pending: Mutex<Pending>,
    wake: Notify,
    /// The copy has caught up with the stream (set once at start, and again after each loss).
    loaded: AtomicBool,
    /// The NATS connection came back: the consumer is made again at once rather than after
    /// its missed heartbeats (seconds) tell it was lost with the server.
    reconnected: Notify,
    metrics: Arc<Metrics>,
}

impl RetainedStream {
    pub(crate) fn new(prefix: &str, instance: u64, metrics: Arc<Metrics>) -> RetainedStream {
        RetainedStream {
            subjects: format!("{prefix}.r"),
            stream: format!("{prefix}_retained"),
            instance,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            loaded: AtomicBool::new(false),
            reconnected: Notify::new(),
            metrics,
        }
    }

    /// Whether this node's copy is the stream's: caught up, and the stream reachable.
    pub(crate) fn ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The NATS connection went (`up` false) or came back.
    pub(crate) fn connection(&self, up: bool) {
        if up {
            self.reconnected.notify_one();
        } else {
            self.loaded.store(false, Ordering::Release);
        }
    }

    /// A client's retained set (payload) or clear (empty payload) on this node, already applied
    /// to the local copy: queued for the stream.
    pub(crate) fn write(&self, msg: &Message) {
        let m = &self.metrics.cluster;
        let subject = topic_subject(&self.subjects, &msg.topic);
        if subject.len() > MAX_SUBJECT {
            m.dropped(ClusterDrop::TooLarge);
            return;
        }
        let payload = if msg.payload.is_empty() {
            Bytes::new()
        } else {
            envelope::encode(msg, self.instance, 0, false, None, unix_millis())
        };
        let write = Write { subject, payload };
        let mut pending = self.pending.lock();
        if pending.writes.len() >= MAX_PENDING || pending.bytes + write.size() > MAX_PENDING_BYTES {
            m.dropped(ClusterDrop::Overflow);
            return;
        }
        pending.bytes += write.size();
        pending.writes.push_back(write);
        drop(pending);
        self.wake.notify_one();
    }

    /// Sets the stream up (again, until it exists), then writes and follows it; runs until the
    /// broker stops.
    pub(crate) async fn run(&self, js: jetstream::Context, router: Weak<Router>) {
        let stream = self.ensure(&js).await;
        futures_util::future::join(self.send(&js), self.follow(&js, stream, router)).await;
    }

    fn config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.subjects)],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            ..stream::Config::default()
        }
    }

    async fn ensure(&self, js: &jetstream::Context) -> stream::Stream {
        let mut pause = RETRY_MIN;
        loop {
            match js.get_or_create_stream(self.config()).await {
                Ok(s) => return s,
                Err(e) => {
                    self.loaded.store(false, Ordering::Release);
                    warn!(stream = %self.stream, "cluster: retained stream unavailable: {e}");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// Sends the queued writes in order, a batch at a time; a batch that fails from some write
    /// on is sent again from there (a write sent twice only sets the same value again).
    async fn send(&self, js: &jetstream::Context) {
        let m = &self.metrics.cluster;
        let mut pause = RETRY_MIN;
        loop {
            let batch: Vec<(String, Bytes)> = {
                let pending = self.pending.lock();
                pending
                    .writes
                    .iter()
                    .take(BATCH)
                    .map(|w| (w.subject.clone(), w.payload.clone()))
                    .collect()
            };
            if batch.is_empty() {
                self.wake.notified().await;
                continue;
            }
            let mut acks = Vec::with_capacity(batch.len());
            for (subject, payload) in batch {
                let publish = PublishMessage::build().payload(payload);
                match js.send_publish(subject, publish).await {
                    Ok(ack) => acks.push(ack),
                    Err(e) => {
                        warn!("cluster: retained write not sent: {e}");
                        break;
                    }
                }
            }
            let mut done = 0;
            let mut failed = false;
            for ack in acks {
                match ack.await {
                    Ok(_) => done += 1,
                    Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                        m.dropped(ClusterDrop::TooLarge);
                        done += 1;
                    }
                    Err(e) => {
                        warn!("cluster: retained write not acknowledged: {e}");
                        failed = true;
                        break;
                    }
                }
            }
            m.retained_written.increment(done as u64);
            {
                let mut pending = self.pending.lock();
                let sent: usize = pending.writes.drain(..done).map(|w| w.size()).sum();
                pending.bytes -= sent;
            }
            if failed || done == 0 {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            } else {
                pause = RETRY_MIN;
            }
        }
    }

    /// Follows the stream into the router's retained store: every subject's last message first,
    /// then each new one; a lost consumer is made again after the last sequence applied.
    async fn follow(
        &self,
        js: &jetstream::Context,
        mut stream: stream::Stream,
        router: Weak<Router>,
    ) {
        let mut last = 0u64;
        let mut pause = RETRY_MIN;
        loop {
            let deliver_policy = if last == 0 {
                DeliverPolicy::LastPerSubject
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: last + 1,
                }
            };
            let config = pull::OrderedConfig {
                filter_subject: format!("{}.>", self.subjects),
                deliver_policy,
                ..pull::OrderedConfig::default()
            };
            let consumer = match stream.create_consumer(config).await {
                Ok(consumer) => consumer,
                Err(e) => {
                    warn!(stream = %self.stream, "cluster: cannot follow the retained stream: {e}");
                    self.loaded.store(false, Ordering::Release);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                    // The stream itself may be gone (deleted, or NATS lost its store).
                    stream = self.ensure(js).await;
                    continue;
                }
            };
            if consumer.cached_info().num_pending == 0 {
                self.caught_up();
            }
            let mut messages = match consumer.messages().await {
                Ok(messages) => messages,
                Err(e) => {
                    warn!(stream = %self.stream, "cluster: cannot follow the retained stream: {e}");
                    self.loaded.store(false, Ordering::Release);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    next = messages.next() => next,
                    _ = self.reconnected.notified() => break,
                };
                let msg = match next {
                    None => break,
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        warn!(stream = %self.stream, "cluster: retained stream lost: {e}");
                        break;
                    }
                };
                pause = RETRY_MIN;
                let Ok(info) = msg.info() else {
                    continue;
                };
                last = info.stream_sequence;
                let pending = info.pending;
                let stored_at =
                    u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
                if let Some(router) = router.upgrade() {
                    self.apply(&router, &msg.subject, msg.payload.clone(), stored_at);
                }
                if pending == 0 {
                    self.caught_up();
                }
            }
            self.loaded.store(false, Ordering::Release);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    fn caught_up(&self) {
        if !self.loaded.swap(true, Ordering::AcqRel) {
            info!(stream = %self.stream, "cluster: retained messages caught up with JetStream");
        }
    }

    /// One message of the stream into this node's copy.
    fn apply(&self, router: &Router, subject: &str, payload: Bytes, stored_at: UnixMillis) {
        let m = &self.metrics.cluster;
        let Ok(topic) = topic_of(&self.subjects, subject) else {
            m.dropped(ClusterDrop::Malformed);
            return;
        };
        if payload.is_empty() {
            router.apply_retained(&topic, None);
            m.retained_applied.increment(1);
            return;
        }
        let Ok(env) = envelope::decode(payload) else {
            m.dropped(ClusterDrop::Malformed);
            return;
        };
        let msg = env.into_message(topic.as_str().into(), stored_at);
        router.apply_retained(&topic, Some(Arc::new(msg)));
        m.retained_applied.increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    fn retained(topic: &str, payload: Vec<u8>) -> Message {
        Message::restored(
            topic.into(),
            payload.into(),
            QoS::AtLeastOnce,
            true,
            None,
            None,
        )
    }

    #[test]
    fn writes_waiting_for_jetstream_are_bounded_in_bytes_and_number() {
        let stream = RetainedStream::new("gw", 1, Arc::new(Metrics::new()));
        let big = MAX_PENDING_BYTES / 4;
        for i in 0..8 {
            stream.write(&retained(&format!("t/{i}"), vec![7; big]));
        }
        let pending = stream.pending.lock();
        assert_eq!(
            pending.writes.len(),
            3,
            "a fourth would pass the byte bound"
        );
        assert!(pending.bytes <= MAX_PENDING_BYTES);
        drop(pending);
        for i in 0..MAX_PENDING + 10 {
            stream.write(&retained(&format!("s/{i}"), Vec::new()));
        }
        assert_eq!(stream.pending.lock().writes.len(), MAX_PENDING);
    }
}
