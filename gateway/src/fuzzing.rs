//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz on nightly) and for the test that
//! replays their committed corpora on stable (`tests/fuzz_corpora.rs`).
//!
//! Each function takes arbitrary bytes, feeds them to one of the crate's parsers of untrusted
//! input and asserts the properties that parser promises, panicking when one is broken: the
//! fuzzer reports the panic as a crash, the replay test as a failure naming the corpus file.
//! Keeping the checks here (behind the `fuzzing` feature, hidden from the docs) means both run
//! the same code and the crate-private decoders are reached without widening the crate's API:
//! nothing but these functions is exported.

mod auth;
mod codec;
mod config;
pub(crate) mod input;
mod session;
mod topic;

pub use auth::auth_files;
pub use codec::codec;
pub use config::config;
pub use session::session;
pub use topic::topic;

/// The store's stored forms: records (retained messages, queued deliveries, sessions), journal
/// entries and message keys. See `store::fuzzing`.
pub fn store_record(data: &[u8]) {
    crate::store::fuzzing::store_record(data);
}

/// What cluster nodes and the session state stream hand a node: a hand-over, a snapshot, a
/// subject's records folded back. See `store::jetstream::fuzzing`.
pub fn cluster_state(data: &[u8]) {
    crate::store::jetstream::fuzzing::cluster_state(data);
}

/// What other nodes send a node over NATS: message envelopes and control messages. See
/// `cluster::fuzzing`.
pub fn cluster_wire(data: &[u8]) {
    crate::cluster::fuzzing::cluster_wire(data);
}

/// The WebSocket frame decoder of `ws` and `wss` listeners. See `ws::fuzzing`.
pub fn ws_frame(data: &[u8]) {
    crate::ws::fuzzing::ws_frame(data);
}

/// The TLS record layer after the handshake. See `tls::fuzzing`.
pub fn tls_record(data: &[u8]) {
    crate::tls::fuzzing::tls_record(data);
}

/// A fuzz target's checks: arbitrary bytes in, a panic when a property is broken.
pub type Check = fn(&[u8]);

/// Every target by its name in `fuzz/Cargo.toml` and `fuzz/corpus/`, for the replay test.
pub const TARGETS: &[(&str, Check)] = &[
    ("codec", codec),
    ("topic", topic),
    ("store_record", store_record),
    ("config", config),
    ("auth_files", auth_files),
    ("session", session),
    ("ws_frame", ws_frame),
    ("tls_record", tls_record),
    ("cluster_state", cluster_state),
    ("cluster_wire", cluster_wire),
];
