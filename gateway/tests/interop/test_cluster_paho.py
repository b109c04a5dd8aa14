"""The core client matrix across a cluster: two gateway nodes (`[cluster]`) over a real
nats-server 2.9 with JetStream, paho-mqtt and mosquitto_pub/sub with the publisher on node a
and the subscriber on node b.

Covers: QoS 0/1/2 published x granted, 3.1.1 and 5.0 (delivered at min(publish, granted), in
order); 3.1.1 <-> 5 across nodes; a retained message set on a and delivered on subscribe at b;
the will of a client killed on a reaching b; a shared subscription with a member on each node
(each message to exactly one member); mosquitto_pub on a to mosquitto_sub on b.

A new subscription is known to the other node a few milliseconds after its SUBACK (README,
Cluster): each test waits for that with a probe message before it counts anything. Without
`nats-server` the tests are skipped, and fail under CI (scripts/test.sh installs it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import _die_with_parent, free_port
from mqtt_helpers import PahoClient, Will

VERSIONS = pytest.mark.parametrize("v5", [False, True], ids=["v311", "v5"])


def nats_server_binary() -> str | None:
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").is_file() else None
    )
    if found is None and os.environ.get("CI", "") not in ("", "0", "false"):
        pytest.fail("nats-server not installed; CI must not skip the cluster interop tests")
    return found


@pytest.fixture
def nodes(gateway_factory, tmp_path):
    """(a, b): two gateway nodes of one cluster on a fresh nats-server."""
    binary = nats_server_binary()
    if binary is None:
        pytest.skip("nats-server not installed (apt-get install nats-server)")
    port = free_port()
    log = open(tmp_path / "nats.log", "wb")
    nats = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "js")],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nats-server did not start"
                time.sleep(0.05)

        def node(name: str):
            return gateway_factory(
                config=(
                    f'[nats]\nservers = ["nats://127.0.0.1:{port}"]\n'
                    f'[cluster]\nenabled = true\nnode_name = "{name}"\n'
                    f'[storage]\ndir = "{tmp_path / name}"\n'
                )
            )

        yield node("a"), node("b")
    finally:
        nats.terminate()
        nats.wait(timeout=10)
        log.close()


def connected(paho, gw, *, v5: bool, client_id: str, **kw) -> PahoClient:
    c = paho(gw, v5=v5, client_id=client_id)
    c.connect(**kw)
    return c


def until_routed(pub: PahoClient, sub: PahoClient, topic: str) -> None:
    """Publishes probes on `topic` from one node until the subscriber on the other gets one,
    then drains what came: the other node now knows the subscription."""
    deadline = time.monotonic() + 10
    while True:
        pub.publish(topic, b"probe", 1)
        try:
            sub.get(timeout=0.2)
            break
        except AssertionError:
            assert time.monotonic() < deadline, "the subscription never reached the other node"
    while True:
        try:
            sub.get(timeout=0.3)
        except AssertionError:
            return


@VERSIONS
@pytest.mark.parametrize("pub_qos", [0, 1, 2])
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_qos_delivery_across_nodes(nodes, paho, v5, pub_qos, sub_qos):
    a, b = nodes
    sub = connected(paho, b, v5=v5, client_id="sub")
    assert sub.subscribe("qos/t", sub_qos) == [sub_qos]
    pub = connected(paho, a, v5=v5, client_id="pub")
    until_routed(pub, sub, "qos/t")
    payloads = [f"m{i}-q{pub_qos}".encode() for i in range(3)]
    for p in payloads:
        assert pub.publish("qos/t", p, pub_qos) == 0
    got = sub.get_n(3)
    assert [m.payload for m in got] == payloads, "order of messages from one publisher"
    for m in got:
        assert m.qos == min(pub_qos, sub_qos), "delivered QoS is min(publish QoS, granted QoS)"
        assert not m.retain
    sub.assert_no_message(0.2)


@pytest.mark.parametrize("pub_v5,sub_v5", [(False, True), (True, False)], ids=["311to5", "5to311"])
def test_cross_version_across_nodes(nodes, paho, pub_v5, sub_v5):
    a, b = nodes
    sub = connected(paho, b, v5=sub_v5, client_id="sub")
    sub.subscribe("x/#", 2)
    pub = connected(paho, a, v5=pub_v5, client_id="pub")
    until_routed(pub, sub, "x/probe")
    for qos in (0, 1, 2):
        pub.publish(f"x/{qos}", f"cross {qos}".encode(), qos)
    got = sub.get_n(3)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        (f"x/{q}", f"cross {q}".encode(), q) for q in (0, 1, 2)
    ]


@VERSIONS
def test_retained_on_one_node_delivered_on_subscribe_at_the_other(nodes, paho, v5):
    a, b = nodes
    pub = connected(paho, a, v5=v5, client_id="pub")
    assert pub.publish("ret/t", b"kept", 1, retain=True) == 0
    deadline = time.monotonic() + 10
    while True:
        late = connected(paho, b, v5=v5, client_id=f"late-{time.monotonic_ns()}")
        late.subscribe("ret/t", 1)
        try:
            msg = late.get(timeout=0.5)
            break
        except AssertionError:
            late.disconnect()
            assert time.monotonic() < deadline, "the retained message never reached node b"
    assert (msg.topic, msg.payload, msg.retain) == ("ret/t", b"kept", True)


@VERSIONS
def test_will_of_a_client_killed_on_one_node_reaches_the_other(nodes, paho, raw, v5):
    a, b = nodes
    watcher = connected(paho, b, v5=True, client_id="watcher")
    watcher.subscribe("will/#", 1)
    prober = connected(paho, a, v5=True, client_id="prober")
    until_routed(prober, watcher, "will/probe")
    dev = raw(a)
    dev.connect("dev1", v5=v5, will=Will("will/dev1", b"dev1 gone", qos=1))
    dev.close()
    msg = watcher.get()
    assert (msg.topic, msg.payload, msg.qos) == ("will/dev1", b"dev1 gone", 1)


def test_a_shared_subscription_spanning_nodes_gives_each_message_to_one_member(nodes, paho):
    a, b = nodes
    members = [
        connected(paho, node, v5=v5, client_id=f"member-{i}")
        for i, (node, v5) in enumerate([(a, False), (b, True)])
    ]
    for m in members:
        m.subscribe("$share/g/sh/t", 1)
    pub = connected(paho, a, v5=True, client_id="pub")
    # Until node a knows b's member, every message stays with a's.
    deadline = time.monotonic() + 10
    while True:
        pub.publish("sh/t", b"probe", 1)
        try:
            members[1].get(timeout=0.2)
            break
        except AssertionError:
            assert time.monotonic() < deadline, "b's member never got a message"
    for m in members:
        while True:
            try:
                m.get(timeout=0.3)
            except AssertionError:
                break
    payloads = [f"s{i}".encode() for i in range(40)]
    for p in payloads:
        pub.publish("sh/t", p, 1)
    got: list[bytes] = []
    for m in members:
        while True:
            try:
                got.append(m.get(timeout=0.5).payload)
            except AssertionError:
                break
    assert sorted(got) == sorted(payloads), "each message to exactly one member"


def test_mosquitto_pub_on_one_node_to_mosquitto_sub_on_the_other(nodes, paho):
    a, b = nodes
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(b.port), "-t", "mq/#", "-q", "1",
         "-C", "1", "-W", "15", "-v"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    deadline = time.monotonic() + 12
    while sub.poll() is None and time.monotonic() < deadline:
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(a.port), "-t", "mq/x", "-q", "1",
             "-m", "from a"],
            check=True,
            timeout=10,
        )
        time.sleep(0.2)
    out, err = sub.communicate(timeout=15)
    assert sub.returncode == 0, err
    assert out.decode().strip() == "mq/x from a"
