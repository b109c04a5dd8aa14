//! One `[[listeners]]` entry at run time: its settings, its certificates and its open connections.
//!
//! Loaded before any socket is bound (a bad certificate is a configuration error), held by the
//! shared `Context` so that SIGHUP can reload the certificates, and read by the accept loop for
//! the entry's own connection limit and its TLS / WebSocket handshake.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use crate::config::{ConfigError, ListenerConfig, ListenerKind};
use crate::tls::TlsFiles;

pub(crate) struct Endpoint {
    pub(crate) config: ListenerConfig,
    /// The certificates of a `tls` or `wss` entry.
    pub(crate) tls: Option<TlsFiles>,
    /// Its open connections, held by each connection's `ConnectionSlot`.
    pub(crate) open: Arc<AtomicUsize>,
}

impl Endpoint {
    /// Reads the listener's certificates (tls, wss); `index` names it in errors.
    pub(crate) fn load(index: usize, config: &ListenerConfig) -> Result<Endpoint, ConfigError> {
        let tls = if config.kind.is_tls() {
            Some(TlsFiles::load(index, config)?)
        } else {
            None
        };
        Ok(Endpoint {
            config: config.clone(),
            tls,
            open: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub(crate) fn kind(&self) -> ListenerKind {
        self.config.kind
    }

    /// Re-reads the certificate files of a TLS listener for new handshakes; `Ok(false)` when the
    /// listener has none.
    pub(crate) fn reload_certificates(&self) -> Result<bool, ConfigError> {
        match &self.tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
    }
}
