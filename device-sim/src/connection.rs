//! One MQTT connection as the simulator holds it: the socket, plus only a partial packet's tail
//! and unsent bytes when there are any. Reads land in a per-thread scratch buffer and writes
//! are encoded into another, so an idle plain connection owns no buffer at all. A TLS
//! connection adds its boxed session ([`TlsSession`]), which decrypts into the same scratch
//! buffer and keeps unsent records itself.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpSocket, TcpStream};

use crate::codec::{self, CodecError, ConnectOptions, Incoming, Protocol};
pub use crate::reason::{io_reason, Reason};
use crate::tls::{Fill, TlsDial, TlsSession};

/// Bytes asked of the kernel per read; a burst larger than this takes several reads.
const SCRATCH: usize = 64 * 1024;
/// Reads per wake-up before yielding, so one busy subscriber cannot starve the rest.
const READS_PER_WAKE: usize = 16;

thread_local! {
    static RX: RefCell<BytesMut> = RefCell::new(BytesMut::new());
    static TX: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

pub fn codec_reason(e: CodecError) -> Reason {
    match e {
        CodecError::Malformed(_) => Cow::Borrowed("malformed_packet"),
        CodecError::Encode(_) => Cow::Borrowed("encode_error"),
    }
}

/// Bytes kept between wake-ups; one pointer while empty, which is nearly always.
#[derive(Default)]
struct Spill(Option<Box<SpillBytes>>);

#[derive(Default)]
struct SpillBytes {
    bytes: Vec<u8>,
    /// For `tail`: it may hold complete packets (the handshake stopped reading at CONNACK).
    stopped_early: bool,
}

impl Spill {
    fn as_slice(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], |spill| &spill.bytes)
    }

    fn extend(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            let spill = self.0.get_or_insert_with(Box::default);
            spill.bytes.extend_from_slice(bytes);
        }
    }
}

/// Unsent bytes of a plain connection, or a TLS connection's session (which keeps its unsent
/// records itself): one pointer, null while a plain connection has sent everything, so TLS
/// costs nothing to the devices that do not use it.
#[derive(Default)]
struct Out(Option<Box<OutState>>);

enum OutState {
    Unsent(Vec<u8>),
    // Boxed again: a plain connection's unsent bytes must not allocate a session's size.
    Tls(Box<TlsSession>),
}

impl Out {
    fn tls(&mut self) -> Option<&mut TlsSession> {
        match self.0.as_deref_mut() {
            Some(OutState::Tls(tls)) => Some(tls),
            _ => None,
        }
    }

    fn has_pending(&self) -> bool {
        match self.0.as_deref() {
            None => false,
            Some(OutState::Unsent(bytes)) => !bytes.is_empty(),
            Some(OutState::Tls(tls)) => tls.wants_write(),
        }
    }

    fn unsent(&self) -> &[u8] {
        match self.0.as_deref() {
            Some(OutState::Unsent(bytes)) => bytes,
            _ => &[],
        }
    }

    /// Keeps `bytes` of a plain connection for later.
    fn extend(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match &mut **self
            .0
            .get_or_insert_with(|| Box::new(OutState::Unsent(Vec::new())))
        {
            OutState::Unsent(unsent) => unsent.extend_from_slice(bytes),
            // Unreachable: a TLS connection's writes go through its session.
            OutState::Tls(_) => {}
        }
    }

    /// Drops the first `n` unsent bytes, and the buffer with them when nothing is left.
    fn consume(&mut self, n: usize) {
        if let Some(OutState::Unsent(unsent)) = self.0.as_deref_mut() {
            unsent.drain(..n);
            if unsent.is_empty() {
                self.0 = None;
            }
        }
    }
}

pub struct Conn {
    pub stream: TcpStream,
    tail: Spill,
    out: Out,
}

async fn tcp_connect(target: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let (Some(ip), true) = (source, target.is_ipv4()) {
        // Without this, bind() picks the port before the destination is known, which caps a
        // source address at one ephemeral range for all targets together.
        let on: libc::c_int = 1;
        // SAFETY: a valid socket fd and a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        socket.bind(SocketAddr::new(ip.into(), 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// TCP connect, the TLS handshake with `tls`, CONNECT, CONNACK, within `timeout`. Returns the
/// connection and whether the broker had a session.
pub async fn establish(
    target: SocketAddr,
    source: Option<Ipv4Addr>,
    tls: Option<TlsDial<'_>>,
    protocol: Protocol,
    options: &ConnectOptions<'_>,
    timeout: Duration,
) -> Result<(Conn, bool), Reason> {
    // Whether the deadline struck during the TLS handshake, for its own reason.
    let in_tls = AtomicBool::new(false);
    let handshake = async {
        let stream = tcp_connect(target, source)
            .await
            .map_err(|e| io_reason(&e))?;
        let mut conn = Conn {
            stream,
            tail: Spill::default(),
            out: Out::default(),
        };
        if let Some(dial) = &tls {
            in_tls.store(true, Relaxed);
            // After the TCP connect: a failed connect must not use up a resumption ticket.
            conn.out = Out(Some(Box::new(OutState::Tls(dial.start()?))));
            let resumed = conn.tls_handshake().await?;
            dial.handshake_done(resumed);
            in_tls.store(false, Relaxed);
        }
        conn.send(|buf| codec::connect(buf, protocol, options))?;
        let mut connack: Option<Result<bool, Reason>> = None;
        loop {
            conn.flush_pending().await?;
            conn.stream.readable().await.map_err(|e| io_reason(&e))?;
            // Stop at CONNACK: a resumed session's messages may follow in the same segment,
            // and they belong to the client's main loop (to be verified and acknowledged).
            let open = conn.read_until(protocol, |packet, _| {
                if let Incoming::ConnAck {
                    code,
                    name,
                    session_present,
                } = packet
                {
                    connack = Some(if code == 0 {
                        Ok(session_present)
                    } else {
                        Err(Cow::Owned(format!("connack_{name}")))
                    });
                    return Ok(false);
                }
                Ok(true)
            })?;
            if let Some(result) = connack.take() {
                return result.map(|session| (conn, session));
            }
            if !open {
                return Err(Cow::Borrowed("closed_before_connack"));
            }
        }
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(result) => result,
        Err(_) if in_tls.load(Relaxed) => Err(Cow::Borrowed("tls_handshake_timeout")),
        Err(_) => Err(Cow::Borrowed("timeout")),
    }
}

impl Conn {
    pub fn has_pending(&self) -> bool {
        self.out.has_pending()
    }

    /// Drives the TLS handshake to its end; whether it resumed an earlier session.
    async fn tls_handshake(&mut self) -> Result<bool, Reason> {
        let mut early = BytesMut::new();
        loop {
            self.flush_pending().await?;
            let Some(tls) = self.out.tls() else {
                return Ok(false);
            };
            if let Some(resumed) = tls.resumed() {
                // Nothing decrypts before the handshake ends, but keep whatever did.
                self.tail.extend(&early);
                return Ok(resumed);
            }
            self.stream.readable().await.map_err(|e| io_reason(&e))?;
            if let Fill::Eof = tls.fill(&self.stream, &mut early)? {
                // A plain-TCP port, or a broker that dropped the hello.
                return Err(Cow::Borrowed("tls_closed_in_handshake"));
            }
        }
    }

    /// Reads what the socket has into `rx` (decrypted on TLS).
    fn fill(&mut self, rx: &mut BytesMut) -> Result<Fill, Reason> {
        if let Some(tls) = self.out.tls() {
            return tls.fill(&self.stream, rx);
        }
        rx.reserve(SCRATCH);
        match self.stream.try_read_buf(rx) {
            Ok(0) => Ok(Fill::Eof),
            Ok(_) => Ok(Fill::Progress),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Fill::WouldBlock),
            Err(e) => Err(io_reason(&e)),
        }
    }

    /// Reads what the socket has and hands each complete packet to `on_packet`, which may
    /// encode replies into the buffer it is given; replies go out after the batch.
    /// `Ok(false)` means the broker closed the connection. Packets left over by the handshake
    /// are handled first.
    pub fn read(
        &mut self,
        protocol: Protocol,
        mut on_packet: impl FnMut(Incoming, &mut BytesMut) -> Result<(), Reason>,
    ) -> Result<bool, Reason> {
        self.read_until(protocol, |packet, reply| {
            on_packet(packet, reply).map(|()| true)
        })
    }

    /// `read`, stopping right after a packet for which `on_packet` returns `false`: what
    /// follows it stays buffered for the next `read`.
    fn read_until(
        &mut self,
        protocol: Protocol,
        mut on_packet: impl FnMut(Incoming, &mut BytesMut) -> Result<bool, Reason>,
    ) -> Result<bool, Reason> {
        RX.with(|rx| {
            TX.with(|tx| {
                let (mut rx, mut tx) = (rx.borrow_mut(), tx.borrow_mut());
                rx.clear();
                tx.clear();
                rx.extend_from_slice(self.tail.as_slice());
                self.tail = Spill::default();
                let mut open = true;
                let mut more = true;
                let mut reads = 0;
                while more {
                    while let Some(packet) =
                        codec::decode(&mut rx, protocol).map_err(codec_reason)?
                    {
                        if !on_packet(packet, &mut tx)? {
                            more = false;
                            break;
                        }
                    }
                    if !more || !open || reads == READS_PER_WAKE {
                        break;
                    }
                    reads += 1;
                    match self.fill(&mut rx)? {
                        Fill::Eof => open = false,
                        Fill::Progress => {}
                        Fill::WouldBlock => break,
                    }
                }
                // Only unprocessed bytes survive the batch, copied to fit.
                if !rx.is_empty() {
                    self.tail.extend(&rx);
                    if let Some(tail) = &mut self.tail.0 {
                        tail.stopped_early = !more;
                    }
                }
                if !tx.is_empty() {
                    self.write_now(&tx)?;
                } else if self.out.tls().is_some() {
                    // What the TLS session answers by itself (key updates, alerts).
                    self.flush()?;
                }
                Ok(open)
            })
        })
    }

    /// Whether complete packets may be waiting in the buffer (left by the handshake).
    pub fn has_buffered(&self) -> bool {
        self.tail.0.as_ref().is_some_and(|tail| tail.stopped_early)
    }

    /// Encodes one packet and writes it, keeping what the socket does not take yet.
    pub fn send(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), CodecError>,
    ) -> Result<(), Reason> {
        self.send_many(|tx| encode(tx).map_err(codec_reason))
    }

    /// Encodes several packets and writes them together: a burst of publishes costs one
    /// system call instead of one each (on loopback a write also pays for the peer's receive,
    /// and a closed loop's bursts are several messages long).
    pub fn send_many<R>(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> Result<R, Reason>,
    ) -> Result<R, Reason> {
        TX.with(|tx| {
            let mut tx = tx.borrow_mut();
            tx.clear();
            let encoded = encode(&mut tx)?;
            self.write_now(&tx)?;
            Ok(encoded)
        })
    }

    fn write_now(&mut self, bytes: &[u8]) -> Result<(), Reason> {
        if let Some(tls) = self.out.tls() {
            tls.write(bytes)?;
            return tls.flush(&self.stream);
        }
        if self.out.has_pending() {
            self.out.extend(bytes);
            return Ok(());
        }
        let mut written = 0;
        while written < bytes.len() {
            match self.stream.try_write(&bytes[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(io_reason(&e)),
            }
        }
        self.out.extend(&bytes[written..]);
        Ok(())
    }

    /// Writes unsent bytes as far as the socket takes them without waiting.
    pub fn flush(&mut self) -> Result<(), Reason> {
        if let Some(tls) = self.out.tls() {
            return tls.flush(&self.stream);
        }
        let mut written = 0;
        let pending = self.out.unsent();
        while written < pending.len() {
            match self.stream.try_write(&pending[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(io_reason(&e)),
            }
        }
        self.out.consume(written);
        Ok(())
    }

    /// Waits until every unsent byte is written.
    pub async fn flush_pending(&mut self) -> Result<(), Reason> {
        while self.has_pending() {
            self.stream.writable().await.map_err(|e| io_reason(&e))?;
            self.flush()?;
        }
        Ok(())
    }

    /// A normal DISCONNECT (and TLS close_notify), best effort: the socket closes right after.
    pub fn disconnect(&mut self) {
        let _ = self.send(|buf| {
            codec::disconnect(buf);
            Ok(())
        });
        if let Some(tls) = self.out.tls() {
            tls.close();
            let _ = tls.flush(&self.stream);
        }
    }
}
