//! MQTT 3.1, 3.1.1 and 5.0 ingestion gateway: one lightweight tokio task per device session.
//!
//! The data path, module by module: `listener` accepts a socket and spawns `client::serve`;
//! `connection` reads frames; `codec` decodes them; `client` runs the protocol state machine and
//! hands each PUBLISH as one shared `message::Message` to the `router`, which matches it in the
//! `topic_index` and queues a delivery on each receiving `session`; the receiving client's task
//! encodes it once per layout and writes it with shared payload bytes. `registry` maps client ids to
//! sessions, hands them over on takeover and decides what becomes of a session (and its will) when
//! its connection goes, with `timers` for what happens later; `retain` keeps retained messages;
//! `broker` builds the shared `context` (with the connection `policy` and `admission` counters) and
//! runs the whole. `store` and `cluster` are the seams persistence and clustering plug into (an
//! in-memory store and a single node today).
//! `auth` checks CONNECT credentials against the password file and `acl` decides who may read and
//! write which topic; `limits` holds the overload protection's state (connect pacing, publish
//! quotas, the memory watch). `tls` and `ws` turn a `[[listeners]]` socket into the byte stream
//! `connection` reads when the listener is not plain TCP. `hibernate` holds idle sessions without
//! their tasks: one epoll set, one timer heap and one task for all of them.
//! Observability sits beside the data path: `metrics` (handles and export), `process`, `http`
//! (`/metrics`, health, and the `admin` API) and `sys` (`$SYS/` topics).

#![warn(unreachable_pub)]

// The library's face: what the binary, the integration tests, the benches and the fuzz targets
// use. Everything else is the crate's own.
pub mod auth;
pub mod clock;
pub mod codec;
pub mod config;
pub mod message;
pub mod metrics;
pub mod router;
pub mod session;
pub mod topic_index;

mod acl;
mod admin;
mod admission;
mod argon2_memory;
mod broker;
mod client;
mod cluster;
mod connection;
mod context;
mod endpoint;
#[cfg(feature = "fault-injection")]
pub mod fault;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod hashing_slots;
#[cfg(test)]
mod heap_count;
mod hibernate;
mod http;
mod ingest;
mod limits;
mod listener;
mod nats;
mod policy;
mod process;
mod registry;
mod retain;
mod store;
mod subscriber;
mod sys;
mod task;
mod ticket;
mod timers;
mod tls;
mod topic;
mod trie_edges;
mod ws;

pub use broker::Broker;
pub use config::Config;
pub use context::Context;
pub use store::{
    check_store, export_store, repair_store, Found, RepairReport, StoreError, StoreSummary,
};
