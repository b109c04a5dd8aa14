//! Socket I/O for one client: framed reads through a per-worker scratch buffer, vectored writes.
//!
//! An idle connection owns no read buffer: reads go into a scratch buffer that belongs to the worker
//! thread, complete frames are sliced off it, and only the tail of a packet that has not fully
//! arrived is copied into a buffer of the connection's own (sized to that packet, freed once it is
//! complete). Writes are a queue of `Bytes` chunks (shared message payloads among them) drained with
//! one vectored write per batch, so many messages cost one syscall and no payload is copied.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;

use crate::codec::{self, DecodeError};

/// Bytes read per readiness event at most; also the per-worker scratch size.
const SCRATCH_SIZE: usize = 64 * 1024;
/// Chunks handed to one vectored write (well under IOV_MAX).
const MAX_IOV: usize = 256;

thread_local! {
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed by peer")]
    Eof,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

pub struct Connection {
    stream: TcpStream,
    /// The beginning of a packet that has not fully arrived.
    partial: Option<BytesMut>,
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
}

impl Connection {
    pub fn new(stream: TcpStream) -> Connection {
        Connection {
            stream,
            partial: None,
            pending: VecDeque::new(),
            pending_bytes: 0,
        }
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.stream.readable().await
    }

    /// Poll functions rather than futures: the connection task waits on them for its whole life,
    /// and futures here would make every idle session larger.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream.poll_read_ready(cx)
    }

    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream.poll_write_ready(cx)
    }

    pub async fn writable(&self) -> io::Result<()> {
        self.stream.writable().await
    }

    /// Reads what the socket has and appends every complete frame to `frames`. Returns the number
    /// of bytes read (0 when the socket had nothing after all).
    pub fn try_read_frames(
        &mut self,
        max_packet_size: usize,
        frames: &mut Vec<Bytes>,
    ) -> Result<usize, ReadError> {
        let (mut data, n) = match self.partial.take() {
            Some(mut p) => {
                // Grows geometrically for a large packet arriving over many reads.
                p.reserve(SCRATCH_SIZE.max(p.len()));
                match self.stream.try_read_buf(&mut p) {
                    Ok(0) => return Err(ReadError::Eof),
                    Ok(n) => (p.freeze(), n),
                    Err(e) => {
                        self.partial = Some(p);
                        return would_block_or(e);
                    }
                }
            }
            None => {
                let read = SCRATCH.with(|s| {
                    let mut s = s.borrow_mut();
                    s.reserve(SCRATCH_SIZE);
                    match self.stream.try_read_buf(&mut *s) {
                        Ok(0) => Err(ReadError::Eof),
                        Ok(n) => Ok(Some((s.split().freeze(), n))),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                        Err(e) => Err(ReadError::Io(e)),
                    }
                })?;
                match read {
                    Some(r) => r,
                    None => return Ok(0),
                }
            }
        };
        loop {
            match codec::frame_len(&data, max_packet_size) {
                Ok(Some(len)) => frames.push(data.split_to(len)),
                Ok(None) => break,
                Err(e) => return Err(ReadError::Decode(e)),
            }
        }
        if !data.is_empty() {
            let mut p = BytesMut::with_capacity(data.len().max(64));
            p.extend_from_slice(&data);
            self.partial = Some(p);
        }
        Ok(n)
    }

    /// Queues a chunk to be written in order after everything already queued.
    pub fn queue(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.pending_bytes += chunk.len();
            self.pending.push_back(chunk);
        }
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes as much of the queue as the socket takes without waiting. Returns bytes written.
    pub fn try_flush(&mut self) -> io::Result<usize> {
        let mut written = 0;
        while !self.pending.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut count = 0;
            for (slot, chunk) in iov.iter_mut().zip(self.pending.iter()) {
                *slot = IoSlice::new(chunk);
                count += 1;
            }
            match self.stream.try_write_vectored(&iov[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    written += n;
                    self.advance(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.pending.is_empty() && self.pending.capacity() > 0 {
            // An idle connection keeps no write queue storage.
            self.pending = VecDeque::new();
        }
        Ok(written)
    }

    fn advance(&mut self, mut n: usize) {
        self.pending_bytes -= n;
        while n > 0 {
            let Some(front) = self.pending.front_mut() else {
                return;
            };
            if front.len() <= n {
                n -= front.len();
                self.pending.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// Best effort: writes what is queued, waiting for the socket at most `within`.
    pub async fn flush_within(&mut self, within: std::time::Duration) {
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

    /// Flushes what is queued, closes the sending side, then discards what the peer still sends
    /// until it closes too, all within `within`. Closing with unread input would make the kernel
    /// answer with a reset that can destroy the last packets (a v5 DISCONNECT and its reason
    /// code) before the peer reads them.
    pub async fn close_gracefully(&mut self, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        self.flush_within(within).await;
        let _ = tokio::time::timeout_at(deadline, async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            if self.stream.shutdown().await.is_err() {
                return;
            }
            let mut sink = [0u8; 1024];
            while let Ok(1..) = self.stream.read(&mut sink).await {}
        })
        .await;
    }
}

fn would_block_or(e: io::Error) -> Result<usize, ReadError> {
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(0)
    } else {
        Err(ReadError::Io(e))
    }
}
