//! MQTT over WebSocket (`ws` and `wss` listeners): the HTTP upgrade, then a byte-stream view of
//! the binary frames that hibernates like a plain socket.
//!
//! MQTT over WebSocket carries the MQTT byte stream in binary frames with no alignment promise: a
//! frame may hold part of a packet or several packets. So the connection layer sees a plain byte
//! stream (`AsyncRead`/`AsyncWrite`) and frames MQTT packets itself, exactly as on TCP; this module
//! only unwraps and wraps WebSocket frames. The upgrade is tungstenite's (request parsing and
//! checks, the accept key); the frames are ours (`frame`, `stream`): tungstenite's
//! `WebSocketStream` keeps a read buffer and a task's worth of state per connection for good,
//! where an idle session here keeps its framing state alone and hibernates with its socket
//! (`socket` under `ws`, the TLS session under `wss`). Pings are answered; a text frame is a
//! protocol error ([MQTT-6.0.0-1]); a close frame is the end of the stream.

mod frame;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod socket;
mod stream;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;

pub(crate) use socket::Socket;
pub(crate) use stream::WsStream;

/// Whether a read failed because the client's WebSocket frames were refused (counted as
/// malformed input, `websocket`, where a stream's errors reach the session).
pub(crate) fn refused(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<frame::FrameError>())
}

/// The subprotocol MQTT clients ask for (`mqttv3.1` is the name 3.1 clients used).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// The read buffer of the WebSocket tungstenite builds after the upgrade (and we drop).
const UPGRADE_READ_BUFFER: usize = 4 * 1024;

/// Completes the HTTP upgrade on `path`, answering the `mqtt` subprotocol when asked for it.
/// Incoming frames are bounded by `max_frame` (the MQTT packet limit plus its header).
// The callback's error type is tungstenite's `ErrorResponse`, not ours to shrink.
#[allow(clippy::result_large_err)]
pub(crate) async fn accept<S>(
    stream: S,
    path: &str,
    max_frame: usize,
) -> Result<WsStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let callback = |request: &Request, mut response: Response| {
        if request.uri().path() != path {
            let mut refusal = ErrorResponse::new(Some("no MQTT endpoint at this path".to_owned()));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            return Err(refusal);
        }
        let offered = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(str::trim))
            .find(|p| SUBPROTOCOLS.contains(p))
            .map(str::to_owned);
        if let Some(protocol) = offered.and_then(|p| HeaderValue::from_str(&p).ok()) {
            response
                .headers_mut()
                .insert("sec-websocket-protocol", protocol);
        }
        Ok(response)
    };
    // tungstenite allocates (and zero-fills) the read buffer of the WebSocket it returns, 128 KiB
    // by default; it is dropped at once here, but need not be that large.
    let config = WebSocketConfig::default().read_buffer_size(UPGRADE_READ_BUFFER);
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await?;
    // Nothing is lost with tungstenite's side: its handshake refuses bytes sent after the
    // request before the answer (`JunkAfterRequest`), so its buffers hold none.
    Ok(WsStream::new(ws.into_inner(), max_frame))
}
