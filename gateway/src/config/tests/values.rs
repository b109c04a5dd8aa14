//! Tests of value parsing: wrong types and out-of-range values are named with the key and the
//! value, and the edges of each range are accepted.

use std::time::Duration;

use super::error;
use crate::config::values::LISTEN_HINT;
use crate::config::Config;

#[test]
fn range_edges_are_accepted() {
    let text = "[mqtt]\nmax_keepalive = 65535\nreceive_maximum = 1\n\
                max_packet_size = 268435455\nsession_expiry_max = 4294967295\n\
                fd_reserve = 4294967295\nconnect_timeout = 1\n";
    let c = Config::from_toml(text).unwrap();
    assert_eq!(c.mqtt.max_packet_size, 268_435_455);
    assert_eq!(c.mqtt.session_expiry_max, u32::MAX);
    assert_eq!(c.mqtt.connect_timeout, Duration::from_secs(1));
}

#[test]
fn http_can_be_disabled() {
    for text in ["[http]\nlisten = \"off\"", "[http]\nlisten = \"\""] {
        assert_eq!(Config::from_toml(text).unwrap().http.listen, None);
    }
}

#[test]
fn wrong_types_are_named_with_their_value() {
    let cases = [
        (
            "mqtt = 5",
            "config: invalid value for `mqtt`: 5 (expected a table)",
        ),
        (
            "[mqtt]\nlisten = 1883",
            "config: invalid value for `mqtt.listen`: 1883 (expected an IP address and port \
             such as 127.0.0.1:1883 or [::]:1883, as a string)",
        ),
        (
            "[mqtt]\nmax_inflight = \"32\"",
            "config: invalid value for `mqtt.max_inflight`: \"32\" (expected an integer)",
        ),
        (
            "[mqtt]\nmax_packet_size = 1.5",
            "config: invalid value for `mqtt.max_packet_size`: 1.5 (expected an integer)",
        ),
        (
            "[mqtt]\nqueue_qos0_offline = \"yes\"",
            "config: invalid value for `mqtt.queue_qos0_offline`: \"yes\" \
             (expected true or false)",
        ),
        (
            "[mqtt]\noutbound_topic_aliases = 1",
            "config: invalid value for `mqtt.outbound_topic_aliases`: 1 \
             (expected true or false)",
        ),
        (
            "[mqtt]\nconnect_timeout = \"10s\"",
            "config: invalid value for `mqtt.connect_timeout`: \"10s\" \
             (expected a number of seconds)",
        ),
        (
            "[http]\nlisten = false",
            "config: invalid value for `http.listen`: false (expected an IP address and \
             port such as 127.0.0.1:9883, or \"off\", as a string)",
        ),
        (
            "[log]\nlevel = 3",
            "config: invalid value for `log.level`: 3 (expected error, warn, info, debug, \
             trace or a tracing filter directive, as a string)",
        ),
    ];
    for (text, message) in cases {
        assert_eq!(error(text), message, "for {text:?}");
    }
}

#[test]
fn out_of_range_values_are_named_with_their_value() {
    let cases = [
        (
            "max_keepalive = 0",
            "mqtt.max_keepalive",
            "0",
            "must be 1..=65535",
        ),
        (
            "max_keepalive = 65536",
            "mqtt.max_keepalive",
            "65536",
            "must be 1..=65535",
        ),
        (
            "receive_maximum = 0",
            "mqtt.receive_maximum",
            "0",
            "must be 1..=65535",
        ),
        (
            "max_packet_size = 63",
            "mqtt.max_packet_size",
            "63",
            "must be 64..=268435455",
        ),
        (
            "max_packet_size = 268435456",
            "mqtt.max_packet_size",
            "268435456",
            "must be 64..=268435455",
        ),
        (
            "max_queued_messages = 0",
            "mqtt.max_queued_messages",
            "0",
            "must be >= 1",
        ),
        (
            "max_queued_bytes = 4294967296",
            "mqtt.max_queued_bytes",
            "4294967296",
            "must be 0..=4294967295",
        ),
        (
            "max_inflight = 0",
            "mqtt.max_inflight",
            "0",
            "must be 1..=65535",
        ),
        (
            "session_expiry_max = 4294967296",
            "mqtt.session_expiry_max",
            "4294967296",
            "must be 0..=4294967295",
        ),
        (
            "retained_max = -1",
            "mqtt.retained_max",
            "-1",
            "must be >= 0",
        ),
        (
            "retained_max_bytes = -1",
            "mqtt.retained_max_bytes",
            "-1",
            "must be >= 0",
        ),
        (
            "connect_timeout = 0",
            "mqtt.connect_timeout",
            "0",
            "must be > 0 seconds",
        ),
        (
            "connect_timeout = -2.5",
            "mqtt.connect_timeout",
            "-2.5",
            "must be > 0 seconds",
        ),
        (
            "connect_timeout = 1e-12",
            "mqtt.connect_timeout",
            "1e-12",
            "must be > 0 seconds",
        ),
        (
            "connect_timeout = nan",
            "mqtt.connect_timeout",
            "NaN",
            "must be > 0 seconds",
        ),
        (
            "packet_timeout = 0",
            "mqtt.packet_timeout",
            "0",
            "must be > 0 seconds",
        ),
        (
            "packet_timeout = \"1m\"",
            "mqtt.packet_timeout",
            "\"1m\"",
            "expected a number of seconds",
        ),
        (
            "idle_timeout = -1",
            "mqtt.idle_timeout",
            "-1",
            "expected a number of seconds >= 0 (0: never)",
        ),
        (
            "tcp_keepalive_idle = 32768",
            "mqtt.tcp_keepalive_idle",
            "32768",
            "must be 0..=32767",
        ),
        (
            "tcp_keepalive_interval = 0",
            "mqtt.tcp_keepalive_interval",
            "0",
            "must be 1..=32767",
        ),
        (
            "tcp_keepalive_count = 128",
            "mqtt.tcp_keepalive_count",
            "128",
            "must be 1..=127",
        ),
        (
            "tcp_keepalive_idle = 1.5",
            "mqtt.tcp_keepalive_idle",
            "1.5",
            "expected an integer",
        ),
        (
            "hibernate_after = -1",
            "mqtt.hibernate_after",
            "-1",
            "expected a number of seconds >= 0 (0: never)",
        ),
        (
            "max_topic_levels = 0",
            "mqtt.max_topic_levels",
            "0",
            "must be >= 1",
        ),
        (
            "topic_alias_maximum = 65536",
            "mqtt.topic_alias_maximum",
            "65536",
            "must be 0..=65535",
        ),
        (
            "fd_reserve = -1",
            "mqtt.fd_reserve",
            "-1",
            "must be 0..=4294967295",
        ),
        (
            "listen = \"localhost:1883\"",
            "mqtt.listen",
            "\"localhost:1883\"",
            LISTEN_HINT,
        ),
    ];
    for (line, key, value, reason) in cases {
        let message = format!("config: invalid value for `{key}`: {value} ({reason})");
        assert_eq!(error(&format!("[mqtt]\n{line}")), message, "for {line:?}");
    }
}

#[test]
fn bad_limits_are_named_with_their_value() {
    assert_eq!(
        error("[limits]\nconnect_burst = 0"),
        "config: invalid value for `limits.connect_burst`: 0 (must be 1..=4294967295)"
    );
    assert_eq!(
        error("[limits]\nmax_topic_length = 65536"),
        "config: invalid value for `limits.max_topic_length`: 65536 (must be 1..=65535)"
    );
    assert_eq!(
        error("[limits]\nmemory_high_water = \"1G\""),
        "config: invalid value for `limits.memory_high_water`: \"1G\" (expected an integer)"
    );
    assert_eq!(
        error("[limits]\nmax_subscription_bytes_per_client = -4"),
        "config: invalid value for `limits.max_subscription_bytes_per_client`: -4 (must be >= 0)"
    );
    assert_eq!(
        error("[limits]\nmax_publish_rate = -1"),
        "config: invalid value for `limits.max_publish_rate`: -1 (must be 0..=4294967295)"
    );
}
