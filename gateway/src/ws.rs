//! MQTT over WebSocket (`ws` and `wss` listeners): the HTTP upgrade and a byte-stream view of the
//! binary frames.
//!
//! MQTT over WebSocket carries the MQTT byte stream in binary frames with no alignment promise: a
//! frame may hold part of a packet or several packets. So the connection layer sees a plain byte
//! stream (`AsyncRead`/`AsyncWrite`) and frames MQTT packets itself, exactly as on TCP; this module
//! only unwraps and wraps WebSocket frames. Pings are answered by tungstenite; a text frame is a
//! protocol error ([MQTT-6.0.0-1]); a close frame is the end of the stream.

use std::io;
use std::pin::Pin;
use std::task::{self, ready, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The subprotocol MQTT clients ask for (`mqttv3.1` is the name 3.1 clients used).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Bytes tungstenite reads from the socket per call, its read buffer's initial size.
const READ_BUFFER: usize = 4 * 1024;

/// Completes the HTTP upgrade on `path`, answering the `mqtt` subprotocol when asked for it.
/// Frames are bounded by `max_frame` (the MQTT packet limit plus its header).
// The callback's error type is tungstenite's `ErrorResponse`, not ours to shrink.
#[allow(clippy::result_large_err)]
pub(crate) async fn accept<S>(
    stream: S,
    path: &str,
    max_frame: usize,
) -> Result<WsByteStream<S>, WsError>
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
    // tungstenite allocates (and zero-fills) its whole read buffer per connection, 128 KiB by
    // default since 0.23; 4 KiB is what 0.21 read per call. Larger frames grow it as they arrive.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame));
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await?;
    Ok(WsByteStream {
        ws,
        inbound: Bytes::new(),
    })
}

/// A WebSocket connection read and written as the MQTT byte stream it carries.
pub(crate) struct WsByteStream<S> {
    ws: WebSocketStream<S>,
    /// The rest of the last binary frame, not yet read.
    inbound: Bytes,
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsByteStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.inbound.is_empty() {
                let n = self.inbound.len().min(buf.remaining());
                buf.put_slice(&self.inbound[..n]);
                self.inbound.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.inbound = data,
                // Control frames: tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text frame on an MQTT WebSocket",
                    )))
                }
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsByteStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// One binary frame per call, holding every slice: a batch of packets costs one frame.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut frame = Vec::with_capacity(total);
        for b in bufs {
            frame.extend_from_slice(b);
        }
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::from(frame)))
            .map_err(to_io)?;
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    /// The WebSocket close frame, then the end of the stream under it (a TLS close_notify on
    /// `wss`, the TCP write side shut).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.ws).poll_close(cx)).map_err(to_io)?;
        Pin::new(self.ws.get_mut()).poll_shutdown(cx)
    }
}
