//! The observability HTTP endpoint (`[http] listen`): `/metrics`, `/healthz`, `/readyz` and the
//! admin API under `/api/v1/`.
//!
//! It is deliberately small: HTTP/1.1 only (scrapers, probes and `curl` need nothing more), a
//! handful of fixed routes matched by hand, no request bodies. It runs in the broker's runtime
//! from `Broker::bind` on, so probes get an answer (503, not ready) while the broker is still
//! starting, and it stops when `Broker::run` returns. It never touches the MQTT data path:
//! everything it reports is read from the shared `Context`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::admin;
use crate::context::Context;
use crate::metrics::Exporter;
use crate::task::Background;

/// Histogram samples are moved into buckets at least this often, also when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// A client must send its request head within this time, so idle sockets cannot pile up.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) type Body = Full<Bytes>;

/// The running endpoint; stops serving when dropped.
pub(crate) struct Server {
    local_addr: SocketAddr,
    /// Held for their `Drop`: the endpoint's tasks stop with it.
    _accept: Background,
    _upkeep: Background,
}

impl Server {
    /// Starts serving on an already bound listener.
    pub(crate) fn start(
        ctx: Arc<Context>,
        exporter: Exporter,
        listener: TcpListener,
    ) -> std::io::Result<Server> {
        let local_addr = listener.local_addr()?;
        info!(%local_addr, "HTTP endpoint listening");
        let exporter = Arc::new(exporter);
        let upkeep = Background::spawn({
            let exporter = exporter.clone();
            async move {
                let mut tick = tokio::time::interval(UPKEEP_EVERY);
                loop {
                    tick.tick().await;
                    exporter.run_upkeep();
                }
            }
        });
        let accept = Background::spawn(accept_loop(ctx, exporter, listener));
        Ok(Server {
            local_addr,
            _accept: accept,
            _upkeep: upkeep,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

async fn accept_loop(ctx: Arc<Context>, exporter: Arc<Exporter>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or similar: back off instead of spinning.
                debug!("HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        let exporter = exporter.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = route(&ctx, &exporter, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, "HTTP connection ended with an error: {e}");
            }
        });
    }
}

fn route(ctx: &Context, exporter: &Exporter, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix(admin::PREFIX) {
        return admin::handle(ctx, req, rest);
    }
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match path {
        "/metrics" | "/healthz" | "/readyz" if !get => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        "/metrics" => {
            let mut r = Response::new(Body::from(exporter.render(&ctx.state())));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
            r
        }
        // Alive as long as the runtime answers at all.
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if !ctx.ready.load(Ordering::Acquire) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: starting or shutting down\n",
                )
            } else if ctx.router.cluster.state().down {
                // Local clients are still served; messages to and from other nodes are not,
                // nor (in cluster mode, where sessions are kept in JetStream) what must be stored.
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: cluster routing is down (no connection to NATS)\n",
                )
            } else if !ctx.router.store.available() {
                // Still serving QoS 0 and clean sessions, but not what must be stored.
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the store cannot write (disk full, I/O error, or its JetStream stream unreachable)\n",
                )
            } else if ctx.router.cluster.state().retained_behind {
                // New subscribers would miss retained messages of other nodes.
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: retained messages are not caught up with the cluster's JetStream stream\n",
                )
            } else if let Some(why) = ctx.ingest.as_ref().and_then(|i| i.blocked()) {
                // Publishers matched by the rule wait for acknowledgements (ack = "stream").
                let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "");
                *r.body_mut() = Body::from(format!("not ready: {why}\n"));
                r
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
