//! Socket I/O for one client: framed reads through a per-worker scratch buffer, vectored writes.
//!
//! An idle connection owns no read buffer: reads go into a scratch buffer that belongs to the worker
//! thread, complete frames are sliced off it, and only the tail of a packet that has not fully
//! arrived is copied into a buffer of the connection's own (freed once the packet is complete).
//! Further reads of that packet go straight into it: it grows geometrically up to the packet's
//! declared size, so a packet trickled in tiny segments costs copying linear in its size, not in
//! its size times the number of reads, and memory follows what has arrived, not what a header
//! announces. The time its first bytes came is kept with it, for `mqtt.packet_timeout`. Writes
//! are a queue of `Bytes` chunks (shared message payloads among them) drained with one vectored
//! write per batch, so many messages cost one syscall and no payload is copied.
//!
//! TLS and WebSocket connections are a second transport, a boxed byte stream: for them socket
//! readiness is not readiness of MQTT bytes (a TLS record may be incomplete, a WebSocket frame may
//! be a ping), so waiting for input means polling the stream's `poll_read` itself, into the same
//! scratch buffer, and keeping what it returned until `try_read_frames` takes it. Their writes
//! go through `poll_write_vectored` and `poll_flush`; what the stream buffered but has not
//! flushed counts as pending. The plain TCP path is untouched by this. A stream that implements
//! `Hibernates` (TLS: `tls::stream`, WebSocket and WSS: `ws::stream`) hibernates like a plain
//! socket once it holds no bytes of its own; other streams (the in-memory ones of the tests and
//! the session fuzz target) keep their task.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{self, Poll};
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::codec::{self, DecodeError};

/// Bytes read per readiness event at most; also the per-worker scratch size.
const SCRATCH_SIZE: usize = 64 * 1024;
/// A read goes into what is left of the worker's scratch buffer while that is at least this
/// much; below it, the next read gets a fresh buffer.
const SCRATCH_MIN_ROOM: usize = 8 * 1024;
/// Write queue storage kept by an empty queue, in chunks (two per delivered message): 32 KiB of
/// slots at most, kept while the connection works and dropped when it hibernates. Regrowing
/// from a few slots after every drained burst reallocated the queue log2(burst) times per burst,
/// which showed in the QoS 1 fan-in profile as the allocator consolidating its free lists.
const KEPT_CHUNKS: usize = 1024;
/// Chunks handed to one vectored write (well under IOV_MAX).
const MAX_IOV: usize = 256;
/// Frames handed out per `try_read_frames` call: a read holding more keeps the rest unsliced
/// (a view of the read buffer), so a caller that stops between batches (its write backlog full)
/// holds one read buffer, not a 32-byte handle per packet of it (a 2-byte PINGREQ each).
pub(crate) const FRAME_BATCH: usize = 256;
/// What a queued chunk costs in memory besides its bytes: its `Bytes` slot in the queue, and the
/// allocator's share of an allocation of its own (glibc's smallest chunk is 32 bytes, which also
/// bounds the header and rounding of a larger one). A 4-byte PUBACK costs 64 bytes, not 4.
const CHUNK_OVERHEAD: usize = std::mem::size_of::<Bytes>() + 32;

thread_local! {
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Makes room in the worker's scratch buffer for the next read. The frames of a read are views
/// of the buffer, so it is shared until their last message is dropped (often on another worker,
/// after delivery). Taking a fresh 64 KiB buffer for every read, as this did before, made each
/// read allocate one and each drained batch free one: under QoS 1 fan-in the allocator's
/// consolidation and heap trimming (an `mprotect` per ~140 messages) showed in the profile
/// (BENCHMARKS.md, "FlashMQ and the deep window"). Reads share a buffer until its tail is short.
fn make_room(scratch: &mut BytesMut) {
    if scratch.capacity() < SCRATCH_MIN_ROOM {
        scratch.reserve(SCRATCH_SIZE);
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("connection closed by peer")]
    Eof,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// A byte stream carrying MQTT that is not a plain TCP socket (TLS, WebSocket, WebSocket on TLS).
pub(crate) trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncStream for T {}

/// A stream transport that can hibernate: its socket leaves tokio's reactor and its buffers are
/// freed, its protocol state (TLS keys, WebSocket framing) kept.
pub(crate) trait Hibernates: AsyncStream {
    /// Whether it holds no bytes of its own: none read and not returned, none written and not
    /// sent. Only then may it hibernate.
    fn idle(&self) -> bool;
    /// Takes the socket off the reactor, keeping it open; every I/O call fails until `resume`.
    fn hibernate(&mut self) -> io::Result<()>;
    /// Registers the socket with the reactor again; inside the runtime.
    fn resume(&mut self) -> io::Result<()>;
    /// The socket's descriptor while it hibernates, -1 otherwise.
    fn hibernating_fd(&self) -> std::os::fd::RawFd;
}

enum Transport {
    Tcp(TcpStream),
    /// Boxed: a TLS session's state is large and only TLS/WebSocket connections pay for it.
    Stream(Box<StreamIo>),
    /// A TCP socket taken off tokio's reactor while its session hibernates (see `hibernate`);
    /// `None` once lost on the way (deregistering failed). Every I/O call fails until `resume`.
    Hibernating(Option<std::net::TcpStream>),
}

/// A stream transport, and whether it can hibernate.
enum Io {
    #[cfg(any(test, feature = "fuzzing"))]
    Fixed(Box<dyn AsyncStream>),
    Hibernates(Box<dyn Hibernates>),
}

impl Io {
    fn get(&mut self) -> &mut dyn AsyncStream {
        match self {
            #[cfg(any(test, feature = "fuzzing"))]
            Io::Fixed(io) => &mut **io,
            Io::Hibernates(io) => &mut **io,
        }
    }
}

struct StreamIo {
    io: Io,
    /// Bytes `poll_read` returned while the task waited for input, not yet framed.
    received: Option<Bytes>,
    /// The stream ended (read returned 0 bytes).
    eof: bool,
    /// Bytes written into the stream's own buffers (TLS records, WebSocket frames) not yet flushed.
    unflushed: bool,
}

/// The beginning of a packet that has not fully arrived.
struct Partial {
    buf: Vec<u8>,
    /// When its first bytes were read.
    since: Instant,
}

pub(crate) struct Connection {
    transport: Transport,
    /// Boxed: a pointer while no packet is half read, which is nearly always.
    partial: Option<Box<Partial>>,
    /// Complete frames of the last read beyond the batch handed out (never with `partial`: an
    /// incomplete tail becomes one only once they are all handed out).
    unframed: Option<Box<Bytes>>,
    pending: VecDeque<Bytes>,
    /// Wire bytes in `pending`.
    pending_bytes: usize,
}

impl Connection {
    pub(crate) fn new(stream: TcpStream) -> Connection {
        Connection::with(Transport::Tcp(stream))
    }

    /// A connection over a stream that cannot hibernate (in memory: tests, the session fuzz
    /// target).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn stream(io: Box<dyn AsyncStream>) -> Connection {
        Connection::over(Io::Fixed(io))
    }

    /// A TLS, WebSocket or WSS connection, which hibernates like a plain one.
    pub(crate) fn hibernating_stream(io: Box<dyn Hibernates>) -> Connection {
        Connection::over(Io::Hibernates(io))
    }

    fn over(io: Io) -> Connection {
        Connection::with(Transport::Stream(Box::new(StreamIo {
            io,
            received: None,
            eof: false,
            unflushed: false,
        })))
    }

    /// Moves the connection out, leaving one on which every I/O call fails: what a closing
    /// client keeps while its socket's last flush goes on without it.
    pub(crate) fn take(&mut self) -> Connection {
        std::mem::replace(self, Connection::with(Transport::Hibernating(None)))
    }

    fn with(transport: Transport) -> Connection {
        Connection {
            transport,
            partial: None,
            unframed: None,
            pending: VecDeque::new(),
            pending_bytes: 0,
        }
    }

    pub(crate) async fn readable(&mut self) -> io::Result<()> {
        match &self.transport {
            Transport::Tcp(stream) => stream.readable().await,
            Transport::Stream(_) => std::future::poll_fn(|cx| self.poll_read_ready(cx)).await,
            Transport::Hibernating(_) => Err(hibernating()),
        }
    }

    /// Whether `hibernate` may take the socket off the reactor now: plain TCP or a stream that
    /// hibernates and holds nothing, nothing waiting to be written, no packet half read or not
    /// handed out.
    pub(crate) fn may_hibernate(&self) -> bool {
        let transport = match &self.transport {
            Transport::Tcp(_) => true,
            Transport::Stream(s) => match &s.io {
                Io::Hibernates(io) => s.received.is_none() && !s.eof && !s.unflushed && io.idle(),
                #[cfg(any(test, feature = "fuzzing"))]
                Io::Fixed(_) => false,
            },
            Transport::Hibernating(_) => false,
        };
        transport && self.pending.is_empty() && self.partial.is_none() && self.unframed.is_none()
    }

    /// Whether frames of an earlier read wait to be handed out: `try_read_frames` gives the next
    /// batch without reading (so the caller must not wait for the socket first).
    pub(crate) fn holds_frames(&self) -> bool {
        self.unframed.is_some()
    }

    /// Deregisters the socket from tokio's reactor, keeping it open.
    pub(crate) fn hibernate(&mut self) -> io::Result<()> {
        // A working connection keeps its write queue's storage (freeing it whenever it empties
        // cost an allocation per delivery); a hibernating one keeps none.
        match std::mem::replace(&mut self.transport, Transport::Hibernating(None)) {
            Transport::Tcp(stream) => {
                self.pending = VecDeque::new();
                self.transport = Transport::Hibernating(Some(stream.into_std()?));
                Ok(())
            }
            Transport::Stream(mut s) if matches!(s.io, Io::Hibernates(_)) => {
                self.pending = VecDeque::new();
                let slept = match &mut s.io {
                    Io::Hibernates(io) => io.hibernate(),
                    #[cfg(any(test, feature = "fuzzing"))]
                    Io::Fixed(_) => Ok(()),
                };
                self.transport = Transport::Stream(s);
                slept
            }
            other => {
                self.transport = other;
                Err(io::Error::other("only a plain TCP connection hibernates"))
            }
        }
    }

    /// Registers a hibernating socket with the reactor again; inside the runtime.
    pub(crate) fn resume(&mut self) -> io::Result<()> {
        match std::mem::replace(&mut self.transport, Transport::Hibernating(None)) {
            Transport::Hibernating(Some(stream)) => {
                self.transport = Transport::Tcp(TcpStream::from_std(stream)?);
                Ok(())
            }
            Transport::Stream(mut s) => {
                let resumed = match &mut s.io {
                    Io::Hibernates(io) => io.resume(),
                    #[cfg(any(test, feature = "fuzzing"))]
                    Io::Fixed(_) => Err(hibernating()),
                };
                self.transport = Transport::Stream(s);
                resumed
            }
            other => {
                self.transport = other;
                Err(hibernating())
            }
        }
    }

    /// The hibernating socket's descriptor (-1 when there is none).
    pub(crate) fn hibernating_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match &self.transport {
            Transport::Hibernating(Some(stream)) => stream.as_raw_fd(),
            Transport::Stream(s) => match &s.io {
                Io::Hibernates(io) => io.hibernating_fd(),
                #[cfg(any(test, feature = "fuzzing"))]
                Io::Fixed(_) => -1,
            },
            _ => -1,
        }
    }

    /// Poll functions rather than futures: the connection task waits on them for its whole life,
    /// and futures here would make every idle session larger. On a stream transport this reads:
    /// ready means bytes (or the end of the stream) are kept for `try_read_frames`.
    pub(crate) fn poll_read_ready(&mut self, cx: &mut task::Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.transport {
            Transport::Tcp(stream) => stream.poll_read_ready(cx),
            Transport::Stream(s) => s.poll_receive(cx),
            Transport::Hibernating(_) => Poll::Ready(Err(hibernating())),
        }
    }

    /// On a stream transport this writes: ready means the queue moved (or there was an error).
    pub(crate) fn poll_write_ready(&mut self, cx: &mut task::Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.transport {
            Transport::Tcp(stream) => stream.poll_write_ready(cx),
            Transport::Stream(_) => match self.poll_flush_stream(cx) {
                Poll::Ready(r) => Poll::Ready(r.map(drop)),
                Poll::Pending => Poll::Pending,
            },
            Transport::Hibernating(_) => Poll::Ready(Err(hibernating())),
        }
    }

    pub(crate) async fn writable(&mut self) -> io::Result<()> {
        match &self.transport {
            Transport::Tcp(stream) => stream.writable().await,
            Transport::Stream(_) => std::future::poll_fn(|cx| self.poll_write_ready(cx)).await,
            Transport::Hibernating(_) => Err(hibernating()),
        }
    }

    /// Reads what the socket has and appends its complete frames to `frames`, at most
    /// `FRAME_BATCH` of them: the rest are handed out by the next calls, which read nothing
    /// until they are. Returns the number of bytes read (0 when the socket had nothing after all,
    /// or when the frames came from an earlier read).
    pub(crate) fn try_read_frames(
        &mut self,
        max_packet_size: usize,
        frames: &mut Vec<Bytes>,
    ) -> Result<usize, ReadError> {
        if let Some(rest) = self.unframed.take() {
            self.frame(*rest, max_packet_size, frames)?;
            return Ok(0);
        }
        let stream = match &mut self.transport {
            Transport::Tcp(stream) => stream,
            Transport::Stream(s) => {
                let Some(chunk) = s.received.take() else {
                    return if s.eof { Err(ReadError::Eof) } else { Ok(0) };
                };
                let n = chunk.len();
                match self.partial.take() {
                    Some(mut p) => {
                        p.make_room(max_packet_size, n);
                        p.buf.extend_from_slice(&chunk);
                        self.resume_frame(p, max_packet_size, frames)?;
                    }
                    None => self.frame(chunk, max_packet_size, frames)?,
                }
                return Ok(n);
            }
            Transport::Hibernating(_) => return Err(ReadError::Io(hibernating())),
        };
        let (data, n) = match self.partial.take() {
            Some(mut p) => {
                p.make_room(max_packet_size, SCRATCH_SIZE);
                return match read_now(stream, &mut p.buf) {
                    Ok(Some(0)) => Err(ReadError::Eof),
                    Ok(Some(n)) => {
                        self.resume_frame(p, max_packet_size, frames)?;
                        Ok(n)
                    }
                    Ok(None) => {
                        self.partial = Some(p);
                        Ok(0)
                    }
                    Err(e) => Err(ReadError::Io(e)),
                };
            }
            None => {
                let read = SCRATCH.with(|s| {
                    let mut s = s.borrow_mut();
                    make_room(&mut s);
                    match read_now(stream, &mut *s) {
                        Ok(Some(0)) => Err(ReadError::Eof),
                        Ok(Some(n)) => Ok(Some((s.split().freeze(), n))),
                        Ok(None) => Ok(None),
                        Err(e) => Err(ReadError::Io(e)),
                    }
                })?;
                match read {
                    Some(r) => r,
                    None => return Ok(0),
                }
            }
        };
        self.frame(data, max_packet_size, frames)?;
        Ok(n)
    }

    /// Slices complete frames off `data`, a batch at most; keeps what is left as `unframed`, or
    /// an incomplete tail as `partial`.
    fn frame(
        &mut self,
        mut data: Bytes,
        max_packet_size: usize,
        frames: &mut Vec<Bytes>,
    ) -> Result<(), ReadError> {
        let mut batch = 0;
        loop {
            match codec::frame_len(&data, max_packet_size) {
                Ok(Some(len)) if batch < FRAME_BATCH => {
                    frames.push(data.split_to(len));
                    batch += 1;
                }
                Ok(Some(_)) => {
                    self.unframed = Some(Box::new(data));
                    return Ok(());
                }
                Ok(None) => break,
                Err(e) => return Err(ReadError::Decode(e)),
            }
        }
        if !data.is_empty() {
            // A copy: the tail must not pin the buffer the complete frames came in.
            let mut buf = Vec::with_capacity(data.len().max(64));
            buf.extend_from_slice(&data);
            self.partial = Some(Box::new(Partial {
                buf,
                // tokio's clock, as the packet timeout's timer (see `client::timing`).
                since: tokio::time::Instant::now().into_std(),
            }));
        }
        Ok(())
    }

    /// After more of a half-arrived packet came: it stays where it is while incomplete (nothing
    /// is copied), and is framed like fresh input once it is whole.
    fn resume_frame(
        &mut self,
        p: Box<Partial>,
        max_packet_size: usize,
        frames: &mut Vec<Bytes>,
    ) -> Result<(), ReadError> {
        if codec::frame_len(&p.buf, max_packet_size)?.is_none() {
            self.partial = Some(p);
            return Ok(());
        }
        self.frame(Bytes::from(p.buf), max_packet_size, frames)
    }

    /// Whether the peer is known to have gone (closed or reset its end) with nothing left to
    /// read, looked at without waiting and without taking any input away from the frame reader:
    /// a check before spending work (a password hash, a takeover) on a client that left.
    pub(crate) fn peer_gone(&mut self) -> bool {
        let mut cx = task::Context::from_waker(futures_util::task::noop_waker_ref());
        match &mut self.transport {
            Transport::Tcp(stream) => {
                let mut byte = [0u8; 1];
                let mut buf = tokio::io::ReadBuf::new(&mut byte);
                match stream.poll_peek(&mut cx, &mut buf) {
                    Poll::Ready(Ok(0) | Err(_)) => true,
                    Poll::Ready(Ok(_)) | Poll::Pending => false,
                }
            }
            // What this reads is kept for the frame reader, as when the task waits for input.
            Transport::Stream(s) => match s.poll_receive(&mut cx) {
                Poll::Ready(Err(_)) => true,
                Poll::Ready(Ok(())) => s.eof,
                Poll::Pending => false,
            },
            Transport::Hibernating(_) => false,
        }
    }

    /// When the first bytes of the packet now half read came; `None` when no packet is.
    pub(crate) fn partial_since(&self) -> Option<Instant> {
        self.partial.as_ref().map(|p| p.since)
    }

    /// Queues a chunk to be written in order after everything already queued.
    pub(crate) fn queue(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.pending_bytes += chunk.len();
            self.pending.push_back(chunk);
        }
    }

    /// The memory the write queue holds: its bytes and what each chunk costs beyond them, so a
    /// bound on it bounds memory whether a client is owed a few large messages or many tiny
    /// acknowledgements.
    pub(crate) fn pending_memory(&self) -> usize {
        self.pending_bytes + self.pending.len() * CHUNK_OVERHEAD
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty() || matches!(&self.transport, Transport::Stream(s) if s.unflushed)
    }

    /// Writes as much of the queue as the socket takes without waiting. Returns bytes written.
    pub(crate) fn try_flush(&mut self) -> io::Result<usize> {
        let stream = match &self.transport {
            Transport::Tcp(stream) => stream,
            Transport::Hibernating(_) => return Err(hibernating()),
            Transport::Stream(_) => {
                // Nothing waits on this context: the task's next wait polls the stream again with its
                // own (`poll_write_ready`), which replaces the registration made here.
                let mut cx = task::Context::from_waker(futures_util::task::noop_waker_ref());
                return match self.poll_flush_stream(&mut cx) {
                    Poll::Ready(r) => r,
                    Poll::Pending => Ok(0),
                };
            }
        };
        let mut written = 0;
        while !self.pending.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let count = gather(&self.pending, &mut iov);
            match stream.try_write_vectored(&iov[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    written += n;
                    advance(&mut self.pending, &mut self.pending_bytes, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        self.release_burst_storage();
        Ok(written)
    }

    /// The write queue keeps the storage of up to `KEPT_CHUNKS` chunks between batches (freeing
    /// it whenever it emptied cost an allocation per delivery) but not what a larger burst grew
    /// it to.
    fn release_burst_storage(&mut self) {
        if self.pending.is_empty() && self.pending.capacity() > KEPT_CHUNKS {
            self.pending = VecDeque::new();
        }
    }

    /// Writes the queue into a stream transport and flushes it. Ready with the bytes taken once
    /// the stream took some or all is flushed; pending when it took nothing.
    fn poll_flush_stream(&mut self, cx: &mut task::Context<'_>) -> Poll<io::Result<usize>> {
        let Transport::Stream(s) = &mut self.transport else {
            return Poll::Ready(Ok(0));
        };
        let mut written = 0;
        while !self.pending.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let count = gather(&self.pending, &mut iov);
            match Pin::new(s.io.get()).poll_write_vectored(cx, &iov[..count]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    written += n;
                    s.unflushed = true;
                    advance(&mut self.pending, &mut self.pending_bytes, n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        self.release_burst_storage();
        let Transport::Stream(s) = &mut self.transport else {
            return Poll::Ready(Ok(written));
        };
        if s.unflushed {
            match Pin::new(s.io.get()).poll_flush(cx) {
                Poll::Ready(Ok(())) => s.unflushed = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if written > 0 || !self.has_pending() {
            Poll::Ready(Ok(written))
        } else {
            Poll::Pending
        }
    }

    /// Best effort: writes what is queued, waiting for the socket at most `within`.
    pub(crate) async fn flush_within(&mut self, within: std::time::Duration) {
        let _ = tokio::time::timeout(within, async {
            while self.has_pending() {
                if self.try_flush().is_err() {
                    return;
                }
                if self.has_pending() && self.writable().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Flushes what is queued within `within`, then, on a TLS or WebSocket stream, ends it the way
    /// its protocol says (TLS close_notify, WebSocket close frame) in what is left of `within`,
    /// so a strict client sees a clean end rather than a truncation. A TCP socket is closed by
    /// dropping it, as before.
    pub(crate) async fn finish_within(&mut self, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        self.flush_within(within).await;
        if let Transport::Stream(s) = &mut self.transport {
            use tokio::io::AsyncWriteExt;
            let _ = tokio::time::timeout_at(deadline, s.io.get().shutdown()).await;
        }
    }

    /// Flushes what is queued, closes the sending side, then discards what the peer still sends
    /// until it closes too, all within `within`. Closing with unread input would make the kernel
    /// answer with a reset that can destroy the last packets (a v5 DISCONNECT and its reason
    /// code) before the peer reads them.
    pub(crate) async fn close_gracefully(&mut self, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        self.flush_within(within).await;
        let _ = tokio::time::timeout_at(deadline, async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut sink = [0u8; 1024];
            match &mut self.transport {
                Transport::Tcp(stream) => {
                    if stream.shutdown().await.is_err() {
                        return;
                    }
                    while let Ok(1..) = stream.read(&mut sink).await {}
                }
                Transport::Stream(s) => {
                    if s.io.get().shutdown().await.is_err() {
                        return;
                    }
                    while let Ok(1..) = s.io.get().read(&mut sink).await {}
                }
                Transport::Hibernating(_) => {}
            }
        })
        .await;
    }
}

impl Partial {
    /// Room for `incoming` more bytes, or what is left of the packet when its size is known and
    /// smaller: the buffer at least doubles whenever it grows (each byte is moved a bounded number
    /// of times however the packet is cut), never beyond the size its header declares.
    fn make_room(&mut self, max_packet_size: usize, incoming: usize) {
        let len = self.buf.len();
        let wanted = len + incoming;
        let target = match codec::frame_size(&self.buf, max_packet_size) {
            Ok(Some(size)) => size.min(wanted.max(2 * len)),
            // Header incomplete (an invalid one was refused when the bytes were first kept).
            _ => wanted,
        };
        if target > self.buf.capacity() {
            self.buf.reserve_exact(target - len);
        }
    }
}

impl StreamIo {
    /// Reads what the stream has into the worker's scratch buffer and keeps it.
    fn poll_receive(&mut self, cx: &mut task::Context<'_>) -> Poll<io::Result<()>> {
        if self.received.is_some() || self.eof {
            return Poll::Ready(Ok(()));
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            make_room(&mut scratch);
            match tokio_util::io::poll_read_buf(Pin::new(self.io.get()), cx, &mut *scratch) {
                Poll::Ready(Ok(0)) => {
                    self.eof = true;
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Ok(_)) => {
                    self.received = Some(scratch.split().freeze());
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    }
}

fn hibernating() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket hibernating")
}

fn advance(pending: &mut VecDeque<Bytes>, pending_bytes: &mut usize, mut n: usize) {
    *pending_bytes -= n;
    while n > 0 {
        let Some(front) = pending.front_mut() else {
            return;
        };
        if front.len() <= n {
            n -= front.len();
            pending.pop_front();
        } else {
            front.advance(n);
            n = 0;
        }
    }
}

/// One read from the socket into `buf` without waiting; `None` when it had nothing.
///
/// Through `poll_read` rather than `try_read_buf`: a read that does not fill the buffer tells
/// tokio the socket is drained (epoll is edge-triggered), so the next wait parks at once instead
/// of first reading again only to get `WouldBlock`. That second read was one extra syscall per
/// inbound packet for devices sending one packet at a time. Nothing waits on this context: the
/// task's next wait registers its own waker (`poll_read_ready`), replacing any registered here.
fn read_now(stream: &mut TcpStream, buf: &mut impl BufMut) -> io::Result<Option<usize>> {
    let mut cx = task::Context::from_waker(futures_util::task::noop_waker_ref());
    match tokio_util::io::poll_read_buf(Pin::new(stream), &mut cx, buf) {
        Poll::Ready(r) => r.map(Some),
        Poll::Pending => Ok(None),
    }
}

/// Points `iov` at the front of the write queue (as many chunks as fit); returns how many.
fn gather<'a>(pending: &'a VecDeque<Bytes>, iov: &mut [IoSlice<'a>]) -> usize {
    let mut count = 0;
    for (slot, chunk) in iov.iter_mut().zip(pending.iter()) {
        *slot = IoSlice::new(chunk);
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests;
