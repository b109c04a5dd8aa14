//! Tests of loading: every key and `[[listeners]]` table is read, unknown keys and syntax errors
//! are reported on one line, command-line overrides behave like the file, and a missing file is
//! named with the OS reason.

use std::time::Duration;

use super::error;
use crate::config::values::LISTEN_HINT;
use crate::config::{
    AuthConfig, ClusterConfig, Config, HttpConfig, LimitsConfig, ListenerKind, LogConfig,
    MqttConfig, NatsConfig, StorageConfig, StorageSync, SysConfig,
};

#[test]
fn listeners_are_parsed_and_checked() {
    let text = r#"
        [[listeners]]
        kind = "tls"
        bind = "0.0.0.0:8883"
        cert = "server.pem"
        key = "server.key"
        ca = "ca.pem"
        require_client_cert = true
        use_identity_as_username = true
        max_connections = 10
        [[listeners]]
        kind = "ws"
        bind = "127.0.0.1:8080"
        path = "/ws"
    "#;
    let c = Config::from_toml(text).unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[0].kind, ListenerKind::Tls);
    assert!(c.listeners[0].use_identity_as_username);
    assert_eq!(c.listeners[0].max_connections, 10);
    assert_eq!(c.listeners[1].path, "/ws");
    let err = |t: &str| Config::from_toml(t).unwrap_err().to_string();
    assert_eq!(
        err("[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:1\"\n[[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:2\"\nkey = \"k\""),
        "config: invalid value for `listeners[1].cert`: (missing) (a tls or wss listener needs a PEM certificate file)"
    );
    assert!(
        err("[[listeners]]\nkind = \"quic\"\nbind = \"127.0.0.1:1\"")
            .starts_with("config: invalid value for `listeners[0].kind`: \"quic\"")
    );
    assert!(
        err("[[listeners]]\nkind = \"ws\"\nbind = \"127.0.0.1:1\"\npath = \"mqtt\"")
            .starts_with("config: invalid value for `listeners[0].path`: \"mqtt\"")
    );
    assert!(err("[[listeners]]\nkind = \"ws\"\nbind = \"x\"")
        .starts_with("config: invalid value for `listeners[0].bind`: \"x\""));
    assert!(
        err("[[listeners]]\nkind = \"ws\"\nbind = \"127.0.0.1:1\"\nport = 1")
            .starts_with("config: unknown key `listeners[0].port`")
    );
}

#[test]
fn every_key_is_parsed() {
    let text = r#"
        [mqtt]
        listen = "[::]:8883"
        max_keepalive = 120
        receive_maximum = 10
        max_packet_size = 64
        max_queued_messages = 5
        max_queued_bytes = 4096
        queue_qos0_offline = true
        max_inflight = 7
        session_expiry_max = 0
        retained_max = 0
        retained_max_bytes = 123456
        connect_timeout = 2.5
        packet_timeout = 30
        idle_timeout = 600
        tcp_keepalive_idle = 0
        tcp_keepalive_interval = 5
        tcp_keepalive_count = 9
        max_topic_levels = 8
        topic_alias_maximum = 0
        outbound_topic_aliases = false
        fd_reserve = 128
        hibernate_after = 0.5
        [http]
        listen = "0.0.0.0:8080"
        admin_token = "0123456789abcdef-token"
        [sys]
        interval = 0
        [log]
        level = "warn,gateway=debug"
        [auth]
        allow_anonymous = true
        password_file = "/etc/gateway/passwd"
        acl_file = "acl"
        [limits]
        max_connections = 5000
        connect_rate = 0
        connect_burst = 1
        max_handshakes = 0
        max_publish_rate = 50
        max_publish_bytes_rate = 100000
        max_subscriptions_per_client = 0
        max_subscription_bytes_per_client = 65536
        max_retained_backlog = 0
        max_retained_backlog_bytes = 4096
        max_topic_length = 65535
        memory_high_water = 1073741824
        [storage]
        enabled = false
        dir = "/var/lib/gateway"
        commit_delay_ms = 0
        sync = "batched"
        [nats]
        servers = ["nats://a:4222", "nats://b"]
        token = "secret"
        tls_ca = "ca.pem"
        [cluster]
        enabled = true
        node_name = "node-1"
        subject_prefix = "gw_test"
    "#;
    let expected = Config {
        mqtt: MqttConfig {
            listen: "[::]:8883".parse().unwrap(),
            max_keepalive: 120,
            receive_maximum: 10,
            max_packet_size: 64,
            max_queued_messages: 5,
            max_queued_bytes: 4096,
            queue_qos0_offline: true,
            max_inflight: 7,
            session_expiry_max: 0,
            retained_max: 0,
            retained_max_bytes: 123_456,
            connect_timeout: Duration::from_millis(2500),
            packet_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(600)),
            tcp_keepalive_idle: 0,
            tcp_keepalive_interval: 5,
            tcp_keepalive_count: 9,
            max_topic_levels: 8,
            topic_alias_maximum: 0,
            outbound_topic_aliases: false,
            fd_reserve: 128,
            hibernate_after: Some(Duration::from_millis(500)),
        },
        http: HttpConfig {
            listen: Some("0.0.0.0:8080".parse().unwrap()),
            admin_token: Some("0123456789abcdef-token".to_owned()),
        },
        sys: SysConfig { interval: 0 },
        log: LogConfig {
            level: "warn,gateway=debug".to_owned(),
        },
        auth: AuthConfig {
            allow_anonymous: true,
            password_file: Some("/etc/gateway/passwd".into()),
            acl_file: Some("acl".into()),
        },
        limits: LimitsConfig {
            max_connections: 5000,
            connect_rate: 0,
            connect_burst: 1,
            max_handshakes: 0,
            max_publish_rate: 50,
            max_publish_bytes_rate: 100_000,
            max_subscriptions_per_client: 0,
            max_subscription_bytes_per_client: 65536,
            max_retained_backlog: 0,
            max_retained_backlog_bytes: 4096,
            max_topic_length: 65535,
            memory_high_water: 1 << 30,
        },
        storage: StorageConfig {
            enabled: false,
            dir: "/var/lib/gateway".into(),
            commit_delay_ms: 0,
            sync: StorageSync::Batched,
        },
        nats: NatsConfig {
            servers: vec!["nats://a:4222".to_owned(), "nats://b".to_owned()],
            token: Some("secret".to_owned()),
            tls_ca: Some("ca.pem".into()),
            ..NatsConfig::default()
        },
        cluster: ClusterConfig {
            enabled: true,
            node_name: "node-1".to_owned(),
            subject_prefix: "gw_test".to_owned(),
        },
        listeners: Vec::new(),
        ingest: Vec::new(),
    };
    assert_eq!(Config::from_toml(text).unwrap(), expected);
}

#[test]
fn unknown_keys_and_sections_are_named_with_their_value() {
    let cases = [
        (
            "[mqtt]\nmax_keepalvie = 30",
            "config: unknown key `mqtt.max_keepalvie` (value: 30)",
        ),
        (
            "[http]\nport = \"x\"",
            "config: unknown key `http.port` (value: \"x\")",
        ),
        (
            "[log]\nformat = [\"json\", 1]",
            "config: unknown key `log.format` (value: [\"json\", 1])",
        ),
        (
            "[mqqt]\nlisten = \"0.0.0.0:1883\"",
            "config: unknown key `mqqt` (value: { listen = \"0.0.0.0:1883\" })",
        ),
        // A quoted key may hold line breaks: still one line (found by the `config` fuzz target).
        (
            "\"\\r\\nrats.a\" = \"\"",
            "config: unknown key `\\r\\nrats.a` (value: \"\")",
        ),
        (
            "verbose = true",
            "config: unknown key `verbose` (value: true)",
        ),
    ];
    for (text, message) in cases {
        assert_eq!(error(text), message, "for {text:?}");
    }
}

#[test]
fn syntax_errors_are_one_line_with_a_position() {
    let message = error("[mqtt]\nlisten = \n");
    assert!(
        message.starts_with("config: TOML syntax error at line 2, column "),
        "{message}"
    );
    assert!(!message.contains('\n'));
    let message = error("[mqtt]\nmax_inflight = 1\nmax_inflight = 2\n");
    assert!(message.contains("line 3"), "{message}");
    assert!(message.contains("max_inflight"), "{message}");
}

#[test]
fn set_applies_string_keys_like_the_file() {
    let mut c = Config::default();
    c.set("mqtt.listen", "0.0.0.0:1884").unwrap();
    c.set("http.listen", "off").unwrap();
    c.set("log.level", "debug").unwrap();
    assert_eq!(c.mqtt.listen, "0.0.0.0:1884".parse().unwrap());
    assert_eq!(c.http.listen, None);
    assert_eq!(c.log.level, "debug");
    assert_eq!(
        c.set("mqtt.listen", "garbage").unwrap_err().to_string(),
        format!("config: invalid value for `mqtt.listen`: \"garbage\" ({LISTEN_HINT})")
    );
    assert_eq!(
        c.set("listen", "x").unwrap_err().to_string(),
        "config: unknown key `listen` (value: \"x\")"
    );
}

#[test]
fn load_reports_the_path_and_os_reason() {
    let path = std::env::temp_dir().join("gateway-config-test-does-not-exist.toml");
    assert_eq!(
        Config::load(&path).unwrap_err().to_string(),
        format!(
            "config: cannot read {}: No such file or directory",
            path.display()
        )
    );
}

#[test]
fn storage_values_are_checked_and_named() {
    let err = |t: &str| Config::from_toml(t).unwrap_err().to_string();
    assert_eq!(
        err("[storage]\nsync = \"never\""),
        "config: invalid value for `storage.sync`: \"never\" (expected \"always\" or \"batched\")"
    );
    assert!(err("[storage]\ncommit_delay_ms = 5000")
        .starts_with("config: invalid value for `storage.commit_delay_ms`: 5000"));
    assert!(
        err("[storage]\ndir = \"\"").starts_with("config: invalid value for `storage.dir`: \"\"")
    );
    assert!(err("[storage]\nenabled = \"yes\"")
        .starts_with("config: invalid value for `storage.enabled`: \"yes\""));
    assert!(err("[storage]\npath = \"x\"").starts_with("config: unknown key `storage.path`"));
}
