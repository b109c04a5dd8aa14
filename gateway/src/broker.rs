//! The broker as a whole: shared context, start-up and graceful shutdown.
//!
//! `Context` is what every connection task shares: configuration, router, session registry and
//! metrics. `Broker::run` serves until its shutdown future resolves, then stops accepting, asks
//! every connected client to leave (v5: DISCONNECT 0x8B) and waits for their tasks to finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::info;

use crate::config::Config;
use crate::listener;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::router::Router;
use crate::session::{Kick, QueueLimits};

/// How long shutdown waits for connections to close before returning anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// File descriptors the process holds besides client sockets (listeners, logs, runtime).
const BASE_FDS: u64 = 16;

pub struct Context {
    pub config: Config,
    pub router: Arc<Router>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// Open client connections.
    pub connections: AtomicUsize,
    /// Connections refused beyond this (open-file limit minus reserve).
    pub max_connections: usize,
    /// Notified when the last connection closes.
    pub idle: Notify,
}

/// One open client connection, counted from accept until its last task ends (also by unwinding).
pub struct ConnectionSlot(Arc<Context>);

impl ConnectionSlot {
    pub fn new(ctx: Arc<Context>) -> ConnectionSlot {
        ctx.connections.fetch_add(1, Ordering::AcqRel);
        ConnectionSlot(ctx)
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.0
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if self.0.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

pub struct Broker {
    ctx: Arc<Context>,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Broker {
    /// Binds the MQTT listener and builds the shared state.
    pub async fn bind(config: Config) -> anyhow::Result<Broker> {
        let fd_limit = listener::raise_fd_limit();
        let max_connections =
            fd_limit.saturating_sub(u64::from(config.mqtt.fd_reserve) + BASE_FDS) as usize;
        let metrics = Arc::new(Metrics::new());
        let limits = QueueLimits {
            max_queued: config.mqtt.max_queued_messages,
            queue_qos0_offline: config.mqtt.queue_qos0_offline,
        };
        let router = Arc::new(Router::new(
            limits,
            config.mqtt.retained_max,
            config.mqtt.max_topic_levels,
            metrics.clone(),
        ));
        let listener = listener::bind(config.mqtt.listen)
            .with_context(|| format!("cannot listen on {}", config.mqtt.listen))?;
        let local_addr = listener.local_addr()?;
        info!(%local_addr, fd_limit, max_connections, "MQTT listener bound");
        let ctx = Arc::new(Context {
            config,
            router,
            registry: Arc::new(Registry::new()),
            metrics,
            connections: AtomicUsize::new(0),
            max_connections,
            idle: Notify::new(),
        });
        Ok(Broker {
            ctx,
            listener,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// Serves until `shutdown` resolves, then drains connections and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let ctx = self.ctx.clone();
        tokio::select! {
            _ = listener::accept_loop(ctx.clone(), self.listener) => {}
            _ = shutdown => {}
        }
        info!("shutting down: listener closed, disconnecting clients");
        let idle = ctx.idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        for session in ctx.registry.all() {
            if session.is_online() {
                session.kick(Kick::Shutdown);
            }
        }
        if ctx.connections.load(Ordering::Acquire) > 0 {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, idle).await;
        }
        info!(
            remaining = ctx.connections.load(Ordering::Acquire),
            "shutdown complete"
        );
        Ok(())
    }
}
