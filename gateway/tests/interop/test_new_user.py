"""The first minutes of a new user: `gateway` started with no arguments at all must listen on
127.0.0.1:1883, and the usual tools pointed at "localhost" with no port work against it: a
paho-mqtt client (MQTT 5 and 3.1.1) and `mosquitto_sub -V mqttv5` / `mosquitto_pub` without
-h / -p. On teardown the gateway must exit 0 on SIGTERM.

Skipped, with the reason, when port 1883 (MQTT) or 9883 (the default HTTP endpoint) is already
taken on this machine, since the gateway cannot then start on its defaults.
"""

from __future__ import annotations

import subprocess

import pytest

from mosquitto_cli import FORMAT, MARK, require_clients
from mqtt_helpers import PahoClient, port_in_use


@pytest.fixture
def default_gateway(gateway_factory):
    for port, what in ((1883, "MQTT"), (9883, "HTTP endpoint")):
        if port_in_use(port):
            pytest.skip(
                f"127.0.0.1:{port} (the gateway's default {what} port) is already in use on this "
                "machine; stop whatever listens there to run the no-argument start-up test"
            )
    return gateway_factory(no_args=True)


def test_no_arguments_paho_and_mosquitto(default_gateway):
    require_clients()
    assert default_gateway.port == 1883
    # mosquitto_sub with nothing but a topic: default host localhost, default port 1883.
    sub = subprocess.Popen(
        ["stdbuf", "-oL", "mosquitto_sub", "-V", "mqttv5", "-t", "hello/#", "-C", "2", "-W", "15",
         "-d", "-F", FORMAT],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    clients = []
    try:
        assert sub.stdout is not None
        lines = []
        for raw_line in sub.stdout:  # ends at EOF if mosquitto_sub fails; -W bounds it
            line = raw_line.decode(errors="replace")
            lines.append(line)
            if line.startswith("Subscribed (mid:"):
                break
        assert lines and lines[-1].startswith("Subscribed"), f"mosquitto_sub output: {lines}"

        for v5 in (True, False):
            c = PahoClient("localhost", 1883, v5=v5, client_id=f"newcomer-{int(v5)}")
            clients.append(c)
            c.connect()
            c.subscribe(f"hello/paho{int(v5)}", 1)
            c.subscribe("hello/cli", 1)
            c.publish(f"hello/paho{int(v5)}", b"hello from paho", 1)
            m = c.get()
            assert (m.topic, m.payload) == (f"hello/paho{int(v5)}", b"hello from paho")

        done = subprocess.run(
            ["mosquitto_pub", "-t", "hello/cli", "-m", "hello from mosquitto_pub", "-q", "1"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        for c in clients:
            m = c.get()
            assert (m.topic, m.payload) == ("hello/cli", b"hello from mosquitto_pub")

        out, err = sub.communicate(timeout=10)
        lines += out.decode(errors="replace").splitlines(keepends=True)
        assert sub.returncode == 0, f"mosquitto_sub exited {sub.returncode}: {err!r}"
        got = [ln.split("\t") for ln in lines if ln.startswith(MARK)]
        assert sorted((f[1], bytes.fromhex(f[4])) for f in got) == [
            ("hello/paho0", b"hello from paho"),
            ("hello/paho1", b"hello from paho"),
        ]
    finally:
        for c in clients:
            c.close()
        if sub.poll() is None:
            sub.kill()
            sub.communicate()
