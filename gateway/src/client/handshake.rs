//! From accepted socket to attached session: reading CONNECT, refusing it, authenticating the
//! client, taking the session over on the terms `negotiate` agreed and answering CONNACK, all
//! within the connect timeout: a handshake holds a `limits.max_handshakes` slot, and one waiting
//! on a flood of password checks must give it up rather than be hashed for long after its
//! client gave up.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use tokio::time::Instant;
use tracing::debug;

use super::negotiate::{negotiate, Agreed, Refused};
use super::timing::broker_nanos;
use super::{AliasesOut, Client, Opened, CLOSE_FLUSH};
use crate::acl::{ClientAcl, Principal};
use crate::auth::Refusal;
use crate::clock::unix_millis;
use crate::codec::{self, reason, ConnAck, Connect, DecodeError, Packet, Properties, Protocol};
use crate::connection::{Connection, ReadError};
use crate::context::{ConnectionSlot, Context};
use crate::metrics::CloseReason;
use crate::session::ConnectionInfo;
use crate::topic;

/// From accepted socket to attached session: CONNECT, the password check and CONNACK by
/// `deadline` (the connect timeout). Also returns the packets that came in the same read after
/// CONNECT (a client need not wait for CONNACK), for the session to handle before anything else.
pub(super) async fn handshake(
    slot: ConnectionSlot,
    opened: Opened,
    peer: std::net::SocketAddr,
    deadline: Instant,
) -> Option<(Client, Vec<Bytes>)> {
    let ctx = slot.context().clone();
    let Opened {
        mut conn,
        identity,
        default_listener,
    } = opened;
    let connect = match tokio::time::timeout_at(deadline, read_connect(&ctx, &mut conn)).await {
        Ok(Ok(read)) => read,
        Ok(Err(why)) => {
            debug!(%peer, "connection refused before CONNECT completed: {why}");
            conn.finish_within(CLOSE_FLUSH).await;
            return None;
        }
        Err(_) => {
            debug!(%peer, "no CONNECT within the connect timeout");
            ctx.metrics.closed(CloseReason::ConnectTimeout);
            return None;
        }
    };
    let (connect, rest) = connect;
    let from = Arrival {
        identity,
        default_listener,
        peer,
        deadline,
        pipelined: !rest.is_empty(),
    };
    let client = Client::attach(ctx, slot, conn, connect, from).await;
    client.map(|c| (c, rest))
}

/// Where a CONNECT came from, and until when its handshake may take.
struct Arrival {
    /// The client certificate's name on a `use_identity_as_username` listener.
    identity: Option<ByteString>,
    default_listener: bool,
    peer: std::net::SocketAddr,
    deadline: Instant,
    /// Packets came right behind CONNECT: a client that sent them and closed still wants them
    /// handled (a DISCONNECT among them says so), so it does not count as gone.
    pipelined: bool,
}

/// Why a CONNECT is not taken on.
enum Denied {
    /// Refused with this CONNACK code.
    Code(u8),
    /// The client left while its password check waited: closed without a word.
    Gone,
}

/// Reads and validates the first packet, and keeps the ones read with it. Answers failures itself
/// (CONNACK where the protocol allows).
async fn read_connect(
    ctx: &Context,
    conn: &mut Connection,
) -> Result<(Box<Connect>, Vec<Bytes>), String> {
    let max = ctx.policy.max_packet_size as usize;
    let mut frames = Vec::with_capacity(1);
    loop {
        if let Err(e) = conn.readable().await {
            if crate::ws::refused(&e) {
                ctx.metrics.bad_input("websocket");
            }
            return Err(e.to_string());
        }
        match conn.try_read_frames(max, &mut frames) {
            Ok(n) => ctx.metrics.add_bytes_received(n as u64),
            Err(ReadError::Decode(e)) => {
                ctx.metrics.bad_input(e.kind());
                return Err(e.to_string());
            }
            Err(e) => return Err(e.to_string()),
        }
        if frames.is_empty() {
            continue;
        }
        let frame = frames.remove(0);
        ctx.metrics.received_frames(std::slice::from_ref(&frame));
        let level = connect_level(&frame);
        // The session keeps client id and will for its lifetime: decode them from a compact copy
        // rather than from slices that would pin the shared read buffer.
        return match codec::decode_connect(Bytes::copy_from_slice(&frame)) {
            Ok(c) => Ok((Box::new(c), frames)),
            Err(e) => {
                ctx.metrics.bad_input(e.kind());
                if let DecodeError::UnsupportedProtocol { .. } = e {
                    refuse(
                        ctx,
                        conn,
                        Protocol::V311,
                        reason::UNSUPPORTED_PROTOCOL_VERSION,
                    );
                } else if level == Some(5) {
                    refuse(ctx, conn, Protocol::V5, e.reason_code());
                }
                ctx.metrics.rejected("bad_connect");
                Err(e.to_string())
            }
        };
    }
}

/// The protocol level byte of a CONNECT frame, when it can be found, to answer errors in kind.
/// Any other packet type has no level: a first packet that is not CONNECT gets no answer.
fn connect_level(frame: &[u8]) -> Option<u8> {
    if *frame.first()? >> 4 != 1 {
        return None;
    }
    let mut i = 1;
    while *frame.get(i)? & 0x80 != 0 {
        i += 1;
    }
    let name_len = usize::from(u16::from_be_bytes([*frame.get(i + 1)?, *frame.get(i + 2)?]));
    frame.get(i + 3 + name_len).copied()
}

fn refuse(ctx: &Context, conn: &mut Connection, protocol: Protocol, code: u8) {
    let mut out = BytesMut::new();
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: code,
        properties: Properties::default(),
    });
    codec::encode(&connack, protocol, &mut out);
    ctx.metrics.packet_sent(&connack);
    conn.queue(out.freeze());
}

impl Client {
    /// Validates CONNECT, takes the session over and answers CONNACK.
    async fn attach(
        ctx: Arc<Context>,
        slot: ConnectionSlot,
        mut conn: Connection,
        connect: Box<Connect>,
        from: Arrival,
    ) -> Option<Client> {
        let protocol = connect.protocol;
        let peer = from.peer;

        // First: above the memory high-water mark nothing else about the client matters.
        if ctx.router.overloaded.load(Ordering::Relaxed) {
            return refuse_and_close(&ctx, conn, protocol, reason::SERVER_BUSY, peer).await;
        }
        let assign_id = || ByteString::from(format!("auto-{:016x}", rand_id()));
        let Agreed {
            client_id,
            session_expiry,
            keep_alive,
            connack: props,
            send_window,
            client_max_packet,
            aliases_out,
            aliases_in,
        } = match negotiate(&connect, &ctx.policy, assign_id) {
            Ok(agreed) => agreed,
            Err(Refused {
                code,
                connack: false,
            }) => {
                debug!(%peer, code, "CONNECT refused without CONNACK");
                ctx.metrics.rejected(reject_label(code));
                return None;
            }
            Err(Refused { code, .. }) => {
                return refuse_and_close(&ctx, conn, protocol, code, peer).await
            }
        };

        // Before the session is touched: a refused client must not take over anyone's session.
        let gone = |conn: &mut Connection| !from.pipelined && conn.peer_gone();
        let authorized = tokio::time::timeout_at(
            from.deadline,
            authorize(
                &ctx,
                &connect,
                &client_id,
                (from.identity, from.default_listener),
                || gone(&mut conn),
            ),
        )
        .await;
        let acl = match authorized {
            Ok(Ok(acl)) => acl,
            Ok(Err(Denied::Code(code))) => {
                return refuse_and_close(&ctx, conn, protocol, code, peer).await
            }
            Ok(Err(Denied::Gone)) => {
                debug!(%peer, "client left while its password check waited");
                ctx.metrics.rejected("client_gone");
                return None;
            }
            Err(_) => {
                // The client waited for its check and is told to come back later.
                debug!(%peer, "CONNECT not through the password check within the connect timeout");
                ctx.metrics.closed(CloseReason::ConnectTimeout);
                refuse(&ctx, &mut conn, protocol, reason::SERVER_BUSY);
                conn.finish_within(CLOSE_FLUSH).await;
                return None;
            }
        };
        // Nor may one that left take over the session of a client that is still there.
        if gone(&mut conn) {
            debug!(%peer, "client left before its session was attached");
            ctx.metrics.rejected("client_gone");
            return None;
        }

        // Not under the deadline: once the holder has been told to go, giving up would leave the
        // session to nobody (its holder departs as taken over). The wait is that holder's close,
        // which is bounded (`CLOSE_FLUSH`). The cluster's claim before it keeps to the deadline.
        let attached = ctx
            .registry
            .attach(&client_id, connect.clean_start, &ctx.router, from.deadline)
            .await;
        let session = attached.session;
        session.set_expiry_interval(session_expiry);

        let mut out = BytesMut::new();
        let connack = Packet::ConnAck(ConnAck {
            session_present: attached.present,
            reason: reason::SUCCESS,
            properties: props,
        });
        codec::encode(&connack, protocol, &mut out);
        ctx.metrics.packet_sent(&connack);
        conn.queue(out.freeze());
        session.set_online(true);
        session.set_connection(ConnectionInfo::now(peer, protocol));
        ctx.metrics.connections_current.increment(1.0);
        debug!(client = %client_id, %peer, ?protocol, present = attached.present, "connected");

        let now = broker_nanos(&ctx);
        let mut client = Client {
            generation: attached.generation,
            session: attached.owner,
            protocol,
            keep_alive_ms: NonZeroU32::new(u32::from(keep_alive) * 1500),
            last_read: now,
            last_write: now,
            send_window,
            aliases_in_max: aliases_in,
            client_max_packet,
            will: connect.will.map(Box::new),
            aliases_in: None,
            aliases_out: (aliases_out > 0).then(|| {
                Box::new(AliasesOut {
                    map: Default::default(),
                    max: aliases_out,
                })
            }),
            acl,
            quota: None,
            held: None,
            close: CloseReason::Network,
            publish_will: true,
            conn,
            ctx,
            slot: Some(slot),
        };
        if client.session.is_persistent() {
            // Attached: it expires only once its connection goes (then saved with a deadline).
            let will = client.armed_will();
            client.ctx.router.save_session(&client.session, None, will);
        }
        let mut resend = Vec::new();
        client
            .session
            .inflight_for_resend(usize::from(client.send_window), &mut resend);
        client.write_outgoing(&mut resend, unix_millis());
        Some(client)
    }
}

/// Authenticates the CONNECT and checks its will against the ACL (at CONNECT rather than at
/// publication, so a client learns at once, CONNACK 5 / 0x87, that its will could never go out).
/// Returns the client's ACL view (when an ACL file is configured) or the CONNACK reason code.
async fn authorize(
    ctx: &Context,
    connect: &Connect,
    client_id: &ByteString,
    (identity, default_listener): (Option<ByteString>, bool),
    gone: impl FnOnce() -> bool,
) -> Result<Option<Box<ClientAcl>>, Denied> {
    // A verified client certificate is the credential: its name is the username.
    let username = match identity {
        Some(name) => Some(name),
        None => ctx
            .security
            .authenticate(
                connect.username.as_ref(),
                connect.password.as_deref(),
                default_listener,
                gone,
            )
            .await
            .map_err(|refusal| match refusal {
                Refusal::BadCredentials => Denied::Code(reason::BAD_USERNAME_OR_PASSWORD),
                Refusal::NotAuthorized => Denied::Code(reason::NOT_AUTHORIZED),
                Refusal::Gone => Denied::Gone,
            })?,
    };
    let Some(handle) = ctx.security.acl() else {
        // As for PUBLISH: without an ACL file, only the broker writes `$SYS/`.
        if connect
            .will
            .as_ref()
            .is_some_and(|w| topic::is_sys(&w.topic))
        {
            return Err(Denied::Code(reason::NOT_AUTHORIZED));
        }
        return Ok(None);
    };
    let mut acl = ClientAcl::new(
        handle.clone(),
        Principal {
            // Owned copies: the principal lives as long as the connection.
            client_id: ByteString::from(&client_id[..]),
            username: username.map(|u| ByteString::from(&u[..])),
        },
    );
    if let Some(will) = &connect.will {
        if !acl.may_write(&will.topic) {
            return Err(Denied::Code(reason::NOT_AUTHORIZED));
        }
    }
    Ok(Some(Box::new(acl)))
}

async fn refuse_and_close(
    ctx: &Context,
    mut conn: Connection,
    protocol: Protocol,
    code: u8,
    peer: std::net::SocketAddr,
) -> Option<Client> {
    debug!(%peer, code, "CONNECT refused");
    ctx.metrics.rejected(reject_label(code));
    refuse(ctx, &mut conn, protocol, code);
    conn.finish_within(CLOSE_FLUSH).await;
    None
}

fn reject_label(code: u8) -> &'static str {
    match code {
        reason::CLIENT_IDENTIFIER_NOT_VALID => "client_id_invalid",
        reason::BAD_AUTHENTICATION_METHOD => "bad_auth_method",
        reason::TOPIC_NAME_INVALID => "will_topic_invalid",
        reason::PAYLOAD_FORMAT_INVALID => "will_payload_invalid",
        // Only `negotiate` refuses a CONNECT with it (a CONNECT too large is a "bad_connect").
        reason::PACKET_TOO_LARGE => "connack_too_large",
        reason::BAD_USERNAME_OR_PASSWORD => "bad_credentials",
        reason::NOT_AUTHORIZED => "not_authorized",
        reason::SERVER_BUSY => "memory",
        _ => "other",
    }
}

/// A process-unique, hard to guess suffix for assigned client identifiers.
fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.finish()
}
