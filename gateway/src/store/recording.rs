//! A store for the seam's own tests (`router`, `registry`): keeps nothing, writes down what it is
//! told, in order, into a log it may share with a recording cluster, and hands back whatever
//! state a test gives it to load.

use std::sync::Arc;

use bytestring::ByteString;
use parking_lot::Mutex;

use super::{Mark, Restored, SessionRecord, Store, StoreError, StoreStats};
use crate::message::Message;
use crate::session::{Delivery, Session, Stage};

#[derive(Default)]
pub(crate) struct Recording {
    /// One line per change: `saved ID`, `removed ID`, `queued ID TOPIC`, `retained TOPIC BOOL`.
    pub(crate) log: Arc<Mutex<Vec<String>>>,
    pub(crate) saved: Mutex<Vec<SessionRecord>>,
    pub(crate) restored: Mutex<Option<Restored>>,
}

impl Recording {
    /// A recording that writes into `log` (shared with another recorder).
    pub(crate) fn into(log: Arc<Mutex<Vec<String>>>) -> Recording {
        Recording {
            log,
            ..Recording::default()
        }
    }

    /// The log lines starting with `what ` (their rest).
    pub(crate) fn lines(&self, what: &str) -> Vec<String> {
        let prefix = format!("{what} ");
        let log = self.log.lock();
        log.iter()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }

    fn note(&self, line: String) {
        self.log.lock().push(line);
    }
}

impl Store for Recording {
    fn load(&self) -> Result<Restored, StoreError> {
        Ok(self.restored.lock().take().unwrap_or_default())
    }
    fn session_saved(&self, s: &SessionRecord) -> Mark {
        self.note(format!("saved {}", s.client_id));
        self.saved.lock().push(s.clone());
        0
    }
    fn session_removed(&self, client_id: &str) {
        self.note(format!("removed {client_id}"));
    }
    fn queued(&self, client_id: &Arc<str>, d: &Delivery) -> Mark {
        self.note(format!("queued {client_id} {}", d.msg.topic));
        0
    }
    fn sent(&self, _: &Arc<str>, _: u64, _: u16, _: Stage) -> Mark {
        0
    }
    fn settled(&self, _: &Arc<str>, _: u64) {}
    fn incoming_qos2(&self, _: &Arc<str>, _: u16, _: bool) -> Mark {
        0
    }
    fn retained(&self, topic: &ByteString, m: Option<&Arc<Message>>) -> Mark {
        self.note(format!("retained {topic} {}", m.is_some()));
        0
    }
    fn is_durable(&self, _: Mark) -> bool {
        true
    }
    fn wake_when_durable(&self, _: Mark, _: &Arc<Session>) {}
    fn read_queued(&self, _: &str, _: u64, _: u64, _: usize) -> Result<Vec<Delivery>, StoreError> {
        Ok(Vec::new())
    }
    fn available(&self) -> bool {
        true
    }
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}
