"""paho-mqtt over WebSocket (`ws` listener) and secure WebSocket (`wss` listener).

The gateway runs with two `[[listeners]]` besides its plain one; certificates for the `wss`
listener come from the `openssl` CLI in the test's temporary directory. Each test publishes over
one transport and receives over another, with payloads small and larger than one WebSocket frame
paho sends, so MQTT framing across (and within) WebSocket frames is exercised; the subprotocol
`mqtt` must be negotiated (paho insists on it) and a wrong path must be refused. With
`mqtt.hibernate_after` short, an idle paho session over ws and wss hibernates (the gauge
`gateway_sessions_hibernating` says so) and wakes for a delivery and for its own PUBLISH.
"""

from __future__ import annotations

import queue
import re
import ssl
import subprocess
import time
import urllib.request
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import free_port

WAIT = 10.0


def make_certs(directory) -> tuple[str, str, str]:
    """A CA and a server certificate for localhost/127.0.0.1 signed by it: (ca, cert, key)."""
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "1", "-subj", "/CN=interop test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=localhost")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext))
    return str(ca), str(cert), str(key)


def ws_config(ws_port: int, wss_port: int, cert: str, key: str, mqtt: str = "") -> str:
    return f"""
[mqtt]
{mqtt}

[auth]
allow_anonymous = true

[[listeners]]
kind = "ws"
bind = "127.0.0.1:{ws_port}"
path = "/mqtt"

[[listeners]]
kind = "wss"
bind = "127.0.0.1:{wss_port}"
cert = "{cert}"
key = "{key}"
path = "/secure"
"""


@pytest.fixture
def ws_gateway(gateway_factory, tmp_path):
    ca, cert, key = make_certs(tmp_path)
    ws_port, wss_port = free_port(), free_port()
    gw = gateway_factory(config=ws_config(ws_port, wss_port, cert, key))
    return gw, ws_port, wss_port, ca


class Client:
    """A paho client on a transport of choice, messages collected in a queue."""

    def __init__(self, port: int, *, v5: bool, transport: str = "tcp", path: str = "/mqtt",
                 ca: str | None = None):
        self.messages: queue.Queue = queue.Queue()
        self.acks: queue.Queue = queue.Queue()
        self.connack: queue.Queue = queue.Queue()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"ws-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            transport=transport,
            reconnect_on_failure=False,
        )
        if transport == "websockets":
            c.ws_set_options(path=path)
        if ca is not None:
            c.tls_set(ca_certs=ca, cert_reqs=ssl.CERT_REQUIRED)
        c.on_connect = lambda _c, _u, _f, rc, _p: self.connack.put(rc.value)
        c.on_message = lambda _c, _u, msg: self.messages.put(msg)
        c.on_subscribe = lambda _c, _u, mid, _rcs, _p: self.acks.put(("sub", mid))
        self.client = c
        c.connect("localhost", port, keepalive=30)
        c.loop_start()

    def wait_connack(self) -> int:
        return self.connack.get(timeout=WAIT)

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        assert self.acks.get(timeout=WAIT)[0] == "sub"

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(timeout=WAIT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("v5", [False, True], ids=["v311", "v5"])
@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_paho_over_websocket(ws_gateway, v5, secure):
    gw, ws_port, wss_port, ca = ws_gateway
    if secure:
        sub = Client(wss_port, v5=v5, transport="websockets", path="/secure", ca=ca)
    else:
        sub = Client(ws_port, v5=v5, transport="websockets")
    plain = Client(gw.port, v5=v5)
    try:
        assert sub.wait_connack() == 0
        assert plain.wait_connack() == 0
        sub.subscribe("ws/#")
        # Several packets in quick succession (may share frames) and one larger than a frame.
        payloads = [f"m{i}".encode() for i in range(20)] + [bytes(range(256)) * 1000]
        for p in payloads:
            plain.publish("ws/t", p)
        for p in payloads:
            assert sub.messages.get(timeout=WAIT).payload == p
        # And the other way: published over WebSocket, received over TCP.
        plain.subscribe("back/#")
        sub.publish("back/t", b"from-ws")
        assert plain.messages.get(timeout=WAIT).payload == b"from-ws"
    finally:
        sub.close()
        plain.close()


def test_websocket_wrong_path_refused(ws_gateway):
    _gw, ws_port, _wss_port, _ca = ws_gateway
    c = mqtt.Client(CallbackAPIVersion.VERSION2, transport="websockets", reconnect_on_failure=False)
    c.ws_set_options(path="/elsewhere")
    with pytest.raises(Exception):
        c.connect("localhost", ws_port, keepalive=30)


def hibernating(http_port: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=WAIT).read()
    m = re.search(rb"^gateway_sessions_hibernating (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else -1


def until_hibernating(http_port: int, n: int) -> None:
    deadline = time.monotonic() + WAIT
    while hibernating(http_port) != n:
        assert time.monotonic() < deadline, f"{hibernating(http_port)} hibernating, expected {n}"
        time.sleep(0.02)


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_paho_websocket_session_hibernates_and_wakes(gateway_factory, tmp_path, secure):
    ca, cert, key = make_certs(tmp_path)
    ws_port, wss_port, http_port = free_port(), free_port(), free_port()
    gw = gateway_factory(
        config=ws_config(ws_port, wss_port, cert, key, mqtt="hibernate_after = 0.3"),
        http_listen=f"127.0.0.1:{http_port}",
    )
    if secure:
        sub = Client(wss_port, v5=False, transport="websockets", path="/secure", ca=ca)
    else:
        sub = Client(ws_port, v5=False, transport="websockets")
    plain = Client(gw.port, v5=False)
    try:
        assert sub.wait_connack() == 0
        assert plain.wait_connack() == 0
        sub.subscribe("hib/#")
        plain.subscribe("back/#")
        until_hibernating(http_port, 2)
        # A delivery wakes the WebSocket session; it hibernates again.
        plain.publish("hib/t", b"to-ws")
        assert sub.messages.get(timeout=WAIT).payload == b"to-ws"
        until_hibernating(http_port, 2)
        # Its own PUBLISH wakes it.
        sub.publish("back/t", b"from-ws")
        assert plain.messages.get(timeout=WAIT).payload == b"from-ws"
        until_hibernating(http_port, 2)
    finally:
        sub.close()
        plain.close()
