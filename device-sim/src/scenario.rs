//! Scenario files and the resolved settings of a run: the file is read, flags override it, and
//! defaults fill the rest. Everything is validated here, against the bounds the load loops
//! keep (such as a device's in-flight limit), so they never see bad input.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cli::RunArgs;
use crate::codec::Protocol;
use crate::payload::{Payload, PayloadError};

/// Unacknowledged messages per device before further ones are skipped (and counted) when no
/// `--window` is set: a broker that stops acknowledging must not make the simulator grow
/// without bound.
pub const MAX_INFLIGHT: usize = 64;

/// The largest closed-loop `--window`: deep enough for an ingest burst (the benchmark's
/// 100 publishers x 100 in flight), and still a bound on what a device keeps.
pub const MAX_WINDOW: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    // Causes are part of the message (one line for the user), not chained sources.
    #[error("cannot read scenario {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("scenario {path}: {error}")]
    Parse {
        path: String,
        error: toml::de::Error,
    },
    #[error("invalid duration for `{key}`: {value:?} ({error})")]
    Duration {
        key: &'static str,
        value: String,
        error: humantime::DurationError,
    },
    #[error("invalid value for `{key}`: {value} ({why})")]
    Invalid {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("cannot resolve target {target:?}: {why}")]
    Target { target: String, why: String },
    #[error("payload: {0}")]
    Payload(#[from] PayloadError),
}

/// A payload given in TOML as a number (size) or a string (size or JSON template).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PayloadValue {
    Size(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    targets: Option<Vec<String>>,
    devices: Option<u64>,
    connect_rate: Option<f64>,
    connect_window: Option<u32>,
    client_id: Option<String>,
    topic: Option<String>,
    payload: Option<PayloadValue>,
    publish_interval: Option<String>,
    window: Option<u32>,
    jitter: Option<String>,
    qos: Option<u8>,
    protocol: Option<String>,
    clean_session: Option<bool>,
    session_expiry: Option<String>,
    subscriber_clean_session: Option<bool>,
    subscriber_session_expiry: Option<String>,
    keep_alive: Option<String>,
    subscribers: Option<u32>,
    subscriber_client_id: Option<String>,
    share_group: Option<String>,
    subscribe_filter: Option<String>,
    cluster: Option<bool>,
    subscriber_targets: Option<Vec<String>>,
    duration: Option<String>,
    drain: Option<String>,
    connect_timeout: Option<String>,
    source_ips: Option<String>,
    username: Option<String>,
    password: Option<String>,
    tls: Option<bool>,
    cafile: Option<PathBuf>,
    cert: Option<String>,
    key: Option<String>,
    insecure: Option<bool>,
    tls_server_name: Option<String>,
    tls_resumption: Option<bool>,
    disconnect: Option<DisconnectFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectFile {
    at: String,
    share: f64,
    who: Option<Who>,
    offline_for: Option<String>,
    backoff_min: Option<String>,
    backoff_max: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Who {
    Devices,
    Subscribers,
}

impl Settings {
    /// Devices publish whenever their window has room, not on an interval.
    pub fn closed_loop(&self) -> bool {
        self.window > 0 && self.publish_interval.is_none()
    }
}

/// A share of the devices or subscribers dropped at once, offline for a while, reconnecting
/// with exponential backoff and full jitter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Disconnect {
    pub at: Duration,
    pub share: f64,
    pub who: Who,
    pub offline_for: Duration,
}

/// How devices and subscribers speak TLS (`--tls`); each process builds its client from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsSettings {
    pub cafile: Option<PathBuf>,
    /// Client certificate and key paths; `%i` becomes the device number (`sub-K` for
    /// subscriber K).
    pub cert: Option<String>,
    pub key: Option<String>,
    pub insecure: bool,
    pub resumption: bool,
    /// Per target: the name its certificate is verified against (and SNI when a DNS name).
    pub server_names: Vec<String>,
}

/// Everything a process needs to simulate its part of the fleet; sent to workers as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub targets: Vec<SocketAddr>,
    pub devices: u64,
    pub connect_rate: f64,
    /// First handshakes in flight across the fleet; 0 for no bound.
    pub connect_window: u32,
    pub client_id: String,
    pub topic: String,
    pub payload: Payload,
    pub publish_interval: Option<Duration>,
    /// Closed-loop window (see `window`); 0 when off.
    pub window: u32,
    pub jitter: Duration,
    pub qos: u8,
    pub protocol: Protocol,
    pub clean_session: bool,
    pub session_expiry: Option<u32>,
    /// The subscribers' own, defaulting to the devices' (`clean_session`, `session_expiry`).
    pub subscriber_clean_session: bool,
    pub subscriber_session_expiry: Option<u32>,
    pub keep_alive: u16,
    pub subscribers: u32,
    pub subscriber_client_id: String,
    pub share_group: Option<String>,
    pub subscribe_filter: String,
    pub cluster: bool,
    /// Where the subscribers connect when not to `targets` (`--subscriber-target`; empty:
    /// the subscribers share `targets` with the devices).
    pub subscriber_targets: Vec<SocketAddr>,
    pub duration: Duration,
    pub drain: Duration,
    pub connect_timeout: Duration,
    pub source_ips: Vec<Ipv4Addr>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Plain TCP when absent.
    pub tls: Option<TlsSettings>,
    pub disconnect: Option<Disconnect>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

fn parse_duration(key: &'static str, value: &str) -> Result<Duration, ScenarioError> {
    humantime::parse_duration(value).map_err(|error| ScenarioError::Duration {
        key,
        value: value.to_string(),
        error,
    })
}

fn opt_duration(
    key: &'static str,
    flag: Option<Duration>,
    file: Option<&String>,
) -> Result<Option<Duration>, ScenarioError> {
    match (flag, file) {
        (Some(d), _) => Ok(Some(d)),
        (None, Some(s)) => parse_duration(key, s).map(Some),
        (None, None) => Ok(None),
    }
}

fn invalid(key: &'static str, value: impl ToString, why: &'static str) -> ScenarioError {
    ScenarioError::Invalid {
        key,
        value: value.to_string(),
        why,
    }
}

/// `127.0.0.2-127.0.0.60`, `127.0.0.2,127.0.0.3` or a mix of both.
pub fn parse_source_ips(spec: &str) -> Result<Vec<Ipv4Addr>, ScenarioError> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || invalid("source_ips", part, "expected A.B.C.D or A.B.C.D-E.F.G.H");
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let first: Ipv4Addr = first.parse().map_err(|_| bad())?;
        let last: Ipv4Addr = last.parse().map_err(|_| bad())?;
        let (first, last) = (u32::from(first), u32::from(last));
        if last < first || last - first > 1 << 20 {
            return Err(bad());
        }
        out.extend((first..=last).map(Ipv4Addr::from));
    }
    Ok(out)
}

fn resolve_target(target: &str) -> Result<SocketAddr, ScenarioError> {
    let err = |why: String| ScenarioError::Target {
        target: target.to_string(),
        why,
    };
    let mut addrs = target.to_socket_addrs().map_err(|e| err(e.to_string()))?;
    // Source addresses are IPv4, so prefer an IPv4 address of the target.
    let all: Vec<SocketAddr> = addrs.by_ref().collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| err("no address".to_string()))
}

/// The host of `HOST:PORT` (`[V6]:PORT` too), for the TLS server name.
fn host_of(target: &str) -> &str {
    if let Some(rest) = target.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    target.rsplit_once(':').map_or(target, |(host, _)| host)
}

/// The TLS settings of the flags over the file, when TLS is on; TLS options without it are
/// refused rather than silently connecting in the clear.
fn resolve_tls(
    args: &RunArgs,
    file: &ScenarioFile,
    targets: &[String],
) -> Result<Option<TlsSettings>, ScenarioError> {
    let cafile = args.cafile.clone().or(file.cafile.clone());
    let cert = args.cert.clone().or(file.cert.clone());
    let key = args.key.clone().or(file.key.clone());
    let insecure = args.insecure.or(file.insecure).unwrap_or(false);
    let server_name = args
        .tls_server_name
        .clone()
        .or(file.tls_server_name.clone());
    let resumption = args.tls_resumption.or(file.tls_resumption).unwrap_or(true);
    if !args.tls.or(file.tls).unwrap_or(false) {
        let given = [
            ("cafile", cafile.is_some()),
            ("cert", cert.is_some()),
            ("key", key.is_some()),
            ("insecure", insecure),
            ("tls_server_name", server_name.is_some()),
        ];
        if let Some((name, _)) = given.iter().find(|(_, set)| *set) {
            return Err(invalid(name, "(given)", "needs tls (--tls)"));
        }
        return Ok(None);
    }
    if cert.is_some() != key.is_some() {
        return Err(invalid(
            if cert.is_some() { "key" } else { "cert" },
            "(missing)",
            "cert and key go together",
        ));
    }
    if cafile.is_none() && !insecure {
        return Err(invalid(
            "cafile",
            "(missing)",
            "tls needs a CA file to verify the broker, or insecure",
        ));
    }
    if cafile.is_some() && insecure {
        return Err(invalid(
            "insecure",
            true,
            "insecure verifies nothing: the cafile would be ignored",
        ));
    }
    let server_names = targets
        .iter()
        .map(|t| {
            server_name
                .clone()
                .unwrap_or_else(|| host_of(t).to_string())
        })
        .collect();
    Ok(Some(TlsSettings {
        cafile,
        cert,
        key,
        insecure,
        resumption,
        server_names,
    }))
}

/// A client id or topic for one device: `{id}` becomes its number.
pub fn render(template: &str, id: u64) -> String {
    template.replace("{id}", &id.to_string())
}

/// The subscription filter derived from a topic template: every `{id}` level becomes `+`.
pub fn wildcard_filter(topic: &str) -> String {
    topic
        .split('/')
        .map(|level| if level.contains("{id}") { "+" } else { level })
        .collect::<Vec<_>>()
        .join("/")
}

impl Settings {
    /// Reads the scenario (if any), applies the flags over it and validates the result.
    pub fn resolve(args: &RunArgs) -> Result<Settings, ScenarioError> {
        let file = match &args.scenario {
            Some(path) => read_file(path)?,
            None => ScenarioFile::default(),
        };
        let targets_text = if !args.targets.is_empty() {
            args.targets.clone()
        } else {
            file.targets
                .clone()
                .unwrap_or_else(|| vec!["127.0.0.1:1883".to_string()])
        };
        if targets_text.is_empty() {
            return Err(invalid("targets", "[]", "at least one target"));
        }
        let targets = targets_text
            .iter()
            .map(|t| resolve_target(t))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = resolve_tls(args, &file, &targets_text)?;

        let devices = args.devices.or(file.devices).unwrap_or(100);
        let connect_rate = args.connect_rate.or(file.connect_rate).unwrap_or(1000.0);
        if !(connect_rate > 0.0 && connect_rate.is_finite()) {
            return Err(invalid("connect_rate", connect_rate, "must be > 0"));
        }
        let connect_window = args.connect_window.or(file.connect_window).unwrap_or(0);
        let client_id = args
            .client_id
            .clone()
            .or(file.client_id)
            .unwrap_or_else(|| "dev-{id}".to_string());
        if !client_id.contains("{id}") {
            return Err(invalid("client_id", client_id, "must contain {id}"));
        }
        let topic = args
            .topic
            .clone()
            .or(file.topic)
            .unwrap_or_else(|| "devices/{id}/telemetry".to_string());
        if topic.contains(['+', '#']) || topic.is_empty() {
            return Err(invalid("topic", topic, "a topic name without wildcards"));
        }
        let payload_text = match (&args.payload, file.payload) {
            (Some(p), _) => p.clone(),
            (None, Some(PayloadValue::Size(n))) => n.to_string(),
            (None, Some(PayloadValue::Text(t))) => t,
            (None, None) => "64".to_string(),
        };
        let payload = Payload::parse(&payload_text)?;

        let publish_interval = opt_duration(
            "publish_interval",
            args.publish_interval,
            file.publish_interval.as_ref(),
        )?
        .unwrap_or(Duration::from_secs(1));
        let publish_interval = (!publish_interval.is_zero()).then_some(publish_interval);
        let jitter = opt_duration("jitter", args.jitter, file.jitter.as_ref())?.unwrap_or_default();
        if let Some(interval) = publish_interval {
            if jitter >= interval {
                return Err(invalid(
                    "jitter",
                    humantime::format_duration(jitter),
                    "must be below publish_interval",
                ));
            }
        }
        let qos = args.qos.or(file.qos).unwrap_or(1);
        if qos > 2 {
            return Err(invalid("qos", qos, "0, 1 or 2"));
        }
        let window = args.window.or(file.window).unwrap_or(0);
        if window as usize > MAX_WINDOW {
            return Err(invalid(
                "window",
                window,
                "at most 1024, a device's in-flight bound",
            ));
        }
        let protocol = match args
            .protocol
            .as_deref()
            .or(file.protocol.as_deref())
            .unwrap_or("3.1.1")
        {
            "3.1.1" | "4" | "v4" => Protocol::V311,
            "5" | "5.0" | "v5" => Protocol::V5,
            other => return Err(invalid("protocol", other, "3.1.1 or 5")),
        };
        let clean_session = args.clean_session.or(file.clean_session).unwrap_or(true);
        let session_expiry = opt_duration(
            "session_expiry",
            args.session_expiry,
            file.session_expiry.as_ref(),
        )?
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        let subscriber_clean_session = args
            .subscriber_clean_session
            .or(file.subscriber_clean_session)
            .unwrap_or(clean_session);
        let subscriber_session_expiry = opt_duration(
            "subscriber_session_expiry",
            args.subscriber_session_expiry,
            file.subscriber_session_expiry.as_ref(),
        )?
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .or(session_expiry);
        let keep_alive = opt_duration("keep_alive", args.keep_alive, file.keep_alive.as_ref())?
            .unwrap_or(Duration::from_secs(60));
        let keep_alive = u16::try_from(keep_alive.as_secs())
            .map_err(|_| invalid("keep_alive", keep_alive.as_secs(), "at most 65535 s"))?;
        if keep_alive == 0 {
            return Err(invalid("keep_alive", 0, "at least 1 s"));
        }
        let subscribers = args.subscribers.or(file.subscribers).unwrap_or(1);
        let subscriber_client_id = file
            .subscriber_client_id
            .unwrap_or_else(|| "device-sim-sub-{id}".to_string());
        let share_group = args.share_group.clone().or(file.share_group);
        let base_filter = args
            .subscribe_filter
            .clone()
            .or(file.subscribe_filter)
            .unwrap_or_else(|| wildcard_filter(&topic));
        let subscribe_filter = match &share_group {
            Some(group) => format!("$share/{group}/{base_filter}"),
            None => base_filter,
        };
        let cluster = args.cluster.or(file.cluster).unwrap_or(false);
        let subscriber_targets_text = if !args.subscriber_targets.is_empty() {
            args.subscriber_targets.clone()
        } else {
            file.subscriber_targets.clone().unwrap_or_default()
        };
        if !subscriber_targets_text.is_empty() {
            // Without a cluster a subscriber verifies only its own broker's devices, which a
            // node of its own would not have; over TLS the server names follow `targets`.
            if !cluster {
                return Err(invalid(
                    "subscriber_targets",
                    subscriber_targets_text.join(","),
                    "needs cluster (--cluster)",
                ));
            }
            if tls.is_some() {
                return Err(invalid(
                    "subscriber_targets",
                    subscriber_targets_text.join(","),
                    "not with tls",
                ));
            }
        }
        let subscriber_targets = subscriber_targets_text
            .iter()
            .map(|t| resolve_target(t))
            .collect::<Result<Vec<_>, _>>()?;
        let duration = opt_duration("duration", args.duration, file.duration.as_ref())?
            .unwrap_or(Duration::from_secs(10));
        let drain = opt_duration("drain", args.drain, file.drain.as_ref())?
            .unwrap_or(Duration::from_secs(3));
        let connect_timeout = opt_duration(
            "connect_timeout",
            args.connect_timeout,
            file.connect_timeout.as_ref(),
        )?
        .unwrap_or(Duration::from_secs(10));
        let source_ips = match args.source_ips.as_deref().or(file.source_ips.as_deref()) {
            Some(spec) => parse_source_ips(spec)?,
            None => Vec::new(),
        };
        let username = args.username.clone().or(file.username);
        let password = args.password.clone().or(file.password);
        let (disconnect, backoff_min, backoff_max) = match file.disconnect {
            Some(d) => {
                if !(0.0..=1.0).contains(&d.share) {
                    return Err(invalid("disconnect.share", d.share, "between 0 and 1"));
                }
                let offline_for =
                    opt_duration("disconnect.offline_for", None, d.offline_for.as_ref())?
                        .unwrap_or_default();
                let backoff_min =
                    opt_duration("disconnect.backoff_min", None, d.backoff_min.as_ref())?;
                let backoff_max =
                    opt_duration("disconnect.backoff_max", None, d.backoff_max.as_ref())?;
                (
                    Some(Disconnect {
                        at: parse_duration("disconnect.at", &d.at)?,
                        share: d.share,
                        who: d.who.unwrap_or(Who::Devices),
                        offline_for,
                    }),
                    backoff_min,
                    backoff_max,
                )
            }
            None => (None, None, None),
        };
        let backoff_min = backoff_min.unwrap_or(Duration::from_millis(100));
        let backoff_max = backoff_max.unwrap_or(Duration::from_secs(5));
        if backoff_min.is_zero() || backoff_max < backoff_min {
            return Err(invalid(
                "disconnect.backoff_max",
                humantime::format_duration(backoff_max),
                "backoff_min > 0 and backoff_max >= backoff_min",
            ));
        }
        let settings = Settings {
            targets,
            devices,
            connect_rate,
            connect_window,
            client_id,
            topic,
            payload,
            publish_interval,
            window,
            jitter,
            qos,
            protocol,
            clean_session,
            session_expiry,
            subscriber_clean_session,
            subscriber_session_expiry,
            keep_alive,
            subscribers,
            subscriber_client_id,
            share_group,
            subscribe_filter,
            cluster,
            subscriber_targets,
            duration,
            drain,
            connect_timeout,
            source_ips,
            username,
            password,
            tls,
            disconnect,
            backoff_min,
            backoff_max,
        };
        // At QoS 0 only the subscribers can complete a message.
        if settings.window > 0
            && settings.qos == 0
            && (0..settings.targets.len()).any(|t| settings.deliveries_per_message(t) == 0)
        {
            return Err(invalid(
                "window",
                settings.window,
                "at QoS 0 needs a subscriber seeing every target",
            ));
        }
        Ok(settings)
    }

    /// Subscribers that receive one message of a device on `target` (none, one per group,
    /// or every subscriber on the same broker or cluster).
    pub fn deliveries_per_message(&self, target: usize) -> u64 {
        let t = self.targets.len() as u64;
        let on_target = if self.cluster {
            u64::from(self.subscribers)
        } else {
            (0..u64::from(self.subscribers))
                .filter(|k| k % t == target as u64)
                .count() as u64
        };
        if self.share_group.is_some() {
            on_target.min(1)
        } else {
            on_target
        }
    }
}

fn read_file(path: &Path) -> Result<ScenarioFile, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|error| ScenarioError::Read {
        path: path.display().to_string(),
        error,
    })?;
    toml::from_str(&text).map_err(|error| ScenarioError::Parse {
        path: path.display().to_string(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ranges_expand() {
        let ips = parse_source_ips("127.0.0.2-127.0.0.4,127.0.1.1").expect("valid");
        assert_eq!(ips.len(), 4);
        assert_eq!(ips[3], Ipv4Addr::new(127, 0, 1, 1));
        assert!(parse_source_ips("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_source_ips("nonsense").is_err());
    }

    #[test]
    fn wildcard_replaces_id_levels() {
        assert_eq!(
            wildcard_filter("devices/{id}/telemetry"),
            "devices/+/telemetry"
        );
        assert_eq!(wildcard_filter("t/dev-{id}"), "t/+");
    }

    #[test]
    fn every_scenario_file_resolves() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/scenarios");
        for name in [
            "smoke",
            "fleet-10k",
            "reconnect-storm",
            "tls-reconnect-storm",
            "persistent-offline",
            "million",
        ] {
            let args = RunArgs {
                scenario: Some(dir.join(format!("{name}.toml"))),
                ..RunArgs::default()
            };
            Settings::resolve(&args).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn flags_override_the_file_and_bad_values_are_named() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/scenarios");
        let args = RunArgs {
            scenario: Some(dir.join("smoke.toml")),
            devices: Some(7),
            qos: Some(0),
            ..RunArgs::default()
        };
        let s = Settings::resolve(&args).expect("valid");
        assert_eq!((s.devices, s.qos), (7, 0));
        let bad = RunArgs {
            client_id: Some("no-placeholder".into()),
            ..RunArgs::default()
        };
        let err = Settings::resolve(&bad).expect_err("rejected");
        assert!(err.to_string().contains("client_id"), "{err}");
    }

    #[test]
    fn subscriber_targets_need_a_cluster_and_no_tls() {
        let args = RunArgs {
            targets: vec!["127.0.0.1:1001".into(), "127.0.0.1:1002".into()],
            subscriber_targets: vec!["127.0.0.1:1003".into()],
            cluster: Some(true),
            ..RunArgs::default()
        };
        let s = Settings::resolve(&args).expect("valid");
        assert_eq!(
            s.subscriber_targets,
            vec!["127.0.0.1:1003".parse().unwrap()]
        );
        let err = |args: RunArgs| Settings::resolve(&args).unwrap_err().to_string();
        let alone = err(RunArgs {
            cluster: None,
            ..args.clone()
        });
        assert!(
            alone.contains("subscriber_targets") && alone.contains("--cluster"),
            "{alone}"
        );
        let tls = err(RunArgs {
            tls: Some(true),
            insecure: Some(true),
            ..args
        });
        assert!(tls.contains("not with tls"), "{tls}");
    }

    #[test]
    fn tls_verifies_the_target_host_and_its_options_need_tls() {
        let targets = vec!["localhost:8883".to_string(), "127.0.0.1:8883".to_string()];
        let on = RunArgs {
            targets: targets.clone(),
            tls: Some(true),
            insecure: Some(true),
            ..RunArgs::default()
        };
        let names = |args: &RunArgs| {
            Settings::resolve(args)
                .expect("valid")
                .tls
                .expect("TLS on")
                .server_names
        };
        assert_eq!(names(&on), ["localhost", "127.0.0.1"]);
        let named = RunArgs {
            tls_server_name: Some("broker.example".into()),
            ..on.clone()
        };
        assert_eq!(names(&named), ["broker.example", "broker.example"]);
        assert_eq!(host_of("[::1]:8883"), "::1");
        assert!(Settings::resolve(&RunArgs::default())
            .expect("valid")
            .tls
            .is_none());
        let refused = [
            (
                RunArgs {
                    targets: targets.clone(),
                    cafile: Some("ca.pem".into()),
                    ..RunArgs::default()
                },
                "cafile",
            ),
            (
                RunArgs {
                    insecure: None,
                    ..on.clone()
                },
                "cafile",
            ),
            (
                RunArgs {
                    cert: Some("dev-%i.pem".into()),
                    ..on.clone()
                },
                "key",
            ),
            (
                RunArgs {
                    cafile: Some("ca.pem".into()),
                    ..on.clone()
                },
                "insecure",
            ),
        ];
        for (args, key) in refused {
            let err = Settings::resolve(&args).expect_err("refused");
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn a_window_is_bounded_and_at_qos0_needs_a_subscriber() {
        let window = |window, qos, subscribers| {
            Settings::resolve(&RunArgs {
                window: Some(window),
                qos: Some(qos),
                subscribers: Some(subscribers),
                ..RunArgs::default()
            })
        };
        assert_eq!(window(1024, 1, 0).expect("valid").window, 1024);
        assert!(window(10, 0, 1).is_ok());
        for (w, q, s) in [(1025, 1, 1), (10, 0, 0)] {
            let err = window(w, q, s).expect_err("rejected");
            assert!(err.to_string().contains("window"), "{err}");
        }
    }
}
