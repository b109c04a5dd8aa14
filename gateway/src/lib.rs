//! MQTT 3.1, 3.1.1 and 5.0 ingestion gateway: one lightweight tokio task per device session.
//!
//! The data path, module by module: `listener` accepts a socket and spawns `client::serve`;
//! `connection` reads frames; `codec` decodes them; `client` runs the protocol state machine and
//! hands each PUBLISH as one shared `message::Message` to the `router`, which matches it in the
//! `topic_index` and queues a delivery on each receiving `session`; the receiving client's task
//! encodes it once per layout and writes it with shared payload bytes. `registry` maps client ids to
//! sessions and hands them over on takeover; `retain` keeps retained messages; `broker` wires it up.
//! `auth` checks CONNECT credentials against the password file and `acl` decides who may read and
//! write which topic; `limits` holds the overload protection's state (connect pacing, publish
//! quotas, the memory watch). `tls` and `ws` turn a `[[listeners]]` socket into the byte stream
//! `connection` reads when the listener is not plain TCP. `hibernate` holds idle sessions without
//! their tasks: one epoll set, one timer heap and one task for all of them.
//! Observability sits beside the data path: `metrics` (handles and export), `process`, `http`
//! (`/metrics`, health, and the `admin` API) and `sys` (`$SYS/` topics).

pub mod acl;
pub mod admin;
pub mod auth;
pub mod broker;
pub mod client;
pub mod codec;
pub mod config;
pub mod connection;
pub mod hibernate;
pub mod http;
pub mod limits;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod process;
pub mod registry;
pub mod retain;
pub mod router;
pub mod session;
pub mod sys;
pub mod tls;
pub mod topic;
pub mod topic_index;
pub mod ws;

pub use broker::{Broker, Context};
pub use config::Config;
