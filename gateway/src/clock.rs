//! The wall clock, in the unit the broker keeps deadlines in that must outlive the process.
//!
//! Message expiry, delayed wills and session expiry are deadlines a restart must not reset, so
//! they are kept as milliseconds since the Unix epoch rather than as `Instant`s (which mean
//! nothing in another process). Durations measured within one process (keep-alive, latency)
//! stay on the monotonic clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = u64;

pub fn unix_millis() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
