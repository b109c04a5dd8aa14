//! TLS for the `tls` and `wss` listeners: building rustls server configurations from PEM files,
//! swapping them on SIGHUP, and reading the client certificate's identity.
//!
//! Each TLS listener holds its current `ServerConfig` behind a lock that is read once per accepted
//! connection: a reload replaces the `Arc` for new handshakes while connections already
//! established keep the session they negotiated, so rotating a certificate drops nobody. A file
//! that fails to load is reported with the listener's key (`listeners[N].cert`) and the path, at
//! start as a configuration error, on SIGHUP as a logged error that keeps the previous config.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, ListenerConfig};

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

    /// An acceptor on the current certificates, for one new connection.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().clone())
    }

    /// Reads the files again; on failure the previous certificates stay in use.
    pub(crate) fn reload(&self) -> Result<(), ConfigError> {
        let server = server_config(self.index, &self.config)?;
        *self.current.write() = server;
        Ok(())
    }
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
    let builder = ServerConfig::builder();
    let builder = match &l.ca {
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for ca in read_certs(&key_name("ca"), ca_path)? {
                roots
                    .add(ca)
                    .map_err(|e| file_error(&key_name("ca"), ca_path, e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
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
    let server = builder
        .with_single_cert(certs, key)
        .map_err(|e| file_error(&key_name("key"), key_path, e.to_string()))?;
    Ok(Arc::new(server))
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let file = File::open(path).map_err(|e| file_error(key, path, e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no PEM certificate in it".to_owned()));
    }
    Ok(certs)
}

fn read_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let file = File::open(path).map_err(|e| file_error(key, path, e.to_string()))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| file_error(key, path, e.to_string()))?
        .ok_or_else(|| file_error(key, path, "no PEM private key in it".to_owned()))
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
