//! A TLS session after its handshake: the messages records carry once rustls has handed over
//! the traffic secrets (`record`). Application data, alerts (close_notify ends the stream, others
//! end the session), TLS 1.3 KeyUpdate (new receive keys; our own KeyUpdate when the peer asks for
//! one, or before the sending key reaches its suite's confidentiality limit), TLS 1.2
//! renegotiation refused with a no_renegotiation warning as rustls does. Anything else is
//! answered with a fatal alert (RFC 8446 §6.2) and ends the session.
//!
//! TLS 1.3 sessions keep their two application traffic secrets for KeyUpdate (`key_schedule`);
//! TLS 1.2 has no key updates, so nothing but the record protection stays.

use tokio_rustls::rustls::{ExtractedSecrets, ProtocolVersion, SupportedCipherSuite};

use super::key_schedule::{KeySchedule, Logged};
use super::record::{
    Direction, RecordError, Version, ALERT, APPLICATION_DATA, HANDSHAKE, MAX_PLAINTEXT,
};

const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;
const NO_RENEGOTIATION: u8 = 100;
const WARNING: u8 = 1;
const FATAL: u8 = 2;
const CLIENT_HELLO: u8 = 1;
const KEY_UPDATE: u8 = 24;

/// Warning alerts tolerated per session (rustls's and BoringSSL's figure).
const WARNINGS: u8 = 4;
/// KeyUpdate requests tolerated without application data between them (rustls's, BoringSSL's).
const KEY_UPDATES: u8 = 32;

/// How reading went: on, or ended by the peer's close_notify.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    Open,
    Closed,
}

pub(crate) struct Traffic {
    version: Version,
    /// TLS 1.3's traffic secrets for KeyUpdate; `None` on TLS 1.2.
    updates: Option<Box<KeySchedule>>,
    rx: Direction,
    tx: Direction,
    /// Records `tx` may seal under one key.
    limit: u64,
    message: Message,
    warnings_left: u8,
    renegotiation_refused: bool,
    key_updates_left: u8,
}

/// A handshake message read across records.
#[derive(Default)]
struct Message {
    /// Type, length, and a KeyUpdate's one byte.
    head: [u8; 5],
    have: usize,
    /// Bytes of a refused ClientHello still to skip.
    skip: usize,
}

impl Message {
    fn pending(&self) -> bool {
        self.have > 0 || self.skip > 0
    }
}

impl Traffic {
    /// Takes over from rustls once the handshake is done: the negotiated version and suite, the
    /// current keys and sequence numbers, and (TLS 1.3) the traffic secrets it logged.
    pub(crate) fn new(
        version: ProtocolVersion,
        suite: SupportedCipherSuite,
        secrets: ExtractedSecrets,
        logged: Logged,
    ) -> Result<Traffic, RecordError> {
        let version = match version {
            ProtocolVersion::TLSv1_3 => Version::Tls13,
            ProtocolVersion::TLSv1_2 => Version::Tls12,
            _ => return Err(RecordError::HandOver),
        };
        let limit = match suite {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        };
        let (rx, tx) = (Direction::new(secrets.rx), Direction::new(secrets.tx));
        let (Some(rx), Some(tx)) = (rx, tx) else {
            return Err(RecordError::HandOver);
        };
        let updates = match version {
            Version::Tls13 => Some(Box::new(
                KeySchedule::new(tx.aead(), logged, (&rx, &tx)).ok_or(RecordError::HandOver)?,
            )),
            Version::Tls12 => None,
        };
        Ok(Traffic::with(version, updates, rx, tx, limit))
    }

    pub(crate) fn with(
        version: Version,
        updates: Option<Box<KeySchedule>>,
        rx: Direction,
        tx: Direction,
        limit: u64,
    ) -> Traffic {
        Traffic {
            version,
            updates,
            rx,
            tx,
            limit,
            message: Message::default(),
            warnings_left: WARNINGS,
            renegotiation_refused: false,
            key_updates_left: KEY_UPDATES,
        }
    }

    /// Lets the sending key seal `records` more before it is rotated: the limit in reach of a
    /// test.
    #[cfg(test)]
    pub(crate) fn lower_limit(&mut self, records: u64) {
        self.limit = self.tx.seq() + records;
    }

    /// Drops both cipher keys while the session sleeps.
    pub(crate) fn sleep(&mut self) {
        self.rx.sleep();
        self.tx.sleep();
    }

    /// Opens the whole records at the front of `incoming` and removes them: application data
    /// joins `plaintext`, answers (KeyUpdate, no_renegotiation) join `outgoing`, and on an error
    /// so does the fatal alert saying why. Stops at the peer's close_notify.
    pub(crate) fn read(
        &mut self,
        incoming: &mut Vec<u8>,
        plaintext: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
    ) -> Result<Read, RecordError> {
        let mut at = 0;
        let read = loop {
            let opened = match self.rx.open(self.version, &mut incoming[at..]) {
                Ok(Some(opened)) => opened,
                Ok(None) => break Ok(Read::Open),
                Err(e) => break Err(e),
            };
            let payload = at + opened.payload.start..at + opened.payload.end;
            at += opened.len;
            match self.message(opened.kind, &incoming[payload], plaintext, outgoing) {
                Ok(Read::Open) => {}
                other => break other,
            }
        };
        incoming.drain(..at);
        if let Err(e) = read {
            self.fail(e, outgoing);
        }
        read
    }

    /// Seals `data` into application data records.
    pub(crate) fn write(&mut self, data: &[u8], outgoing: &mut Vec<u8>) -> Result<(), RecordError> {
        for chunk in data.chunks(MAX_PLAINTEXT) {
            if let Err(e) = self.seal(APPLICATION_DATA, chunk, outgoing) {
                self.fail(e, outgoing);
                return Err(e);
            }
        }
        Ok(())
    }

    /// A close_notify alert.
    pub(crate) fn close_notify(&mut self, outgoing: &mut Vec<u8>) -> Result<(), RecordError> {
        self.seal(ALERT, &[WARNING, CLOSE_NOTIFY], outgoing)
    }

    /// The alert answering `e`, if any; the session ends after it whatever becomes of it.
    fn fail(&mut self, e: RecordError, outgoing: &mut Vec<u8>) {
        let alert = match e {
            // Out of fresh nonces on TLS 1.2 (no key update there): closed as rustls does.
            RecordError::Exhausted if self.version == Version::Tls12 => [WARNING, CLOSE_NOTIFY],
            e => match e.alert() {
                Some(description) => [FATAL, description],
                None => return,
            },
        };
        let _ = self.tx.seal(self.version, ALERT, &alert, outgoing);
    }

    /// Seals one record, rotating the sending key first when it is due.
    fn seal(
        &mut self,
        kind: u8,
        payload: &[u8],
        outgoing: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        // The record announcing a new key is the last the old one seals.
        if self.tx.seq().saturating_add(1) >= self.limit {
            match self.version {
                Version::Tls13 => self.update_tx(outgoing)?,
                Version::Tls12 => return Err(RecordError::Exhausted),
            }
        }
        self.tx.seal(self.version, kind, payload, outgoing)
    }

    fn message(
        &mut self,
        kind: u8,
        payload: &[u8],
        plaintext: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
    ) -> Result<Read, RecordError> {
        // Handshake messages are not interleaved with other records (RFC 8446 §5.1).
        if kind != HANDSHAKE && self.message.pending() {
            return Err(RecordError::Unexpected);
        }
        match kind {
            APPLICATION_DATA => {
                self.key_updates_left = KEY_UPDATES;
                plaintext.extend_from_slice(payload);
                Ok(Read::Open)
            }
            ALERT => self.alert(payload),
            HANDSHAKE => self.handshake(payload, outgoing),
            _ => Err(RecordError::Unexpected),
        }
    }

    fn alert(&mut self, payload: &[u8]) -> Result<Read, RecordError> {
        // One alert per record, never fragmented (RFC 8446 §5.1; rustls holds TLS 1.2 to it too).
        let &[level, description] = payload else {
            return Err(RecordError::Decode);
        };
        if description == CLOSE_NOTIFY {
            return Ok(Read::Closed);
        }
        let warning = match self.version {
            // TLS 1.3 alerts are fatal but for user_canceled; a warning otherwise is malformed
            // (rustls answers decode_error).
            Version::Tls13 if description == USER_CANCELED => true,
            Version::Tls13 if level == WARNING => return Err(RecordError::Decode),
            Version::Tls13 => false,
            Version::Tls12 => level == WARNING,
        };
        if !warning {
            return Err(RecordError::PeerAlert(description));
        }
        self.warnings_left = self
            .warnings_left
            .checked_sub(1)
            .ok_or(RecordError::Unexpected)?;
        Ok(Read::Open)
    }

    fn handshake(
        &mut self,
        mut payload: &[u8],
        outgoing: &mut Vec<u8>,
    ) -> Result<Read, RecordError> {
        // Zero-length handshake fragments are not allowed (RFC 8446 §5.1).
        if payload.is_empty() {
            return Err(RecordError::Unexpected);
        }
        while !payload.is_empty() {
            let m = &mut self.message;
            if m.skip > 0 {
                let n = m.skip.min(payload.len());
                m.skip -= n;
                payload = &payload[n..];
                continue;
            }
            let want = if m.have < 4 { 4 } else { 5 };
            let n = (want - m.have).min(payload.len());
            m.head[m.have..m.have + n].copy_from_slice(&payload[..n]);
            m.have += n;
            payload = &payload[n..];
            if m.have < 4 {
                continue;
            }
            let len =
                usize::from(m.head[1]) << 16 | usize::from(m.head[2]) << 8 | usize::from(m.head[3]);
            match (self.version, m.head[0]) {
                (Version::Tls13, KEY_UPDATE) => {
                    if len != 1 {
                        return Err(RecordError::Decode);
                    }
                    if m.have < 5 {
                        continue;
                    }
                    // A message changing keys ends its record (RFC 8446 §5.1).
                    if !payload.is_empty() {
                        return Err(RecordError::Unexpected);
                    }
                    let request = m.head[4];
                    self.message = Message::default();
                    self.key_update(request, outgoing)?;
                }
                (Version::Tls12, CLIENT_HELLO) => {
                    // Refused once with a warning, then fatal (rustls).
                    if self.renegotiation_refused {
                        return Err(RecordError::Unexpected);
                    }
                    self.renegotiation_refused = true;
                    self.message = Message {
                        skip: len,
                        ..Message::default()
                    };
                    self.seal(ALERT, &[WARNING, NO_RENEGOTIATION], outgoing)?;
                }
                _ => return Err(RecordError::Unexpected),
            }
        }
        Ok(Read::Open)
    }

    /// The peer's KeyUpdate: its new key, and ours too when it asks (RFC 8446 §4.6.3).
    fn key_update(&mut self, request: u8, outgoing: &mut Vec<u8>) -> Result<(), RecordError> {
        if request > 1 {
            return Err(RecordError::IllegalParameter);
        }
        self.key_updates_left = self
            .key_updates_left
            .checked_sub(1)
            .ok_or(RecordError::Unexpected)?;
        let updates = self.updates.as_mut().ok_or(RecordError::Unexpected)?;
        self.rx = updates.next_rx()?;
        if request == 1 {
            self.update_tx(outgoing)?;
        }
        Ok(())
    }

    /// Announces a new sending key (not asking the peer for one) and switches to it.
    fn update_tx(&mut self, outgoing: &mut Vec<u8>) -> Result<(), RecordError> {
        let updates = self.updates.as_mut().ok_or(RecordError::Exhausted)?;
        self.tx
            .seal(self.version, HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], outgoing)?;
        self.tx = updates.next_tx()?;
        Ok(())
    }
}
