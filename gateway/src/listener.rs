//! Accepting connections: a tight accept loop that hands each socket to its own task at once.
//!
//! The loop never sleeps on the happy path (a paused accept loop overflows the kernel's backlog
//! and makes clients wait for SYN retries). It reads the open-file limit at start and refuses
//! new connections cleanly before the limit, keeping a reserve for the broker's own files; when
//! accept still fails with EMFILE/ENFILE it backs off briefly and counts instead of spinning.
//! The `[limits]` on connections are checked here too, each refusal a close at once: the
//! configured connection limit, the handshakes in flight, and the connect pacer (which never
//! pauses the loop either: a paced socket waits in its own task, see `limits::ConnectPacer`).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, error, warn};

use crate::broker::{ConnectionSlot, Context};
use crate::client;
use crate::limits::{ConnectPacer, Handshake, Pace};

/// Backlog when /proc/sys/net/core/somaxconn cannot be read.
const DEFAULT_BACKLOG: i32 = 4096;
/// Pause after accept fails for lack of file descriptors.
const FD_BACKOFF: Duration = Duration::from_millis(50);

/// Binds a listening socket with the backlog at the system's maximum.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
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
pub fn raise_fd_limit() -> u64 {
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

/// Accepts until the listener is dropped (the caller selects this against shutdown).
pub async fn accept_loop(ctx: Arc<Context>, listener: TcpListener) {
    let limits = &ctx.config.limits;
    let mut pacer = ConnectPacer::new(limits.connect_rate, limits.connect_burst, Instant::now());
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => admit(&ctx, pacer.as_mut(), stream, peer),
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
    pacer: Option<&mut ConnectPacer>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let open = ctx.connections.load(Ordering::Relaxed);
    if open >= ctx.max_connections {
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
    let handshakes = ctx.handshakes.load(Ordering::Relaxed);
    if limits.max_handshakes > 0 && handshakes as u64 >= limits.max_handshakes {
        ctx.metrics.rejected("handshakes");
        debug!(%peer, handshakes, "refusing connection: at limits.max_handshakes");
        return;
    }
    let not_before = match pacer.map(|p| p.pace(Instant::now())) {
        Some(Pace::Refuse) => {
            ctx.metrics.rejected("connect_rate");
            debug!(%peer, "refusing connection: its connect_rate slot is too far away");
            return;
        }
        Some(Pace::At(at)) => Some(at),
        Some(Pace::Now) | None => None,
    };
    ctx.metrics.connections_accepted.increment(1);
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, "set_nodelay failed: {e}");
    }
    let slot = ConnectionSlot::new(ctx.clone());
    let handshake = Handshake::new(ctx.clone(), not_before);
    spawn_isolated(
        ctx.clone(),
        peer,
        client::serve(slot, handshake, stream, peer),
    );
}

/// Spawns a connection's task so that a panic in it ends that task only: caught, logged and
/// counted; its `Drop`s still run (session cleanup, will, connection count).
pub fn spawn_isolated(
    ctx: Arc<Context>,
    peer: SocketAddr,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use futures_util::FutureExt;
    // Combinators rather than an `async` block: a block would hold the task future twice (as
    // captured value and as awaited value), doubling every session task's size.
    let guarded = std::panic::AssertUnwindSafe(task)
        .catch_unwind()
        .map(move |outcome| {
            if let Err(panic) = outcome {
                ctx.metrics.task_panics.increment(1);
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown");
                error!(%peer, "connection task panicked: {what}");
            }
        });
    tokio::spawn(guarded);
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}
