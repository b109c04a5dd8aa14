"""Fixtures for the interop tests: the real `gateway` binary as a child process.

`gateway_factory(config=None, args=None, no_args=False, http_listen="off")` starts the binary
(path from the GATEWAY_BIN environment variable, default `target/debug/gateway` under the
repository root) on a free loopback port with `--mqtt-listen 127.0.0.1:PORT --http-listen
HTTP_LISTEN` and, when `config` (TOML
text) is given, `--config FILE` pointing to a file written in the test's temporary directory.
It waits until the port accepts a TCP connection, and on teardown sends SIGTERM and asserts the
process exits with code 0 within 10 s. `broker` is one such gateway with default settings.
`paho` / `raw` make clients that are closed before the gateway stops. `tls_gateway` is a gateway
with the two TLS listeners of `tls_helpers.tls_gateway_config` on a fresh PKI: (pki, port of
the `tls` listener, port of the mutual TLS listener).

The gateway's stderr goes to a log file whose tail is printed when a test or a teardown fails.
Children get PR_SET_PDEATHSIG so that a killed pytest never leaves a gateway behind.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mqtt_helpers import PahoClient, RawClient
from tls_helpers import make_pki, tls_gateway_config

REPO_ROOT = Path(__file__).resolve().parents[3]
STARTUP_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 10.0


def gateway_bin() -> Path:
    path = Path(os.environ.get("GATEWAY_BIN", "target/debug/gateway"))
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def free_port() -> int:
    """A loopback port nothing listens on, picked below the kernel's ephemeral range when there
    is room, so that outgoing connections (which take ephemeral ports) cannot grab it between
    this check and the gateway's bind."""
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(100):
        if low > 11000:
            port = random.randrange(10000, low)
        else:
            port = 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free loopback port found")


def _die_with_parent() -> None:
    """preexec_fn: the kernel SIGKILLs the gateway if the pytest process goes away."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Gateway:
    proc: subprocess.Popen
    host: str
    port: int
    log_path: Path

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM, then wait up to SHUTDOWN_TIMEOUT; returns the exit code (None if hung,
        in which case the process was killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


def wait_until_accepting(gw: Gateway, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code = gw.proc.poll()
        if code is not None:
            raise AssertionError(
                f"gateway exited with code {code} before accepting connections:\n{gw.log_tail()}"
            )
        try:
            with socket.create_connection((gw.host, gw.port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            gw.proc.kill()
            gw.proc.wait()
            raise AssertionError(
                f"gateway not accepting on {gw.host}:{gw.port} after {timeout}s:\n{gw.log_tail()}"
            )
        time.sleep(0.05)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when == "call":
        for gw in getattr(item, "_gateways", []):
            rep.sections.append((f"gateway log (port {gw.port})", gw.log_tail()))


@pytest.fixture
def gateway_factory(request, tmp_path):
    started: list[Gateway] = []
    request.node._gateways = started

    def start(config: str | None = None, args: list[str] | None = None, no_args: bool = False,
              http_listen: str = "off"):
        binary = gateway_bin()
        if not binary.is_file():
            pytest.fail(
                f"gateway binary not found at {binary}; build it with `cargo build -p gateway` "
                "or set GATEWAY_BIN"
            )
        for attempt in range(5):
            gw = _spawn(binary, config, args, no_args, http_listen)
            try:
                wait_until_accepting(gw)
                return gw
            except AssertionError:
                # Another process took the port between free_port() and the bind: try another.
                if no_args or attempt == 4 or "Address already in use" not in gw.log_tail():
                    raise
                started.remove(gw)

    def _spawn(binary, config, args, no_args, http_listen) -> Gateway:
        idx = len(started)
        log_path = tmp_path / f"gateway{idx}.log"
        if no_args:
            cmd = [str(binary)]
            port = 1883
        else:
            port = free_port()
            cmd = [str(binary), "--mqtt-listen", f"127.0.0.1:{port}", "--http-listen", http_listen]
            if config is not None:
                cfg = tmp_path / f"gateway{idx}.toml"
                cfg.write_text(config)
                cmd += ["--config", str(cfg)]
            cmd += args or []
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env=env,
                preexec_fn=_die_with_parent,
            )
        gw = Gateway(proc, "127.0.0.1", port, log_path)
        started.append(gw)
        return gw

    yield start

    problems = []
    for gw in started:
        code = gw.stop()
        if code != 0:
            what = "did not exit within 10 s of SIGTERM" if code is None else f"exited {code}"
            problems.append(f"gateway on port {gw.port} {what}:\n{gw.log_tail()}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def broker(gateway_factory):
    """A gateway with default settings on a free port."""
    return gateway_factory()


@pytest.fixture
def paho(gateway_factory):
    """`paho(gw, v5=.., client_id=.., clean=..)`: an unconnected PahoClient, closed at teardown."""
    made: list[PahoClient] = []

    def make(gw: Gateway, *, v5: bool, client_id: str = "", clean: bool = True, keepalive=30):
        c = PahoClient(
            gw.host, gw.port, v5=v5, client_id=client_id, clean=clean, keepalive=keepalive
        )
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def raw(gateway_factory):
    """`raw(gw)` -> connected RawClient (TCP only, no MQTT yet), closed at teardown."""
    made: list[RawClient] = []

    def make(gw: Gateway, timeout: float = 5.0):
        c = RawClient(gw.host, gw.port, timeout)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def tls_gateway(gateway_factory, tmp_path):
    pki = make_pki(tmp_path)
    tls_port, mutual_port = free_port(), free_port()
    gateway_factory(config=tls_gateway_config(pki, tmp_path / "acl", tls_port, mutual_port))
    return pki, tls_port, mutual_port
