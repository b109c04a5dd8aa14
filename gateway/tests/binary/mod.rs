//! The real `gateway` binary as a child process: started on an OS-chosen port (read back from its
//! start-up log line), signalled, and waited for with a bound. Killed if a test fails first.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// A test crate may include two of these helper modules; each brings its own copy.
#[allow(clippy::duplicate_mod)]
#[path = "../scratch/mod.rs"]
pub mod scratch;

/// Runs the binary on `config` (loopback listener, HTTP off) until it exits: for configurations
/// it must refuse at start-up, whose exit code and stderr `main` produces. A valid one would run
/// until killed.
pub fn run_refused_config(config: &Path) -> Output {
    let cwd = scratch::Scratch::new("cwd");
    Command::new(env!("CARGO_BIN_EXE_gateway"))
        .current_dir(cwd.path())
        // RUST_LOG overrides the configured level; an inherited value must not change stderr.
        .env_remove("RUST_LOG")
        .args([
            "--mqtt-listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--config",
        ])
        .arg(config)
        .output()
        .expect("run gateway")
}

/// device-sim, beside this test's gateway binary; built here when missing (`cargo test -p
/// gateway` alone does not build it, `scripts/test.sh` does).
fn device_sim() -> PathBuf {
    let gateway = PathBuf::from(env!("CARGO_BIN_EXE_gateway"));
    let sim = gateway.with_file_name("device-sim");
    if !sim.exists() {
        let mut build = std::process::Command::new(env!("CARGO"));
        build.args(["build", "-p", "device-sim", "--bin", "device-sim"]);
        if gateway.parent().is_some_and(|d| d.ends_with("release")) {
            build.arg("--release");
        }
        let built = build.status().is_ok_and(|s| s.success());
        assert!(built && sim.exists(), "cannot build device-sim");
    }
    sim
}

/// `device-sim run --scenario SCENARIO --report REPORT`, its output captured, killed if dropped.
pub fn device_sim_run(scenario: &Path, report: &Path) -> tokio::process::Child {
    tokio::process::Command::new(device_sim())
        .arg("run")
        .arg("--scenario")
        .arg(scenario)
        .arg("--report")
        .arg(report)
        .kill_on_drop(true)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn device-sim")
}

pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    /// The working directory, where the default store (`data/`) goes.
    pub cwd: scratch::Scratch,
}

impl Gateway {
    /// A cluster node named `name` on the NATS server at `nats_url`, its config in `dir`.
    pub fn cluster_node(nats_url: &str, name: &str, dir: &scratch::Scratch) -> Gateway {
        Gateway::cluster_node_with(nats_url, name, dir, "")
    }

    /// A cluster node whose configuration also holds `more` (TOML tables of its own).
    pub fn cluster_node_with(
        nats_url: &str,
        name: &str,
        dir: &scratch::Scratch,
        more: &str,
    ) -> Gateway {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[nats]\nservers = [{nats_url:?}]\n[cluster]\nenabled = true\nnode_name = {name:?}\n{more}"
            ),
        )
        .expect("write node config");
        Gateway::start(&["--config", config.to_str().expect("utf-8 path")])
    }

    /// Starts the binary with `args` after the listener flags.
    pub fn start(args: &[&str]) -> Gateway {
        Gateway::spawn(
            Command::new(env!("CARGO_BIN_EXE_gateway")),
            "127.0.0.1:0",
            args,
        )
    }

    /// Starts the binary listening on `listen` (a port that must stay the same across restarts).
    pub fn start_at(listen: &str, args: &[&str]) -> Gateway {
        Gateway::spawn(Command::new(env!("CARGO_BIN_EXE_gateway")), listen, args)
    }

    /// Starts the binary with `env` added to its environment.
    pub fn start_with_env(env: &[(&str, &std::ffi::OsStr)], args: &[&str]) -> Gateway {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        command.envs(env.iter().copied());
        Gateway::spawn(command, "127.0.0.1:0", args)
    }

    /// Starts the binary under an open-file limit of `nofile` (soft and hard).
    pub fn start_with_nofile(nofile: u32, args: &[&str]) -> Gateway {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_gateway"));
        Gateway::spawn(command, "127.0.0.1:0", args)
    }

    fn spawn(mut command: Command, listen: &str, args: &[&str]) -> Gateway {
        let cwd = scratch::Scratch::new("cwd");
        let mut child = command
            .current_dir(cwd.path())
            .args([
                "--mqtt-listen",
                listen,
                "--http-listen",
                "off",
                "--log-level",
                "info",
            ])
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gateway");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keeps draining after the receiver is gone so the gateway never blocks on the pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("gateway listening") => {
                    let addr = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("mqtt="))
                        .and_then(|a| a.parse().ok());
                    break addr.unwrap_or_else(|| panic!("no mqtt address in {line:?}"));
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    panic!("gateway printed no start-up line within 10 s");
                }
            }
        };
        Gateway { child, addr, cwd }
    }

    pub fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t")
    }

    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.pid();
        // SAFETY: kill(2) on our own child with a valid signal number touches no memory.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }

    /// CPU time (user + system) the process has used so far, from /proc.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/<pid>/stat");
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// Open file descriptors of the process, from /proc.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/<pid>/fd")
            .count()
    }

    /// Waits for the exit; fails if it takes longer than `within`.
    pub async fn exit_status(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for gateway") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway still running {within:?} after the signal"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
