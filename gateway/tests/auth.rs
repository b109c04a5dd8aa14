//! Authentication with real clients: password files written by the real `mosquitto_passwd` and
//! by `gateway passwd`; the CONNACK codes for 3.1.1 and 5.0; anonymous clients refused once a
//! password file is set; failures costing the same whether the user exists; a login flood that
//! must not stall an established session; the connect timeout covering the wait for a password
//! check, and no check done for a client that already left.

mod binary;
mod clients;
mod common;
mod observe;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clients::{unique_id, v3, v5, WAIT};
use common::TestBroker;
use observe::{samples, total, Observed};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Held by the tests that measure time, so that they do not load the machine for each other.
static TIMED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh directory for this test's files.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gateway-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// `mosquitto_passwd -b FILE USER PASS` (the real one, from Debian's mosquitto package).
fn mosquitto_passwd(file: &Path, user: &str, password: &str) {
    let status = Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(file)
        .args([user, password])
        .status()
        .expect("mosquitto_passwd runs (apt install mosquitto)");
    assert!(status.success(), "mosquitto_passwd failed: {status}");
}

/// `gateway passwd FILE USER` with the password on stdin.
fn gateway_passwd(file: &Path, user: &str, password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("passwd")
        .arg(file)
        .arg(user)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn gateway passwd");
    let mut stdin = child.stdin.take().expect("piped stdin");
    writeln!(stdin, "{password}").expect("write password");
    drop(stdin);
    let status = child.wait().expect("gateway passwd exits");
    assert!(status.success(), "gateway passwd failed: {status}");
}

/// A password file with alice (mosquitto_passwd, `$7$`) and bob (gateway passwd, argon2id).
fn password_file(name: &str) -> PathBuf {
    let file = temp_dir(name).join("passwd");
    std::fs::write(&file, "").expect("create password file");
    mosquitto_passwd(&file, "alice", "alice-pw");
    gateway_passwd(&file, "bob", "bob-pw");
    file
}

async fn broker(file: &Path) -> TestBroker {
    let file = file.to_owned();
    TestBroker::with(move |c| c.auth.password_file = Some(file)).await
}

/// The 3.1.1 CONNACK return code rumqttc reports for these credentials (0 = accepted).
async fn connect_v3(addr: std::net::SocketAddr, creds: Option<(&str, &str)>) -> String {
    let mut o = v3::options(addr, &unique_id("v3"));
    if let Some((u, p)) = creds {
        o.set_credentials(u, p);
    }
    let (client, mut eventloop) = v3::AsyncClient::new(o, 10);
    let outcome = tokio::time::timeout(WAIT, eventloop.poll())
        .await
        .expect("CONNACK in time");
    drop(client);
    match outcome {
        Ok(v3::Event::Incoming(v3::Packet::ConnAck(c))) => format!("{:?}", c.code),
        Ok(other) => panic!("unexpected first event {other:?}"),
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => format!("{code:?}"),
        Err(e) => panic!("connect failed otherwise: {e}"),
    }
}

async fn connect_v5(addr: std::net::SocketAddr, creds: Option<(&str, &str)>) -> String {
    let mut o = v5::options(addr, &unique_id("v5"));
    if let Some((u, p)) = creds {
        o.set_credentials(u, p);
    }
    let (client, mut eventloop) = v5::AsyncClient::new(o, 10);
    let outcome = tokio::time::timeout(WAIT, eventloop.poll())
        .await
        .expect("CONNACK in time");
    drop(client);
    match outcome {
        Ok(v5::Event::Incoming(rumqttc::v5::Incoming::ConnAck(c))) => format!("{:?}", c.code),
        Ok(other) => panic!("unexpected first event {other:?}"),
        Err(v5::ConnectionError::ConnectionRefused(code)) => format!("{code:?}"),
        Err(e) => panic!("connect failed otherwise: {e}"),
    }
}

#[tokio::test]
async fn mosquitto_and_gateway_password_files_give_the_right_connack_codes() {
    // Its hashing would skew the timing tests' measurements: they take turns.
    let _alone = TIMED.lock().await;
    let file = password_file("codes");
    let b = broker(&file).await;
    for (creds, v3_code, v5_code) in [
        (Some(("alice", "alice-pw")), "Success", "Success"),
        (Some(("bob", "bob-pw")), "Success", "Success"),
        (
            Some(("alice", "bob-pw")),
            "BadUserNamePassword",
            "BadUserNamePassword",
        ),
        (
            Some(("bob", "alice-pw")),
            "BadUserNamePassword",
            "BadUserNamePassword",
        ),
        (
            Some(("mallory", "alice-pw")),
            "BadUserNamePassword",
            "BadUserNamePassword",
        ),
        (None, "NotAuthorized", "NotAuthorized"),
    ] {
        assert_eq!(connect_v3(b.addr, creds).await, v3_code, "3.1.1 {creds:?}");
        assert_eq!(connect_v5(b.addr, creds).await, v5_code, "5.0 {creds:?}");
    }
    // Replacing an entry: the old password stops working.
    gateway_passwd(&file, "alice", "new-pw");
    let reloaded = broker(&file).await;
    assert_eq!(
        connect_v3(reloaded.addr, Some(("alice", "alice-pw"))).await,
        "BadUserNamePassword"
    );
    assert_eq!(
        connect_v3(reloaded.addr, Some(("alice", "new-pw"))).await,
        "Success"
    );
}

#[tokio::test]
async fn anonymous_is_allowed_on_loopback_without_a_password_file_or_when_configured() {
    let open = TestBroker::start().await;
    assert_eq!(connect_v3(open.addr, None).await, "Success");
    let file = password_file("anon");
    let file2 = file.clone();
    let allowed = TestBroker::with(move |c| {
        c.auth.password_file = Some(file2);
        c.auth.allow_anonymous = true;
    })
    .await;
    assert_eq!(connect_v5(allowed.addr, None).await, "Success");
    assert_eq!(
        connect_v5(allowed.addr, Some(("bob", "nope"))).await,
        "BadUserNamePassword"
    );
}

/// Fastest times of `n` refused logins of each user and of `n` argon2 verifications done here
/// (the reference), interleaved so that whatever else the machine does at the time weighs on
/// all three alike: load from elsewhere only ever adds time, so the minimum of each is its cost.
async fn refused_login_times(
    addr: std::net::SocketAddr,
    users: [&str; 2],
    phc: &str,
    n: usize,
) -> [Duration; 3] {
    use argon2::password_hash::{PasswordHash, PasswordVerifier as _};
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..n {
        for (user, times) in users.iter().zip(times.iter_mut()) {
            let t = Instant::now();
            assert_eq!(
                connect_v3(addr, Some((user, "wrong"))).await,
                "BadUserNamePassword"
            );
            times.push(t.elapsed());
        }
        let t = Instant::now();
        let h = PasswordHash::new(phc).expect("phc");
        assert!(argon2::Argon2::default().verify_password(b"x", &h).is_err());
        times[2].push(t.elapsed());
    }
    times.map(|t| t.into_iter().min().unwrap_or_default())
}

#[tokio::test]
async fn unknown_and_known_users_fail_in_the_same_time() {
    let _alone = TIMED.lock().await;
    let file = temp_dir("timing").join("passwd");
    gateway_passwd(&file, "bob", "bob-pw");
    let b = broker(&file).await;
    // The reference: one argon2 verification as this machine runs it, outside the broker.
    let phc = std::fs::read_to_string(&file).expect("read file");
    let phc = phc.trim().split_once(':').expect("user:hash").1.to_owned();
    let [known, unknown, hash_time] =
        refused_login_times(b.addr, ["bob", "nobody"], &phc, 20).await;
    println!("hash {hash_time:?}, known user {known:?}, unknown user {unknown:?}");
    // A quarter: the broker checks in kept memory (`argon2_memory`), without the reference's
    // 19 MiB allocation per check, so it is faster; a skipped hash would take microseconds.
    assert!(
        known > hash_time / 4 && unknown > hash_time / 4,
        "a refusal skipped the hash: hash {hash_time:?}, known {known:?}, unknown {unknown:?}"
    );
    let (fast, slow) = (known.min(unknown), known.max(unknown));
    assert!(
        slow < fast * 2,
        "known {known:?} and unknown {unknown:?} users fail at different costs"
    );
}

/// A 3.1.1 CONNECT with username and password, hand-encoded.
fn connect_packet(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60];
    for s in [client_id, user, password] {
        body.extend((s.len() as u16).to_be_bytes());
        body.extend(s.as_bytes());
    }
    let mut out = vec![0x10, body.len() as u8];
    out.extend(body);
    out
}

/// One bad login over a raw socket; returns the CONNACK return code.
async fn bad_login(addr: std::net::SocketAddr, i: usize) -> u8 {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(&connect_packet(&format!("flood-{i}"), "bob", "wrong"))
        .await
        .expect("send CONNECT");
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await.expect("CONNACK");
    assert_eq!(connack[0], 0x20, "CONNACK expected, got {connack:02X?}");
    connack[3]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_does_not_stall_established_sessions() {
    let _alone = TIMED.lock().await;
    let file = temp_dir("flood").join("passwd");
    gateway_passwd(&file, "bob", "bob-pw");
    let b = broker(&file).await;
    let mut o = v3::options(b.addr, "established");
    o.set_credentials("bob", "bob-pw");
    let mut c = v3::Client::connect(o).await;
    c.subscribe("echo", v3::QoS::AtLeastOnce).await;

    let flood: Vec<_> = (0..200)
        .map(|i| tokio::spawn(bad_login(b.addr, i)))
        .collect();
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut rounds = 0;
    while !flood.iter().all(|h| h.is_finished()) && started.elapsed() < Duration::from_secs(60) {
        let t = Instant::now();
        c.publish("echo", v3::QoS::AtLeastOnce, false, "ping").await;
        c.next_publish(WAIT).await;
        worst = worst.max(t.elapsed());
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flood_time = started.elapsed();
    for h in flood {
        assert_eq!(h.await.expect("login task"), 4, "bad credentials");
    }
    println!("flood of 200 bad logins took {flood_time:?}; {rounds} round trips, worst {worst:?}");
    assert!(rounds >= 5, "the flood ended too soon to measure anything");
    assert!(
        worst < Duration::from_millis(250),
        "QoS 1 round trip took {worst:?} during the login flood"
    );
}

/// A broker (with `/metrics`) checking logins against a password file holding bob (argon2).
async fn observed_with_passwords(name: &str, tune: impl FnOnce(&mut gateway::Config)) -> Observed {
    let file = temp_dir(name).join("passwd");
    gateway::auth::set_password(&file, "bob", "bob-pw").expect("write password file");
    Observed::start(move |c| {
        c.sys.interval = 0;
        c.auth.password_file = Some(file);
        tune(c);
    })
    .await
}

async fn counted(obs: &Observed, name: &str, labels: &[&str]) -> f64 {
    total(&samples(&obs.metrics().await), name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_timeout_covers_the_wait_for_a_password_check() {
    // 400 wrong logins at once, two hashes at a time (one per CPU) of ~15 ms or more: the last
    // would be answered seconds later, its handshake slot held all that time. With a connect
    // timeout of 0.5 s those still waiting then are answered CONNACK 3 (Server unavailable) and
    // closed, and no hash is started for them.
    const TIMEOUT: Duration = Duration::from_millis(500);
    const FLOOD: usize = 400;
    let _alone = TIMED.lock().await;
    let obs =
        observed_with_passwords("connect-timeout", |c| c.mqtt.connect_timeout = TIMEOUT).await;
    let addr = obs.mqtt;
    let started = Instant::now();
    let flood: Vec<_> = (0..FLOOD)
        .map(|i| {
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let at = Instant::now();
                s.write_all(&connect_packet(&format!("flood-{i}"), "bob", "wrong"))
                    .await
                    .expect("send CONNECT");
                let mut connack = [0u8; 4];
                let code = match s.read_exact(&mut connack).await {
                    Ok(_) => connack[3],
                    Err(e) => panic!("login {i}: no CONNACK: {e}"),
                };
                (at.elapsed(), code)
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let (mut refused, mut timed_out) = (0, 0);
    for h in flood {
        let (took, code) = h.await.expect("login task");
        slowest = slowest.max(took);
        match code {
            4 => refused += 1,
            3 => timed_out += 1,
            other => panic!("CONNACK {other}"),
        }
    }
    println!(
        "{FLOOD} wrong logins in {:?}: {refused} refused, {timed_out} timed out, slowest {slowest:?}",
        started.elapsed()
    );
    assert!(
        slowest < TIMEOUT + Duration::from_secs(1),
        "a login was answered after {slowest:?} with connect_timeout {TIMEOUT:?}"
    );
    assert!(
        timed_out > 0 && refused > 0,
        "{refused} refused, {timed_out} timed out"
    );
    assert_eq!(
        counted(
            &obs,
            "gateway_connections_closed_total",
            &["\"connect_timeout\""]
        )
        .await,
        timed_out as f64
    );
    // The slots are free again: bob logs in at once.
    assert_eq!(connect_v3(addr, Some(("bob", "bob-pw"))).await, "Success");
    obs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_left_while_its_login_waited_is_not_hashed_for() {
    // 100 clients send a wrong password and leave at once: each left before its turn among two
    // hashing slots (but the first ones) must cost nothing more.
    const LEAVERS: usize = 100;
    let _alone = TIMED.lock().await;
    let obs = observed_with_passwords("leavers", |_| {}).await;
    let addr = obs.mqtt;
    let leavers: Vec<_> = (0..LEAVERS)
        .map(|i| {
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                s.write_all(&connect_packet(&format!("leaver-{i}"), "bob", "wrong"))
                    .await
                    .expect("send CONNECT");
            })
        })
        .collect();
    for h in leavers {
        h.await.expect("leaver task");
    }
    let reasons = ["\"bad_credentials\"", "\"client_gone\""];
    let mut seen = [0.0; 2];
    let deadline = Instant::now() + WAIT * 2;
    while seen.iter().sum::<f64>() < LEAVERS as f64 {
        assert!(
            Instant::now() < deadline,
            "not every login dealt with: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = samples(&obs.metrics().await);
        for (n, reason) in seen.iter_mut().zip(reasons) {
            *n = total(&s, "gateway_connections_rejected_total", &[reason]);
        }
    }
    println!(
        "{LEAVERS} logins of clients gone: {} hashed, {} not",
        seen[0], seen[1]
    );
    assert!(
        seen[1] >= LEAVERS as f64 / 2.0,
        "hashed for {} of {LEAVERS} clients already gone",
        seen[0]
    );
    obs.shutdown().await;
}

#[test]
fn a_bad_password_file_stops_the_binary_with_one_line_and_exit_code_2() {
    let dir = temp_dir("badfile");
    let file = dir.join("passwd");
    std::fs::write(&file, "alice:$7$101$AA==$AA==\nbob:plaintext\n").expect("write file");
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!("[auth]\npassword_file = {:?}\n", file.display().to_string()),
    )
    .expect("write config");
    let out = binary::run_refused_config(&config);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "config: invalid value for `auth.password_file`: {:?} (line 2: unsupported hash \
             (expected a `$7$` mosquitto_passwd or `$argon2` entry))",
            file.display().to_string()
        )
    );
}
