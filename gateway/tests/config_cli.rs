//! Command-line contract of the `gateway` binary for configuration: what operators and process
//! supervisors observe when the file or a flag is wrong (exit code 2, one line on stderr naming
//! the key and the value), and that a valid file plus overrides starts and stops cleanly.
//!
//! These run the real binary because exit codes and stderr are produced by `main`, not by the
//! library.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

const EXIT_CONFIG: i32 = 2;

/// A config file in the temp dir, removed on drop; names are unique per process and call so
/// tests can run in parallel.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(text: &str) -> TempConfig {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "gateway-config-cli-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, text).expect("write temp config");
        TempConfig(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn gateway() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
    // Each run's default store (`data/`) in a directory of its own, never the package's.
    let cwd = std::env::temp_dir().join(format!("gateway-config-cli-cwd-{}", std::process::id()));
    std::fs::create_dir_all(&cwd).expect("working directory");
    command.current_dir(cwd);
    // RUST_LOG overrides the configured level; an inherited value must not change outcomes.
    command.env_remove("RUST_LOG");
    command
}

fn run(args: &[&str]) -> Output {
    gateway().args(args).output().expect("spawn gateway")
}

/// Asserts a configuration failure: exit code 2, nothing on stdout, and exactly `message` as
/// the single line on stderr.
fn assert_config_error(output: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_CONFIG), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "stdout: {:?}", output.stdout);
    assert_eq!(stderr, format!("{message}\n"));
}

#[test]
fn unknown_key_in_file_exits_2_naming_key_and_value() {
    let file = TempConfig::new("[mqtt]\nmax_keepalvie = 30\n");
    assert_config_error(
        &run(&["--config", file.path()]),
        "config: unknown key `mqtt.max_keepalvie` (value: 30)",
    );
}

/// RUST_LOG wins over the configured level; a value tracing's own parser would panic on is
/// refused like a bad `log.level`.
#[test]
fn a_rust_log_tracing_cannot_parse_exits_2() {
    for value in ["gateway=loud", " \u{aeec}["] {
        let output = gateway()
            .env("RUST_LOG", value)
            .args(["--mqtt-listen", "127.0.0.1:0", "--http-listen", "off"])
            .output()
            .expect("spawn gateway");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(EXIT_CONFIG), "stderr: {stderr}");
        assert!(
            stderr.starts_with(&format!("invalid RUST_LOG {value:?}: ")),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn unknown_section_in_file_exits_2() {
    let file = TempConfig::new("[metrics]\nenabled = true\n");
    assert_config_error(
        &run(&["--config", file.path()]),
        "config: unknown key `metrics` (value: { enabled = true })",
    );
}

#[test]
fn bad_value_in_file_exits_2_naming_key_and_value() {
    let file = TempConfig::new("[mqtt]\nreceive_maximum = 0\n");
    assert_config_error(
        &run(&["--config", file.path()]),
        "config: invalid value for `mqtt.receive_maximum`: 0 (must be 1..=65535)",
    );
}

#[test]
fn bad_byte_bounds_exit_2_naming_key_and_value() {
    for (text, message) in [
        (
            "[mqtt]\nretained_max_bytes = -1\n",
            "config: invalid value for `mqtt.retained_max_bytes`: -1 (must be >= 0)",
        ),
        (
            "[limits]\nmax_subscription_bytes_per_client = \"8M\"\n",
            "config: invalid value for `limits.max_subscription_bytes_per_client`: \"8M\" \
             (expected an integer)",
        ),
    ] {
        let file = TempConfig::new(text);
        assert_config_error(&run(&["--config", file.path()]), message);
    }
}

#[test]
fn wrong_type_in_file_exits_2_naming_key_and_value() {
    let file = TempConfig::new("[mqtt]\nqueue_qos0_offline = \"no\"\n");
    assert_config_error(
        &run(&["--config", file.path()]),
        "config: invalid value for `mqtt.queue_qos0_offline`: \"no\" (expected true or false)",
    );
}

#[test]
fn syntax_error_exits_2_on_one_line() {
    let file = TempConfig::new("[mqtt]\nlisten = \n");
    let output = run(&["--config", file.path()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_CONFIG), "stderr: {stderr}");
    assert!(
        stderr.starts_with("config: TOML syntax error at line 2, column "),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn missing_file_exits_2_naming_the_path() {
    let path = std::env::temp_dir().join("gateway-config-cli-absent.toml");
    let path = path.to_str().expect("temp path is UTF-8");
    assert_config_error(
        &run(&["--config", path]),
        &format!("config: cannot read {path}: No such file or directory"),
    );
}

#[test]
fn garbage_mqtt_listen_flag_exits_2() {
    assert_config_error(
        &run(&["--mqtt-listen", "garbage"]),
        "config: invalid value for `mqtt.listen`: \"garbage\" \
         (expected an IP address and port such as 127.0.0.1:1883 or [::]:1883)",
    );
}

#[test]
fn garbage_http_listen_flag_exits_2() {
    assert_config_error(
        &run(&["--http-listen", "localhost"]),
        "config: invalid value for `http.listen`: \"localhost\" \
         (expected an IP address and port such as 127.0.0.1:9883, or \"off\")",
    );
}

#[test]
fn bad_log_level_flag_exits_2() {
    let output = run(&["--log-level", "gateway=loud"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_CONFIG), "stderr: {stderr}");
    assert!(
        stderr.starts_with("config: invalid value for `log.level`: \"gateway=loud\" ("),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn flag_overrides_are_checked_against_the_file() {
    // Each source is valid alone; together they put both listeners on one port.
    let file = TempConfig::new("[http]\nlisten = \"127.0.0.1:18830\"\n");
    assert_config_error(
        &run(&["--config", file.path(), "--mqtt-listen", "127.0.0.1:18830"]),
        "config: invalid value for `http.listen`: \"127.0.0.1:18830\" \
         (same address as mqtt.listen)",
    );
}

#[test]
fn unknown_flag_is_a_usage_error_with_exit_2() {
    let output = run(&["--mqtt-port", "1883"]);
    assert_eq!(output.status.code(), Some(EXIT_CONFIG));
}

#[test]
fn shipped_file_with_overrides_starts_and_stops_on_sigterm() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml");
    let mut child = gateway()
        .arg("--config")
        .arg(&shipped)
        .args(["--mqtt-listen", "127.0.0.1:0", "--http-listen", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gateway");

    // Read stderr on a thread so a silent or hung gateway fails the test instead of blocking it.
    let stderr = child.stderr.take().expect("piped stderr");
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = loop {
        match lines_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.contains("gateway listening") => break Some(line),
            Ok(_) => continue,
            Err(_) => break None,
        }
    };
    let Some(started) = started else {
        let _ = child.kill();
        panic!("no startup line within 10 s; status {:?}", child.try_wait());
    };
    assert!(started.contains("mqtt=127.0.0.1:"), "{started}");

    let pid = i32::try_from(child.id()).expect("pid fits i32");
    // SAFETY: kill(2) with a valid signal number on our own child process has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait gateway") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("gateway did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}
