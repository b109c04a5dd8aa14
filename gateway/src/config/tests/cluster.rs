//! Tests of `[nats]` and `[cluster]`: what a clustered node needs, and every refusal naming its
//! key and value.

use std::path::PathBuf;

use super::error;
use crate::config::Config;

#[test]
fn a_cluster_node_needs_servers_and_a_name() {
    let c = Config::from_toml(
        "[nats]\nservers = [\"nats://127.0.0.1:4222\", \"tls://[::1]:4223\"]\n\
         [cluster]\nenabled = true\nnode_name = \"a\"",
    )
    .unwrap();
    assert!(c.cluster.enabled);
    assert_eq!(c.cluster.node_name, "a");
    assert_eq!(c.cluster.subject_prefix, "gateway");
    assert_eq!(c.nats.servers.len(), 2);
    assert!(c.nats.tls_required());
    assert_eq!(
        error("[cluster]\nenabled = true\nnode_name = \"a\""),
        "config: invalid value for `nats.servers`: [] ([cluster] enabled = true needs at least \
         one NATS server)"
    );
    assert_eq!(
        error("[nats]\nservers = [\"nats://h:4222\"]\n[cluster]\nenabled = true"),
        "config: invalid value for `cluster.node_name`: \"\" ([cluster] enabled = true needs \
         this node's name, unique in the cluster)"
    );
    // Servers alone, without [cluster], are accepted and change nothing.
    let standalone = Config::from_toml("[nats]\nservers = [\"nats://h\"]").unwrap();
    assert!(!standalone.cluster.enabled);
}

#[test]
fn bad_urls_names_and_prefixes_are_named_with_their_value() {
    for url in [
        "http://h:4222",
        "127.0.0.1:4222",
        "nats://",
        "nats://h:0",
        "nats://h:99999",
        "nats://h:4222/path",
        "nats://h :4222",
        "nats://[::1",
    ] {
        let e = error(&format!("[nats]\nservers = [{url:?}]"));
        assert!(
            e.starts_with(&format!(
                "config: invalid value for `nats.servers`: {url:?} (expected a NATS server URL"
            )),
            "{url}: {e}"
        );
    }
    assert!(error("[nats]\nservers = \"nats://h\"").contains("`nats.servers`: \"nats://h\""));
    for name in ["a.b", "a*", ">", "with space", ""] {
        let text = format!("[cluster]\nsubject_prefix = {name:?}");
        assert!(
            error(&text).starts_with(&format!(
                "config: invalid value for `cluster.subject_prefix`: {name:?}"
            )),
            "{name}"
        );
    }
    assert!(error("[cluster]\nnode_name = \"a.b\"")
        .starts_with("config: invalid value for `cluster.node_name`: \"a.b\""));
    assert!(error("[cluster]\nnodename = \"a\"").contains("unknown key `cluster.nodename`"));
}

#[test]
fn credentials_and_tls_files_come_in_pairs() {
    assert_eq!(
        error("[nats]\nuser = \"u\""),
        "config: invalid value for `nats.password`: \"\" (nats.user is set: both or neither)"
    );
    assert_eq!(
        error("[nats]\ntls_key = \"k.pem\""),
        "config: invalid value for `nats.tls_cert`: \"\" (nats.tls_key is set: both or neither)"
    );
    assert!(
        error("[nats]\ntoken = \"t\"\nuser = \"u\"\npassword = \"p\"")
            .starts_with("config: invalid value for `nats.token`: \"t\"")
    );
    let c = Config::from_toml(
        "[nats]\nuser = \"u\"\npassword = \"p\"\ntls_ca = \"ca.pem\"\ntls_cert = \"c.pem\"\n\
         tls_key = \"k.pem\"\ncreds_file = \"\"",
    )
    .unwrap();
    assert_eq!(c.nats.tls_ca, Some(PathBuf::from("ca.pem")));
    assert_eq!(c.nats.creds_file, None);
    assert!(c.nats.tls_required());
    // Configs built in code meet the same rules.
    let mut c = Config::default();
    c.cluster.enabled = true;
    c.cluster.node_name = "n1".to_owned();
    c.nats.servers = vec!["nats//oops".to_owned()];
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("`nats.servers`: \"nats//oops\""));
}
