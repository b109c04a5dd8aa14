//! A TLS handshake on rustls's unbuffered API (`UnbufferedServerConnection`), where the caller
//! owns the record buffers, up to the point where rustls hands the session's keys over
//! (`dangerous_into_kernel_connection`, which `tls.rs` enables with `enable_secret_extraction`), with
//! the TLS 1.3 traffic secrets it logged meanwhile (`key_schedule::capture`): the records after
//! it are `traffic`'s.
//!
//! rustls runs until it reports `WriteTraffic` with the handshake complete: by then it has
//! queued everything it sends (its Finished, TLS 1.3 session tickets), and decrypted any
//! application data the client sent with its Finished (that joins the plaintext). The bytes
//! left in the input are the start of a record not yet whole, which `traffic` opens with the
//! receive sequence number rustls hands over.

use std::io;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::server::UnbufferedServerConnection;
use tokio_rustls::rustls::unbuffered::{ConnectionState, EncodeError, InsufficientSizeError};
use tokio_rustls::rustls::ServerConfig;

use futures_util::FutureExt;

use super::key_schedule::{capture, Logged};
use super::record::MAX_PLAINTEXT;
use super::traffic::Traffic;
use super::turns;
use super::wire::{release, Wire};

/// What a handshake leaves: the session, and the client's certificate chain when it sent one.
pub(crate) struct Done {
    pub(crate) traffic: Traffic,
    pub(crate) peer_certificates: Option<Vec<CertificateDer<'static>>>,
}

/// Completes a handshake over `wire`; application data read with it joins `plaintext`.
pub(crate) async fn handshake(
    config: Arc<ServerConfig>,
    wire: &mut Wire,
    plaintext: &mut Vec<u8>,
) -> io::Result<Done> {
    let mut conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut logged = Logged::default();
    loop {
        let step = {
            // rustls's work on what arrived (key exchange, signature, certificate checks) is
            // the CPU-heavy part: it waits its turn (`turns`). Its first call has no input.
            let _turn = if wire.incoming.is_empty() {
                None
            } else {
                let turn = turns::take().await;
                // A turn handed over wakes its task in the releasing worker's next slot, ahead
                // of the sessions queued there: behind them instead.
                tokio::task::yield_now().await;
                turn
            };
            capture(&mut logged, || run(&mut conn, wire, plaintext))
        };
        let done = match step {
            Ok(done) => done,
            Err(e) => {
                // Run again for the alert rustls queued (it answers the error again then), and
                // send it if the socket takes it at once.
                let _ = run(&mut conn, wire, plaintext);
                let _ = std::future::poll_fn(|cx| wire.poll_send(cx)).now_or_never();
                return Err(e);
            }
        };
        std::future::poll_fn(|cx| wire.poll_send(cx)).await?;
        if done {
            break;
        }
        if std::future::poll_fn(|cx| wire.poll_fill(cx)).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    let peer_certificates = conn.peer_certificates().map(<[_]>::to_vec);
    // The kernel connection's key schedule is not kept: `logged` holds what KeyUpdate needs.
    let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(tls_error)?;
    let (version, suite) = (kernel.protocol_version(), kernel.negotiated_cipher_suite());
    drop(kernel);
    let traffic = Traffic::new(version, suite, secrets, logged)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Done {
        traffic,
        peer_certificates,
    })
}

/// Runs rustls over the input until it needs more (false), or until the handshake is done and
/// rustls has nothing left to send (true).
fn run(
    conn: &mut UnbufferedServerConnection,
    wire: &mut Wire,
    plaintext: &mut Vec<u8>,
) -> io::Result<bool> {
    loop {
        // The input is passed even when only the queued alert is wanted: rustls keeps a
        // handshake message that spans records as offsets into it, and an empty slice in its
        // place panicked in its deframer (client certificates split over several reads).
        let status = conn.process_tls_records(&mut wire.incoming);
        let mut discard = status.discard;
        let outcome = match status.state {
            Err(e) => Err(tls_error(e)),
            // Early data is never accepted (the config offers none); read alike all the same.
            Ok(ConnectionState::ReadTraffic(mut r)) => loop {
                match r.next_record() {
                    Some(Ok(record)) => {
                        discard += record.discard;
                        plaintext.extend_from_slice(record.payload);
                    }
                    Some(Err(e)) => break Err(tls_error(e)),
                    None => break Ok(None),
                }
            },
            Ok(ConnectionState::ReadEarlyData(mut r)) => loop {
                match r.next_record() {
                    Some(Ok(record)) => {
                        discard += record.discard;
                        plaintext.extend_from_slice(record.payload);
                    }
                    Some(Err(e)) => break Err(tls_error(e)),
                    None => break Ok(None),
                }
            },
            Ok(ConnectionState::EncodeTlsData(mut e)) => encode(&mut wire.outgoing, |out| {
                e.encode(out).map_err(|e| match e {
                    EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                        Some(required_size)
                    }
                    _ => None,
                })
            })
            .map(|()| None),
            // The encoded bytes wait in `outgoing`, ahead of anything encoded after them.
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                Ok(None)
            }
            // A TLS 1.3 server may send before the client's Finished (0.5-RTT): not done yet.
            Ok(ConnectionState::WriteTraffic(_)) => Ok(Some(true)),
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                Err(io::ErrorKind::UnexpectedEof.into())
            }
            Ok(_) => Ok(Some(false)),
        };
        wire.incoming.drain(..discard.min(wire.incoming.len()));
        release(&mut wire.incoming);
        if let Some(done) = outcome? {
            return Ok(done && !conn.is_handshaking());
        }
    }
}

/// Appends what `encode` writes to `out`, with room for a record to start with and more if it
/// asks (`Err(Some(needed))`); `Err(None)` is a failure.
fn encode(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = MAX_PLAINTEXT;
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Some(needed)) if needed > room => room = needed,
            Err(_) => {
                out.truncate(start);
                return Err(io::Error::other(
                    "TLS handshake record could not be encoded",
                ));
            }
        }
    }
}

fn tls_error(e: tokio_rustls::rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}
