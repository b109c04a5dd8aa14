//! Authentication: the password file, CONNECT credential checks, and the `[auth]` state that
//! SIGHUP reloads.
//!
//! This module owns who may connect. The password file is Mosquitto's format, one `user:hash`
//! line each, so operators can bring files written by Debian's `mosquitto_passwd` (`$7$` entries:
//! `$7$ITERATIONS$BASE64 SALT$BASE64 PBKDF2-HMAC-SHA512`) unchanged; `gateway passwd` writes
//! argon2id entries (PHC strings, `$argon2id$...`) into the same file.
//!
//! Who is accepted: a client presenting a username is checked against the password file when one
//! is set (wrong password or unknown user: CONNACK 4 / 0x86). Without a password file usernames
//! are not verified, so such a client is anonymous. Anonymous clients are accepted when
//! `allow_anonymous` is true, or, on the default `[mqtt] listen` listener only, when no password
//! file is set and that listener is on a loopback address (so a bare `gateway` serves local
//! tools); otherwise CONNACK 5 / 0x87. `[[listeners]]` never get that exception.
//!
//! Hashes are deliberately slow, so they run on tokio's blocking pool behind a semaphore of one
//! permit per CPU: a flood of logins queues there instead of occupying the I/O workers that serve
//! established sessions. An unknown username is checked against the costliest entry of the file
//! (its result discarded), so failing costs the same time whether the user exists or not.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytestring::ByteString;
use parking_lot::RwLock;
use sha2::Sha512;
use subtle::ConstantTimeEq as _;

use crate::acl::{Acl, AclHandle};
use crate::argon2_memory::Argon2Memory;
use crate::config::{Config, ConfigError};
use crate::hashing_slots::HashingSlots;

/// One user's stored hash.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hash {
    /// Mosquitto's `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// A PHC string, verified in kept memory (`Argon2Memory`).
    Argon2(String),
}

impl Hash {
    fn parse(text: &str) -> Result<Hash, String> {
        if let Some(rest) = text.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("`$7$` entry must be $7$ITERATIONS$SALT$HASH".to_owned());
            };
            let iterations = iterations
                .parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("invalid iteration count `{iterations}`"))?;
            let salt = STANDARD
                .decode(salt)
                .map_err(|e| format!("salt is not base64: {e}"))?;
            let hash = STANDARD
                .decode(hash)
                .map_err(|e| format!("hash is not base64: {e}"))?;
            if hash.is_empty() || hash.len() > 64 {
                return Err("hash must be 1 to 64 bytes (PBKDF2-SHA512)".to_owned());
            }
            return Ok(Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            });
        }
        if text.starts_with("$argon2") {
            let phc = PasswordHash::new(text).map_err(|e| format!("invalid argon2 entry: {e}"))?;
            // Parameters are checked now so that a bad entry fails the load, not a login.
            crate::argon2_memory::argon2_params(&phc)
                .map_err(|e| format!("invalid argon2 entry: {e}"))?;
            if phc.hash.is_none() {
                return Err("invalid argon2 entry: no hash".to_owned());
            }
            return Ok(Hash::Argon2(text.to_owned()));
        }
        Err("unsupported hash (expected a `$7$` mosquitto_passwd or `$argon2` entry)".to_owned())
    }

    fn verify(&self, password: &[u8], memory: &Argon2Memory) -> bool {
        match self {
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                out.ct_eq(hash).into()
            }
            Hash::Argon2(phc) => memory.verify(phc, password),
        }
    }

    /// A rough cost, to pick the entry an unknown user is checked against: any argon2 entry
    /// outweighs PBKDF2 (mosquitto_passwd's default is a cheap 101 iterations).
    fn cost(&self) -> u64 {
        match self {
            Hash::Pbkdf2 { iterations, .. } => u64::from(*iterations),
            Hash::Argon2(phc) => PasswordHash::new(phc)
                .ok()
                .and_then(|h| crate::argon2_memory::argon2_params(&h).ok())
                .map_or(0, |p| {
                    u64::from(u32::MAX) + u64::from(p.m_cost()) * u64::from(p.t_cost())
                }),
        }
    }
}

/// A parsed password file.
#[derive(Debug, Default)]
pub struct PasswordFile {
    users: HashMap<String, Hash>,
    /// The costliest entry: what an unknown username is checked against.
    decoy: Option<Hash>,
}

/// A password file line that could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct PasswordFileError {
    pub line: usize,
    pub reason: String,
}

impl PasswordFile {
    pub fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let fail = |reason: String| PasswordFileError {
                line: i + 1,
                reason,
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| fail("expected USER:HASH".to_owned()))?;
            if user.is_empty() {
                return Err(fail("empty username".to_owned()));
            }
            users.insert(user.to_owned(), Hash::parse(hash).map_err(fail)?);
        }
        let decoy = users.values().max_by_key(|h| h.cost()).cloned();
        Ok(PasswordFile { users, decoy })
    }

    /// Checks a login; an unknown user costs one hash of the costliest entry all the same.
    pub(crate) fn verify(&self, user: &str, password: &[u8], memory: &Argon2Memory) -> bool {
        match self.users.get(user) {
            Some(hash) => hash.verify(password, memory),
            None => {
                if let Some(decoy) = &self.decoy {
                    std::hint::black_box(decoy.verify(password, memory));
                }
                false
            }
        }
    }
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown user or wrong password: 3.1.1 return code 4, v5 0x86.
    BadCredentials,
    /// Anonymous where it is not allowed: 3.1.1 return code 5, v5 0x87.
    NotAuthorized,
    /// The client left while its check waited for a hashing slot: nothing was checked.
    Gone,
}

/// The `[auth]` state: loaded files (swapped whole on reload) and the hashing limiter.
pub struct Security {
    /// `allow_anonymous`: anonymous clients on every listener.
    anonymous: bool,
    /// The loopback exception, for the default listener only.
    anonymous_on_default: bool,
    password_path: Option<std::path::PathBuf>,
    acl_path: Option<std::path::PathBuf>,
    passwords: Option<RwLock<Arc<PasswordFile>>>,
    acl: Option<Arc<AclHandle>>,
    hashing: Arc<HashingSlots>,
    argon2_memory: Arc<Argon2Memory>,
}

impl Security {
    /// Loads the configured files; a bad file is one line naming the key, path and line.
    pub fn load(config: &Config) -> Result<Security, ConfigError> {
        let auth = &config.auth;
        let passwords = match &auth.password_file {
            Some(path) => Some(RwLock::new(Arc::new(load_passwords(path)?))),
            None => None,
        };
        let acl = match &auth.acl_file {
            Some(path) => Some(Arc::new(AclHandle::new(load_acl(path)?))),
            None => None,
        };
        let anonymous = auth.allow_anonymous;
        let anonymous_on_default =
            auth.password_file.is_none() && config.mqtt.listen.ip().is_loopback();
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Ok(Security {
            anonymous,
            anonymous_on_default,
            password_path: auth.password_file.clone(),
            acl_path: auth.acl_file.clone(),
            passwords,
            acl,
            hashing: HashingSlots::new(cpus),
            argon2_memory: Arc::default(),
        })
    }

    /// Re-reads both files (SIGHUP). Nothing changes unless both load.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let passwords = self
            .password_path
            .as_deref()
            .map(load_passwords)
            .transpose()?;
        let acl = self.acl_path.as_deref().map(load_acl).transpose()?;
        if let (Some(slot), Some(new)) = (&self.passwords, passwords) {
            *slot.write() = Arc::new(new);
        }
        if let (Some(handle), Some(new)) = (&self.acl, acl) {
            handle.replace(new);
        }
        Ok(())
    }

    /// The ACL in force, when an `acl_file` is configured.
    pub fn acl(&self) -> Option<&Arc<AclHandle>> {
        self.acl.as_ref()
    }

    /// Checks CONNECT credentials: the verified username (`None`: anonymous) or why not.
    /// `default_listener`: the connection came through `[mqtt] listen`. `gone` is asked once a
    /// hashing slot is free, before the hash: under a flood of logins the slot may come long
    /// after the client gave up, and hashing for it would only delay those still waiting.
    pub async fn authenticate(
        &self,
        username: Option<&ByteString>,
        password: Option<&[u8]>,
        default_listener: bool,
        gone: impl FnOnce() -> bool,
    ) -> Result<Option<ByteString>, Refusal> {
        let (Some(user), Some(slot)) = (username, &self.passwords) else {
            return if self.anonymous || (default_listener && self.anonymous_on_default) {
                Ok(None)
            } else {
                Err(Refusal::NotAuthorized)
            };
        };
        let file = slot.read().clone();
        let name = user.to_string();
        let password = password.unwrap_or_default().to_vec();
        let permit = self.hashing.acquire().await;
        if gone() {
            return Err(Refusal::Gone);
        }
        // The permit moves into the hashing closure: if this handshake is dropped mid-hash, the
        // hash still holds its CPU slot until it really ends.
        let memory = self.argon2_memory.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            file.verify(&name, &password, &memory)
        })
        .await
        .unwrap_or(false);
        if ok {
            Ok(Some(user.clone()))
        } else {
            Err(Refusal::BadCredentials)
        }
    }
}

fn file_error(key: &str, path: &Path, reason: String) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_owned(),
        value: format!("{:?}", path.display().to_string()),
        reason,
    }
}

fn read(key: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        let text = e.to_string();
        let reason = match e.raw_os_error() {
            Some(code) => text
                .strip_suffix(&format!(" (os error {code})"))
                .unwrap_or(&text)
                .to_owned(),
            None => text,
        };
        file_error(key, path, format!("cannot read it: {reason}"))
    })
}

fn load_passwords(path: &Path) -> Result<PasswordFile, ConfigError> {
    let key = "auth.password_file";
    PasswordFile::parse(&read(key, path)?).map_err(|e| file_error(key, path, e.to_string()))
}

fn load_acl(path: &Path) -> Result<Acl, ConfigError> {
    let key = "auth.acl_file";
    Acl::parse(&read(key, path)?).map_err(|e| file_error(key, path, e.to_string()))
}

/// Why `gateway passwd` failed.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    #[error("invalid username {0:?}: must be non-empty, without `:` or control characters")]
    BadUser(String),
    #[error("the password is empty")]
    EmptyPassword,
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Adds or replaces `user`'s entry with an argon2id hash of `password`. The file is rewritten
/// through a temporary file and a rename, so a crash never leaves half a file, and is created
/// with mode 0600: it holds hashes that can be attacked offline.
pub fn set_password(path: &Path, user: &str, password: &str) -> Result<(), PasswdError> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
        return Err(PasswdError::BadUser(user.to_owned()));
    }
    if password.is_empty() {
        return Err(PasswdError::EmptyPassword);
    }
    let io = |source| PasswdError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut salt = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut salt))
        .map_err(io)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswdError::Hash(e.to_string()))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| PasswdError::Hash(e.to_string()))?;
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let mut out = String::with_capacity(existing.len() + 128);
    for line in existing.lines() {
        if line.split_once(':').map(|(u, _)| u) != Some(user) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&format!("{user}:{hash}\n"));
    let tmp = path.with_extension("tmp-gateway-passwd");
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?
    };
    file.write_all(out.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Written by Debian's mosquitto_passwd 2.0 (`mosquitto_passwd -b FILE alice secret`).
    const MOSQUITTO_ALICE: &str = "alice:$7$101$JKNBuiAEeCBAj+87$uxevSSuEMtJ1MAxmyvvV3wpd0t0MSGw\
        qO3JiMASlpNnn2lFO9fmg92qbV8ThUooqYZopZJUBU45oYov66vFk2A==";

    #[test]
    fn verifies_a_mosquitto_entry() {
        let file = PasswordFile::parse(MOSQUITTO_ALICE).unwrap();
        let m = Argon2Memory::default();
        assert!(file.verify("alice", b"secret", &m));
        assert!(!file.verify("alice", b"Secret", &m));
        assert!(!file.verify("bob", b"secret", &m));
    }

    /// argon2 0.5.3 overflows on a parallelism above 2^29 before its own check (the
    /// `auth_files` fuzz target found it): refused at the load, never a panic.
    #[test]
    fn an_argon2_entry_with_a_huge_parallelism_is_refused() {
        let salt_and_hash = "$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2g";
        for p in ["1300000000", "16777216", "0"] {
            let line = format!("bob:$argon2id$v=19$m=19456,t=2,p={p}{salt_and_hash}");
            let err = PasswordFile::parse(&line).expect_err(&line).to_string();
            assert!(
                err.contains("line 1") && err.contains("parallelism"),
                "{err}"
            );
        }
        // A repeated name: argon2 takes the last, which is the huge one here.
        let line = format!("bob:$argon2id$v=19$m=19456,t=2,p=1,p=1300000000{salt_and_hash}");
        let err = PasswordFile::parse(&line).expect_err(&line).to_string();
        assert!(err.contains("given twice"), "{err}");
        let line = format!("bob:$argon2id$v=19$m=19456,t=2,p=1{salt_and_hash}");
        assert!(PasswordFile::parse(&line).is_ok());
    }

    #[test]
    fn set_password_adds_and_replaces_argon2_entries() {
        let dir = std::env::temp_dir().join(format!("gateway-passwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwd");
        std::fs::write(&path, format!("{MOSQUITTO_ALICE}\n")).unwrap();
        set_password(&path, "bob", "pw1").unwrap();
        set_password(&path, "bob", "pw2").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("bob:$argon2id$"));
        let file = PasswordFile::parse(&text).unwrap();
        let m = Argon2Memory::default();
        assert!(file.verify("bob", b"pw2", &m) && !file.verify("bob", b"pw1", &m));
        assert!(file.verify("alice", b"secret", &m));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            set_password(&path, "a:b", "x"),
            Err(PasswdError::BadUser(_))
        ));
        assert!(matches!(
            set_password(&path, "c", ""),
            Err(PasswdError::EmptyPassword)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_decoy_is_the_costliest_entry() {
        let argon = "$argon2id$v=19$m=8,t=1,p=1$c29tZXNhbHQ$Wf0+Y6SxW7S4Mk8o1HbSgQ";
        let text = format!("{MOSQUITTO_ALICE}\ncarol:{argon}\n");
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.decoy, Some(Hash::Argon2(argon.to_owned())));
    }

    #[test]
    fn bad_lines_are_named() {
        let err = |t: &str| PasswordFile::parse(t).unwrap_err().to_string();
        assert_eq!(err("# c\n\nnocolon"), "line 3: expected USER:HASH");
        assert_eq!(err(":$7$1$AA==$AA=="), "line 1: empty username");
        assert!(err("a:$6$abc$def").starts_with("line 1: unsupported hash"));
        assert!(err("a:$7$0$AA==$AA==").contains("invalid iteration count `0`"));
        assert!(err("a:$7$10$!!$AA==").contains("salt is not base64"));
        assert!(err("a:$7$10$AA==").contains("must be $7$ITERATIONS$SALT$HASH"));
        assert!(err("a:$argon2id$v=19$garbage").starts_with("line 1: invalid argon2 entry"));
    }

    #[tokio::test]
    async fn anonymous_rules() {
        let run = |toml: &str| Security::load(&Config::from_toml(toml).unwrap()).unwrap();
        let local = run("");
        assert_eq!(
            local.authenticate(None, None, true, || false).await,
            Ok(None)
        );
        let user = ByteString::from("u");
        assert_eq!(
            local.authenticate(Some(&user), None, true, || false).await,
            Ok(None)
        );
        // The loopback exception belongs to the default listener, not to `[[listeners]]`.
        assert_eq!(
            local.authenticate(None, None, false, || false).await,
            Err(Refusal::NotAuthorized)
        );
        let remote = run("[mqtt]\nlisten = \"0.0.0.0:1883\"");
        assert_eq!(
            remote.authenticate(None, None, true, || false).await,
            Err(Refusal::NotAuthorized)
        );
        let allowed = run("[mqtt]\nlisten = \"0.0.0.0:1883\"\n[auth]\nallow_anonymous = true");
        assert_eq!(
            allowed.authenticate(None, None, false, || false).await,
            Ok(None)
        );
    }

    #[test]
    fn load_errors_name_key_path_and_line() {
        let path = std::env::temp_dir().join(format!("gateway-acl-{}", std::process::id()));
        std::fs::write(&path, "topic a\nbogus\n").unwrap();
        let mut config = Config::default();
        config.auth.acl_file = Some(path.clone());
        let message = Security::load(&config).err().unwrap().to_string();
        assert_eq!(
            message,
            format!(
                "config: invalid value for `auth.acl_file`: {:?} (line 2: unknown keyword \
                 `bogus` (expected user, topic or pattern))",
                path.display().to_string()
            )
        );
        std::fs::remove_file(&path).unwrap();
        config.auth.acl_file = None;
        config.auth.password_file = Some(path.clone());
        let message = Security::load(&config).err().unwrap().to_string();
        assert!(
            message.ends_with("(cannot read it: No such file or directory)"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn reload_swaps_the_password_file_and_a_bad_one_keeps_the_old() {
        let path = std::env::temp_dir().join(format!("gateway-reload-{}", std::process::id()));
        std::fs::write(&path, format!("{MOSQUITTO_ALICE}\n")).unwrap();
        let mut config = Config::default();
        config.auth.password_file = Some(path.clone());
        let security = Security::load(&config).unwrap();
        let alice = ByteString::from("alice");
        let login =
            |pw: &'static [u8]| security.authenticate(Some(&alice), Some(pw), true, || false);
        assert_eq!(login(b"secret").await, Ok(Some(alice.clone())));
        set_password(&path, "alice", "changed").unwrap();
        security.reload().unwrap();
        assert_eq!(login(b"secret").await, Err(Refusal::BadCredentials));
        assert_eq!(login(b"changed").await, Ok(Some(alice.clone())));
        std::fs::write(&path, "alice\n").unwrap();
        assert!(security.reload().is_err());
        assert_eq!(login(b"changed").await, Ok(Some(alice.clone())));
        assert_eq!(
            security
                .authenticate(Some(&alice), Some(b"changed"), true, || true)
                .await,
            Err(Refusal::Gone),
            "a client gone by the time a hashing slot is free is not checked"
        );
        assert_eq!(
            security.authenticate(None, None, true, || false).await,
            Err(Refusal::NotAuthorized),
            "a password file on loopback ends the anonymous exception"
        );
        std::fs::remove_file(&path).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Arbitrary text never panics the parser, and a `$7$` entry built from any salt and
        /// password verifies exactly that password.
        #[test]
        fn parser_is_total_and_pbkdf2_roundtrips(
            junk in ".{0,200}",
            salt in prop::collection::vec(any::<u8>(), 1..24),
            pw in prop::collection::vec(any::<u8>(), 0..32),
            iterations in 1u32..50,
        ) {
            let _ = PasswordFile::parse(&junk);
            let mut hash = [0u8; 64];
            pbkdf2::pbkdf2_hmac::<Sha512>(&pw, &salt, iterations, &mut hash);
            let line = format!("u:$7${iterations}${}${}", STANDARD.encode(&salt), STANDARD.encode(hash));
            let file = PasswordFile::parse(&line).unwrap();
            let m = Argon2Memory::default();
            prop_assert!(file.verify("u", &pw, &m));
            let mut other = pw.clone();
            // Not a zero byte: HMAC pads keys with zeros, so "" and "\0" are the same key.
            other.push(b'x');
            prop_assert!(!file.verify("u", &other, &m));
        }
    }
}
