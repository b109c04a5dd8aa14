//! Certificates for the TLS tests, made with rcgen as the gateway's tests make theirs: a CA, a
//! server certificate for `DNS:localhost, IP:127.0.0.1`, and client certificates whose CN the
//! broker takes as the username.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};

/// A CA (`DIR/{name}.pem`) and what it issued (in `DIR/{name}/`).
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
        std::fs::write(dir.join(format!("{name}.pem")), ca.pem()).expect("write CA");
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("PKI dir");
        Pki { dir, ca }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.with_extension("pem")
    }

    /// Writes `{file}.pem` and `{file}.key`: subject CN `cn` (if any) and `sans`, signed by
    /// this CA.
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

    /// `client-{id}.pem/.key` with CN `{id}` for each id: what `--cert DIR/client-%i.pem`
    /// names. Returns the two path templates.
    pub fn clients(&self, ids: impl IntoIterator<Item = String>) -> (String, String) {
        for id in ids {
            self.issue(&format!("client-{id}"), Some(&id), &[]);
        }
        let template = |ext: &str| {
            self.dir
                .join(format!("client-%i.{ext}"))
                .to_str()
                .expect("utf-8 path")
                .to_owned()
        };
        (template("pem"), template("key"))
    }
}
