//! TLS for the `tls` and `wss` listeners: building rustls server configurations from PEM files,
//! swapping them on SIGHUP, and reading the client certificate's identity.
//!
//! Each TLS listener holds its current `ServerConfig` behind a lock that is read once per accepted
//! connection: a reload replaces the `Arc` for new handshakes while connections already
//! established keep the session they negotiated, so rotating a certificate drops nobody. A file
//! that fails to load is reported with the listener's key (`listeners[N].cert`) and the path, at
//! start as a configuration error, on SIGHUP as a logged error that keeps the previous config.
//!
//! Sessions run over `stream`, which lets an idle one hibernate with its keys alone: rustls does
//! the handshake, then hands the traffic secrets over (`enable_secret_extraction`) to the
//! gateway's own record layer.
//!
//! rustls 0.23 with the aws-lc-rs provider, TLS 1.3 and 1.2. A client that puts an IP literal in SNI
//! (libmosquitto and other OpenSSL clients connecting by address) is served as one that sent no
//! SNI. Resumption is on: TLS 1.3 session tickets and TLS 1.2 tickets (RFC 5077) are stateless,
//! encrypted with a key the listener rotates every 6 hours, so a reconnecting fleet costs no
//! server memory; TLS 1.2 clients without ticket support resume by session id from a bounded
//! in-memory cache. A reload starts a new ticket key and cache: sessions negotiated under the
//! previous certificates (and client CA) are not resumed, their clients do a full handshake.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio_rustls::rustls::crypto::{aws_lc_rs, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use tokio_rustls::rustls::version::{TLS12, TLS13};
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

use crate::config::{ConfigError, ListenerConfig};

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod handshake;
mod key_schedule;
mod record;
mod stream;
mod traffic;
mod turns;
mod wire;

pub(crate) use stream::accept;

/// The certificates of one TLS listener, reloadable.
pub(crate) struct TlsFiles {
    index: usize,
    config: ListenerConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsFiles {
    /// Loads the listener's files; `index` is its position in `[[listeners]]`, for messages.
    pub(crate) fn load(index: usize, config: &ListenerConfig) -> Result<TlsFiles, ConfigError> {
        let server = server_config(index, config)?;
        Ok(TlsFiles {
            index,
            config: config.clone(),
            current: RwLock::new(server),
        })
    }

    /// The current certificates, for one new connection.
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }

    /// Reads the files again; on failure the previous certificates stay in use.
    pub(crate) fn reload(&self) -> Result<(), ConfigError> {
        let server = server_config(self.index, &self.config)?;
        *self.current.write() = server;
        Ok(())
    }
}

/// TLS 1.2 sessions kept for resumption by session id, per listener (clients that offer tickets
/// do not use it). An entry is the session's secret and parameters, plus the client's certificate
/// chain on a mutual TLS listener: a few hundred bytes to a few KB.
const SESSION_CACHE_ENTRIES: usize = 4096;

/// The one cryptography provider the gateway's TLS uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

fn server_config(index: usize, l: &ListenerConfig) -> Result<Arc<ServerConfig>, ConfigError> {
    let key_name = |name: &str| format!("listeners[{index}].{name}");
    let (Some(cert_path), Some(key_path)) = (&l.cert, &l.key) else {
        return Err(ConfigError::InvalidValue {
            key: key_name("cert"),
            value: "(missing)".to_owned(),
            reason: "a tls or wss listener needs cert and key".to_owned(),
        });
    };
    let certs = read_certs(&key_name("cert"), cert_path)?;
    let key = read_key(&key_name("key"), key_path)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&TLS13, &TLS12])
        .map_err(|e| file_error(&key_name("cert"), cert_path, e.to_string()))?;
    let builder = match &l.ca {
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for ca in read_certs(&key_name("ca"), ca_path)? {
                roots
                    .add(ca)
                    .map_err(|e| file_error(&key_name("ca"), ca_path, e.to_string()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if l.require_client_cert {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| file_error(&key_name("ca"), ca_path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(|e| file_error(&key_name("key"), key_path, e.to_string()))?;
    server.ticketer = aws_lc_rs::Ticketer::new()
        .map_err(|e| file_error(&key_name("cert"), cert_path, format!("ticket key: {e}")))?;
    server.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    // `stream` takes the records over once the handshake is done (`tls::traffic`), with the
    // TLS 1.3 traffic secrets for KeyUpdate (`tls::key_schedule`).
    server.enable_secret_extraction = true;
    server.key_log = Arc::new(key_schedule::TrafficSecretLog);
    Ok(Arc::new(server))
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let file = File::open(path).map_err(|e| file_error(key, path, e.to_string()))?;
    let certs = CertificateDer::pem_reader_iter(file)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no PEM certificate in it".to_owned()));
    }
    Ok(certs)
}

fn read_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    use tokio_rustls::rustls::pki_types::pem::Error as PemError;
    let file = File::open(path).map_err(|e| file_error(key, path, e.to_string()))?;
    PrivateKeyDer::from_pem_reader(file).map_err(|e| match e {
        PemError::NoItemsFound => file_error(key, path, "no PEM private key in it".to_owned()),
        e => file_error(key, path, e.to_string()),
    })
}

fn file_error(key: &str, path: &Path, reason: String) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_owned(),
        value: format!("{:?}", path.display().to_string()),
        reason,
    }
}

/// The name a verified client certificate stands for: its subject CN, or its first DNS SAN when
/// the subject has no CN. `None` when the certificate cannot be parsed or names nothing.
pub(crate) fn certificate_identity(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    if let Some(cn) = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(cn.to_owned());
    }
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::DNSName(dns) => Some((*dns).to_owned()),
        _ => None,
    })
}
