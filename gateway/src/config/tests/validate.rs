//! Tests of the rules: the admin token, the log level, `Config::validate` on configs built in
//! code, and the HTTP endpoint and MQTT listener not sharing a fixed address.

use std::time::Duration;

use super::error;
use crate::config::validate::{log_filter, ADMIN_TOKEN_HINT, LEVEL_HINT};
use crate::config::Config;

#[test]
fn admin_token_and_sys_interval_are_checked_and_named_with_their_value() {
    assert_eq!(
        Config::from_toml("[http]\nadmin_token = \"\"")
            .unwrap()
            .http
            .admin_token,
        None
    );
    for token in [
        "short",
        "has a space in the token",
        "tab\tseparated-token-value",
    ] {
        assert_eq!(
            error(&format!("[http]\nadmin_token = {token:?}")),
            format!("config: invalid value for `http.admin_token`: {token:?} ({ADMIN_TOKEN_HINT})")
        );
    }
    assert_eq!(
        error("[sys]\ninterval = 86401"),
        "config: invalid value for `sys.interval`: 86401 (must be 0..=86400)"
    );
    assert_eq!(
        error("[sys]\ninterval = \"10\""),
        "config: invalid value for `sys.interval`: \"10\" (expected an integer)"
    );
    let mut c = Config::default();
    c.http.admin_token = Some("x".to_owned());
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        format!("config: invalid value for `http.admin_token`: \"x\" ({ADMIN_TOKEN_HINT})")
    );
}

#[test]
fn plain_levels_and_directives_are_accepted() {
    for level in [
        "error",
        "warn",
        "info",
        "debug",
        "trace",
        "gateway=trace,info",
    ] {
        let text = format!("[log]\nlevel = {level:?}");
        assert_eq!(Config::from_toml(&text).unwrap().log.level, level);
    }
}

#[test]
fn a_span_field_value_in_the_log_level_is_a_literal_not_a_regex() {
    // As a regex this value needs more than 2 GiB to compile (the `config` fuzz target ran
    // out of memory on one like it); as a literal it is a few bytes.
    let level = format!(
        "n@s^e[ts= {{)%]=1-i6j]]]5{}+++++A++^{}<:+5+?.{}}}w],[]]],[t= 9tt",
        ".".repeat(111),
        "+".repeat(14),
        "+".repeat(10)
    );
    let started = std::time::Instant::now();
    let message = error(&format!("[log]\nlevel = {level:?}"));
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert!(
        message.starts_with("config: invalid value for `log.level`"),
        "{message}"
    );
    let level = "gateway[session{client_id=dev.1+}]=debug";
    let text = format!("[log]\nlevel = {level:?}");
    assert_eq!(Config::from_toml(&text).unwrap().log.level, level);
}

#[test]
fn a_directive_repeated_with_another_level_is_taken_once() {
    for level in [
        "gateway[session{client_id=d1}]=info,gateway[session{client_id=d1}]=debug",
        "info,gateway=warn,debug,gateway=trace",
    ] {
        let text = format!("[log]\nlevel = {level:?}");
        assert_eq!(Config::from_toml(&text).unwrap().log.level, level);
    }
    let filter = log_filter("a[s{f=x}]=info,b=warn,a[s{f=x}]=debug").unwrap();
    assert_eq!(filter.to_string(), "b=warn,a[s{f=x}]=debug");
}

#[test]
fn bad_http_listen_and_log_level_are_named_with_their_value() {
    assert_eq!(
        error("[http]\nlisten = \"nowhere\""),
        "config: invalid value for `http.listen`: \"nowhere\" (expected an IP address and \
         port such as 127.0.0.1:9883, or \"off\")"
    );
    assert_eq!(
        error("[log]\nlevel = \"\""),
        format!("config: invalid value for `log.level`: \"\" ({LEVEL_HINT})")
    );
    let message = error("[log]\nlevel = \"gateway=loud\"");
    assert!(
        message.starts_with(&format!(
            "config: invalid value for `log.level`: \"gateway=loud\" ({LEVEL_HINT}: "
        )),
        "{message}"
    );
    assert!(!message.contains('\n'));
    // tracing-subscriber's own parser panics on this one (the `config` fuzz target found it).
    let message = error("[log]\nlevel = \" \\uaeec[\"");
    assert!(
        message.starts_with("config: invalid value for `log.level`: \" \u{aeec}[\"")
            && message.contains("printable ASCII only"),
        "{message}"
    );
}

#[test]
fn validate_rejects_values_built_in_code() {
    let mut c = Config::default();
    c.mqtt.receive_maximum = 0;
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "config: invalid value for `mqtt.receive_maximum`: 0 (must be 1..=65535)"
    );
    let mut c = Config::default();
    c.mqtt.connect_timeout = Duration::ZERO;
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "config: invalid value for `mqtt.connect_timeout`: 0 (must be > 0 seconds)"
    );
    let mut c = Config::default();
    c.mqtt.packet_timeout = Duration::ZERO;
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "config: invalid value for `mqtt.packet_timeout`: 0 (must be > 0 seconds)"
    );
    let mut c = Config::default();
    c.mqtt.tcp_keepalive_count = 0;
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "config: invalid value for `mqtt.tcp_keepalive_count`: 0 (must be 1..=127)"
    );
    let mut c = Config::default();
    c.log.level = "nope=nope".to_owned();
    assert!(c.validate().is_err());
}

#[test]
fn http_and_mqtt_may_not_share_a_fixed_address() {
    assert_eq!(
        error("[mqtt]\nlisten = \"127.0.0.1:9883\""),
        "config: invalid value for `http.listen`: \"127.0.0.1:9883\" \
         (same address as mqtt.listen)"
    );
    let both_ephemeral = "[mqtt]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"";
    Config::from_toml(both_ephemeral).unwrap();
}
