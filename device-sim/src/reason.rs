//! Why a connection failed or ended, as the report counts it: a short static name where one is
//! known. Shared by the plain and the TLS halves of a connection.

use std::borrow::Cow;
use std::io;

/// Why a connection attempt failed or a connection ended; a metric and report label.
pub type Reason = Cow<'static, str>;

pub fn io_reason(e: &io::Error) -> Reason {
    Cow::Borrowed(match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => "too_many_open_files",
        Some(libc::EADDRNOTAVAIL) => "address_not_available",
        Some(libc::EADDRINUSE) => "address_in_use",
        Some(libc::ECONNREFUSED) => "refused",
        Some(libc::ECONNRESET) => "reset",
        Some(libc::ETIMEDOUT) => "timeout",
        Some(libc::EPIPE) => "broken_pipe",
        _ => "io_error",
    })
}
