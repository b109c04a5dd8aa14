//! One `[[ingest]]` rule as the data path uses it: its filter, its subject template, whether it
//! holds the publisher's acknowledgement, and its writer.

use std::sync::Arc;

use crate::config::{IngestAck, IngestRule};
use crate::topic;

use super::subject::Template;
use super::writer::Writer;

pub(super) struct Rule {
    /// Position in the file, from 0: the `rule` label and the id in readiness messages.
    pub(super) index: usize,
    pub(super) stream: String,
    filter: String,
    template: Template,
    ack: IngestAck,
    pub(super) writer: Arc<Writer>,
}

impl Rule {
    pub(super) fn new(
        index: usize,
        config: &IngestRule,
        template: Template,
        writer: Arc<Writer>,
    ) -> Rule {
        Rule {
            index,
            stream: config.stream.clone(),
            filter: config.filter.clone(),
            template,
            ack: config.ack,
            writer,
        }
    }

    /// Whether a message on `topic` is this rule's (wildcards never match `$` topics).
    pub(super) fn matches(&self, topic: &str) -> bool {
        topic::matches(&self.filter, topic)
    }

    /// Whether the publisher's PUBACK / PUBREC waits for this rule's write.
    pub(super) fn holds_ack(&self) -> bool {
        self.ack == IngestAck::Stream
    }

    pub(super) fn subject(&self, topic: &str, client_id: &str) -> String {
        self.template.render(topic, client_id)
    }
}
