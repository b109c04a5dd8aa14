//! Tests of the defaults: an empty file gives them, they are the documented values, and the
//! shipped `config/gateway.toml` spells out exactly them.

use std::time::Duration;

use toml::Table;

use crate::config::Config;

#[test]
fn empty_text_gives_defaults() {
    assert_eq!(Config::from_toml("").unwrap(), Config::default());
    assert_eq!(
        Config::from_toml("[mqtt]\n[http]\n[log]\n").unwrap(),
        Config::default()
    );
}

#[test]
fn defaults_match_the_documented_values() {
    let c = Config::default();
    assert_eq!(c.mqtt.listen, "127.0.0.1:1883".parse().unwrap());
    assert_eq!(c.mqtt.max_keepalive, 65535);
    assert_eq!(c.mqtt.receive_maximum, 256);
    assert_eq!(c.mqtt.max_packet_size, 1_048_576);
    assert_eq!(c.mqtt.max_queued_messages, 1000);
    assert_eq!(c.mqtt.max_queued_bytes, 16 << 20);
    assert!(!c.mqtt.queue_qos0_offline);
    assert_eq!(c.mqtt.max_inflight, 32);
    assert_eq!(c.mqtt.session_expiry_max, 172_800);
    assert_eq!(c.mqtt.retained_max, 1_000_000);
    assert_eq!(c.mqtt.retained_max_bytes, 1 << 30);
    assert_eq!(c.mqtt.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.mqtt.packet_timeout, Duration::from_secs(60));
    assert_eq!(c.mqtt.idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(
        (
            c.mqtt.tcp_keepalive_idle,
            c.mqtt.tcp_keepalive_interval,
            c.mqtt.tcp_keepalive_count
        ),
        (300, 30, 4)
    );
    let never = Config::from_toml("[mqtt]\nidle_timeout = 0").unwrap();
    assert_eq!(never.mqtt.idle_timeout, None);
    assert_eq!(c.mqtt.max_topic_levels, 64);
    assert_eq!(c.mqtt.topic_alias_maximum, 64);
    assert!(c.mqtt.outbound_topic_aliases);
    assert_eq!(c.mqtt.fd_reserve, 64);
    assert_eq!(c.mqtt.hibernate_after, Some(Duration::from_secs(10)));
    let never = Config::from_toml("[mqtt]\nhibernate_after = 0").unwrap();
    assert_eq!(never.mqtt.hibernate_after, None);
    assert_eq!(c.http.listen, Some("127.0.0.1:9883".parse().unwrap()));
    assert_eq!(c.log.level, "info");
    assert_eq!(c.limits.max_connections, 0);
    assert_eq!(c.limits.connect_rate, 2000);
    assert_eq!(c.limits.connect_burst, 2000);
    assert_eq!(c.limits.max_handshakes, 10_000);
    assert_eq!(c.limits.max_publish_rate, 0);
    assert_eq!(c.limits.max_publish_bytes_rate, 0);
    assert_eq!(c.limits.max_subscriptions_per_client, 10_000);
    assert_eq!(c.limits.max_subscription_bytes_per_client, 8 << 20);
    assert_eq!(c.limits.max_retained_backlog, 100_000);
    assert_eq!(c.limits.max_retained_backlog_bytes, 16 << 20);
    assert_eq!(c.limits.max_topic_length, 1024);
    assert_eq!(c.limits.memory_high_water, 0);
    c.validate().unwrap();
}

#[test]
fn shipped_file_is_exactly_the_defaults_and_lists_every_key() {
    let text = include_str!("../../../../config/gateway.toml");
    assert_eq!(Config::from_toml(text).unwrap(), Config::default());
    // Parsing alone would accept a file that omits keys; the file is meant to document all.
    let table: Table = text.parse().unwrap();
    let count = |section: &str| table[section].as_table().unwrap().len();
    assert_eq!(table.len(), 9);
    assert_eq!(count("mqtt"), 22);
    assert_eq!(count("http"), 2);
    assert_eq!(count("sys"), 1);
    assert_eq!(count("log"), 1);
    assert_eq!(count("auth"), 3);
    assert_eq!(count("limits"), 12);
    assert_eq!(count("storage"), 4);
    assert_eq!(count("nats"), 8);
    assert_eq!(count("cluster"), 3);
}
