//! A WebSocket connection read and written as the MQTT byte stream it carries, over a byte
//! stream that can hibernate (the TCP socket of a `ws` listener, the TLS session of a `wss` one).
//!
//! Reads go straight into the caller's buffer (the worker's scratch, see `connection`) and are
//! decoded there by `frame::Decoder`; writes put a frame header before the caller's slices in one
//! vectored write, the payload never copied. A data frame cut short by a full socket is finished
//! by the next writes (the rest of a frame is the next bytes of the stream, whatever slices they
//! come in); pongs and close frames wait for the frame in progress to end, in a buffer of their
//! own that is freed once sent. So between frames, with nothing to send, the stream holds no
//! buffer and hibernates with its socket: only the framing state stays.
//!
//! A ping is answered with a pong (a ping while a pong is still unsent gets none: the RFC lets an
//! endpoint answer only the latest), a close frame is answered with a close frame echoing its code
//! and is the end of the stream, and a frame the decoder refuses is an `InvalidData` error after a
//! close frame with the RFC's code is queued (sent on the way out, `poll_shutdown`).

use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frame::{self, Decoder, FrameError};
use crate::connection::Hibernates;

/// Payload per data frame we send at most: frames of a large burst, each with its own header.
const MAX_OUT_FRAME: usize = 64 * 1024;
/// Slices handed to one vectored write, with the header.
const MAX_SLICES: usize = 64;

pub(crate) struct WsStream<S> {
    inner: S,
    decoder: Decoder,
    /// The bound on an incoming frame's payload.
    max_frame: u64,
    /// Control frames (a pong, a close) to send; `control_sent` of them went.
    control: Vec<u8>,
    control_sent: usize,
    /// The header of the data frame being sent, `header_sent` of its `header_len` bytes gone.
    header: [u8; 10],
    header_len: u8,
    header_sent: u8,
    /// Payload bytes of that frame not yet sent.
    owed: usize,
    /// The client's close frame came, or its stream ended: reads return the end of the stream.
    ended: bool,
    /// The client's frames were refused: every read fails with it.
    failed: Option<FrameError>,
    /// Our close frame is queued: no data frame may follow it.
    close_queued: bool,
}

impl<S> WsStream<S> {
    pub(crate) fn new(inner: S, max_frame: usize) -> WsStream<S> {
        WsStream {
            inner,
            decoder: Decoder::default(),
            max_frame: max_frame as u64,
            control: Vec::new(),
            control_sent: 0,
            header: [0; 10],
            header_len: 0,
            header_sent: 0,
            owed: 0,
            ended: false,
            failed: None,
            close_queued: false,
        }
    }

    /// Between two data frames we send.
    fn between_frames(&self) -> bool {
        self.owed == 0 && self.header_sent == self.header_len
    }

    fn queue_pong(&mut self, payload: &[u8]) {
        if self.control.is_empty() && !self.close_queued {
            self.control = frame::control_frame(frame::PONG, payload);
        }
    }

    fn queue_close(&mut self, code: u16) {
        if !self.close_queued {
            self.close_queued = true;
            self.control
                .extend_from_slice(&frame::control_frame(frame::CLOSE, &code.to_be_bytes()));
        }
    }
}

fn refused(e: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Sends the queued control frames, once no data frame is half sent. Ready when none is left
    /// to send now (or one must wait for the data frame in progress).
    fn poll_control(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.between_frames() {
            return Poll::Ready(Ok(()));
        }
        while self.control_sent < self.control.len() {
            let rest = &self.control[self.control_sent..];
            match ready!(Pin::new(&mut self.inner).poll_write(cx, rest))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.control_sent += n,
            }
        }
        if !self.control.is_empty() {
            self.control = Vec::new();
            self.control_sent = 0;
            // Out of a TLS session's record buffer too, if the socket takes it now; it is sent
            // with the next read or write otherwise.
            if let Poll::Ready(Err(e)) = Pin::new(&mut self.inner).poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(e) = this.failed {
                return Poll::Ready(Err(refused(e)));
            }
            // A pong (or a close) owed goes out; a full socket does not hold reading up, the
            // task is woken when it drains.
            if let Poll::Ready(Err(e)) = this.poll_control(cx) {
                return Poll::Ready(Err(e));
            }
            if this.ended || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let start = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let raw = &mut buf.filled_mut()[start..];
            if raw.is_empty() {
                // The end of the stream under it without a close frame: the end all the same
                // (MQTT frames its own packets, a truncation cannot pass for a whole one).
                this.ended = true;
                return Poll::Ready(Ok(()));
            }
            match this.decoder.decode(raw, this.max_frame) {
                Ok(decoded) => {
                    buf.set_filled(start + decoded.payload);
                    if let Some(ping) = decoded.ping {
                        this.queue_pong(&ping);
                    }
                    if let Some(code) = decoded.close {
                        this.ended = true;
                        this.queue_close(code);
                    }
                    if decoded.payload > 0 {
                        let _ = this.poll_control(cx);
                        return Poll::Ready(Ok(()));
                    }
                }
                Err(e) => {
                    buf.set_filled(start);
                    this.failed = Some(e);
                    this.queue_close(e.close_code());
                    let _ = this.poll_control(cx);
                    return Poll::Ready(Err(refused(e)));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// Binary frames of up to `MAX_OUT_FRAME` bytes, each header written with its payload.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        loop {
            if this.between_frames() {
                if this.close_queued {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "WebSocket closing",
                    )));
                }
                ready!(this.poll_control(cx))?;
                let len = total.min(MAX_OUT_FRAME);
                let (header, n) = frame::server_header(frame::BINARY, len);
                this.header = header;
                this.header_len = n as u8;
                this.header_sent = 0;
                this.owed = len;
            }
            let header = &this.header[usize::from(this.header_sent)..usize::from(this.header_len)];
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            if !header.is_empty() {
                slices[0] = IoSlice::new(header);
                count = 1;
            }
            let mut room = this.owed;
            for b in bufs {
                if room == 0 || count == MAX_SLICES {
                    break;
                }
                let n = b.len().min(room);
                if n > 0 {
                    slices[count] = IoSlice::new(&b[..n]);
                    count += 1;
                    room -= n;
                }
            }
            let written =
                ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let of_header = written.min(header.len());
            this.header_sent += of_header as u8;
            let of_payload = written - of_header;
            this.owed -= of_payload;
            if of_payload > 0 {
                return Poll::Ready(Ok(of_payload));
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_control(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    /// Our close frame (unless a data frame was left half sent), then the end of the stream
    /// under it (a TLS close_notify on `wss`, the TCP write side shut).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.between_frames() {
            let code = this.failed.map_or(frame::NORMAL, FrameError::close_code);
            this.queue_close(code);
        }
        ready!(this.poll_control(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: Hibernates> Hibernates for WsStream<S> {
    fn idle(&self) -> bool {
        self.decoder.idle()
            && self.control.capacity() == 0
            && self.between_frames()
            && !self.ended
            && self.failed.is_none()
            && !self.close_queued
            && self.inner.idle()
    }

    fn hibernate(&mut self) -> io::Result<()> {
        self.inner.hibernate()
    }

    fn resume(&mut self) -> io::Result<()> {
        self.inner.resume()
    }

    fn hibernating_fd(&self) -> RawFd {
        self.inner.hibernating_fd()
    }
}

#[cfg(test)]
mod tests;
