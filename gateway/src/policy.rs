//! What a connection may do: the part of the configuration a client's state machine reads.
//!
//! Built once from `[mqtt]` and `[limits]` when the broker starts, so that `client` depends on
//! these few values rather than on the whole configuration (and a test of the negotiation builds
//! one directly). Durations are kept as the client uses them.

use std::time::Duration;

use crate::config::Config;
use crate::session::BacklogLimits;

#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Time from accept (or the connect_rate slot) to CONNACK.
    pub(crate) connect_timeout: Duration,
    /// Time a packet may take to arrive whole once its first bytes came.
    pub(crate) packet_timeout: Duration,
    /// Silence (either way) after which a client without keep-alive is closed; `None`: never.
    pub(crate) idle_timeout: Option<Duration>,
    /// The largest packet accepted, and the Maximum Packet Size announced to v5 clients.
    pub(crate) max_packet_size: u32,
    /// Highest keep-alive granted; a v5 client asking for more (or for none) gets this.
    pub(crate) max_keepalive: u16,
    /// Inbound QoS 1/2 messages unacknowledged at once (v5 Receive Maximum).
    pub(crate) receive_maximum: u16,
    /// Outbound QoS 1/2 messages unacknowledged at once, further bounded by the client's own.
    pub(crate) max_inflight: u16,
    pub(crate) session_expiry_max: u32,
    pub(crate) topic_alias_maximum: u16,
    pub(crate) outbound_topic_aliases: bool,
    pub(crate) max_topic_levels: usize,
    pub(crate) max_topic_length: usize,
    /// Idle time before the session hibernates; `None`: never.
    pub(crate) hibernate_after: Option<Duration>,
    /// Publish quotas per client; 0 is unlimited.
    pub(crate) max_publish_rate: u32,
    pub(crate) max_publish_bytes_rate: u64,
    /// 0 is unlimited.
    pub(crate) max_subscriptions_per_client: usize,
    /// 0 is unlimited.
    pub(crate) max_subscription_bytes_per_client: usize,
    /// What a session's SUBSCRIBEs may queue of retained messages at once.
    pub(crate) retained_backlog: BacklogLimits,
}

impl Policy {
    pub(crate) fn new(config: &Config) -> Policy {
        let (mqtt, limits) = (&config.mqtt, &config.limits);
        Policy {
            connect_timeout: mqtt.connect_timeout,
            packet_timeout: mqtt.packet_timeout,
            idle_timeout: mqtt.idle_timeout,
            max_packet_size: mqtt.max_packet_size,
            max_keepalive: mqtt.max_keepalive,
            receive_maximum: mqtt.receive_maximum,
            max_inflight: mqtt.max_inflight,
            session_expiry_max: mqtt.session_expiry_max,
            topic_alias_maximum: mqtt.topic_alias_maximum,
            outbound_topic_aliases: mqtt.outbound_topic_aliases,
            max_topic_levels: mqtt.max_topic_levels,
            max_topic_length: limits.max_topic_length,
            hibernate_after: mqtt.hibernate_after,
            max_publish_rate: limits.max_publish_rate,
            max_publish_bytes_rate: limits.max_publish_bytes_rate,
            max_subscriptions_per_client: limits.max_subscriptions_per_client,
            max_subscription_bytes_per_client: limits.max_subscription_bytes_per_client,
            retained_backlog: BacklogLimits {
                messages: limits.max_retained_backlog,
                bytes: limits.max_retained_backlog_bytes,
            },
        }
    }
}
