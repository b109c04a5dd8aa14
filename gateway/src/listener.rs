//! Accepting connections: a tight accept loop that hands each socket to its own task at once.
//!
//! The loop never sleeps on the happy path (a paused accept loop overflows the kernel's backlog
//! and makes clients wait for SYN retries). It reads the open-file limit at start and refuses
//! new connections cleanly before the limit, keeping a reserve for the broker's own files; when
//! accept still fails with EMFILE/ENFILE it backs off briefly and counts instead of spinning.
//! The `[limits]` on connections are checked here too, each refusal a close at once: the
//! configured connection limit, the handshakes in flight, and the connect pacer (which never
//! pauses the loop either: a paced socket waits in its own task, see `limits::ConnectPacer`).
//! The `[[listeners]]` entries run the same loop with their own connection limit; a TLS or
//! WebSocket connection's handshake runs in the connection's task, under the connect timeout.
//! Every accepted socket gets TCP keepalive (`mqtt.tcp_keepalive_*`): a peer that vanished
//! without a FIN or RST (power loss, a NAT that forgot the flow) is otherwise never noticed on a
//! connection with nothing to send, which is every connection without an MQTT keep-alive. It and
//! TCP_NODELAY are set once, on the listening socket: Linux copies both to each socket it accepts,
//! which spares five system calls per connection (no difference in CPU per connect could be
//! measured: 29.5 against 28.9 ms per 1,000, medians of 3).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use parking_lot::Mutex;
use socket2::{Domain, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::client::{self, Opened};
use crate::config::{Config, ListenerKind};
use crate::connection::Connection;
use crate::context::{ConnectionSlot, Context};
use crate::endpoint::Endpoint;
use crate::limits::{ConnectPacer, Handshake, Pace};
use crate::task::spawn_isolated;
use crate::tls;
use crate::ws;

/// Backlog when /proc/sys/net/core/somaxconn cannot be read.
const DEFAULT_BACKLOG: i32 = 4096;
/// Pause after accept fails for lack of file descriptors.
const FD_BACKOFF: Duration = Duration::from_millis(50);

/// Binds a listening socket with the backlog at the system's maximum, whose accepted sockets
/// inherit TCP_NODELAY and the TCP keepalive of `config` (none when `mqtt.tcp_keepalive_idle`
/// is 0).
pub(crate) fn bind(addr: SocketAddr, config: &Config) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    if let Some(keepalive) = tcp_keepalive(config) {
        socket.set_tcp_keepalive(&keepalive)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(somaxconn())?;
    TcpListener::from_std(socket.into())
}

fn somaxconn() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_BACKLOG)
}

/// The soft open-file limit, raised to the hard limit first (allowed without privileges).
pub(crate) fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// The connect pacer, one for all listeners: `limits.connect_rate` is the node's rate.
pub(crate) type SharedPacer = Arc<Mutex<Option<ConnectPacer>>>;

pub(crate) fn shared_pacer(ctx: &Context) -> SharedPacer {
    let limits = &ctx.config.limits;
    Arc::new(Mutex::new(ConnectPacer::new(
        limits.connect_rate,
        limits.connect_burst,
        Instant::now(),
    )))
}

/// Accepts until the listener is dropped (the caller selects this against shutdown). `endpoint` is
/// the `[[listeners]]` entry, `None` for the `mqtt.listen` listener.
pub(crate) async fn accept_loop(
    ctx: Arc<Context>,
    listener: TcpListener,
    endpoint: Option<Arc<Endpoint>>,
    pacer: SharedPacer,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => admit(&ctx, endpoint.as_ref(), &pacer, stream, peer),
            Err(e) if is_fd_exhaustion(&e) => {
                ctx.metrics.accept_errors.increment(1);
                warn!("accept failed, out of file descriptors: {e}");
                tokio::time::sleep(FD_BACKOFF).await;
            }
            Err(e) => {
                ctx.metrics.accept_errors.increment(1);
                debug!("accept failed: {e}");
            }
        }
    }
}

fn admit(
    ctx: &Arc<Context>,
    endpoint: Option<&Arc<Endpoint>>,
    pacer: &SharedPacer,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let open = ctx.admission.connections();
    if ctx.admission.at_fd_limit(open) {
        ctx.metrics.rejected("fd_limit");
        debug!(%peer, open, "refusing connection: at the open-file limit minus reserve");
        return;
    }
    let limits = &ctx.config.limits;
    if limits.max_connections > 0 && open as u64 >= limits.max_connections {
        ctx.metrics.rejected("max_connections");
        debug!(%peer, open, "refusing connection: at limits.max_connections");
        return;
    }
    if let Some(l) = endpoint {
        let max = l.config.max_connections;
        if max > 0 && l.open.load(Ordering::Relaxed) as u64 >= max {
            ctx.metrics.rejected("max_connections");
            debug!(%peer, kind = l.kind().as_str(), "refusing connection: at the listener's max_connections");
            return;
        }
    }
    let handshakes = ctx.admission.handshakes();
    if limits.max_handshakes > 0 && handshakes as u64 >= limits.max_handshakes {
        ctx.metrics.rejected("handshakes");
        debug!(%peer, handshakes, "refusing connection: at limits.max_handshakes");
        return;
    }
    let pace = pacer.lock().as_mut().map(|p| p.pace(Instant::now()));
    let not_before = match pace {
        Some(Pace::Refuse) => {
            ctx.metrics.rejected("connect_rate");
            debug!(%peer, "refusing connection: its connect_rate slot is too far away");
            return;
        }
        Some(Pace::At(at)) => Some(at),
        Some(Pace::Now) | None => None,
    };
    ctx.metrics
        .accepted(endpoint.map_or(ListenerKind::Tcp, |l| l.kind()));
    let slot = ConnectionSlot::new(ctx.clone(), endpoint.map(|l| l.open.clone()));
    let handshake = Handshake::new(ctx.clone(), not_before);
    match endpoint {
        Some(l) if l.kind() != ListenerKind::Tcp => {
            let open = open_stream(ctx.clone(), l.clone(), stream, peer);
            spawn_isolated(
                ctx.metrics.clone(),
                peer,
                client::serve(slot, handshake, open, peer),
            );
        }
        _ => {
            let open = std::future::ready(Some(Opened {
                conn: Connection::new(stream),
                identity: None,
                default_listener: endpoint.is_none(),
            }));
            spawn_isolated(
                ctx.metrics.clone(),
                peer,
                client::serve(slot, handshake, open, peer),
            );
        }
    }
}

/// The TLS and/or WebSocket handshake of a connection on a `[[listeners]]` entry, within the
/// connect timeout. `None` (connection closed) when it fails.
async fn open_stream(
    ctx: Arc<Context>,
    l: Arc<Endpoint>,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<Opened> {
    let timeout = ctx.config.mqtt.connect_timeout;
    match tokio::time::timeout(timeout, upgrade(&ctx, &l, stream)).await {
        Ok(Ok(opened)) => Some(opened),
        Ok(Err(why)) => {
            debug!(%peer, kind = l.kind().as_str(), "handshake failed: {why}");
            None
        }
        Err(_) => {
            if l.kind().is_tls() {
                ctx.metrics.tls_handshake_failures.increment(1);
            }
            debug!(%peer, kind = l.kind().as_str(), "no handshake within the connect timeout");
            None
        }
    }
}

async fn upgrade(ctx: &Context, l: &Endpoint, stream: TcpStream) -> Result<Opened, String> {
    // Room for the largest MQTT packet the gateway accepts plus its fixed header.
    let max_frame = ctx.config.mqtt.max_packet_size as usize + 8;
    let Some(tls) = &l.tls else {
        let ws = ws::accept(ws::Socket::Live(stream), &l.config.path, max_frame)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(Opened {
            conn: Connection::hibernating_stream(Box::new(ws)),
            identity: None,
            default_listener: false,
        });
    };
    let failures = ctx.metrics.tls_record_failures.clone();
    let mut secured = match tls::accept(tls.config(), stream, failures).await {
        Ok(s) => s,
        Err(e) => {
            ctx.metrics.tls_handshake_failures.increment(1);
            return Err(format!("TLS: {e}"));
        }
    };
    let identity = if l.config.use_identity_as_username {
        let name = secured
            .take_peer_certificates()
            .as_deref()
            .and_then(|chain| chain.first())
            .and_then(tls::certificate_identity);
        let Some(name) = name else {
            ctx.metrics.rejected("not_authorized");
            return Err("client certificate names no CN or DNS SAN to use as username".to_owned());
        };
        Some(ByteString::from(name))
    } else {
        None
    };
    let conn = if l.kind().is_websocket() {
        let ws = ws::accept(secured, &l.config.path, max_frame)
            .await
            .map_err(|e| e.to_string())?;
        Connection::hibernating_stream(Box::new(ws))
    } else {
        Connection::hibernating_stream(Box::new(secured))
    };
    Ok(Opened {
        conn,
        identity,
        default_listener: false,
    })
}

/// The TCP keepalive of accepted sockets; `None` when `mqtt.tcp_keepalive_idle` is 0.
fn tcp_keepalive(config: &Config) -> Option<TcpKeepalive> {
    let m = &config.mqtt;
    let seconds = |s: u32| Duration::from_secs(s.into());
    (m.tcp_keepalive_idle > 0).then(|| {
        TcpKeepalive::new()
            .with_time(seconds(m.tcp_keepalive_idle))
            .with_interval(seconds(m.tcp_keepalive_interval))
            .with_retries(m.tcp_keepalive_count)
    })
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}
