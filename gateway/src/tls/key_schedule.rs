//! TLS 1.3's application traffic secrets after the handshake, and the keys they derive (RFC 8446
//! §7.2-7.3): what a KeyUpdate needs, kept in the ~100 bytes of the two secrets instead of
//! rustls's whole key schedule (~900 bytes per idle session).
//!
//! rustls tells the secrets only through its `KeyLog` hook, which belongs to the listener's
//! `ServerConfig` and is called with the client random alone. It is called synchronously inside
//! the handshake's `process_tls_records`, so `capture` lends the handshake's own slot to the
//! calling thread for the duration of one synchronous step, and `TrafficSecretLog` writes into
//! whatever slot the thread holds: no table keyed by client random, and nothing shared between
//! connections.

use std::cell::RefCell;

use aws_lc_rs::aead::NONCE_LEN;
use aws_lc_rs::hkdf::{self, KeyType, Prk, HKDF_SHA256, HKDF_SHA384};
use tokio_rustls::rustls::KeyLog;
use zeroize::Zeroize;

use super::record::{Aead, Direction, RecordError};

const CLIENT: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER: &str = "SERVER_TRAFFIC_SECRET_0";
/// KeyUpdates rustls may have followed before the hand-over (its own bound on consecutive ones).
const KEY_UPDATES: usize = 32;
/// SHA-384's output, the longest hash of a TLS 1.3 suite.
const MAX_SECRET: usize = 48;

/// One traffic secret, wiped when dropped.
#[derive(Clone)]
struct Secret {
    len: u8,
    bytes: [u8; MAX_SECRET],
}

impl Secret {
    fn new(secret: &[u8]) -> Option<Secret> {
        let mut s = Secret {
            len: u8::try_from(secret.len()).ok()?,
            bytes: [0; MAX_SECRET],
        };
        s.bytes.get_mut(..secret.len())?.copy_from_slice(secret);
        Some(s)
    }

    fn get(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// The application traffic secrets rustls logged during one handshake.
#[derive(Default)]
pub(crate) struct Logged {
    client: Option<Secret>,
    server: Option<Secret>,
}

thread_local! {
    /// The slot of the handshake running its synchronous step on this thread, if any.
    static CAPTURING: RefCell<Option<Logged>> = const { RefCell::new(None) };
}

/// Runs `step` (a synchronous part of a handshake) with `slot` receiving the secrets rustls logs
/// meanwhile.
pub(crate) fn capture<R>(slot: &mut Logged, step: impl FnOnce() -> R) -> R {
    CAPTURING.with(|c| *c.borrow_mut() = Some(std::mem::take(slot)));
    let r = step();
    if let Some(logged) = CAPTURING.with(|c| c.borrow_mut().take()) {
        *slot = logged;
    }
    r
}

/// The listeners' `KeyLog`: keeps the two application traffic secrets of the handshake whose
/// step runs on the calling thread (`capture`), and nothing else.
#[derive(Debug)]
pub(crate) struct TrafficSecretLog;

impl KeyLog for TrafficSecretLog {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        CAPTURING.with(|c| {
            if let Some(logged) = c.borrow_mut().as_mut() {
                match label {
                    CLIENT => logged.client = Secret::new(secret),
                    SERVER => logged.server = Secret::new(secret),
                    _ => {}
                }
            }
        });
    }

    fn will_log(&self, label: &str) -> bool {
        label == CLIENT || label == SERVER
    }
}

/// A TLS 1.3 session's current application traffic secrets, from the server's side: the next
/// keys of either direction on a KeyUpdate.
pub(crate) struct KeySchedule {
    aead: Aead,
    rx: Secret,
    tx: Secret,
}

impl KeySchedule {
    /// From what a handshake logged, brought to the keys rustls handed over (`now`: receiving,
    /// sending). A client's KeyUpdate that came with its Finished was already followed by
    /// rustls, which logs only the first secrets: the receiving secret is advanced until it
    /// derives the key in use (at most `KEY_UPDATES` times). `None` when rustls logged no
    /// secret, when none derives the keys (a session never runs on secrets that are not its
    /// own), or when rustls already rotated its sending key: that KeyUpdate asked for ours, and
    /// rustls keeps our answer until it next sends application data, which it never will (the
    /// hand-over would lose it and the client could read nothing more).
    pub(crate) fn new(
        aead: Aead,
        logged: Logged,
        now: (&Direction, &Direction),
    ) -> Option<KeySchedule> {
        let want = hash(aead).1;
        let (mut rx, tx) = (logged.client?, logged.server?);
        if rx.get().len() != want || tx.get().len() != want {
            return None;
        }
        let derives = |secret: &Secret, d: &Direction| {
            direction(aead, secret.get(), 0).is_ok_and(|ours| ours.same_keys(d))
        };
        if !derives(&tx, now.1) {
            return None;
        }
        for _ in 0..=KEY_UPDATES {
            if derives(&rx, now.0) {
                return Some(KeySchedule { aead, rx, tx });
            }
            next(aead, &mut rx).ok()?;
        }
        None
    }

    /// The receiving direction under the client's next secret.
    pub(crate) fn next_rx(&mut self) -> Result<Direction, RecordError> {
        next(self.aead, &mut self.rx)
    }

    /// The sending direction under the server's next secret.
    pub(crate) fn next_tx(&mut self) -> Result<Direction, RecordError> {
        next(self.aead, &mut self.tx)
    }
}

/// The hash of `aead`'s TLS 1.3 suite (RFC 8446 §B.4), and its length.
fn hash(aead: Aead) -> (hkdf::Algorithm, usize) {
    match aead {
        Aead::Aes256Gcm => (HKDF_SHA384, 48),
        Aead::Aes128Gcm | Aead::Chacha20Poly1305 => (HKDF_SHA256, 32),
    }
}

/// application_traffic_secret_N+1 (RFC 8446 §7.2) in place of `secret`, and its direction with
/// the sequence number at 0.
fn next(aead: Aead, secret: &mut Secret) -> Result<Direction, RecordError> {
    let (algorithm, len) = hash(aead);
    let mut upd = [0; MAX_SECRET];
    expand_label(algorithm, secret.get(), b"traffic upd", &mut upd[..len])?;
    secret.bytes = upd;
    upd.zeroize();
    direction(aead, secret.get(), 0)
}

/// The record protection `secret` derives (RFC 8446 §7.3).
fn direction(aead: Aead, secret: &[u8], seq: u64) -> Result<Direction, RecordError> {
    let (algorithm, _) = hash(aead);
    let mut key = [0; 32];
    let key_len = aead.key_len();
    expand_label(algorithm, secret, b"key", &mut key[..key_len])?;
    let mut iv = [0; NONCE_LEN];
    expand_label(algorithm, secret, b"iv", &mut iv)?;
    let d = Direction::with(aead, &key[..key_len], iv, seq);
    key.zeroize();
    iv.zeroize();
    Ok(d)
}

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label(secret, label, "", out.len()) (RFC 8446 §7.1).
fn expand_label(
    algorithm: hkdf::Algorithm,
    secret: &[u8],
    label: &[u8],
    out: &mut [u8],
) -> Result<(), RecordError> {
    let length = u16::try_from(out.len())
        .map_err(|_| RecordError::Exhausted)?
        .to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).map_err(|_| RecordError::Exhausted)?];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &[0]];
    Prk::new_less_safe(algorithm, secret)
        .expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| RecordError::Exhausted)
}
