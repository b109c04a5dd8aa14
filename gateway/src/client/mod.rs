//! One connected client: the task that runs its MQTT state machine from CONNECT to close.
//!
//! The data path, file by file in the order a connection meets them: frames come off the socket
//! (`connection`), are decoded (`codec`), and the CONNECT is answered in `handshake` (on the
//! terms `negotiate` agrees); the session task (`event_loop`) then dispatches every packet:
//! inbound PUBLISHes (`publish`) become one shared `Message` handed to the `router`, SUBSCRIBE and
//! UNSUBSCRIBE go to `subscribe`, and the session's queue is drained (`outbound`) into
//! encoded-once PUBLISH heads plus shared payload chunks for one vectored write. `timing` keeps
//! the clock: keep-alive, and hibernation of a silent session. Everything that must happen when
//! the connection ends (will, session expiry, hand-over) happens in `Drop` (`close`), so it also
//! happens when the task unwinds from a panic.
//!
//! This file owns what the parts share: the `Client` state (each file adds an `impl Client`
//! block), `serve`, the small types `Close` and `Event`, and the constants.

mod close;
mod event_loop;
mod handshake;
mod negotiate;
mod outbound;
mod publish;
mod subscribe;
mod timing;

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;

use crate::acl::ClientAcl;
use crate::codec::{LastWill, Protocol};
use crate::connection::Connection;
use crate::context::{ConnectionSlot, Context};
use crate::limits::{Handshake, PublishQuota};
use crate::metrics::CloseReason;
use crate::session::Ownership;
use crate::task::spawn_isolated;
use handshake::handshake;

/// Reading pauses while what waits to be written holds this much memory
/// (`Connection::pending_memory`; checked between batches of at most `FRAME_BATCH` packets): a
/// client that does not read its acknowledgements is throttled by TCP instead of growing our
/// buffers.
const READ_PAUSE_BYTES: usize = 256 * 1024;
/// How long a closing connection may take to flush its last packets.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// Why and how the connection closes.
struct Close {
    reason: CloseReason,
    /// v5 DISCONNECT reason code to send first, if any.
    code: Option<u8>,
    /// Whether the will is published.
    will: bool,
}

impl Close {
    fn protocol(code: u8) -> Close {
        Close {
            reason: CloseReason::ProtocolError,
            code: Some(code),
            will: true,
        }
    }
}

/// What woke the connection task.
enum Event {
    Readable,
    Writable,
    Woken,
    /// Keep-alive is due, or the connection may have been silent long enough to hibernate.
    Timer,
}

/// Inbound topic aliases: the topic each alias (from 1) stands for.
struct AliasesIn(Box<[Option<ByteString>]>);

/// Outbound topic aliases towards a v5 client that accepts them.
struct AliasesOut {
    map: std::collections::HashMap<ByteString, u16>,
    max: u16,
}

/// Per-connection state once the session is attached. Every idle session keeps one, so fields
/// are as narrow as their values allow: times are nanoseconds on the broker's clock
/// (`ctx.started`) rather than 16-byte `Instant`s, limits use the width the protocol gives them.
pub(crate) struct Client {
    ctx: Arc<Context>,
    conn: Connection,
    /// The session, owned for the connection's lifetime; ownership ends when the client drops.
    session: Ownership,
    generation: u32,
    protocol: Protocol,
    /// The keep-alive deadline, 1.5 times the negotiated keep-alive; `None` without keep-alive
    /// (then `mqtt.idle_timeout` bounds the silence).
    keep_alive_ms: Option<NonZeroU32>,
    /// When bytes last came from the client, in nanoseconds since `ctx.started`.
    last_read: u64,
    /// When the socket last took bytes from us (same clock); a client that stops reading is
    /// detected by it.
    last_write: u64,
    send_window: u16,
    /// Topic aliases the client may use: `mqtt.topic_alias_maximum`, or 0 when its CONNACK had
    /// no room to announce them (`negotiate`).
    aliases_in_max: u16,
    /// The client's Maximum Packet Size (a four-byte integer in MQTT); `u32::MAX` when unset.
    client_max_packet: u32,
    will: Option<Box<LastWill>>,
    /// A thin pointer to the slots (a boxed slice here would be a 16-byte fat one).
    aliases_in: Option<Box<AliasesIn>>,
    aliases_out: Option<Box<AliasesOut>>,
    /// Present only when an ACL file is configured: without one, one branch per check.
    acl: Option<Box<ClientAcl>>,
    /// `limits.max_publish_rate` and `max_publish_bytes_rate`: boxed on the first charged PUBLISH,
    /// so without those limits (or without publishing) a session does not carry the buckets.
    quota: Option<Box<PublishQuota>>,
    /// PUBACK / PUBREC / PUBCOMP waiting until the store holds what they acknowledge.
    held: Option<Box<publish::HeldAcks>>,
    close: CloseReason,
    publish_will: bool,
    /// `None` once `finish` took it for the socket's last flush.
    slot: Option<ConnectionSlot>,
}

/// An accepted connection ready for MQTT bytes.
pub(crate) struct Opened {
    pub conn: Connection,
    /// The client certificate's name on a `use_identity_as_username` listener: the username,
    /// in place of CONNECT's username and password.
    pub identity: Option<ByteString>,
    /// Accepted by the default (`[mqtt] listen`) listener, where anonymous access may be allowed
    /// without `allow_anonymous` (see `auth`).
    pub default_listener: bool,
}

/// Serves one accepted socket. The handshake runs in this task; the session then runs in a task
/// of its own, so an idle session's task holds only the session's state, not the larger state the
/// handshake needed (a decoded CONNECT, CONNACK properties, the connect timer).
pub(crate) async fn serve(
    slot: ConnectionSlot,
    admission: Handshake,
    open: impl Future<Output = Option<Opened>>,
    peer: std::net::SocketAddr,
) {
    if let Some(at) = admission.not_before {
        // Paced by `limits.connect_rate`: the client's CONNECT waits in the socket until this
        // connection's slot, and the connect timeout starts then.
        tokio::time::sleep_until(at.into()).await;
    }
    let deadline = tokio::time::Instant::now() + slot.context().policy.connect_timeout;
    // The TLS / WebSocket handshake, if any: after pacing, counted as a handshake in flight,
    // within the same connect timeout.
    let Some(opened) = open.await else {
        return;
    };
    let client = handshake(slot, opened, peer, deadline).await;
    // CONNACK is queued (or the connection refused): the handshake no longer counts.
    drop(admission);
    if let Some((mut client, mut rest)) = client {
        if !rest.is_empty() {
            client.ctx.metrics.received_frames(&rest);
            if let Some(close) = client.handle_frames(&mut rest) {
                Box::new(client).finish(close).await;
                return;
            }
        }
        let metrics = client.ctx.metrics.clone();
        let client = Box::new(client);
        // The session's task handles its first packets as they come, in the order they reach
        // the broker relative to other clients' (see `timing::FIRST_PACKET_GRACE`), unless a
        // storm holds every place (`timing::GRACE_SLOTS`).
        let grace = client
            .ctx
            .policy
            .hibernate_after
            .and_then(|_| client.ctx.parker.grace(timing::GRACE_SLOTS));
        if grace.is_some() {
            spawn_isolated(metrics, peer, client.run(grace));
        } else if let Err(client) = client.hibernate_at_once() {
            spawn_isolated(metrics, peer, client.run(None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<F: Future>(_: impl FnOnce(Box<Client>) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The session task's future is most of an active session's memory: keep it small.
    #[test]
    fn session_future_stays_small() {
        let size = future_size(|c| c.run(None));
        println!("session task future: {size} bytes");
        assert!(size <= 512, "session task future grew to {size} bytes");
    }

    /// Every idle session keeps one boxed `Client`: 232 bytes is a 240-byte malloc chunk.
    #[test]
    fn client_stays_small() {
        let size = std::mem::size_of::<Client>();
        println!("Client: {size} bytes");
        assert!(size <= 232, "Client grew to {size} bytes");
    }
}
