//! Free loopback ports for the tests that must name a port before a server binds it: a
//! nats-server, a Prometheus, a gateway restarted where its clients expect it. A port from
//! `bind(0)` lies in the kernel's ephemeral range, where every outgoing connection takes its own
//! port, and one such connection took a picked port before nats-server could bind it (a red CI
//! run). So the ports come from below that range, where only listeners go.

#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out.
const FLOOR: u32 = 10_000;

/// A loopback port nothing listens on now, outside the ephemeral range when there is room.
pub fn free_port() -> u16 {
    let ceiling = ephemeral_low();
    if ceiling <= FLOOR + 1_000 {
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
    }
    // Consecutive picks of one process never repeat a port before the span wraps (a port picked
    // but not yet bound still passes the bind check); processes start apart by their pid.
    // A test crate may hold two copies of this module, each with its own counter: the copies
    // start apart too.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = ceiling - FLOOR;
    let start = std::process::id().wrapping_mul(7_919) ^ (std::ptr::addr_of!(NEXT) as usize as u32);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FLOOR + start.wrapping_add(n) % span;
        let port = u16::try_from(port).expect("below the ephemeral range");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FLOOR}..{ceiling}");
}

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}
