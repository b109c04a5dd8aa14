//! A TLS session's socket and its TLS bytes: those read and not yet a whole record, and records
//! not yet sent. The socket leaves tokio's reactor while the session parks.
//!
//! Both buffers are freed whenever they empty, not only when the session parks (which it may
//! only do with both empty). Kept while the session worked, they were held through the second
//! after CONNACK before a new session parks: 2,000 TLS devices connecting at once then peaked at
//! ~22 KB of heap each, and glibc keeps a heap that fragmented (long-lived session state among
//! the freed buffers) as RSS, so the parked sessions still cost that much. The price is an
//! allocation per read and per write burst, which plain TCP avoids with its per-worker scratch
//! buffer.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

/// Bytes asked of the socket per read (rustls's own read size).
const READ_SIZE: usize = 4096;
/// TLS bytes held while a record or a handshake message is incomplete: rustls joins handshake
/// messages of up to 64 KiB (a client's certificate chain) inside the input, plus a record.
const MAX_INCOMING: usize = 64 * 1024 + 18 * 1024;

enum Socket {
    Live(TcpStream),
    /// Off tokio's reactor while the session hibernates.
    Parked(std::net::TcpStream),
    /// Lost on the way in or out of hibernation; every call fails.
    Lost,
}

pub(crate) struct Wire {
    socket: Socket,
    /// TLS bytes read and not yet processed.
    pub(crate) incoming: Vec<u8>,
    /// Records to send; `sent` of them went.
    pub(crate) outgoing: Vec<u8>,
    sent: usize,
}

impl Wire {
    pub(crate) fn new(socket: TcpStream) -> Wire {
        Wire {
            socket: Socket::Live(socket),
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
        }
    }

    /// Encrypted bytes not yet sent.
    pub(crate) fn unsent(&self) -> usize {
        self.outgoing.len() - self.sent
    }

    /// Live, with no TLS bytes held either way.
    pub(crate) fn idle(&self) -> bool {
        matches!(self.socket, Socket::Live(_))
            && self.incoming.is_empty()
            && self.outgoing.is_empty()
    }

    /// Reads what the socket has into `incoming`. Ready with 0 at its end. Room is made only
    /// once the socket is readable: reserved ahead, it stayed allocated (empty) in every session
    /// that waited for its client, parked ones included (4 KiB each, found with heaptrack).
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Socket::Live(socket) = &mut self.socket else {
            return Poll::Ready(Err(parked()));
        };
        if self.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS input beyond the largest record or handshake message",
            )));
        }
        loop {
            ready!(socket.poll_read_ready(cx))?;
            self.incoming.reserve(READ_SIZE);
            match socket.try_read_buf(&mut self.incoming) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => release(&mut self.incoming),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes `outgoing` to the socket. Ready once all of it went.
    pub(crate) fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let Socket::Live(socket) = &mut self.socket else {
                return Poll::Ready(Err(parked()));
            };
            match ready!(Pin::new(socket).poll_write(cx, &self.outgoing[self.sent..]))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.sent += n,
            }
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Sends what is left, then ends the TCP stream.
    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        match &mut self.socket {
            Socket::Live(socket) => Pin::new(socket).poll_shutdown(cx),
            _ => Poll::Ready(Err(parked())),
        }
    }

    /// Frees `incoming` once emptied.
    pub(crate) fn release_incoming(&mut self) {
        release(&mut self.incoming);
    }

    /// Takes the socket off the reactor; the buffers are empty (`idle`) and go.
    pub(crate) fn park(&mut self) -> io::Result<()> {
        match std::mem::replace(&mut self.socket, Socket::Lost) {
            Socket::Live(socket) => {
                self.socket = Socket::Parked(socket.into_std()?);
                release(&mut self.incoming);
                release(&mut self.outgoing);
                Ok(())
            }
            other => {
                self.socket = other;
                Err(io::Error::other("TLS session not live"))
            }
        }
    }

    pub(crate) fn resume(&mut self) -> io::Result<()> {
        match std::mem::replace(&mut self.socket, Socket::Lost) {
            Socket::Parked(socket) => {
                self.socket = Socket::Live(TcpStream::from_std(socket)?);
                Ok(())
            }
            other => {
                self.socket = other;
                Err(parked())
            }
        }
    }

    pub(crate) fn parked_fd(&self) -> RawFd {
        match &self.socket {
            Socket::Parked(socket) => socket.as_raw_fd(),
            _ => -1,
        }
    }
}

/// Frees an emptied buffer's storage.
pub(crate) fn release(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = Vec::new();
    }
}

pub(crate) fn parked() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "TLS session hibernating")
}
