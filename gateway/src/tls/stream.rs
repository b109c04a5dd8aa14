//! A TLS server session over a TCP socket, whose socket leaves tokio's reactor and whose record
//! buffers are freed while its MQTT session hibernates: a parked session keeps the connection's
//! keys, sequence numbers and handshake outcome, and nothing else.
//!
//! Built on rustls's unbuffered API (`UnbufferedServerConnection`), where the caller owns the
//! record buffers, rather than on tokio-rustls's buffered `ServerConnection`. Measured with a
//! counting allocator (`tests::bytes_held_by_a_parked_session`, TLS 1.3, P-256): a buffered
//! connection keeps its 4,096-byte deframer buffer for good once it has read anything (rustls
//! 0.23 shrinks it to `used + 4096` when empty, never below) on top of ~2.4 KB of state, so it
//! cannot be parked under 3 KB whatever is done around it. Unbuffered, what stays is the state
//! alone (the cipher contexts of both directions, the key schedule for KeyUpdate, the peer's
//! certificates on a mutual TLS listener): see the test for the figure and its bound.
//!
//! The three buffers here (TLS bytes read but not yet a whole record, decrypted bytes not yet
//! returned, records not yet sent) are freed whenever they empty, not only when the session
//! parks (which it may only do with all three empty: no plaintext or unsent record is ever
//! parked). Kept while the session worked, they were held through the second after CONNACK
//! before a new session parks: 2,000 TLS devices connecting at once then peaked at ~22 KB of
//! heap each, and glibc keeps a heap that fragmented (long-lived session state among the freed
//! buffers) as RSS, so the parked sessions still cost that much. The price is an allocation per
//! read and per write burst, which plain TCP avoids with its per-worker scratch buffer.
//! Handshake records rustls produces after the handshake (session tickets, a KeyUpdate answer,
//! alerts) join the outgoing bytes in order and are sent on the next read or write.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::server::UnbufferedServerConnection;
use tokio_rustls::rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError,
};
use tokio_rustls::rustls::ServerConfig;

use crate::connection::Hibernates;

/// Bytes asked of the socket per read (rustls's own read size).
const READ_SIZE: usize = 4096;
/// TLS bytes held while a record or a handshake message is incomplete: rustls joins handshake
/// messages of up to 64 KiB (a client's certificate chain) inside the input, plus a record.
const MAX_INCOMING: usize = 64 * 1024 + 18 * 1024;
/// Encrypted bytes waiting for the socket beyond which a write waits for them to go.
const WRITE_BACKLOG: usize = 64 * 1024;
/// Plaintext encrypted per write call: four full records.
const WRITE_CHUNK: usize = 64 * 1024;
/// What a record adds to its plaintext at most (header, content type, tag; TLS 1.2 nonce).
const RECORD_OVERHEAD: usize = 64;
/// Plaintext per record.
const RECORD_PLAINTEXT: usize = 16 * 1024;

enum Socket {
    Live(TcpStream),
    /// Off tokio's reactor while the session hibernates.
    Parked(std::net::TcpStream),
    /// Lost on the way in or out of hibernation; every call fails.
    Lost,
}

pub(crate) struct TlsStream {
    socket: Socket,
    /// Boxed so that a parked session's record stays small whatever rustls puts inline.
    conn: Box<UnbufferedServerConnection>,
    /// TLS bytes read and not yet processed (an incomplete record or handshake message).
    incoming: Vec<u8>,
    /// Records to send; `sent` of them went.
    outgoing: Vec<u8>,
    sent: usize,
    /// Decrypted bytes; `taken` of them returned.
    plaintext: Vec<u8>,
    taken: usize,
    /// The peer closed (close_notify, or the TCP stream ended).
    peer_closed: bool,
    close_sent: bool,
}

/// Completes a TLS handshake on `socket` with `config`.
pub(crate) async fn accept(config: Arc<ServerConfig>, socket: TcpStream) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut stream = TlsStream {
        socket: Socket::Live(socket),
        conn: Box::new(conn),
        incoming: Vec::new(),
        outgoing: Vec::new(),
        sent: 0,
        plaintext: Vec::new(),
        taken: 0,
        peer_closed: false,
        close_sent: false,
    };
    std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

impl TlsStream {
    /// The client's certificate chain, when it presented one.
    pub(crate) fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Err(e) = self.process() {
                // The alert saying why, if the socket takes it at once.
                let _ = self.poll_send(cx);
                return Poll::Ready(Err(e));
            }
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.peer_closed || ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Runs rustls over the input until it needs more: decrypted bytes join `plaintext`,
    /// records to send `outgoing`. On an error, the alert rustls queued for it joins
    /// `outgoing` too.
    fn process(&mut self) -> io::Result<()> {
        // Run again after an error for the alert rustls queued; it answers the error again then.
        self.run().inspect_err(|_| {
            let _ = self.run();
        })
    }

    fn run(&mut self) -> io::Result<()> {
        loop {
            // The input is passed even when only the queued alert is wanted: rustls keeps a
            // handshake message that spans records as offsets into it, and an empty slice in its
            // place panicked in its deframer (client certificates split over several reads).
            let status = self.conn.process_tls_records(&mut self.incoming);
            let mut discard = status.discard;
            let mut again = true;
            let outcome = match status.state {
                Err(e) => Err(tls_error(e)),
                // Early data is never accepted (the config offers none); read alike all the same.
                Ok(ConnectionState::ReadTraffic(mut r)) => loop {
                    match r.next_record() {
                        Some(Ok(record)) => {
                            discard += record.discard;
                            self.plaintext.extend_from_slice(record.payload);
                        }
                        Some(Err(e)) => break Err(tls_error(e)),
                        None => break Ok(()),
                    }
                },
                Ok(ConnectionState::ReadEarlyData(mut r)) => loop {
                    match r.next_record() {
                        Some(Ok(record)) => {
                            discard += record.discard;
                            self.plaintext.extend_from_slice(record.payload);
                        }
                        Some(Err(e)) => break Err(tls_error(e)),
                        None => break Ok(()),
                    }
                },
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    append(&mut self.outgoing, RECORD_PLAINTEXT, |out| {
                        e.encode(out).map_err(|e| match e {
                            EncodeError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            }) => Short(required_size),
                            other => Failed(io::Error::other(other.to_string())),
                        })
                    })
                }
                // The encoded bytes wait in `outgoing`, ahead of anything encoded after them.
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    Ok(())
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(())
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    again = false;
                    Ok(())
                }
                Ok(_) => {
                    again = false;
                    Ok(())
                }
            };
            self.incoming.drain(..discard.min(self.incoming.len()));
            release(&mut self.incoming);
            outcome?;
            if !again {
                return Ok(());
            }
        }
    }

    /// Encrypts `data` into `outgoing`; the handshake is complete.
    fn encrypt(&mut self, data: &[u8]) -> io::Result<()> {
        self.process()?;
        let status = self.conn.process_tls_records(&mut self.incoming);
        let written = match status.state {
            Ok(ConnectionState::WriteTraffic(mut w)) => {
                let room = data.len() + (data.len() / RECORD_PLAINTEXT + 1) * RECORD_OVERHEAD;
                append(&mut self.outgoing, room, |out| {
                    w.encrypt(data, out).map_err(encrypt_error)
                })
            }
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS session cannot send",
            )),
            Err(e) => Err(tls_error(e)),
        };
        let discard = status.discard.min(self.incoming.len());
        self.incoming.drain(..discard);
        release(&mut self.incoming);
        written
    }

    /// Reads what the socket has into `incoming`. Ready with 0 at its end. Room is made only
    /// once the socket is readable: reserved ahead, it stayed allocated (empty) in every session
    /// that waited for its client, parked ones included (4 KiB each, found with heaptrack).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
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
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
}

/// Frees an emptied buffer's storage.
fn release(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = Vec::new();
    }
}

/// How an encoder filled the room it was given.
enum Fill {
    Short(usize),
    Failed(io::Error),
}
use Fill::{Failed, Short};

/// Appends what `encode` writes to `out`, with `room` bytes to start with and more if it asks.
fn append(
    out: &mut Vec<u8>,
    room: usize,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, Fill>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = room;
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Short(needed)) if needed > room => room = needed,
            Err(Short(_)) => {
                out.truncate(start);
                return Err(io::Error::other(
                    "TLS encoder asked for less room than it had",
                ));
            }
            Err(Failed(e)) => {
                out.truncate(start);
                return Err(e);
            }
        }
    }
}

fn encrypt_error(e: EncryptError) -> Fill {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Short(required_size)
        }
        other => Failed(io::Error::new(io::ErrorKind::BrokenPipe, other.to_string())),
    }
}

fn tls_error(e: tokio_rustls::rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn parked() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "TLS session hibernating")
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.plaintext.len() {
                let n = (this.plaintext.len() - this.taken).min(buf.remaining());
                buf.put_slice(&this.plaintext[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.plaintext.len() {
                    this.plaintext = Vec::new();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if let Err(e) = this.process() {
                let _ = this.poll_send(cx);
                return Poll::Ready(Err(e));
            }
            // Records rustls answered with (a KeyUpdate, an alert) go out; a full socket does
            // not hold reading up, the task is woken when it drains.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if !this.plaintext.is_empty() || this.peer_closed {
                continue;
            }
            if ready!(this.poll_fill(cx))? == 0 {
                // The end of the TCP stream without close_notify: the end all the same (MQTT
                // frames its own packets, a truncation cannot pass for a whole one).
                this.peer_closed = true;
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// Several chunks go into one record run: a batch of small packets costs one record.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.outgoing.len() - this.sent >= WRITE_BACKLOG {
            ready!(this.poll_send(cx))?;
        }
        let taken = match bufs.iter().find(|b| !b.is_empty()) {
            None => return Poll::Ready(Ok(0)),
            Some(first) if first.len() >= WRITE_CHUNK || bufs.len() == 1 => {
                let n = first.len().min(WRITE_CHUNK);
                this.encrypt(&first[..n])?;
                n
            }
            Some(_) => {
                let mut joined =
                    Vec::with_capacity(WRITE_CHUNK.min(bufs.iter().map(|b| b.len()).sum()));
                for b in bufs {
                    let n = b.len().min(WRITE_CHUNK - joined.len());
                    joined.extend_from_slice(&b[..n]);
                    if joined.len() == WRITE_CHUNK {
                        break;
                    }
                }
                this.encrypt(&joined)?;
                joined.len()
            }
        };
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    /// close_notify, then the end of the TCP stream.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.close_sent = true;
            this.process()?;
            let status = this.conn.process_tls_records(&mut this.incoming);
            let queued = match status.state {
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    append(&mut this.outgoing, RECORD_OVERHEAD, |out| {
                        w.queue_close_notify(out).map_err(encrypt_error)
                    })
                }
                // Closed already, or never open: nothing to announce.
                _ => Ok(()),
            };
            let discard = status.discard.min(this.incoming.len());
            this.incoming.drain(..discard);
            queued?;
        }
        ready!(this.poll_send(cx))?;
        match &mut this.socket {
            Socket::Live(socket) => Pin::new(socket).poll_shutdown(cx),
            _ => Poll::Ready(Err(parked())),
        }
    }
}

impl Hibernates for TlsStream {
    fn idle(&self) -> bool {
        matches!(self.socket, Socket::Live(_))
            && self.plaintext.is_empty()
            && self.incoming.is_empty()
            && self.outgoing.is_empty()
            && !self.peer_closed
            && !self.close_sent
    }

    fn hibernate(&mut self) -> io::Result<()> {
        match std::mem::replace(&mut self.socket, Socket::Lost) {
            Socket::Live(socket) => {
                self.socket = Socket::Parked(socket.into_std()?);
                // Empty (`idle`), and freed as they emptied; their storage goes all the same.
                release(&mut self.incoming);
                release(&mut self.outgoing);
                release(&mut self.plaintext);
                Ok(())
            }
            other => {
                self.socket = other;
                Err(io::Error::other("TLS session not live"))
            }
        }
    }

    fn resume(&mut self) -> io::Result<()> {
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

    fn hibernating_fd(&self) -> RawFd {
        match &self.socket {
            Socket::Parked(socket) => socket.as_raw_fd(),
            _ => -1,
        }
    }
}

#[cfg(test)]
mod tests;
