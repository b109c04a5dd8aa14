"""Interop tests of the real `gateway` binary with Debian's mosquitto_pub / mosquitto_sub
(mosquitto-clients), run as subprocesses with `-V mqttv311` and `-V mqttv5`.

Covers: `mosquitto_sub -t 'a/#' -C N` receiving what mosquitto_pub sends at QoS 0, 1 and 2;
3.1.1 <-> 5 cross-version delivery; retained messages with `-r` and clearing them with `-r -n`;
many messages over one connection with `-l`; a 200 KiB payload from stdin (`-s`); v5 properties
set with `-D publish ...` (user properties in order, content type, response topic, correlation
data, payload format indicator, message expiry) as seen by mosquitto_sub and by a paho client,
and `-D subscribe subscription-identifier`; a persistent session (`-c`, `-x`) that queues QoS 1
messages while mosquitto_sub is away; the will of a mosquitto_sub that is SIGKILLed.
"""

from __future__ import annotations

import os
import signal

import pytest

from mosquitto_cli import Sub, pub

VERSIONS = pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])


@pytest.fixture
def sub(gateway_factory):
    """`sub(gw, *args, version=..., count=N)` -> running mosquitto_sub, killed at teardown."""
    made: list[Sub] = []

    def make(gw, *args, version: str, count: int, wait: bool = True) -> Sub:
        s = Sub(gw, *args, version=version, count=count)
        made.append(s)
        if wait:
            s.wait_subscribed()
        return s

    yield make
    for s in made:
        s.close()


@VERSIONS
def test_each_qos(broker, sub, version):
    s = sub(broker, "-q", "2", "-t", "a/#", version=version, count=3)
    for qos in (0, 1, 2):
        pub(broker, "-q", str(qos), "-t", f"a/q{qos}", "-m", f"at qos {qos}", version=version)
    got = sorted(s.result(), key=lambda m: m.topic)
    assert [(m.topic, m.qos, m.payload, m.retain) for m in got] == [
        (f"a/q{q}", q, f"at qos {q}".encode(), False) for q in (0, 1, 2)
    ]


@VERSIONS
def test_subscription_qos_caps_delivery(broker, sub, version):
    s = sub(broker, "-q", "0", "-t", "a/#", version=version, count=1)
    pub(broker, "-q", "2", "-t", "a/x", "-m", "downgraded", version=version)
    (m,) = s.result()
    assert (m.topic, m.qos, m.payload) == ("a/x", 0, b"downgraded")


@pytest.mark.parametrize(
    "pub_version,sub_version", [("mqttv311", "mqttv5"), ("mqttv5", "mqttv311")]
)
def test_cross_version(broker, sub, pub_version, sub_version):
    s = sub(broker, "-q", "1", "-t", "a/#", version=sub_version, count=1)
    pub(broker, "-q", "1", "-t", "a/cross", "-m", "across versions", version=pub_version)
    (m,) = s.result()
    assert (m.topic, m.qos, m.payload) == ("a/cross", 1, b"across versions")


@VERSIONS
def test_retained_with_r_and_cleared_with_n(broker, sub, version):
    pub(broker, "-r", "-q", "1", "-t", "a/state", "-m", "on", version=version)
    s = sub(broker, "-t", "a/#", version=version, count=1)
    (m,) = s.result()
    assert (m.topic, m.payload, m.retain) == ("a/state", b"on", True)

    pub(broker, "-r", "-q", "1", "-t", "a/state", "-n", version=version)
    s = sub(broker, "-t", "a/#", version=version, count=1)
    pub(broker, "-t", "a/sentinel", "-m", "end", version=version)
    (m,) = s.result()
    assert (m.topic, m.payload, m.retain) == ("a/sentinel", b"end", False), (
        "the retained message cleared with `-r -n` was delivered"
    )


@VERSIONS
def test_many_lines_over_one_connection(broker, sub, version):
    lines = [f"line {i}" for i in range(50)]
    s = sub(broker, "-q", "1", "-t", "a/lines", version=version, count=len(lines))
    stdin = ("\n".join(lines) + "\n").encode()
    pub(broker, "-q", "1", "-t", "a/lines", "-l", version=version, stdin=stdin)
    got = s.result()
    assert [m.payload.decode() for m in got] == lines, "order kept on one connection"


@VERSIONS
def test_large_payload_from_stdin(broker, sub, version):
    payload = bytes(range(256)) * 800  # 200 KiB, all byte values
    s = sub(broker, "-q", "1", "-t", "a/big", version=version, count=1)
    pub(broker, "-q", "1", "-t", "a/big", "-s", version=version, stdin=payload)
    (m,) = s.result()
    assert len(m.payload) == len(payload) and m.payload == payload


def test_v5_publish_properties(broker, sub, paho):
    watcher = paho(broker, v5=True, client_id="paho-watcher")
    watcher.connect()
    watcher.subscribe("a/#", 1)
    s = sub(
        broker, "-q", "1", "-t", "a/#", "-D", "subscribe", "subscription-identifier", "42",
        version="mqttv5", count=1,
    )  # fmt: skip
    pub(
        broker, "-q", "1", "-t", "a/props", "-m", "with properties",
        "-D", "publish", "user-property", "k", "v",
        "-D", "publish", "user-property", "k", "v2",
        "-D", "publish", "user-property", "a", "b",
        "-D", "publish", "content-type", "text/plain",
        "-D", "publish", "response-topic", "a/reply",
        "-D", "publish", "correlation-data", "corr-17",
        "-D", "publish", "payload-format-indicator", "1",
        "-D", "publish", "message-expiry-interval", "60",
        version="mqttv5",
    )  # fmt: skip
    (m,) = s.result()
    assert (m.topic, m.payload) == ("a/props", b"with properties")
    assert m.user_properties == "k:v k:v2 a:b"
    assert m.content_type == "text/plain"
    assert m.response_topic == "a/reply"
    assert m.correlation_data == "corr-17"
    assert m.payload_format == "1"
    assert m.subscription_id == "42"

    p = watcher.get().properties
    assert p.UserProperty == [("k", "v"), ("k", "v2"), ("a", "b")]
    assert p.ContentType == "text/plain"
    assert p.ResponseTopic == "a/reply"
    assert p.CorrelationData == b"corr-17"
    assert p.PayloadFormatIndicator == 1
    assert 55 <= p.MessageExpiryInterval <= 60
    assert not hasattr(p, "SubscriptionIdentifier"), "the paho subscription had no identifier"


@VERSIONS
def test_persistent_session_queues_while_away(broker, sub, version):
    session = ["-c", "-i", "mosq-persist", "-q", "1", "-t", "a/queued/#"]
    if version == "mqttv5":
        session += ["-x", "60"]
    first = sub(broker, *session, "-E", version=version, count=1)  # -E: exit after SUBACK
    assert first.result() == []
    for i in range(3):
        pub(broker, "-q", "1", "-t", f"a/queued/{i}", "-m", f"while away {i}", version=version)
    back = sub(broker, *session, version=version, count=3, wait=False)
    got = back.result()
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        (f"a/queued/{i}", f"while away {i}".encode(), 1) for i in range(3)
    ]


@VERSIONS
def test_will_of_killed_client(broker, sub, version):
    watcher = sub(broker, "-q", "1", "-t", "a/will", version=version, count=1)
    doomed = sub(
        broker, "-t", "a/ignored", "--will-topic", "a/will", "--will-payload", "doomed is gone",
        "--will-qos", "1", version=version, count=1,
    )  # fmt: skip
    os.kill(doomed.proc.pid, signal.SIGKILL)  # our own child: the socket closes without DISCONNECT
    doomed.proc.wait(5)
    (m,) = watcher.result()
    assert (m.topic, m.payload, m.qos) == ("a/will", b"doomed is gone", 1)
