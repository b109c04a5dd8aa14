//! Ingestion (`[[ingest]]`): published messages written into NATS JetStream streams, and the
//! publisher's acknowledgement held until JetStream has them.
//!
//! Every QoS 0/1/2 message a client publishes is matched against the rules (`rules`); each
//! matching rule writes it once, to the subject its template gives (`subject`), with the MQTT
//! attributes as headers (`headers`) and, for QoS 1/2, a de-duplication id (`dedup`). Each rule
//! has a writer (`writer`) that pipelines its publishes over the shared NATS connection and
//! retries them until JetStream acknowledges or the rule's `ack_timeout` passes.
//!
//! A QoS 1/2 message matched by a rule with `ack = "stream"` gets a `Ticket`: the client task
//! holds its PUBACK / PUBREC (in the same queue that holds acknowledgements until the store is
//! durable, `client::publish`) until every such rule's write is acknowledged, and the last write
//! to finish wakes the session. A write that fails (stream full, or JetStream unreachable for
//! `ack_timeout`) refuses the acknowledgement: v5 clients get the reason code, 3.1.1 clients are
//! disconnected without one, so they send again.
//!
//! A persistent session's de-duplication numbers are recorded by the store, and its writes
//! wait until they are committed (`dedup`), so that a resend after a restart is recognised.
//!
//! Wills are ingested too (`offer_will`): a device's message, published by the broker for it.
//! Messages that reach this node from another cluster node are not: the node where the device
//! published wrote them already. The broker's own `$SYS` status never is (a rule cannot name
//! `$` topics, and wildcards never match them).
//!
//! Ingestion has its own NATS connection (`nats::Nats`, the `[nats]` settings), apart from the
//! cluster's, so that a stream slow to acknowledge never delays cluster routing.

pub(crate) mod dedup;
mod headers;
mod rules;
mod subject;
mod window;
mod writer;

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::info;

use crate::codec::QoS;
use crate::config::Config;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::nats::{Nats, NatsError, EVENT_BACKLOG};
use crate::session::Session;
use crate::store::{Mark, Store};
use crate::task::Background;
use crate::ticket::Ticket;

pub(crate) use subject::Template;

use rules::Rule;
use writer::{Write, Writer};

/// Why ingestion cannot start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IngestError {
    #[error("ingest[{index}].subject {subject:?}: {source}")]
    Template {
        index: usize,
        subject: String,
        #[source]
        source: subject::TemplateError,
    },
    #[error(transparent)]
    Nats(#[from] NatsError),
}

/// The rules and their writers.
pub(crate) struct Ingest {
    rules: Vec<Rule>,
    nats: Nats,
    /// Where persistent sessions' de-duplication numbers are recorded (`dedup`).
    store: Arc<dyn Store>,
}

/// What `Broker::run` starts: the stream set-up and the writers.
pub(crate) struct IngestTasks {
    tasks: Vec<futures_util::future::BoxFuture<'static, ()>>,
}

impl IngestTasks {
    /// Spawns them; they stop when the returned handles are dropped.
    pub(crate) fn spawn(self) -> Vec<Background> {
        self.tasks.into_iter().map(Background::spawn).collect()
    }
}

impl Ingest {
    /// Connects to NATS in the background (the gateway serves while NATS is down) and builds
    /// the rules. `None` without `[[ingest]]` rules.
    pub(crate) async fn connect(
        config: &Config,
        metrics: &Metrics,
        store: &Arc<dyn Store>,
    ) -> Result<Option<(Arc<Ingest>, IngestTasks)>, IngestError> {
        if config.ingest.is_empty() {
            return Ok(None);
        }
        // Checked by the loader already; a configuration built in code is checked here.
        let mut templates = Vec::with_capacity(config.ingest.len());
        for (index, rule) in config.ingest.iter().enumerate() {
            let template =
                Template::parse(&rule.subject).map_err(|source| IngestError::Template {
                    index,
                    subject: rule.subject.clone(),
                    source,
                })?;
            templates.push(template);
        }
        let (events_tx, events) = mpsc::channel(EVENT_BACKLOG);
        let nats = Nats::connect(&config.nats, "gateway-ingest", false, events_tx).await?;
        info!(
            rules = config.ingest.len(),
            "ingest: connecting to NATS in the background"
        );
        let mut rules = Vec::with_capacity(config.ingest.len());
        let mut tasks = vec![writer::watch_connection(events)];
        for ((index, rule), template) in config.ingest.iter().enumerate().zip(templates) {
            let (writer, task) = Writer::start(
                index,
                rule,
                &template,
                nats.client.clone(),
                store.committed(),
                metrics,
            );
            rules.push(Rule::new(index, rule, template, writer));
            tasks.push(task);
        }
        Ok(Some((
            Arc::new(Ingest {
                rules,
                nats,
                store: store.clone(),
            }),
            IngestTasks { tasks },
        )))
    }

    /// Hands `msg`, published by `session` with `packet_id`, to every matching rule. `resend`:
    /// the client sent it before (DUP, or a QoS 2 id still held). `window`: the client's
    /// in-flight window (`mqtt.receive_maximum`). Returns what the acknowledgement must wait for:
    /// `None` when nothing (QoS 0, no rule with `ack = "stream"` matched).
    pub(crate) fn offer(
        &self,
        msg: &Arc<Message>,
        session: &Arc<Session>,
        packet_id: u16,
        resend: bool,
        window: usize,
    ) -> Option<Arc<Ticket>> {
        let mut matched = self
            .rules
            .iter()
            .filter(|r| r.matches(&msg.topic))
            .peekable();
        matched.peek()?;
        let matched: Vec<&Rule> = matched.collect();
        let qos0 = msg.qos == QoS::AtMostOnce;
        let waits = if qos0 {
            0
        } else {
            matched.iter().filter(|r| r.holds_ack()).count()
        };
        let ticket = (waits > 0).then(|| Arc::new(Ticket::new(waits, session.clone())));
        let mut after: Mark = 0;
        let number = (!qos0).then(|| {
            let content = dedup::content_hash(&msg.topic, &msg.payload);
            let (epoch, n, new) = session.ingest_number(packet_id, resend, content, window);
            if let Some(new) = new.filter(|_| session.is_persistent()) {
                after = self.store.ingest_id(&session.client_id, new);
            }
            (epoch, n)
        });
        for rule in matched {
            let msg_id = number.map(|(epoch, n)| {
                dedup::msg_id(&session.client_id, epoch, packet_id, n, rule.index)
            });
            let write = Write {
                subject: rule.subject(&msg.topic, &session.client_id).into(),
                message: msg.clone(),
                client_id: session.client_id.clone(),
                msg_id,
                ticket: ticket.clone().filter(|_| rule.holds_ack()),
                qos0,
                after,
            };
            rule.writer.submit(write);
        }
        ticket
    }

    /// Hands a will, published for `client_id` by the broker, to every matching rule. Nobody
    /// waits for its acknowledgement, and it has no de-duplication id: a will the broker
    /// publishes again after a crash (its record not yet cleared) is written again.
    pub(crate) fn offer_will(&self, msg: &Arc<Message>, client_id: &str) {
        for rule in self.rules.iter().filter(|r| r.matches(&msg.topic)) {
            rule.writer.submit(Write {
                subject: rule.subject(&msg.topic, client_id).into(),
                message: msg.clone(),
                client_id: client_id.into(),
                msg_id: None,
                ticket: None,
                qos0: msg.qos == QoS::AtMostOnce,
                after: 0,
            });
        }
    }

    /// The first rule that cannot write now and why, for `/readyz`.
    pub(crate) fn blocked(&self) -> Option<String> {
        if !self.nats.is_connected() && !self.nats.refresh() {
            return Some("ingest: no connection to NATS".to_owned());
        }
        self.rules.iter().find_map(|r| {
            r.writer
                .blocked()
                .map(|why| format!("ingest rule {} (stream {}): {why}", r.index, r.stream))
        })
    }
}
