//! The TCP socket under a `ws` listener's WebSocket, as a byte stream that can hibernate: off
//! tokio's reactor (a plain `std` socket, still open) while its session sleeps.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::connection::Hibernates;

pub(crate) enum Socket {
    Live(TcpStream),
    Parked(std::net::TcpStream),
    /// Lost on the way in or out of hibernation; every call fails.
    Lost,
}

impl Socket {
    fn live(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self {
            Socket::Live(s) => Ok(Pin::new(s)),
            _ => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "WebSocket hibernating",
            )),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().live()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().live()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().live()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().live()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().live()?.poll_shutdown(cx)
    }
}

impl Hibernates for Socket {
    fn idle(&self) -> bool {
        matches!(self, Socket::Live(_))
    }

    fn hibernate(&mut self) -> io::Result<()> {
        match std::mem::replace(self, Socket::Lost) {
            Socket::Live(s) => {
                *self = Socket::Parked(s.into_std()?);
                Ok(())
            }
            other => {
                *self = other;
                Err(io::Error::other("WebSocket not live"))
            }
        }
    }

    fn resume(&mut self) -> io::Result<()> {
        match std::mem::replace(self, Socket::Lost) {
            Socket::Parked(s) => {
                *self = Socket::Live(TcpStream::from_std(s)?);
                Ok(())
            }
            other => {
                *self = other;
                Err(io::Error::other("WebSocket not hibernating"))
            }
        }
    }

    fn hibernating_fd(&self) -> RawFd {
        match self {
            Socket::Parked(s) => s.as_raw_fd(),
            _ => -1,
        }
    }
}
