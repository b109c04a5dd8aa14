//! What every connection task shares: configuration, router, session registry, metrics, security,
//! the connection counters and the parker of hibernating sessions.
//!
//! `Context` is built once by `Broker::bind` and handed (`Arc`) to every accept loop, connection
//! task and background task. A connection holds it through its `ConnectionSlot`, which also
//! counts the connection open until its last task ends. The broker's state as operators see it
//! (`/metrics`, `$SYS`, the admin API) is computed here from the parts.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::admission::Admission;
use crate::auth::Security;
use crate::cluster::{HandedOver, Sessions};
use crate::config::Config;
use crate::endpoint::Endpoint;
use crate::hibernate::Parker;
use crate::ingest::Ingest;
use crate::metrics::{BrokerState, Metrics};
use crate::policy::Policy;
use crate::registry::Registry;
use crate::router::Router;
use crate::session::ConnectionInfo;

pub struct Context {
    pub(crate) config: Config,
    /// What a connection may do, from `config`: all that `client` reads of it.
    pub(crate) policy: Policy,
    pub(crate) router: Arc<Router>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) metrics: Arc<Metrics>,
    /// Password file, ACL and the login hashing limiter (`[auth]`), reloaded on SIGHUP.
    pub(crate) security: Security,
    /// Open connections and handshakes, against the node's limits.
    pub(crate) admission: Admission,
    /// The `[[listeners]]` entries (SIGHUP reloads their certificates).
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    /// True while the MQTT listener accepts: `/readyz` answers 503 before and during shutdown.
    pub(crate) ready: AtomicBool,
    pub(crate) started: Instant,
    /// Holds idle sessions without their tasks (`mqtt.hibernate_after`).
    pub(crate) parker: Arc<Parker>,
    /// `[[ingest]]`: published messages into JetStream; `None` without rules.
    pub(crate) ingest: Option<Arc<Ingest>>,
}

impl Context {
    /// The broker's state as `/metrics`, `$SYS` and the admin API report it: one walk over the
    /// sessions (two short lock acquisitions each), cheap enough per scrape or status tick.
    pub fn state(&self) -> BrokerState {
        let mut state = BrokerState {
            connections: self.admission.connections(),
            subscriptions: self.router.subscription_len(),
            shared_subscriptions: self.router.shared_subscription_len(),
            retained_messages: self.router.retained_len(),
            retained_bytes: self.router.retained_bytes(),
            uptime_seconds: self.started.elapsed().as_secs(),
            sessions_hibernating: self.parker.len(),
            runtime_tasks: tokio::runtime::Handle::try_current()
                .map_or(0, |h| h.metrics().num_alive_tasks()),
            ..BrokerState::default()
        };
        let store = self.router.store.stats();
        state.store_size_bytes = store.size_bytes;
        state.stored_sessions = store.sessions;
        state.stored_messages = store.messages;
        state.store_available = store.available;
        let cluster = self.router.cluster.state();
        state.cluster_connected = cluster.connected;
        state.cluster_remote_interest = cluster.remote_interest;
        state.cluster_nodes = cluster.nodes;
        state.cluster_unconfirmed = cluster.unconfirmed;
        state.cluster_retained_ready = cluster.connected && !cluster.retained_behind;
        // Each message once, however many sessions hold it: what queues pin in real bytes.
        let mut held = HashSet::new();
        for session in self.registry.all() {
            if session.is_online() {
                state.sessions_online += 1;
            } else {
                state.sessions_offline += 1;
            }
            state.queued_messages += session.queue_len();
            state.inflight_messages += session.inflight_len();
            session.for_each_message(|m| {
                if held.insert(Arc::as_ptr(m)) {
                    state.held_message_bytes += crate::router::message_weight(m);
                }
            });
        }
        state.held_messages = held.len();
        state
    }

    /// Every session's client id with its latest connection (the one attached, or the last):
    /// who the broker sees, as the admin API lists it.
    pub fn connections(&self) -> Vec<(Arc<str>, Option<ConnectionInfo>)> {
        let sessions = self.registry.all();
        sessions
            .iter()
            .map(|s| (s.client_id.clone(), s.connection()))
            .collect()
    }

    /// Re-reads the files an operator may replace while the broker runs (SIGHUP): the password
    /// and ACL files, and each TLS listener's certificates. A file that fails to load is logged
    /// and its previous contents kept; one bad certificate keeps only that listener's old one.
    pub fn reload(&self) {
        match self.security.reload() {
            Ok(()) => tracing::info!("SIGHUP: password and ACL files reloaded"),
            Err(e) => tracing::error!("SIGHUP: {e}; keeping the previous files"),
        }
        for l in &self.endpoints {
            match l.reload_certificates() {
                Ok(true) => {
                    tracing::info!(kind = l.kind().as_str(), "SIGHUP: certificates reloaded")
                }
                Ok(false) => {}
                Err(e) => tracing::error!("SIGHUP: {e}; keeping the previous certificates"),
            }
        }
    }
}

/// One open client connection, counted from accept until its last task ends (also by unwinding).
pub(crate) struct ConnectionSlot(Arc<Context>, Option<Arc<AtomicUsize>>);

impl ConnectionSlot {
    /// `endpoint_open`: the open-connection count of a `[[listeners]]` entry, held the same way.
    pub(crate) fn new(
        ctx: Arc<Context>,
        endpoint_open: Option<Arc<AtomicUsize>>,
    ) -> ConnectionSlot {
        ctx.admission.opened();
        if let Some(open) = &endpoint_open {
            open.fetch_add(1, Ordering::AcqRel);
        }
        ConnectionSlot(ctx, endpoint_open)
    }

    pub(crate) fn context(&self) -> &Arc<Context> {
        &self.0
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(open) = &self.1 {
            open.fetch_sub(1, Ordering::AcqRel);
        }
        self.0.admission.closed();
    }
}

impl Sessions for Context {
    fn surrender<'a>(
        &'a self,
        client_id: &'a str,
        deadline: tokio::time::Instant,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<HandedOver>> + Send + 'a>> {
        Box::pin(self.registry.surrender(client_id, &self.router, deadline))
    }

    fn adopt(&self, state: HandedOver) {
        self.registry.adopt(state, &self.router);
    }
}
