"""Drives Debian's mosquitto_pub / mosquitto_sub (package mosquitto-clients) for the interop
tests (no test lives here).

`Sub` runs mosquitto_sub with `-d` so the test can wait for the SUBACK before publishing, and
with a `-F` format whose lines start with `=MSG=` and carry the payload in hex, so debug output
and payload bytes can never be confused. Every wait is bounded.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from dataclasses import dataclass

import pytest

MARK = "=MSG="
# topic, qos, retain, hex payload, then the v5 properties: content type, response topic,
# correlation data, user properties ("k:v k2:v2"), payload format indicator, subscription id.
FORMAT = MARK + "\t%t\t%q\t%r\t%x\t%C\t%R\t%D\t%P\t%F\t%S"


def require_clients() -> None:
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool} not found: install Debian's mosquitto-clients (scripts/test.sh does)"
            )


@dataclass
class Received:
    topic: str
    qos: int
    retain: bool
    payload: bytes
    content_type: str
    response_topic: str
    correlation_data: str
    user_properties: str
    payload_format: str
    subscription_id: str


def _parse(line: str) -> Received:
    fields = line.rstrip("\n").split("\t")
    fields += [""] * (11 - len(fields))
    _, topic, qos, retain, hexpayload, ct, rt, cd, up, pf, sid = fields[:11]
    return Received(
        topic, int(qos), retain == "1", bytes.fromhex(hexpayload), ct, rt, cd, up, pf, sid
    )


class Sub:
    """A running mosquitto_sub that exits by itself after `count` messages (-C)."""

    def __init__(self, gw, *args: str, version: str, count: int, give_up_after: int = 20):
        require_clients()
        # stdbuf: mosquitto_sub's stdout is a pipe here, line-buffer it so lines arrive live.
        cmd = [
            "stdbuf", "-oL", "mosquitto_sub", "-h", gw.host, "-p", str(gw.port), "-V", version,
            "-d", "-C", str(count), "-W", str(give_up_after), "-F", FORMAT, *args,
        ]  # fmt: skip
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.lines: list[str] = []
        self.subscribed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw_line in self.proc.stdout:
            line = raw_line.decode("utf-8", errors="replace")
            self.lines.append(line)
            if line.startswith("Subscribed (mid:"):
                self.subscribed.set()

    def wait_subscribed(self, timeout: float = 5.0) -> None:
        if not self.subscribed.wait(timeout):
            self.kill()
            raise AssertionError(
                f"mosquitto_sub got no SUBACK within {timeout}s: {self.cmd}\n{''.join(self.lines)}"
                f"{self._stderr()}"
            )

    def _stderr(self) -> str:
        if self.proc.stderr is None or self.proc.poll() is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")

    def result(self, timeout: float = 10.0) -> list[Received]:
        """Waits for the process to exit after its -C count; returns the messages."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"mosquitto_sub still running after {timeout}s: {self.cmd}\n{''.join(self.lines)}"
            ) from None
        self._reader.join(5)
        assert code == 0, (
            f"mosquitto_sub exited {code} (27 = -W timeout before -C count): {self.cmd}\n"
            f"{''.join(self.lines)}{self._stderr()}"
        )
        return [_parse(line) for line in self.lines if line.startswith(MARK)]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def pub(gw, *args: str, version: str, stdin: bytes | None = None, timeout: float = 10.0) -> None:
    """Runs mosquitto_pub to completion and asserts it succeeded."""
    require_clients()
    cmd = ["mosquitto_pub", "-h", gw.host, "-p", str(gw.port), "-V", version, *args]
    try:
        done = subprocess.run(
            cmd,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"mosquitto_pub did not finish within {timeout}s: {cmd}") from None
    assert done.returncode == 0, (
        f"mosquitto_pub exited {done.returncode}: {cmd}\n{done.stdout!r}\n{done.stderr!r}"
    )
