//! A TLS server session over a TCP socket, which hibernates with its MQTT session: parked, it
//! keeps the keys and sequence numbers of both directions (and on TLS 1.3 the two traffic secrets,
//! for KeyUpdate), its socket off tokio's reactor, and nothing else.
//!
//! rustls does the handshake (`handshake`, its CPU-heavy steps in `turns`); the records after
//! it are ours (`traffic` over
//! `record`), so that no rustls connection state outlives the handshake. Measured with a
//! counting allocator (`tests::bytes_held_by_a_parked_session`, P-256): a parked session held
//! 2,681 bytes for TLS 1.3 when it kept rustls's whole connection (its 1,088 bytes inline, the
//! aws-lc AEAD contexts of both directions at ~590 bytes each, small queues); see the test for
//! today's figure and its bound. The AEAD contexts are built again from the secrets when the
//! session wakes, on the first record either way.
//!
//! Decrypted bytes not yet returned wait in a buffer freed whenever it empties, as are the TLS
//! byte buffers (`wire`).

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::ServerConfig;

use super::handshake::{handshake, Done};
use super::record::RecordError;
use super::traffic::{Read, Traffic};
use super::wire::{release, Wire};
use crate::connection::Hibernates;

/// Encrypted bytes waiting for the socket beyond which a write waits for them to go.
const WRITE_BACKLOG: usize = 64 * 1024;
/// Plaintext encrypted per write call: four full records.
const WRITE_CHUNK: usize = 64 * 1024;

pub(crate) struct TlsStream {
    wire: Wire,
    /// Boxed: the record layer's secrets (and TLS 1.3 traffic secrets) are the parked session's
    /// bulk; the stream's own fields stay small.
    traffic: Box<Traffic>,
    /// Decrypted bytes; `taken` of them returned.
    plaintext: Vec<u8>,
    taken: usize,
    /// Until the listener takes them, right after the handshake.
    peer_certificates: Option<Vec<CertificateDer<'static>>>,
    /// Records refused after the handshake (`gateway_tls_record_failures_total`).
    failures: Counter,
    /// The peer closed (close_notify, or the TCP stream ended).
    peer_closed: bool,
    close_sent: bool,
}

/// Completes a TLS handshake on `socket` with `config`; `failures` counts the records the
/// session refuses afterwards.
pub(crate) async fn accept(
    config: Arc<ServerConfig>,
    socket: TcpStream,
    failures: Counter,
) -> io::Result<TlsStream> {
    let mut wire = Wire::new(socket);
    let mut plaintext = Vec::new();
    let Done {
        traffic,
        peer_certificates,
    } = handshake(config, &mut wire, &mut plaintext).await?;
    Ok(TlsStream {
        wire,
        traffic: Box::new(traffic),
        plaintext,
        taken: 0,
        peer_certificates,
        failures,
        peer_closed: false,
        close_sent: false,
    })
}

impl TlsStream {
    /// The client's certificate chain, when it presented one; once (the session keeps none).
    pub(crate) fn take_peer_certificates(&mut self) -> Option<Vec<CertificateDer<'static>>> {
        self.peer_certificates.take()
    }

    /// The error a refused record ends the session with, its alert queued and counted (the
    /// client's own alert is not counted).
    fn refused(&mut self, e: RecordError) -> io::Error {
        if !matches!(e, RecordError::PeerAlert(_)) {
            self.failures.increment(1);
        }
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
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
            if !this.wire.incoming.is_empty() {
                let read = this.traffic.read(
                    &mut this.wire.incoming,
                    &mut this.plaintext,
                    &mut this.wire.outgoing,
                );
                this.wire.release_incoming();
                match read {
                    Ok(Read::Open) => {}
                    Ok(Read::Closed) => this.peer_closed = true,
                    Err(e) => {
                        let e = this.refused(e);
                        // The alert, if the socket takes it at once.
                        let _ = this.wire.poll_send(cx);
                        return Poll::Ready(Err(e));
                    }
                }
            }
            // Records answering the peer (a KeyUpdate, a warning) go out; a full socket does
            // not hold reading up, the task is woken when it drains.
            if let Poll::Ready(Err(e)) = this.wire.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if !this.plaintext.is_empty() || this.peer_closed {
                continue;
            }
            if ready!(this.wire.poll_fill(cx))? == 0 {
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
        if this.wire.unsent() >= WRITE_BACKLOG {
            ready!(this.wire.poll_send(cx))?;
        }
        let written = match bufs.iter().find(|b| !b.is_empty()) {
            None => return Poll::Ready(Ok(0)),
            Some(first) if first.len() >= WRITE_CHUNK || bufs.len() == 1 => {
                let n = first.len().min(WRITE_CHUNK);
                this.traffic
                    .write(&first[..n], &mut this.wire.outgoing)
                    .map(|()| n)
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
                this.traffic
                    .write(&joined, &mut this.wire.outgoing)
                    .map(|()| joined.len())
            }
        };
        let taken = match written {
            Ok(n) => n,
            Err(e) => {
                let _ = this.wire.poll_send(cx);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, e)));
            }
        };
        if let Poll::Ready(Err(e)) = this.wire.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().wire.poll_send(cx)
    }

    /// close_notify, then the end of the TCP stream.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.close_sent = true;
            this.traffic
                .close_notify(&mut this.wire.outgoing)
                .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        }
        this.wire.poll_shutdown(cx)
    }
}

impl Hibernates for TlsStream {
    fn idle(&self) -> bool {
        self.wire.idle() && self.plaintext.is_empty() && !self.peer_closed && !self.close_sent
    }

    fn hibernate(&mut self) -> io::Result<()> {
        self.wire.park()?;
        // Empty (`idle`), and freed as they emptied; their storage goes all the same.
        release(&mut self.plaintext);
        self.peer_certificates = None;
        self.traffic.sleep();
        Ok(())
    }

    fn resume(&mut self) -> io::Result<()> {
        self.wire.resume()
    }

    fn hibernating_fd(&self) -> RawFd {
        self.wire.parked_fd()
    }
}

#[cfg(test)]
mod peers;
#[cfg(test)]
mod tests;
