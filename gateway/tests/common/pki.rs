//! Certificates for the TLS tests, generated with rcgen and written as PEM files (a CA, server
//! and client certificates), and a rustls client configuration trusting them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};

/// A fresh directory for this test's files.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gateway-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A CA, a server certificate for localhost / 127.0.0.1, and client certificates, as PEM files.
pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(dir: &Path, name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write CA");
        Pki {
            dir: dir.to_owned(),
            ca,
        }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Writes `{file}.pem` and `{file}.key`: a certificate with subject CN `cn` (if any) and
    /// `sans`, signed by this CA.
    pub fn issue(&self, file: &str, cn: Option<&str>, sans: &[&str]) -> (PathBuf, PathBuf) {
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans).expect("params");
        // rcgen's default subject has a CN of its own.
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let (cert_path, key_path) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    pub fn server(&self) -> (PathBuf, PathBuf) {
        self.issue("server", Some("localhost"), &["localhost", "127.0.0.1"])
    }
}

/// A rustls client configuration trusting `ca`, pinned to `version` ("1.2" or "1.3"), presenting
/// `client` (certificate, key) when given.
pub fn rustls_client(
    ca: &Path,
    version: &str,
    client: Option<(&Path, &Path)>,
) -> tokio_rustls::rustls::ClientConfig {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{version as tls, ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA PEM")).expect("CA certificate");
    }
    let versions = match version {
        "1.2" => [&tls::TLS12],
        _ => [&tls::TLS13],
    };
    let builder =
        ClientConfig::builder_with_protocol_versions(&versions).with_root_certificates(roots);
    match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .expect("cert file")
                .collect::<Result<Vec<_>, _>>()
                .expect("cert PEM");
            let key = PrivateKeyDer::from_pem_file(key).expect("key PEM");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate")
        }
        None => builder.with_no_client_auth(),
    }
}
