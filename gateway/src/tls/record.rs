//! TLS record protection once the handshake is done: one direction's traffic secrets and
//! sequence number, sealing plaintext into records and opening records, for the AEAD suites
//! rustls offers (AES-128/256-GCM, ChaCha20-Poly1305) in TLS 1.3 (RFC 8446 §5.2-5.3) and TLS 1.2
//! (RFC 5288 for AES-GCM's explicit nonce, RFC 7905 for ChaCha20-Poly1305).
//!
//! The cipher key (aws-lc's AEAD context, ~590 bytes with its key schedule) is built from the
//! secret on first use and dropped by `sleep`: a parked session keeps the secret (key and IV) and the
//! sequence number of each direction, nothing else.

use std::ops::Range;

use aws_lc_rs::aead::{
    Aad, Algorithm, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305,
    NONCE_LEN,
};
use tokio_rustls::rustls::ConnectionTrafficSecrets;
use zeroize::Zeroize;

/// A record's header: content type, legacy version, length.
pub(crate) const HEADER: usize = 5;
/// The largest plaintext a record carries (RFC 8446 §5.1, RFC 5246 §6.2.1).
pub(crate) const MAX_PLAINTEXT: usize = 1 << 14;
/// The largest record body accepted: 2^14 + 256 (RFC 8446 §5.2; TLS 1.2 allows 2^14 + 2048, which
/// no AEAD suite needs).
pub(crate) const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
const TAG: usize = 16;
/// TLS 1.2 AES-GCM's per-record nonce part, sent before the ciphertext.
const EXPLICIT_NONCE: usize = 8;

pub(crate) const CHANGE_CIPHER_SPEC: u8 = 20;
pub(crate) const ALERT: u8 = 21;
pub(crate) const HANDSHAKE: u8 = 22;
pub(crate) const APPLICATION_DATA: u8 = 23;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Version {
    Tls12,
    Tls13,
}

/// Why a record or a message in it was refused, and the alert that says so (RFC 8446 §6.2).
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("TLS record failed authentication (bad_record_mac)")]
    BadRecordMac,
    #[error("TLS record beyond the size limit (record_overflow)")]
    Overflow,
    #[error("unexpected TLS message after the handshake (unexpected_message)")]
    Unexpected,
    #[error("malformed TLS message (decode_error)")]
    Decode,
    #[error("invalid value in a TLS message (illegal_parameter)")]
    IllegalParameter,
    #[error("TLS alert {0} from the peer")]
    PeerAlert(u8),
    #[error("TLS sequence numbers or key updates exhausted")]
    Exhausted,
    /// The keys rustls handed over could not be taken on: a version or suite without a record
    /// layer here, or traffic secrets that do not derive them (a KeyUpdate rustls followed
    /// during the handshake, before the hand-over).
    #[error("TLS keys not taken over from the handshake (internal_error)")]
    HandOver,
}

impl RecordError {
    /// The fatal alert answering it; none for the peer's own alert.
    pub(crate) fn alert(self) -> Option<u8> {
        match self {
            RecordError::BadRecordMac => Some(20),
            RecordError::Overflow => Some(22),
            RecordError::Unexpected => Some(10),
            RecordError::Decode => Some(50),
            RecordError::IllegalParameter => Some(47),
            RecordError::Exhausted | RecordError::HandOver => Some(80),
            RecordError::PeerAlert(_) => None,
        }
    }
}

/// A record opened in place: its content type and where its plaintext lies in the input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Opened {
    pub(crate) kind: u8,
    pub(crate) payload: Range<usize>,
    /// The whole record's length (header included): where the next one starts.
    pub(crate) len: usize,
}

/// The AEAD of a suite.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Aead {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Aead {
    pub(crate) fn key_len(self) -> usize {
        self.algorithm().key_len()
    }

    fn algorithm(self) -> &'static Algorithm {
        match self {
            Aead::Aes128Gcm => &AES_128_GCM,
            Aead::Aes256Gcm => &AES_256_GCM,
            Aead::Chacha20Poly1305 => &CHACHA20_POLY1305,
        }
    }
}

/// A traffic secret: key and IV, wiped when dropped.
struct Secret {
    aead: Aead,
    key: [u8; 32],
    iv: [u8; NONCE_LEN],
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

/// One direction of a session's record layer.
pub(crate) struct Direction {
    secret: Secret,
    seq: u64,
    /// Built from `secret` when first needed, dropped while the session sleeps.
    key: Option<LessSafeKey>,
}

impl Direction {
    /// From rustls's extracted (sequence number, secrets); `None` for a suite other than the
    /// three its provider offers.
    pub(crate) fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Option<Direction> {
        let (aead, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Aead::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Aead::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Aead::Chacha20Poly1305, key, iv)
            }
            _ => return None,
        };
        Some(Direction::with(
            aead,
            key.as_ref(),
            iv.as_ref().try_into().ok()?,
            seq,
        ))
    }

    pub(crate) fn with(aead: Aead, key: &[u8], iv: [u8; NONCE_LEN], seq: u64) -> Direction {
        let mut secret = Secret {
            aead,
            key: [0; 32],
            iv,
        };
        let n = key.len().min(32);
        secret.key[..n].copy_from_slice(&key[..n]);
        Direction {
            secret,
            seq,
            key: None,
        }
    }

    /// Whether both protect records alike (same suite, key and IV).
    pub(crate) fn same_keys(&self, other: &Direction) -> bool {
        let (a, b) = (&self.secret, &other.secret);
        a.aead == b.aead && a.key == b.key && a.iv == b.iv
    }

    pub(crate) fn aead(&self) -> Aead {
        self.secret.aead
    }

    /// Records protected so far under the current secret.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Drops the cipher key; the secret stays to build it again.
    pub(crate) fn sleep(&mut self) {
        self.key = None;
    }

    fn is_gcm(&self) -> bool {
        self.secret.aead != Aead::Chacha20Poly1305
    }

    fn key(&mut self) -> Result<&LessSafeKey, RecordError> {
        let key = match self.key.take() {
            Some(key) => key,
            None => {
                let algorithm = self.secret.aead.algorithm();
                let bytes = &self.secret.key[..algorithm.key_len()];
                LessSafeKey::new(
                    UnboundKey::new(algorithm, bytes).map_err(|_| RecordError::Exhausted)?,
                )
            }
        };
        Ok(self.key.insert(key))
    }

    /// The IV xor the sequence number (RFC 8446 §5.3; RFC 7905 §2; rustls's TLS 1.2 AES-GCM
    /// explicit nonces, which are the last 8 bytes of it).
    fn nonce(&self) -> [u8; NONCE_LEN] {
        let mut nonce = self.secret.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    fn next(&mut self) -> Result<(), RecordError> {
        self.seq = self.seq.checked_add(1).ok_or(RecordError::Exhausted)?;
        Ok(())
    }

    /// TLS 1.2's additional data: sequence number, type, version, plaintext length.
    fn aad12(&self, kind: u8, version: [u8; 2], len: usize) -> [u8; 13] {
        let mut aad = [0u8; 13];
        aad[..8].copy_from_slice(&self.seq.to_be_bytes());
        aad[8] = kind;
        aad[9..11].copy_from_slice(&version);
        // At most MAX_PLAINTEXT: checked by both callers.
        aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
        aad
    }

    /// Appends one record of `kind` carrying `plaintext` (at most `MAX_PLAINTEXT` bytes).
    pub(crate) fn seal(
        &mut self,
        version: Version,
        kind: u8,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(RecordError::Overflow);
        }
        let nonce = self.nonce();
        let start = out.len();
        let (outer, explicit, inner_type) = match version {
            Version::Tls13 => (APPLICATION_DATA, 0, 1),
            Version::Tls12 if self.is_gcm() => (kind, EXPLICIT_NONCE, 0),
            Version::Tls12 => (kind, 0, 0),
        };
        let body = explicit + plaintext.len() + inner_type + TAG;
        out.push(outer);
        out.extend_from_slice(&[3, 3]);
        // At most MAX_PLAINTEXT + 25: fits.
        out.extend_from_slice(&(body as u16).to_be_bytes());
        out.extend_from_slice(&nonce[4..4 + explicit]);
        let sealed_from = out.len();
        out.extend_from_slice(plaintext);
        if inner_type == 1 {
            out.push(kind);
        }
        let aad12 = self.aad12(kind, [3, 3], plaintext.len());
        let mut header = [0u8; HEADER];
        header.copy_from_slice(&out[start..start + HEADER]);
        let aad: &[u8] = match version {
            Version::Tls13 => &header,
            Version::Tls12 => &aad12,
        };
        let sealed = self
            .key()?
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[sealed_from..],
            )
            .map_err(|_| RecordError::Exhausted);
        match sealed {
            Ok(tag) => out.extend_from_slice(tag.as_ref()),
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        }
        self.next()
    }

    /// Opens the record at the start of `input` in place. `None` while it is incomplete.
    pub(crate) fn open(
        &mut self,
        version: Version,
        input: &mut [u8],
    ) -> Result<Option<Opened>, RecordError> {
        let Some(header) = input.get(..HEADER) else {
            return Ok(None);
        };
        let (kind, legacy, len) = (
            header[0],
            [header[1], header[2]],
            usize::from(u16::from_be_bytes([header[3], header[4]])),
        );
        if !(CHANGE_CIPHER_SPEC..=APPLICATION_DATA).contains(&kind) {
            return Err(RecordError::Unexpected);
        }
        if legacy[0] != 3 {
            return Err(RecordError::Decode);
        }
        if len > MAX_CIPHERTEXT {
            return Err(RecordError::Overflow);
        }
        if input.len() < HEADER + len {
            return Ok(None);
        }
        // Past the handshake every record is protected: a change_cipher_spec is out of place
        // (RFC 8446 §5: only before the peer's Finished; RFC 5246: only within a handshake).
        if kind == CHANGE_CIPHER_SPEC || (version == Version::Tls13 && kind != APPLICATION_DATA) {
            return Err(RecordError::Unexpected);
        }
        let mut header = [0u8; HEADER];
        header.copy_from_slice(&input[..HEADER]);
        let mut nonce = self.nonce();
        let explicit = match version {
            Version::Tls12 if self.is_gcm() => EXPLICIT_NONCE,
            _ => 0,
        };
        let body = &mut input[HEADER..HEADER + len];
        if body.len() < explicit + TAG {
            return Err(RecordError::BadRecordMac);
        }
        if explicit > 0 {
            nonce[4..].copy_from_slice(&body[..EXPLICIT_NONCE]);
        }
        let aad12 = self.aad12(kind, legacy, body.len() - explicit - TAG);
        let aad: &[u8] = match version {
            Version::Tls13 => &header,
            Version::Tls12 => &aad12,
        };
        let key = self.key()?;
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body[explicit..],
            )
            .map_err(|_| RecordError::BadRecordMac)?;
        let (kind, plain_len) = match version {
            Version::Tls12 => (kind, plain.len()),
            // The inner content type is the last byte that is not padding.
            Version::Tls13 => match plain.iter().rposition(|&b| b != 0) {
                Some(at) => (plain[at], at),
                None => return Err(RecordError::Unexpected),
            },
        };
        if plain_len > MAX_PLAINTEXT {
            return Err(RecordError::Overflow);
        }
        self.next()?;
        let from = HEADER + explicit;
        Ok(Some(Opened {
            kind,
            payload: from..from + plain_len,
            len: HEADER + len,
        }))
    }
}

#[cfg(test)]
mod tests;
