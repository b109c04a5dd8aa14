//! Hibernation: idle sessions held without a task or a reactor registration.
//!
//! A tokio task plus a socket registered with tokio's reactor cost ~940 B of RSS per connection
//! (`examples/tokio_floor.rs`): more than Mosquitto's whole idle session. An idle session needs
//! neither. It waits for one of three things: bytes (or a hang-up) from its client, a wake-up from
//! the broker (a delivery, a takeover, a kick, shutdown), or its keep-alive deadline. The `Parker`
//! waits for all three on behalf of every hibernating session at once: their sockets sit in one
//! epoll set of its own, their wake-ups are tokens queued for it, their deadlines one heap, and a
//! single task drives it. A hibernating session keeps only its own state (the `Sleeper`) and a
//! slot here; on any of the three the parker hands the sleeper back (`Sleeper::resume`), which
//! registers its socket with tokio again and spawns its task. Erlang's `hibernate` does the same
//! for an idle process.
//!
//! Tokens carry the slot's generation, so a wake-up, an epoll event or a deadline that arrives
//! after its sleeper was resumed (and the slot reused) finds a newer generation and is ignored.
//! Generations are 16 bits: a token 65,536 hibernations stale could resume the slot's current
//! sleeper early, which costs it one spurious trip through its task and nothing else.
//!
//! A hibernating session's waker allocates nothing: it is the token itself plus the parker's
//! index in a process-wide table (`PARKERS`), packed into the waker's data word.
//!
//! Every hibernating session depends on the parker's one task, so a panic must not end it: one
//! while resuming a sleeper drops that sleeper alone (its own clean-up runs while unwinding) and
//! is reported, and one anywhere else in the loop restarts the loop with the sleepers in place.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{RawWaker, RawWakerVTable, Waker};
use std::time::Instant;

use futures_util::FutureExt;
use parking_lot::{Mutex, RwLock};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

/// The state of an idle session that owns a socket, while it hibernates.
pub(crate) trait Sleeper: Send + 'static {
    /// The socket whose readability (or hang-up) resumes it.
    fn fd(&self) -> RawFd;
    /// Takes the waker that resumes it from the broker's side. Returns true when a wake-up came
    /// before the waker could be in place: the sleeper is then resumed at once.
    fn arm(&mut self, waker: &Waker) -> bool;
    /// Back to work; called on the parker's task, inside the runtime.
    fn resume(self: Box<Self>);
}

/// Deadline of a sleeper without one.
const NEVER: u64 = u64::MAX;
/// Sleepers resumed between two yields of the parker's task.
const RESUME_BATCH: usize = 128;
/// Epoll events taken per `epoll_wait`.
const EVENTS: usize = 256;

/// Sleepers and their slots' generations side by side rather than in one struct: a sleeper is a
/// 16-byte trait object, and a generation beside it would pad each slot to 24 bytes.
struct Slots {
    slots: Vec<Option<Box<dyn Sleeper>>>,
    /// Per slot, bumped on every resume: tokens of earlier sleepers in the slot go stale.
    generations: Vec<u16>,
    free: Vec<u32>,
    /// (deadline in milliseconds since the epoch, token), earliest first. Entries of resumed
    /// sleepers stay until they come up or are swept, once the heap holds twice as many entries
    /// as sleepers.
    timers: BinaryHeap<Reverse<(u64, u64)>>,
    sleeping: usize,
}

/// The sleepers are held as trait objects, so that whoever holds the parker (the broker's
/// shared context) need not name the session type that sleeps in it.
pub(crate) struct Parker {
    /// This parker's place in `PARKERS`, carried by its wakers; set once, before any park.
    index: AtomicU16,
    epoll: AsyncFd<OwnedFd>,
    slots: Mutex<Slots>,
    /// Tokens whose wakers fired, for the parker's task to resume.
    woken: Mutex<Vec<u64>>,
    notify: Notify,
    epoch: Instant,
    /// Sessions that wait awake, in their task, for the first packet after CONNACK: they are
    /// about to sleep here, and how many may do so at once is bounded (`Parker::grace`).
    graced: AtomicUsize,
}

/// A session's place among those waiting awake for their first packet; given back when dropped
/// (first packet read, hibernated, closed, or its task unwound).
pub(crate) struct Grace(Arc<Parker>);

impl Drop for Grace {
    fn drop(&mut self) {
        self.0.graced.fetch_sub(1, Ordering::Relaxed);
    }
}

fn token(key: usize, generation: u16) -> u64 {
    (u64::from(generation) << 32) | key as u64
}

fn key_of(token: u64) -> usize {
    (token & u64::from(u32::MAX)) as usize
}

fn generation_of(token: u64) -> u16 {
    (token >> 32) as u16
}

impl Parker {
    /// A parker with its own epoll set; inside a tokio runtime. Nothing is resumed until `run`.
    pub(crate) fn new() -> io::Result<Arc<Parker>> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the `OwnedFd` is a valid descriptor, closed only when the `AsyncFd` drops it.
        let epoll = unsafe { AsyncFd::register_with_interest(epoll, Interest::READABLE)? };
        let parker = Arc::new(Parker {
            index: AtomicU16::new(0),
            epoll,
            slots: Mutex::new(Slots {
                slots: Vec::new(),
                generations: Vec::new(),
                free: Vec::new(),
                timers: BinaryHeap::new(),
                sleeping: 0,
            }),
            woken: Mutex::new(Vec::new()),
            notify: Notify::new(),
            epoch: Instant::now(),
            graced: AtomicUsize::new(0),
        });
        // Enlisted only once it is alive: an entry whose parker is still being built would look
        // dead, and a parker built at the same time on another thread would take its index.
        let me: Weak<Parker> = Arc::downgrade(&parker);
        let index = enlist(me)?;
        parker.index.store(index, Ordering::Relaxed);
        Ok(parker)
    }

    /// A place among the sessions that wait awake for their first packet, if fewer than `max`
    /// hold one.
    pub(crate) fn grace(self: &Arc<Self>, max: usize) -> Option<Grace> {
        self.graced
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Grace(self.clone()))
    }

    /// How many sleepers hibernate now.
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().sleeping
    }

    /// Puts `sleeper` to sleep until its socket is readable, its waker fires or `deadline`
    /// passes. Gives it back when its socket cannot join the epoll set.
    pub(crate) fn park<S: Sleeper>(
        self: &Arc<Self>,
        mut sleeper: Box<S>,
        deadline: Option<Instant>,
    ) -> Result<(), Box<S>> {
        let fd = sleeper.fd();
        let at = deadline.map_or(NEVER, |d| self.millis(d));
        let mut s = self.slots.lock();
        let key = match s.free.pop() {
            Some(key) => key as usize,
            None => {
                s.slots.push(None);
                s.generations.push(0);
                s.slots.len() - 1
            }
        };
        let token = token(key, s.generations[key]);
        // Armed under the lock: no wake-up can be processed before the slot holds the sleeper.
        let woken = sleeper.arm(&self.waker(token));
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: token,
        };
        // SAFETY: `event` outlives the call; the kernel copies it. A bad descriptor is an error.
        let added =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if added < 0 {
            s.generations[key] = s.generations[key].wrapping_add(1);
            s.free.push(key as u32);
            return Err(sleeper);
        }
        s.slots[key] = Some(sleeper);
        s.sleeping += 1;
        let earliest = at != NEVER && s.timers.peek().map_or(true, |Reverse((t, _))| at < *t);
        if at != NEVER {
            s.timers.push(Reverse((at, token)));
            s.compact_timers();
        }
        drop(s);
        if woken {
            self.woken.lock().push(token);
        }
        if woken || earliest {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Resumes sleepers as their sockets, wakers and deadlines call for; runs until dropped
    /// (aborted with the broker), which drops whoever still sleeps, polled or not. `on_panic`
    /// hears of every panic caught on the way (with its message): one while resuming a sleeper
    /// costs that sleeper only, one elsewhere restarts the loop.
    pub(crate) fn run(
        self: Arc<Self>,
        on_panic: impl Fn(&str) + Send + Sync + 'static,
    ) -> impl std::future::Future<Output = ()> + Send {
        let release = Release(self.clone());
        async move {
            let _release = release;
            // Outlives a restart of the loop: the tokens taken from epoll and the wakers but not
            // handled yet (epoll reports a socket once, so a lost token is a lost session).
            let mut due = VecDeque::new();
            loop {
                let driven = AssertUnwindSafe(self.drive(&mut due, &on_panic))
                    .catch_unwind()
                    .await;
                if let Err(panic) = driven {
                    on_panic(crate::task::panic_message(&*panic));
                    // A fault that comes back at once must not spin a core.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn drive(&self, due: &mut VecDeque<u64>, on_panic: &impl Fn(&str)) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        loop {
            let next = self.next_deadline();
            let timer = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ready = self.epoll.readable() => match ready {
                    Ok(mut guard) => loop {
                        // SAFETY: `events` has room for EVENTS entries; the descriptor is ours.
                        let n = unsafe {
                            libc::epoll_wait(
                                self.epoll.as_raw_fd(),
                                events.as_mut_ptr(),
                                EVENTS as i32,
                                0,
                            )
                        };
                        let n = usize::try_from(n).unwrap_or(0);
                        due.extend(events[..n].iter().map(|e| e.u64));
                        if n < EVENTS {
                            guard.clear_ready();
                            break;
                        }
                    },
                    Err(e) => tracing::error!("hibernation epoll set failed: {e}"),
                },
                () = self.notify.notified() => {}
                () = timer => {}
            }
            due.extend(self.woken.lock().drain(..));
            self.take_expired(due);
            let mut resumed = 0;
            while let Some(token) = due.pop_front() {
                if let Some(sleeper) = self.take(token) {
                    // Unwinding drops the sleeper, which closes it; the others never see it.
                    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| sleeper.resume()));
                    if let Err(panic) = outcome {
                        on_panic(crate::task::panic_message(&*panic));
                    }
                }
                // A reconnect storm or a broadcast wakes thousands at once: let the tasks just
                // resumed (and everyone else on this worker) run between batches.
                resumed += 1;
                if resumed % RESUME_BATCH == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    /// Takes the sleeper a token names, if it still sleeps there, out of the slot and the epoll set.
    fn take(&self, token: u64) -> Option<Box<dyn Sleeper>> {
        let key = key_of(token);
        let mut s = self.slots.lock();
        if *s.generations.get(key)? != generation_of(token) {
            return None;
        }
        let sleeper = s.slots[key].take()?;
        s.generations[key] = s.generations[key].wrapping_add(1);
        s.free.push(key as u32);
        s.sleeping -= 1;
        drop(s);
        // SAFETY: a null event is allowed for EPOLL_CTL_DEL. The sleeper still owns the socket.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                sleeper.fd(),
                std::ptr::null_mut(),
            );
        }
        Some(sleeper)
    }

    fn take_expired(&self, due: &mut VecDeque<u64>) {
        let now = self.millis(Instant::now());
        let mut s = self.slots.lock();
        while let Some(&Reverse((at, token))) = s.timers.peek() {
            if at > now {
                break;
            }
            s.timers.pop();
            due.push_back(token);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let s = self.slots.lock();
        let &Reverse((at, _)) = s.timers.peek()?;
        Some(self.epoch + std::time::Duration::from_millis(at))
    }

    /// Rounded up: a sleeper is never resumed before its deadline.
    fn millis(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.epoch);
        let ms = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0);
        u64::try_from(ms).unwrap_or(NEVER - 1)
    }
}

impl Slots {
    /// Keeps the heap within twice the sleepers (plus a little) by sweeping out the entries of
    /// resumed ones: O(1) per park amortized.
    fn compact_timers(&mut self) {
        if self.timers.len() <= 2 * self.sleeping + 64 {
            return;
        }
        let (slots, generations) = (&self.slots, &self.generations);
        self.timers.retain(|Reverse((_, token))| {
            let key = key_of(*token);
            slots.get(key).is_some_and(Option::is_some)
                && generations.get(key) == Some(&generation_of(*token))
        });
    }
}

/// Drops whoever still sleeps when the parker's task ends: a sleeper may hold the context that
/// holds the parker, and nothing would resume it any more.
struct Release(Arc<Parker>);

impl Drop for Release {
    fn drop(&mut self) {
        let sleepers: Vec<Box<dyn Sleeper>> = {
            let mut s = self.0.slots.lock();
            s.sleeping = 0;
            s.timers.clear();
            s.slots.iter_mut().filter_map(Option::take).collect()
        };
        drop(sleepers);
    }
}

/// What a waker reaches: the parker's queue of woken tokens.
trait Wakeups: Send + Sync {
    fn woken(&self, token: u64);
}

impl Wakeups for Parker {
    fn woken(&self, token: u64) {
        self.woken.lock().push(token);
        self.notify.notify_one();
    }
}

/// Every live parker, by index; a dead entry's index is reused.
static PARKERS: RwLock<Vec<Weak<dyn Wakeups>>> = RwLock::new(Vec::new());

fn enlist(parker: Weak<dyn Wakeups>) -> io::Result<u16> {
    let mut all = PARKERS.write();
    let index = match all.iter().position(|p| p.strong_count() == 0) {
        Some(i) => i,
        None => {
            all.push(Weak::<Parker>::new());
            all.len() - 1
        }
    };
    let index =
        u16::try_from(index).map_err(|_| io::Error::other("more than 65,536 live parkers"))?;
    all[usize::from(index)] = parker;
    Ok(index)
}

// The waker's data word holds the parker's index and the token.
const _: () = assert!(usize::BITS == 64);

impl Parker {
    fn waker(&self, token: u64) -> Waker {
        let data = (u64::from(self.index.load(Ordering::Relaxed)) << 48) | token;
        // SAFETY: the data is a plain integer, never dereferenced; the vtable's functions
        // uphold the `RawWaker` contract for it (cloning copies it, dropping does nothing).
        unsafe { Waker::from_raw(RawWaker::new(data as usize as *const (), &WAKER)) }
    }
}

static WAKER: RawWakerVTable = RawWakerVTable::new(clone_waker, wake, wake, drop_waker);

fn clone_waker(data: *const ()) -> RawWaker {
    RawWaker::new(data, &WAKER)
}

fn wake(data: *const ()) {
    let data = data as usize as u64;
    let parker = PARKERS
        .read()
        .get((data >> 48) as usize)
        .and_then(Weak::upgrade);
    if let Some(parker) = parker {
        parker.woken(data & ((1 << 48) - 1));
    }
}

fn drop_waker(_: *const ()) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;
    use tokio::sync::mpsc;

    /// Reports its name when resumed; hands its waker out.
    struct Probe {
        name: &'static str,
        socket: TcpStream,
        already_woken: bool,
        waker: Arc<Mutex<Option<Waker>>>,
        resumed: mpsc::UnboundedSender<&'static str>,
    }

    impl Sleeper for Probe {
        fn fd(&self) -> RawFd {
            self.socket.as_raw_fd()
        }

        fn arm(&mut self, waker: &Waker) -> bool {
            *self.waker.lock() = Some(waker.clone());
            self.already_woken
        }

        /// A probe named "panics" panics instead, as a session's resume might.
        fn resume(self: Box<Self>) {
            assert_ne!(self.name, "panics", "resume failed");
            let _ = self.resumed.send(self.name);
        }
    }

    struct Fixture {
        parker: Arc<Parker>,
        task: tokio::task::JoinHandle<()>,
        resumed: mpsc::UnboundedReceiver<&'static str>,
        tx: mpsc::UnboundedSender<&'static str>,
        panics: mpsc::UnboundedReceiver<String>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let parker = Parker::new().expect("epoll");
            let (panicked, panics) = mpsc::unbounded_channel();
            let task = tokio::spawn(parker.clone().run(move |what| {
                let _ = panicked.send(what.to_owned());
            }));
            let (tx, resumed) = mpsc::unbounded_channel();
            Fixture {
                parker,
                task,
                resumed,
                tx,
                panics,
            }
        }

        /// Parks a probe over one end of a fresh connection; returns the other end and its waker.
        fn park(
            &self,
            name: &'static str,
            deadline: Option<Instant>,
            already_woken: bool,
        ) -> (TcpStream, Arc<Mutex<Option<Waker>>>) {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let peer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
            let (socket, _) = listener.accept().expect("accept");
            let waker = Arc::new(Mutex::new(None));
            let probe = Box::new(Probe {
                name,
                socket,
                already_woken,
                waker: waker.clone(),
                resumed: self.tx.clone(),
            });
            assert!(self.parker.park(probe, deadline).is_ok());
            (peer, waker)
        }

        async fn next(&mut self) -> Option<&'static str> {
            tokio::time::timeout(Duration::from_secs(2), self.resumed.recv())
                .await
                .ok()
                .flatten()
        }

        async fn nothing_within(&mut self, ms: u64) -> bool {
            tokio::time::timeout(Duration::from_millis(ms), self.resumed.recv())
                .await
                .is_err()
        }
    }

    #[tokio::test]
    async fn bytes_from_the_client_resume_only_their_sleeper() {
        let mut f = Fixture::new();
        let (mut a, _) = f.park("a", None, false);
        let (_b, _) = f.park("b", None, false);
        assert_eq!(f.parker.len(), 2);
        a.write_all(&[0xc0, 0]).expect("write");
        assert_eq!(f.next().await, Some("a"));
        assert!(f.nothing_within(100).await);
        assert_eq!(f.parker.len(), 1);
    }

    /// A panic while resuming one sleeper is that sleeper's end only: it is dropped (its socket
    /// closed), the panic reported, and the parker goes on resuming and parking the others.
    #[tokio::test]
    async fn a_panic_while_resuming_one_sleeper_leaves_the_others_to_the_parker() {
        let mut f = Fixture::new();
        let (mut bad, _) = f.park("panics", None, false);
        let (mut a, _) = f.park("a", None, false);
        let (mut b, _) = f.park("b", None, false);
        bad.write_all(&[0xc0, 0]).expect("write");
        a.write_all(&[0xc0, 0]).expect("write");
        assert_eq!(f.next().await, Some("a"));
        let what = tokio::time::timeout(Duration::from_secs(2), f.panics.recv())
            .await
            .expect("the panic is reported")
            .expect("reporter alive");
        assert!(what.contains("resume failed"), "{what}");
        bad.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        // Closed with our bytes unread: a reset rather than an orderly end.
        match bad.read(&mut [0u8; 8]) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("the failed sleeper is not closed: {other:?}"),
        }
        b.write_all(&[0xc0, 0]).expect("write");
        assert_eq!(f.next().await, Some("b"), "the parker still resumes");
        let (mut c, _) = f.park("c", None, false);
        c.write_all(&[0xc0, 0]).expect("write");
        assert_eq!(f.next().await, Some("c"), "and still parks");
        assert_eq!(f.parker.len(), 0);
        assert!(!f.task.is_finished());
    }

    #[tokio::test]
    async fn a_hang_up_resumes_its_sleeper() {
        let mut f = Fixture::new();
        let (a, _) = f.park("a", None, false);
        drop(a);
        assert_eq!(f.next().await, Some("a"));
    }

    #[tokio::test]
    async fn the_waker_resumes_its_sleeper_once() {
        let mut f = Fixture::new();
        let (_a, waker) = f.park("a", None, false);
        let w = waker.lock().clone().expect("armed");
        w.wake_by_ref();
        w.wake_by_ref();
        assert_eq!(f.next().await, Some("a"));
        assert!(f.nothing_within(100).await);
    }

    #[tokio::test]
    async fn a_wake_up_before_the_waker_was_in_place_resumes_at_once() {
        let mut f = Fixture::new();
        let (_a, _) = f.park("a", None, true);
        assert_eq!(f.next().await, Some("a"));
    }

    #[tokio::test]
    async fn a_deadline_resumes_its_sleeper_not_before() {
        let mut f = Fixture::new();
        let start = Instant::now();
        let (_late, _) = f.park("late", Some(start + Duration::from_millis(300)), false);
        let (_early, _) = f.park("early", Some(start + Duration::from_millis(100)), false);
        assert_eq!(f.next().await, Some("early"));
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(f.next().await, Some("late"));
        assert!(start.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_stale_waker_does_not_resume_the_next_sleeper_in_its_slot() {
        let mut f = Fixture::new();
        let (_a, waker) = f.park("a", None, false);
        let old = waker.lock().clone().expect("armed");
        old.wake_by_ref();
        assert_eq!(f.next().await, Some("a"));
        let (_b, _) = f.park("b", None, false);
        assert_eq!(f.parker.slots.lock().slots.len(), 1, "the slot is reused");
        old.wake_by_ref();
        assert!(f.nothing_within(150).await);
        assert_eq!(f.parker.len(), 1);
    }

    #[tokio::test]
    async fn deadlines_of_resumed_sleepers_do_not_pile_up() {
        let mut f = Fixture::new();
        let far = Instant::now() + Duration::from_secs(3600);
        for _ in 0..1000 {
            let (_peer, waker) = f.park("x", Some(far), false);
            waker.lock().take().expect("armed").wake();
            assert_eq!(f.next().await, Some("x"));
        }
        let timers = f.parker.slots.lock().timers.len();
        assert!(
            timers <= 64 + 2,
            "{timers} timer entries for at most one sleeper"
        );
    }

    /// Brokers started side by side in one process (every integration test) each get their
    /// own parker: one whose wakers reached another's queue would lose every wake-up it sent.
    #[test]
    fn parkers_created_at_once_never_share_an_index() {
        let threads = 8;
        for _ in 0..50 {
            let start = Arc::new(std::sync::Barrier::new(threads));
            let made: Vec<_> = (0..threads)
                .map(|_| {
                    let start = start.clone();
                    std::thread::spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_io()
                            .build()
                            .expect("runtime");
                        let _in = rt.enter();
                        start.wait();
                        let parker = Parker::new().expect("epoll");
                        let index = parker.index.load(Ordering::Relaxed);
                        (rt, parker, index)
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .collect();
            let mut indices: Vec<u16> = made.iter().map(|(_, _, i)| *i).collect();
            indices.sort_unstable();
            indices.dedup();
            assert_eq!(indices.len(), threads, "live parkers share an index");
        }
    }

    #[tokio::test]
    async fn ending_the_parker_closes_whoever_sleeps() {
        let f = Fixture::new();
        let (mut a, _) = f.park("a", None, false);
        f.task.abort();
        let _ = f.task.await;
        a.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 1];
        assert_eq!(a.read(&mut buf).expect("read"), 0, "closed by the parker");
        assert_eq!(f.parker.len(), 0);
    }
}
