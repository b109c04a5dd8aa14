//! The broker as a whole: start-up and graceful shutdown.
//!
//! `Broker::bind` builds the shared `Context` and binds the MQTT listener and the HTTP endpoint (which answers at once,
//! not ready until the broker runs); `Broker::run` serves until its shutdown future resolves,
//! then marks itself not ready, stops accepting, asks every connected client to leave (v5:
//! DISCONNECT 0x8B) and waits for their tasks to finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tracing::info;

use crate::admission::Admission;
use crate::auth::Security;
use crate::cluster::{Link, NatsCluster, Sessions};
use crate::config::Config;
use crate::context::Context;
use crate::endpoint::Endpoint;
use crate::hibernate::Parker;
use crate::ingest::{Ingest, IngestTasks};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::registry::Registry;
use crate::router::Router;
use crate::session::{Kick, QueueLimits};
use crate::store::DiskStore;
use crate::task::Background;
use crate::{http, limits, listener, sys};

/// How long shutdown waits for connections to close before returning anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// File descriptors the process holds besides client sockets (listeners, logs, runtime).
const BASE_FDS: u64 = 16;

pub struct Broker {
    ctx: Arc<Context>,
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The `[[listeners]]` sockets, in `ctx.endpoints` order.
    extra: Vec<TcpListener>,
    http: Option<http::Server>,
    /// `[cluster] enabled`: this node in the cluster and its link task, started by `run`.
    cluster: Option<(Arc<NatsCluster>, Link)>,
    /// `[[ingest]]`: the rules' stream set-up and writers, started by `run`.
    ingest: Option<IngestTasks>,
}

impl Broker {
    /// Binds the MQTT listener and the HTTP endpoint and builds the shared state.
    pub async fn bind(config: Config) -> anyhow::Result<Broker> {
        // Files first: a bad password or ACL file is a configuration error (exit 2 in `main`).
        let security = Security::load(&config)?;
        let fd_limit = listener::raise_fd_limit();
        let max_connections =
            fd_limit.saturating_sub(u64::from(config.mqtt.fd_reserve) + BASE_FDS) as usize;
        // Without an HTTP endpoint nobody can read the metrics: keep the hot path's handles no-ops.
        let (metrics, http) = match config.http.listen {
            Some(addr) => {
                let (metrics, exporter) = Metrics::prometheus()?;
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (http.listen)"))?;
                (metrics, Some((listener, exporter)))
            }
            None => (Metrics::new(), None),
        };
        let metrics = Arc::new(metrics);
        let limits = QueueLimits {
            max_queued: config.mqtt.max_queued_messages,
            max_queued_bytes: config.mqtt.max_queued_bytes,
            queue_qos0_offline: config.mqtt.queue_qos0_offline,
        };
        let mut router = Router::new(
            limits,
            config.mqtt.retained_max,
            config.mqtt.max_topic_levels,
            metrics.clone(),
        )
        .with_retained_max_bytes(config.mqtt.retained_max_bytes);

        // Certificates before any socket: a bad file is a configuration error (exit 2 in `main`).
        let endpoints = config
            .listeners
            .iter()
            .enumerate()
            .map(|(index, l)| Endpoint::load(index, l).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        if config.storage.enabled && !config.cluster.enabled {
            // Before any socket: an unreadable store stops the gateway (exit 2 in `main`).
            router = router.with_store(Arc::new(DiskStore::open(&config.storage, &metrics.store)?));
        }
        let cluster = if config.cluster.enabled {
            // Connects in the background: the node serves its local clients while NATS is down.
            let (cluster, link) = NatsCluster::connect(&config, metrics.clone())
                .await
                .context("cannot set up the cluster's NATS connection")?;
            // Persistent sessions live in JetStream, where any node can take them over; see
            // `store::jetstream` for why `[storage]` is not used beside it.
            if config.storage.enabled {
                tracing::warn!("[storage] is not used in cluster mode: persistent sessions are kept in JetStream");
            }
            router = router.with_store(cluster.session_store());
            router = router.with_cluster(cluster.clone());
            Some((cluster, link))
        } else {
            None
        };
        // Also in the background: publishers wait for their acknowledgements until NATS is up.
        let (ingest, ingest_tasks) = match Ingest::connect(&config, &metrics, &router.store)
            .await
            .context("cannot set up ingestion's NATS connection")?
        {
            Some((ingest, tasks)) => (Some(ingest), Some(tasks)),
            None => (None, None),
        };
        let router = Arc::new(router.with_ingest(ingest.clone()));
        let listener = listener::bind(config.mqtt.listen, &config)
            .with_context(|| format!("cannot listen on {}", config.mqtt.listen))?;
        let local_addr = listener.local_addr()?;
        info!(%local_addr, fd_limit, max_connections, "MQTT listener bound");
        let mut extra = Vec::with_capacity(config.listeners.len());
        for (index, l) in config.listeners.iter().enumerate() {
            let socket = listener::bind(l.bind, &config).with_context(|| {
                format!("cannot listen on {} (listeners[{index}].bind)", l.bind)
            })?;
            info!(kind = l.kind.as_str(), local_addr = %socket.local_addr()?, "listener bound");
            extra.push(socket);
        }

        let registry = Arc::new(Registry::new());
        let restored = router.store.load()?;
        registry.restore(restored, &router);
        let ctx = Arc::new(Context {
            policy: Policy::new(&config),
            config,
            router,
            registry,
            metrics,
            security,
            admission: Admission::new(max_connections),
            endpoints,
            ready: AtomicBool::new(false),
            started: Instant::now(),
            parker: Parker::new().context("cannot create the hibernation epoll set")?,
            ingest,
        });
        let http = match http {
            Some((listener, exporter)) => {
                Some(http::Server::start(ctx.clone(), exporter, listener)?)
            }
            None => None,
        };
        Ok(Broker {
            ctx,
            listener,
            local_addr,
            extra,
            http,
            cluster,
            ingest: ingest_tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound addresses of the `[[listeners]]`, in file order.
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.extra
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The HTTP endpoint's address, when it is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(http::Server::local_addr)
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
        let interval = ctx.config.sys.interval;
        // Dropped (aborted) when `run` returns: the status topics stop with the broker.
        let _sys = (interval > 0)
            .then(|| sys::spawn(ctx.clone(), Duration::from_secs(u64::from(interval))));
        let high_water = ctx.config.limits.memory_high_water;
        let _memory = (high_water > 0).then(|| limits::watch_memory(ctx.clone(), high_water));
        // Aborted when `run` returns, after the drain below resumed (and so closed) every
        // hibernating session; any left over is dropped with it.
        let metrics = ctx.metrics.clone();
        let _parker = Background::spawn(ctx.parker.clone().run(move |what| {
            metrics.task_panics.increment(1);
            tracing::error!("a panic in the hibernation parker (its sessions live on): {what}");
        }));
        // Delayed wills and session expiries stop with the broker too.
        let timers = ctx.clone();
        let _timers =
            Background::spawn(async move { timers.registry.run_timers(&timers.router).await });
        let (cluster, _link) = match self.cluster {
            Some((cluster, link)) => {
                let router = Arc::downgrade(&ctx.router);
                let sessions: Weak<dyn Sessions> = Arc::downgrade(&ctx) as Weak<Context>;
                (
                    Some(cluster),
                    Some(Background::spawn(link.run(router, sessions))),
                )
            }
            None => (None, None),
        };
        let _ingest = self.ingest.map(IngestTasks::spawn);
        ctx.ready.store(true, Ordering::Release);
        let pacer = listener::shared_pacer(&ctx);
        // Every accept loop runs until shutdown: `mqtt.listen` first, then the `[[listeners]]`.
        let extra = self
            .extra
            .into_iter()
            .zip(ctx.endpoints.clone())
            .map(|(socket, l)| (socket, Some(l)));
        let loops = std::iter::once((self.listener, None))
            .chain(extra)
            .map(|(socket, l)| listener::accept_loop(ctx.clone(), socket, l, pacer.clone()));
        tokio::select! {
            _ = futures_util::future::join_all(loops) => {}
            _ = shutdown => {}
        }
        ctx.ready.store(false, Ordering::Release);
        if let Some(cluster) = &cluster {
            // The other nodes stop sending here at once rather than after the peer timeout.
            cluster.leave().await;
        }
        info!("shutting down: listener closed, disconnecting clients");
        let close_all = || {
            for session in ctx.registry.all() {
                if session.is_online() {
                    session.kick(Kick::Shutdown);
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, ctx.admission.drain(close_all)).await;
        info!(remaining = ctx.admission.connections(), "shutdown complete");
        drop(self.http);
        Ok(())
    }
}
