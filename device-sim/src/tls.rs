//! The TLS client side of a device or subscriber connection (`--tls`): one rustls client
//! configuration per process, built from the run's [`TlsSettings`], and the per-connection
//! session that [`crate::connection::Conn`] drives over its socket.
//!
//! rustls with the aws-lc-rs provider, as the gateway. A plain-TCP connection holds no TLS state
//! at all; a TLS one holds a boxed `ClientConnection` (see docs/simulator.md for what an idle TLS
//! device costs).
//!
//! Resumption: rustls's session store only knows the server's name, and every device talks to
//! the same server, so one name would share one entry's eight tickets among the whole fleet.
//! Each connection instead names itself ([`Peer`]) in a thread-local scope around every call
//! into rustls that may touch the store (creating the connection, processing received records),
//! and the store keys its entries by that name: each device reuses its own tickets, in one
//! `ClientSessionMemoryCache` per process sized for the devices and subscribers it holds. The
//! same scope tells the certificate resolver which device's `%i` certificate to load.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, ResolvesClientCert, Resumption,
    Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use tokio_rustls::rustls::crypto::{
    aws_lc_rs, verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime,
};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::version::{TLS12, TLS13};
use tokio_rustls::rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct,
    Error, HandshakeKind, NamedGroup, RootCertStore, SignatureScheme,
};

use crate::reason::{io_reason, Reason};
use crate::scenario::TlsSettings;
use crate::stats::Stats;

/// Handshake and TLS failure reasons this module reports (connect failures and disconnects);
/// broker alerts outside this list are `tls_alert_other`.
pub const REASONS: &[&str] = &[
    "tls_unknown_ca",
    "tls_bad_certificate",
    "tls_name_mismatch",
    "tls_certificate_expired",
    "tls_alert_bad_certificate",
    "tls_alert_unknown_ca",
    "tls_alert_certificate_required",
    "tls_alert_handshake_failure",
    "tls_alert_protocol_version",
    "tls_alert_decode_error",
    "tls_alert_other",
    "tls_incompatible",
    "tls_protocol_error",
    "tls_closed_in_handshake",
    "tls_handshake_timeout",
    "tls_client_cert_unreadable",
    "tls_error",
];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {path}: {why}")]
    File {
        key: &'static str,
        path: String,
        why: String,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] Error),
    #[error("tls_server_name {0:?} is neither a DNS name nor an IP address")]
    ServerName(String),
}

/// Who a connection is, for its own resumption tickets and `%i` certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Device(u64),
    Subscriber(u32),
}

impl fmt::Display for Peer {
    /// What `%i` becomes in certificate paths.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Device(n) => write!(f, "{n}"),
            Peer::Subscriber(k) => write!(f, "sub-{k}"),
        }
    }
}

thread_local! {
    /// The connection rustls is working for on this thread, set by [`in_scope`].
    static SCOPE: Cell<Option<Peer>> = const { Cell::new(None) };
    /// Set by the resolver when the scope's certificate could not be loaded.
    static CERT_UNREADABLE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (a synchronous call into rustls) on behalf of `peer`; `Err` when the client
/// certificate it asked for could not be loaded.
fn in_scope<T>(peer: Peer, f: impl FnOnce() -> T) -> Result<T, Reason> {
    let previous = SCOPE.with(|s| s.replace(Some(peer)));
    CERT_UNREADABLE.with(|c| c.set(false));
    let out = f();
    SCOPE.with(|s| s.set(previous));
    if CERT_UNREADABLE.with(|c| c.replace(false)) {
        return Err(Reason::Borrowed("tls_client_cert_unreadable"));
    }
    Ok(out)
}

/// One process's TLS client: the configuration every connection shares and the name each
/// target is verified against.
pub struct TlsClient {
    config: Arc<ClientConfig>,
    /// Per target: a DNS name (verified and sent as SNI) or an IP address (verified against the
    /// certificate's IP addresses; no SNI, which may not carry an IP literal).
    server_names: Vec<ServerName<'static>>,
}

impl TlsClient {
    /// The client for `settings`; `connections` (devices plus subscribers of this process)
    /// sizes the resumption store.
    pub fn new(settings: &TlsSettings, connections: u64) -> Result<TlsClient, TlsError> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&TLS13, &TLS12])?;
        let builder = if settings.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Insecure(provider.clone())))
        } else {
            let mut roots = RootCertStore::empty();
            // Settings refuse TLS without a CA file unless insecure.
            if let Some(cafile) = &settings.cafile {
                for ca in read_certs("cafile", cafile)? {
                    roots.add(ca).map_err(|e| file_error("cafile", cafile, e))?;
                }
            }
            builder.with_root_certificates(roots)
        };
        let mut config = match (&settings.cert, &settings.key) {
            (Some(cert), Some(key)) if cert.contains("%i") || key.contains("%i") => builder
                .with_client_cert_resolver(Arc::new(PerPeerCert {
                    cert: cert.clone(),
                    key: key.clone(),
                    provider: provider.clone(),
                })),
            (Some(cert), Some(key)) => {
                let certified = load_certified_key(cert, key, &provider)?;
                builder.with_client_cert_resolver(Arc::new(OneCert(Arc::new(certified))))
            }
            _ => builder.with_no_client_auth(),
        };
        config.resumption = if settings.resumption {
            // Entries of 8 tickets each: one entry per connection of the process.
            let tickets = usize::try_from(connections.max(1))
                .unwrap_or(usize::MAX)
                .saturating_mul(8);
            Resumption::store(Arc::new(PerPeerSessions(ClientSessionMemoryCache::new(
                tickets,
            ))))
        } else {
            Resumption::disabled()
        };
        let server_names = settings
            .server_names
            .iter()
            .map(|name| {
                ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(TlsClient {
            config: Arc::new(config),
            server_names,
        })
    }

    /// A new session to target `target` for `peer`, its ClientHello ready to send.
    pub fn start(&self, target: usize, peer: Peer) -> Result<Box<TlsSession>, Reason> {
        let name = self.server_names[target % self.server_names.len()].clone();
        let conn = in_scope(peer, || ClientConnection::new(self.config.clone(), name))?
            .map_err(|e| reason(&e))?;
        let mut session = Box::new(TlsSession { conn, peer });
        // The device bounds what it queues (its in-flight window); rustls's own 64 KiB bound
        // would make a write short while the socket is full.
        session.conn.set_buffer_limit(None);
        Ok(session)
    }
}

/// How one connection attempt uses the process's [`TlsClient`].
pub struct TlsDial<'a> {
    pub client: &'a TlsClient,
    /// The target's index in the run's targets (its server name).
    pub target: usize,
    pub peer: Peer,
    pub stats: &'a Stats,
}

impl TlsDial<'_> {
    pub fn start(&self) -> Result<Box<TlsSession>, Reason> {
        self.client.start(self.target, self.peer)
    }

    /// Counts a finished handshake by kind.
    pub fn handshake_done(&self, resumed: bool) {
        let counter = if resumed {
            &self.stats.tls_resumed
        } else {
            &self.stats.tls_full
        };
        counter.fetch_add(1, Relaxed);
    }
}

/// What one read from the socket gave.
pub enum Fill {
    /// Bytes arrived (plaintext may have been appended, or a record is still partial).
    Progress,
    /// The broker closed the connection (or sent close_notify).
    Eof,
    /// Nothing to read now.
    WouldBlock,
}

/// A connection's TLS state, boxed behind its [`crate::connection::Conn`].
pub struct TlsSession {
    conn: ClientConnection,
    peer: Peer,
}

/// `std::io` over a tokio socket without waiting: `WouldBlock` when it is not ready.
struct Socket<'a>(&'a TcpStream);

impl Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsSession {
    /// Whether the handshake resumed an earlier session; `None` while it is not done.
    pub fn resumed(&self) -> Option<bool> {
        self.conn
            .handshake_kind()
            .filter(|_| !self.conn.is_handshaking())
            .map(|kind| kind == HandshakeKind::Resumed)
    }

    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Reads one batch of records from the socket, processes them and appends the plaintext
    /// they carried to `plain`.
    pub fn fill(&mut self, stream: &TcpStream, plain: &mut BytesMut) -> Result<Fill, Reason> {
        let eof = match self.conn.read_tls(&mut Socket(stream)) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Fill::WouldBlock),
            Err(e) => return Err(io_reason(&e)),
        };
        let state = self.process(stream)?;
        let available = state.plaintext_bytes_to_read();
        if available > 0 {
            let start = plain.len();
            plain.resize(start + available, 0);
            self.conn
                .reader()
                .read_exact(&mut plain[start..])
                .map_err(|e| io_reason(&e))?;
            return Ok(Fill::Progress);
        }
        if eof || state.peer_has_closed() {
            return Ok(Fill::Eof);
        }
        Ok(Fill::Progress)
    }

    /// Processes received records in this connection's scope; a failure's alert is sent on a
    /// best-effort basis before the reason is returned.
    fn process(&mut self, stream: &TcpStream) -> Result<tokio_rustls::rustls::IoState, Reason> {
        let peer = self.peer;
        match in_scope(peer, || self.conn.process_new_packets())? {
            // Replies rustls makes by itself (key updates) go out with the connection's flush.
            Ok(state) => Ok(state),
            Err(e) => {
                let _ = self.flush(stream);
                Err(reason(&e))
            }
        }
    }

    /// Encrypts `bytes`; they go out with [`TlsSession::flush`].
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Reason> {
        // Unbounded buffer (see `start`): never short.
        self.conn
            .writer()
            .write_all(bytes)
            .map_err(|e| io_reason(&e))
    }

    /// Writes encrypted bytes as far as the socket takes them without waiting.
    pub fn flush(&mut self, stream: &TcpStream) -> Result<(), Reason> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut Socket(stream)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(io_reason(&e)),
            }
        }
        Ok(())
    }

    /// Queues close_notify: a clean end of the TLS stream.
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }
}

/// The report reason of a rustls error: what went wrong, in a fixed set (see [`REASONS`]).
pub fn reason(e: &Error) -> Reason {
    Reason::Borrowed(match e {
        Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => "tls_unknown_ca",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "tls_name_mismatch"
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => "tls_certificate_expired",
            _ => "tls_bad_certificate",
        },
        Error::AlertReceived(alert) => match alert {
            AlertDescription::BadCertificate => "tls_alert_bad_certificate",
            AlertDescription::UnknownCA => "tls_alert_unknown_ca",
            AlertDescription::CertificateRequired => "tls_alert_certificate_required",
            AlertDescription::HandshakeFailure => "tls_alert_handshake_failure",
            AlertDescription::ProtocolVersion => "tls_alert_protocol_version",
            AlertDescription::DecodeError => "tls_alert_decode_error",
            _ => "tls_alert_other",
        },
        Error::PeerIncompatible(_) => "tls_incompatible",
        Error::InvalidMessage(_) | Error::PeerMisbehaved(_) | Error::PeerSentOversizedRecord => {
            "tls_protocol_error"
        }
        _ => "tls_error",
    })
}

fn file_error(key: &'static str, path: &Path, why: impl fmt::Display) -> TlsError {
    TlsError::File {
        key,
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, e))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn load_certified_key(
    cert: &str,
    key: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs = read_certs("cert", Path::new(cert))?;
    let der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("key", Path::new(key), e))?;
    CertifiedKey::from_der(certs, der, provider).map_err(|e| file_error("key", Path::new(key), e))
}

/// The one client certificate of every connection.
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesClientCert for OneCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// One certificate per device: `%i` in the paths becomes the scope's [`Peer`]. Read when the
/// broker asks for it (not on resumed handshakes) and not kept, so an idle device holds none.
struct PerPeerCert {
    cert: String,
    key: String,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PerPeerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerPeerCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ResolvesClientCert for PerPeerCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let peer = SCOPE.with(Cell::get)?;
        let id = peer.to_string();
        let loaded = load_certified_key(
            &self.cert.replace("%i", &id),
            &self.key.replace("%i", &id),
            &self.provider,
        );
        match loaded {
            Ok(certified) => Some(Arc::new(certified)),
            Err(_) => {
                CERT_UNREADABLE.with(|c| c.set(true));
                None
            }
        }
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// rustls's memory cache keyed by the scope's [`Peer`] instead of the server's name.
#[derive(Debug)]
struct PerPeerSessions(ClientSessionMemoryCache);

impl PerPeerSessions {
    /// The scope's key, or the server's own name outside a scope (never the case in practice).
    fn key(server: &ServerName<'_>) -> ServerName<'static> {
        let Some(peer) = SCOPE.with(Cell::get) else {
            return server.to_owned();
        };
        let label = match peer {
            Peer::Device(n) => format!("d{n}.device-sim"),
            Peer::Subscriber(k) => format!("s{k}.device-sim"),
        };
        DnsName::try_from(label)
            .map(ServerName::DnsName)
            .unwrap_or_else(|_| server.to_owned())
    }
}

impl ClientSessionStore for PerPeerSessions {
    fn set_kx_hint(&self, server: ServerName<'static>, group: NamedGroup) {
        self.0.set_kx_hint(Self::key(&server), group)
    }

    fn kx_hint(&self, server: &ServerName<'_>) -> Option<NamedGroup> {
        self.0.kx_hint(&Self::key(server))
    }

    fn set_tls12_session(&self, server: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.0.set_tls12_session(Self::key(&server), value)
    }

    fn tls12_session(&self, server: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.0.tls12_session(&Self::key(server))
    }

    fn remove_tls12_session(&self, server: &ServerName<'static>) {
        self.0.remove_tls12_session(&Self::key(server))
    }

    fn insert_tls13_ticket(&self, server: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.0.insert_tls13_ticket(Self::key(&server), value)
    }

    fn take_tls13_ticket(&self, server: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.0.take_tls13_ticket(&Self::key(server))
    }
}

/// `--insecure`: any certificate is accepted (signatures are still checked, so the handshake
/// is a real one), for tests and self-signed lab brokers.
#[derive(Debug)]
struct Insecure(Arc<CryptoProvider>);

impl ServerCertVerifier for Insecure {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
