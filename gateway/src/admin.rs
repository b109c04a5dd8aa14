//! The admin HTTP API: per-client detail and control that must not become metric labels.
//!
//! Served under `/api/v1/` on the observability listener, JSON in and out, only when
//! `[http] admin_token` is set, and only to requests carrying `Authorization: Bearer <token>`:
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/v1/stats` | summary: connections, sessions, subscriptions, retained, queues, totals |
//! | `GET /api/v1/clients?prefix=&after=&limit=` | clients sorted by id, a page at a time |
//! | `GET /api/v1/clients/{id}` | one session: subscriptions, queue, inflight, connection |
//! | `POST /api/v1/clients/{id}/disconnect` | closes the client's connection (v5: DISCONNECT 0x98) |
//! | `GET /api/v1/subscriptions?topic=&limit=` | subscriptions whose filter matches a topic name |
//!
//! Errors are `{"error": "..."}` with the matching status code. Client ids are percent-encoded
//! in paths and queries. Listing walks every session, which is fine for an operator's request
//! and is why this API is not for dashboards to poll: Prometheus has the aggregates.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::codec::Protocol;
use crate::context::Context;
use crate::metrics::BrokerState;
use crate::session::{Kick, Session, SubscriptionRecord};
use crate::topic;

/// The answers' body: whole JSON documents (the HTTP endpoint serves the same type).
type Body = Full<Bytes>;

pub(crate) const PREFIX: &str = "/api/v1/";
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
const DEFAULT_MATCHES: usize = 1000;
const MAX_MATCHES: usize = 10_000;

/// A request that cannot be served, as its status code and message.
struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, message.into())
    }
}

type ApiResult = Result<(StatusCode, serde_json::Value), ApiError>;

/// Serves one request whose path started with `PREFIX`; `rest` is the path after it.
pub(crate) fn handle<B>(ctx: &Context, req: &Request<B>, rest: &str) -> Response<Body> {
    let outcome = authorize(ctx, req).and_then(|()| dispatch(ctx, req, rest));
    match outcome {
        Ok((status, value)) => json(status, &value),
        Err(ApiError(status, message)) => {
            let mut r = json(status, &serde_json::json!({ "error": message }));
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"gateway admin\""),
                );
            }
            r
        }
    }
}

fn authorize<B>(ctx: &Context, req: &Request<B>) -> Result<(), ApiError> {
    let Some(token) = &ctx.config.http.admin_token else {
        return Err(ApiError::not_found(
            "the admin API is disabled: set http.admin_token to enable it",
        ));
    };
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if same_secret(p.trim().as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "invalid bearer token".to_owned(),
        )),
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <token>` header".to_owned(),
        )),
    }
}

/// Compares in time independent of both contents and lengths: the SHA-256 digests (always 32
/// bytes) are compared in constant time, so response timing tells an attacker neither how much of
/// a guess was right nor how long the token is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    Sha256::digest(a).ct_eq(&Sha256::digest(b)).into()
}

fn dispatch<B>(ctx: &Context, req: &Request<B>, rest: &str) -> ApiResult {
    let query = Query::parse(req.uri().query().unwrap_or(""))?;
    let method = req.method();
    let segments: Vec<&str> = rest.split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["stats"]) => stats(ctx),
        (&Method::GET, ["clients"]) => list_clients(ctx, &query),
        (&Method::GET, ["clients", id]) => client(ctx, &decode(id)?),
        (&Method::POST, ["clients", id, "disconnect"]) => disconnect(ctx, &decode(id)?),
        (&Method::GET, ["subscriptions"]) => subscriptions(ctx, &query),
        (_, ["stats"] | ["clients"] | ["clients", _] | ["clients", _, "disconnect"])
        | (_, ["subscriptions"]) => Err(ApiError(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed here"),
        )),
        _ => Err(ApiError::not_found(format!(
            "no such endpoint: {PREFIX}{rest}"
        ))),
    }
}

#[derive(Serialize)]
struct Stats {
    version: &'static str,
    #[serde(flatten)]
    state: BrokerState,
    messages_received: u64,
    messages_sent: u64,
    bytes_received: u64,
    bytes_sent: u64,
}

fn stats(ctx: &Context) -> ApiResult {
    let t = &ctx.metrics.totals;
    let stats = Stats {
        version: env!("CARGO_PKG_VERSION"),
        state: ctx.state(),
        messages_received: t.messages_received.load(Ordering::Relaxed),
        messages_sent: t.messages_sent.load(Ordering::Relaxed),
        bytes_received: t.bytes_received.load(Ordering::Relaxed),
        bytes_sent: t.bytes_sent.load(Ordering::Relaxed),
    };
    ok(&stats)
}

/// One client as listed; `detail` adds its subscriptions.
#[derive(Serialize)]
struct ClientView {
    client_id: String,
    online: bool,
    /// Unix seconds at which the current connection attached; null while offline.
    connected_since: Option<u32>,
    /// Protocol and address of the current, or else the last, connection.
    protocol: Option<&'static str>,
    address: Option<String>,
    session_expiry_interval: u32,
    queued_messages: usize,
    /// What its queue holds in memory, as `mqtt.max_queued_bytes` counts it.
    queued_bytes: u32,
    inflight_messages: usize,
    /// Messages dropped because its queue was full (a slow or absent reader), since the session
    /// began; saturates at 65,535.
    dropped_messages: u16,
    subscription_count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscriptions: Option<Vec<SubscriptionView>>,
}

#[derive(Serialize)]
struct SubscriptionView {
    filter: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription_identifier: Option<u32>,
}

impl SubscriptionView {
    fn of(r: &SubscriptionRecord) -> SubscriptionView {
        SubscriptionView {
            filter: r.filter.to_string(),
            qos: r.options.qos as u8,
            no_local: r.options.no_local,
            retain_as_published: r.options.retain_as_published,
            retain_handling: r.options.retain_handling,
            subscription_identifier: r.id,
        }
    }
}

fn view(session: &Session, detail: bool) -> ClientView {
    let online = session.is_online();
    let conn = session.connection();
    let subscriptions = session.subscriptions();
    ClientView {
        client_id: session.client_id.to_string(),
        online,
        connected_since: conn.filter(|_| online).map(|c| c.since),
        protocol: conn.map(|c| protocol_name(c.protocol)),
        address: conn.map(|c| std::net::SocketAddr::new(c.ip, c.port).to_string()),
        session_expiry_interval: session.expiry_interval(),
        queued_messages: session.queue_len(),
        queued_bytes: session.queued_bytes(),
        inflight_messages: session.inflight_len(),
        dropped_messages: session.dropped(),
        subscription_count: subscriptions.len(),
        subscriptions: detail.then(|| subscriptions.iter().map(SubscriptionView::of).collect()),
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::V31 => "3.1",
        Protocol::V311 => "3.1.1",
        Protocol::V5 => "5.0",
    }
}

fn list_clients(ctx: &Context, q: &Query) -> ApiResult {
    let prefix = q.get("prefix").unwrap_or("");
    let after = q.get("after");
    let limit = q.limit("limit", DEFAULT_PAGE, MAX_PAGE)?;
    let mut sessions: Vec<_> = ctx
        .registry
        .all()
        .into_iter()
        .filter(|s| s.client_id.starts_with(prefix))
        .filter(|s| after.map_or(true, |a| &s.client_id[..] > a))
        .collect();
    sessions.sort_unstable_by(|a, b| a.client_id.cmp(&b.client_id));
    let more = sessions.len() > limit;
    sessions.truncate(limit);
    let clients: Vec<ClientView> = sessions.iter().map(|s| view(s, false)).collect();
    // The cursor for the next page is the last id of this one: stable while clients come and go.
    let next_after = more
        .then(|| clients.last().map(|c| c.client_id.clone()))
        .flatten();
    ok(&serde_json::json!({ "clients": clients, "next_after": next_after }))
}

fn find(ctx: &Context, id: &str) -> Result<std::sync::Arc<Session>, ApiError> {
    ctx.registry
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no session for client id {id:?}")))
}

fn client(ctx: &Context, id: &str) -> ApiResult {
    ok(&view(&*find(ctx, id)?, true))
}

fn disconnect(ctx: &Context, id: &str) -> ApiResult {
    let session = find(ctx, id)?;
    if !session.is_online() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("client {id:?} is not connected"),
        ));
    }
    session.kick(Kick::Administrative);
    let body = serde_json::json!({ "client_id": id, "disconnecting": true });
    Ok((StatusCode::ACCEPTED, body))
}

#[derive(Serialize)]
struct MatchView {
    client_id: String,
    online: bool,
    #[serde(flatten)]
    subscription: SubscriptionView,
    /// The group of a shared subscription: one member of the group gets each message.
    #[serde(skip_serializing_if = "Option::is_none")]
    share_group: Option<String>,
}

fn subscriptions(ctx: &Context, q: &Query) -> ApiResult {
    let Some(topic_name) = q.get("topic") else {
        return Err(ApiError::bad_request("missing query parameter `topic`"));
    };
    let levels = ctx.router.max_topic_levels();
    if let Err(e) = topic::validate_topic_name(topic_name, levels) {
        return Err(ApiError::bad_request(format!(
            "invalid topic name {topic_name:?}: {e}"
        )));
    }
    let limit = q.limit("limit", DEFAULT_MATCHES, MAX_MATCHES)?;
    let mut found = Vec::new();
    let mut truncated = false;
    'sessions: for session in ctx.registry.all() {
        for record in session.subscriptions() {
            let (group, filter) = match topic::parse_shared(&record.filter) {
                Ok(Some((group, filter))) => (Some(group), filter),
                Ok(None) => (None, &record.filter[..]),
                Err(_) => continue,
            };
            if !topic::matches(filter, topic_name) {
                continue;
            }
            if found.len() == limit {
                truncated = true;
                break 'sessions;
            }
            found.push(MatchView {
                client_id: session.client_id.to_string(),
                online: session.is_online(),
                share_group: group.map(str::to_owned),
                subscription: SubscriptionView::of(&record),
            });
        }
    }
    found.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    ok(&serde_json::json!({ "topic": topic_name, "subscriptions": found, "truncated": truncated }))
}

fn ok(value: &impl Serialize) -> ApiResult {
    serde_json::to_value(value)
        .map(|v| (StatusCode::OK, v))
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut body = value.to_string();
    body.push('\n');
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Decoded `key=value` pairs of a query string.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Result<Query, ApiError> {
        let mut pairs = Vec::new();
        for part in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            // In a query string `+` stands for a space (HTML form encoding).
            let k = decode(&k.replace('+', " "))?;
            let v = decode(&v.replace('+', " "))?;
            pairs.push((k, v));
        }
        Ok(Query(pairs))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn limit(&self, key: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_request(format!(
                    "invalid `{key}`: {v:?} (must be 1..={max})"
                ))),
            },
        }
    }
}

/// Percent-decodes a path segment or query component into UTF-8.
fn decode(text: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request(format!("invalid percent-encoding in {text:?}"));
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_reserved_characters_and_rejects_garbage() {
        assert_eq!(decode("a%2Fb%20c").ok().as_deref(), Some("a/b c"));
        assert_eq!(decode("plain").ok().as_deref(), Some("plain"));
        assert!(decode("%").is_err());
        assert!(decode("%4").is_err());
        assert!(decode("%zz").is_err());
        assert!(decode("%FF").is_err(), "not UTF-8");
    }

    #[test]
    fn query_pairs_and_limits() {
        let q = Query::parse("prefix=dev%2B1&limit=5&flag&topic=a+b")
            .ok()
            .unwrap();
        assert_eq!(q.get("prefix"), Some("dev+1"));
        assert_eq!(q.get("topic"), Some("a b"));
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.limit("limit", 100, 1000).ok(), Some(5));
        assert_eq!(q.limit("absent", 100, 1000).ok(), Some(100));
        let q = Query::parse("limit=0").ok().unwrap();
        assert!(q.limit("limit", 100, 1000).is_err());
    }

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcdeF"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcde"));
    }
}
