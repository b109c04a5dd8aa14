//! The connection to NATS (`[nats]`): options from the configuration, the connection in the
//! background, and its state as the rest of the gateway sees it.
//!
//! Kept apart from the cluster so that other users of NATS (JetStream ingestion) share one way
//! to connect. The client connects in the background and reconnects for ever
//! (`retry_on_initial_connect`, no reconnect limit): a node must start and serve its local
//! clients while NATS is down, and recover by itself when it returns. Connection events are
//! handed to the owner through a channel; `connected` is the flag readiness and metrics read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use tokio::sync::mpsc;

use crate::config::NatsConfig;

/// How many connection events may wait for the owner; more are dropped (the state flag is
/// still right, and the owner re-reads the client's state on its own timer).
pub(crate) const EVENT_BACKLOG: usize = 64;
/// Messages a subscription may hold before the client drops them as a slow consumer. The
/// cluster's duplicate window (`cluster::link`) is larger, so that copies of one message never
/// lag each other by more than it can see.
pub(crate) const SUBSCRIPTION_CAPACITY: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub(crate) enum NatsError {
    #[error("cannot read nats.creds_file {path}: {source}")]
    Creds {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the NATS connection: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

/// A NATS connection: the client and whether it is connected now.
pub(crate) struct Nats {
    pub(crate) client: Client,
    connected: Arc<AtomicBool>,
    /// Messages the client dropped because a subscription's channel was full (one event each;
    /// counted here, since the events channel itself may drop them).
    slow_consumer_drops: Arc<AtomicU64>,
}

impl Nats {
    /// Starts connecting to `config.servers` as `name` (shown by the server's monitoring);
    /// returns at once. Events go to `events`. `no_echo`: the server does not deliver this
    /// connection's own messages back to it.
    pub(crate) async fn connect(
        config: &NatsConfig,
        name: &str,
        no_echo: bool,
        events: mpsc::Sender<Event>,
    ) -> Result<Nats, NatsError> {
        let connected = Arc::new(AtomicBool::new(false));
        let flag = connected.clone();
        let slow_consumer_drops = Arc::new(AtomicU64::new(0));
        let drops = slow_consumer_drops.clone();
        let mut options = ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                match event {
                    Event::Connected => flag.store(true, Ordering::Release),
                    Event::Disconnected | Event::Closed => flag.store(false, Ordering::Release),
                    Event::SlowConsumer(_) => {
                        drops.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                let events = events.clone();
                async move {
                    let _ = events.try_send(event);
                }
            });
        if no_echo {
            options = options.no_echo();
        }
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        if let Some(path) = &config.creds_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|source| NatsError::Creds {
                    path: path.display().to_string(),
                    source,
                })?;
        }
        if config.tls_required() {
            options = options.require_tls(true);
        }
        if let Some(ca) = &config.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let client = options.connect(config.servers.as_slice()).await?;
        Ok(Nats {
            client,
            connected,
            slow_consumer_drops,
        })
    }

    /// Messages dropped so far because a subscription of this connection fell behind.
    pub(crate) fn slow_consumer_drops(&self) -> u64 {
        self.slow_consumer_drops.load(Ordering::Relaxed)
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Makes the flag agree with the client's own state, in case an event was dropped.
    pub(crate) fn refresh(&self) -> bool {
        let up = self.client.connection_state() == async_nats::connection::State::Connected;
        self.connected.store(up, Ordering::Release);
        up
    }
}
