//! Where TLS handshakes run: a runtime of their own, whose threads the kernel schedules behind
//! the session workers (`NICE` above the process's nice value), so that a connect storm's key exchanges and signatures do
//! not queue ahead of established sessions' packets.
//!
//! On tokio's workers a handshake step (ECDHE and a P-256 signature, ~0.28 ms of CPU here; an
//! RSA 2048 signature, ~0.57 ms) runs to completion like any task, and with 100 handshakes in
//! flight an established session's PUBLISH waited behind dozens of them: QoS 1 p99 of 100
//! established TLS publishers went from 0.4 ms to 32 ms (ECDSA) and 109 ms (RSA) while 10,000
//! TLS devices connected (`bench/harness.py --workloads n`). The kernel's scheduler, unlike
//! tokio's, preempts: a session worker that wakes takes the core from a handshake thread.
//!
//! The socket leaves the caller's reactor for the handshake and returns after it (two
//! `epoll_ctl`s, against the handshake's fraction of a millisecond). Dropping the returned
//! future (a connect timeout, shutdown) aborts the handshake. Started on the first TLS
//! connection, so a gateway without TLS listeners runs no such threads; if they cannot start,
//! handshakes run on the caller's worker as before, said once in the log.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tracing::warn;

/// How much nicer the handshake threads are than the process: the kernel gives a session
/// worker about nine times their share of a contended core, and preempts them when one wakes.
const NICE: libc::c_int = 10;

static POOL: OnceLock<Option<Runtime>> = OnceLock::new();

fn pool() -> Option<&'static Runtime> {
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let built = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("tls-handshake")
            .on_thread_start(|| {
                // A new thread starts at its creator's nice value.
                let _ = set_nice((nice() + NICE).min(19));
            })
            .enable_all()
            .build();
        match built {
            Ok(runtime) => Some(runtime),
            Err(e) => {
                warn!("TLS handshake threads did not start ({e}); handshakes run on the session workers");
                None
            }
        }
    })
    .as_ref()
}

/// This thread's nice value.
fn nice() -> libc::c_int {
    // SAFETY: getpriority on this thread's own id touches no memory.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

fn set_nice(value: libc::c_int) -> libc::c_int {
    // SAFETY: setpriority on this thread's own id touches no memory.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, value) }
}

/// Aborts the handshake when its caller gives up on it.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Handshakes running on the pool, and whether a trim of its heap is due.
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static TRIM_DUE: AtomicBool = AtomicBool::new(false);
/// How long the pool stays without handshakes before its heap is given back.
const TRIM_AFTER: Duration = Duration::from_secs(1);

/// Counts a handshake on the pool; the last one out has the idle heap given back once the
/// pool stayed idle for `TRIM_AFTER`.
struct Running;

impl Running {
    fn new() -> Running {
        RUNNING.fetch_add(1, Ordering::AcqRel);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if RUNNING.fetch_sub(1, Ordering::AcqRel) != 1 || TRIM_DUE.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(pool) = pool() else { return };
        pool.spawn(async {
            tokio::time::sleep(TRIM_AFTER).await;
            TRIM_DUE.store(false, Ordering::Release);
            if RUNNING.load(Ordering::Acquire) == 0 {
                // A storm's handshakes leave the handshake threads' malloc arenas free but
                // unreturned (their transient buffers, certificates, key shares): at 3,000 idle
                // TLS sessions, 1.2 KB of RSS each. glibc gives such memory back only when told.
                // SAFETY: malloc_trim only releases free heap memory.
                let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
            }
        });
    }
}

/// Runs `handshake` on the handshake threads (or here, when they could not start).
pub(crate) async fn run<T: Send + 'static>(
    handshake: impl Future<Output = io::Result<T>> + Send + 'static,
) -> io::Result<T> {
    let Some(pool) = pool() else {
        return handshake.await;
    };
    let running = Running::new();
    let mut task = AbortOnDrop(pool.spawn(async move {
        let done = handshake.await;
        drop(running);
        done
    }));
    match (&mut task.0).await {
        Ok(done) => done,
        Err(e) => Err(io::Error::other(format!("TLS handshake task failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the scheduler sees: the handshake runs on a thread `NICE` nicer than the caller's.
    #[tokio::test]
    async fn handshakes_run_on_threads_the_kernel_puts_behind_the_workers() {
        let ours = nice();
        let (theirs, name) =
            run(async move { Ok((nice(), std::thread::current().name().map(str::to_owned))) })
                .await
                .expect("ran");
        assert_eq!(name.as_deref(), Some("tls-handshake"));
        assert_eq!(theirs, (ours + NICE).min(19));
        assert_eq!(nice(), ours, "the caller's thread keeps its priority");
    }
}
