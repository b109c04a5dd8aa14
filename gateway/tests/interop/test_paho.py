"""Interop tests of the real `gateway` binary with paho-mqtt 2.x (MQTT 3.1.1 and 5.0) and raw
sockets.

Covers: QoS 0/1/2 in both directions; retained messages (store, replace, clear, delivery on
subscribe, v5 retain-as-published and retain handling 0/1/2, none for shared subscriptions);
will messages (abrupt close, none on normal DISCONNECT, v5 DISCONNECT 0x04, v5 will delay and
its cancellation by a reconnect); keep-alive enforcement at 1.5x and the max_keepalive setting
(from a --config file); persistent sessions with queued QoS 1/2 messages and session present;
v5 session expiry; session takeover (v5 DISCONNECT 0x8E, persistent session carried over);
`+` / `#` wildcards; `$` topics hidden from leading wildcards; shared subscriptions across 3.1.1
and 5 members; v5 user properties (order and duplicates), content type, response topic,
correlation data, message expiry (queued and retained), subscription identifiers, no-local,
inbound topic aliases, payload format indicator (PUBACK 0x99 on invalid UTF-8), assigned client
identifier; 3.1.1 <-> 5 cross-version delivery; malformed input over raw sockets (unsupported
protocol level, first packet not CONNECT, wildcard / invalid UTF-8 topic names, QoS 3, bad topic
alias), after each of which a well-behaved client still works; byte-level QoS flows (a QoS 2
PUBLISH resent with DUP before PUBREL is delivered once, an unacknowledged QoS 1 message is
resent with DUP=1 when the session resumes, v5 Receive Maximum 1 is honoured); unsubscribe;
invalid subscription filters never granted; max_packet_size from a config file (v5 DISCONNECT
0x95); clean exit on SIGTERM with clients connected.

Every wait is bounded; negative checks ("nothing arrives") use a sentinel message published after
the event when ordering makes that meaningful, and a short fixed window only where time itself
is the feature (expiry, delays).
"""

from __future__ import annotations

import struct
import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from mqtt_helpers import (
    CONNACK,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PROP_MAXIMUM_PACKET_SIZE,
    PROP_MESSAGE_EXPIRY,
    PROP_RECEIVE_MAXIMUM,
    PROP_SESSION_EXPIRY,
    PROP_TOPIC_ALIAS,
    PROP_USER_PROPERTY,
    PROP_WILL_DELAY,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    PahoClient,
    Will,
    connect_packet,
    disconnect_packet,
    packet,
    parse_props,
    parse_publish,
    props,
    publish_packet,
    reason,
    subscribe_packet,
    v5_props,
)

VERSIONS = pytest.mark.parametrize("v5", [False, True], ids=["v311", "v5"])


def connected(paho, gw, *, v5: bool, client_id: str = "", **kw) -> PahoClient:
    c = paho(gw, v5=v5, client_id=client_id)
    c.connect(**kw)
    return c


def assert_broker_healthy(gw, paho) -> None:
    """A fresh well-behaved client can still subscribe, publish and receive (both versions)."""
    for v5 in (False, True):
        c = connected(paho, gw, v5=v5, client_id=f"healthy-{int(v5)}")
        assert c.subscribe("health/check", 1) == [1]
        assert c.publish("health/check", b"still alive", 1) == 0
        msg = c.get()
        assert (msg.topic, msg.payload) == ("health/check", b"still alive")
        c.disconnect()


# ------------------------------------------------------------------------------------------
# QoS
# ------------------------------------------------------------------------------------------


@VERSIONS
@pytest.mark.parametrize("pub_qos", [0, 1, 2])
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_qos_delivery(broker, paho, v5, pub_qos, sub_qos):
    sub = connected(paho, broker, v5=v5, client_id="sub")
    assert sub.subscribe("qos/t", sub_qos) == [sub_qos]
    pub = connected(paho, broker, v5=v5, client_id="pub")
    payloads = [f"m{i}-q{pub_qos}".encode() for i in range(3)]
    for p in payloads:
        assert pub.publish("qos/t", p, pub_qos) == 0
    got = sub.get_n(3)
    assert [m.payload for m in got] == payloads, "order of messages from one publisher"
    for m in got:
        assert m.topic == "qos/t"
        assert m.qos == min(pub_qos, sub_qos), "delivered QoS is min(publish QoS, granted QoS)"
        assert not m.retain
    sub.assert_no_message(0.2)


@pytest.mark.parametrize("pub_v5,sub_v5", [(False, True), (True, False)], ids=["311to5", "5to311"])
def test_cross_version_delivery(broker, paho, pub_v5, sub_v5):
    sub = connected(paho, broker, v5=sub_v5, client_id="sub")
    sub.subscribe("x/#", 2)
    pub = connected(paho, broker, v5=pub_v5, client_id="pub")
    properties = None
    if pub_v5:
        properties = v5_props(
            PacketTypes.PUBLISH, ContentType="text/plain", UserProperty=[("k", "v")]
        )
    for qos in (0, 1, 2):
        pub.publish(f"x/{qos}", f"cross {qos}".encode(), qos, properties=properties)
    got = sub.get_n(3)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        (f"x/{q}", f"cross {q}".encode(), q) for q in (0, 1, 2)
    ]
    if sub_v5:
        for m in got:
            assert not getattr(m.properties, "UserProperty", None)


# ------------------------------------------------------------------------------------------
# Retained messages
# ------------------------------------------------------------------------------------------


@VERSIONS
def test_retained_delivered_on_subscribe(broker, paho, v5):
    pub = connected(paho, broker, v5=v5, client_id="pub")
    pub.publish("ret/a", b"first", 1, retain=True)
    pub.publish("ret/a", b"second", 1, retain=True)  # replaces the first
    pub.publish("ret/b", b"b-value", 0, retain=True)
    pub.publish("ret/c", b"not retained", 1)

    sub = connected(paho, broker, v5=v5, client_id="sub")
    sub.subscribe("ret/#", 1)
    got = sub.get_n(2)
    assert sorted((m.topic, m.payload) for m in got) == [
        ("ret/a", b"second"),
        ("ret/b", b"b-value"),
    ]
    assert all(m.retain for m in got), "retain flag set on delivery caused by a subscription"
    # Nothing else is stored: a sentinel published now is the next thing to arrive.
    sub.publish("ret/sentinel", b"end", 1)
    rest = sub.get_until("ret/sentinel")
    assert [m.topic for m in rest] == ["ret/sentinel"]

    # A live retained publish to an established subscription arrives with retain=0
    # (3.1.1 [MQTT-3.3.1-9]; v5 with Retain As Published = 0).
    pub.publish("ret/a", b"live", 1, retain=True)
    live = sub.get()
    assert (live.topic, live.payload, live.retain) == ("ret/a", b"live", False)


@VERSIONS
def test_retained_cleared_by_empty_payload(broker, paho, v5):
    pub = connected(paho, broker, v5=v5, client_id="pub")
    pub.publish("clr/a", b"to be cleared", 1, retain=True)
    pub.publish("clr/keep", b"kept", 1, retain=True)
    pub.publish("clr/a", b"", 1, retain=True)

    sub = connected(paho, broker, v5=v5, client_id="sub")
    sub.subscribe("clr/#", 1)
    first = sub.get()
    assert (first.topic, first.payload, first.retain) == ("clr/keep", b"kept", True)
    sub.publish("clr/sentinel", b"end", 1)
    rest = sub.get_until("clr/sentinel")
    assert [(m.topic, m.payload) for m in rest] == [("clr/sentinel", b"end")], (
        "a retained message cleared with an empty payload must not be delivered"
    )


def test_v5_retain_as_published(broker, paho):
    rap = connected(paho, broker, v5=True, client_id="rap")
    rap.subscribe("rap/#", 1, retain_as_published=True)
    plain = connected(paho, broker, v5=True, client_id="plain")
    plain.subscribe("rap/#", 1, retain_as_published=False)
    pub = connected(paho, broker, v5=True, client_id="pub")
    pub.publish("rap/x", b"kept", 1, retain=True)
    pub.publish("rap/y", b"transient", 1, retain=False)

    got_rap = rap.get_n(2)
    got_plain = plain.get_n(2)
    assert [(m.topic, m.retain) for m in got_rap] == [("rap/x", True), ("rap/y", False)]
    assert [(m.topic, m.retain) for m in got_plain] == [("rap/x", False), ("rap/y", False)]


def test_v5_retain_handling(broker, paho):
    pub = connected(paho, broker, v5=True, client_id="pub")
    pub.publish("rh/x", b"stored", 1, retain=True)

    # 0: always sent on subscribe, also on a repeated subscribe.
    c0 = connected(paho, broker, v5=True, client_id="rh0")
    for _ in range(2):
        c0.subscribe("rh/#", 1, retain_handling=0)
        m = c0.get()
        assert (m.topic, m.payload, m.retain) == ("rh/x", b"stored", True)

    # 1: sent only when the subscription is new.
    c1 = connected(paho, broker, v5=True, client_id="rh1")
    c1.subscribe("rh/#", 1, retain_handling=1)
    m = c1.get()
    assert (m.topic, m.payload, m.retain) == ("rh/x", b"stored", True)
    c1.subscribe("rh/#", 1, retain_handling=1)
    c1.publish("rh/sentinel1", b"end", 1)
    assert [m.topic for m in c1.get_until("rh/sentinel1")] == ["rh/sentinel1"], (
        "retain handling 1 must not resend retained messages for an existing subscription"
    )

    # 2: never sent.
    c2 = connected(paho, broker, v5=True, client_id="rh2")
    c2.subscribe("rh/#", 1, retain_handling=2)
    c2.publish("rh/sentinel2", b"end", 1)
    assert [m.topic for m in c2.get_until("rh/sentinel2")] == ["rh/sentinel2"], (
        "retain handling 2 must not send retained messages"
    )


def test_v5_retained_message_expires(broker, paho):
    pub = connected(paho, broker, v5=True, client_id="pub")
    expiring = v5_props(PacketTypes.PUBLISH, MessageExpiryInterval=1)
    pub.publish("rexp/short", b"short-lived", 1, retain=True, properties=expiring)
    pub.publish("rexp/long", b"long-lived", 1, retain=True)
    time.sleep(2.2)  # the feature under test is time itself
    sub = connected(paho, broker, v5=True, client_id="sub")
    sub.subscribe("rexp/#", 1)
    sub.publish("rexp/sentinel", b"end", 1)
    got = sub.get_until("rexp/sentinel")
    assert [m.topic for m in got] == ["rexp/long", "rexp/sentinel"], (
        "a retained message whose expiry interval has passed must not be delivered"
    )


# ------------------------------------------------------------------------------------------
# Will messages
# ------------------------------------------------------------------------------------------


@VERSIONS
@pytest.mark.parametrize("how", ["raw-close", "paho-drop"])
def test_will_published_on_abrupt_close(broker, paho, raw, v5, how):
    watcher = connected(paho, broker, v5=True, client_id="watcher")
    watcher.subscribe("will/#", 1)
    if how == "raw-close":
        dev = raw(broker)
        dev.connect("dev1", v5=v5, will=Will("will/dev1", b"dev1 gone", qos=1))
        dev.close()
    else:
        dev = paho(broker, v5=v5, client_id="dev1")
        dev.will_set("will/dev1", b"dev1 gone", qos=1)
        dev.connect()
        dev.drop()
    msg = watcher.get()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == ("will/dev1", b"dev1 gone", 1, False)


@VERSIONS
def test_retained_will(broker, paho, raw, v5):
    watcher = connected(paho, broker, v5=True, client_id="watcher")
    watcher.subscribe("will/#", 1)
    dev = raw(broker)
    dev.connect("dev1", v5=v5, will=Will("will/state", b"offline", qos=1, retain=True))
    dev.close()
    published = watcher.get()
    assert (published.topic, published.payload) == ("will/state", b"offline")
    # The will was retained: a subscriber arriving later still gets it.
    late = connected(paho, broker, v5=v5, client_id="late")
    late.subscribe("will/state", 1)
    msg = late.get()
    assert (msg.topic, msg.payload, msg.retain) == ("will/state", b"offline", True)


@VERSIONS
def test_no_will_on_normal_disconnect(broker, paho, v5):
    watcher = connected(paho, broker, v5=True, client_id="watcher")
    watcher.subscribe("will/#", 1)
    dev = paho(broker, v5=v5, client_id="dev1")
    dev.will_set("will/dev1", b"must not appear", qos=1)
    dev.connect()
    dev.disconnect()
    watcher.publish("will/sentinel", b"end", 1)
    assert [m.topic for m in watcher.get_until("will/sentinel")] == ["will/sentinel"]
    watcher.assert_no_message(0.5)


def test_v5_disconnect_with_will_reason_publishes_will(broker, paho):
    watcher = connected(paho, broker, v5=True, client_id="watcher")
    watcher.subscribe("will/#", 1)
    dev = paho(broker, v5=True, client_id="dev1")
    dev.will_set("will/dev1", b"asked for it", qos=1)
    dev.connect()
    dev.disconnect(reasoncode=reason(PacketTypes.DISCONNECT, 0x04))
    msg = watcher.get()
    assert (msg.topic, msg.payload) == ("will/dev1", b"asked for it")


def _connect_with_delayed_will(raw, broker, delay: int):
    dev = raw(broker)
    will = Will("will/delayed", b"late news", qos=1, properties=props((PROP_WILL_DELAY, delay)))
    dev.connect(
        "delayed",
        v5=True,
        clean=False,
        will=will,
        properties=props((PROP_SESSION_EXPIRY, 30)),
    )
    return dev


def test_v5_will_delay_interval(broker, paho, raw):
    watcher = connected(paho, broker, v5=True, client_id="watcher")
    watcher.subscribe("will/#", 1)
    dev = _connect_with_delayed_will(raw, broker, delay=2)
    dev.close()
    closed_at = time.monotonic()
    watcher.assert_no_message(1.0)  # not before the will delay
    msg = watcher.get(timeout=5)
    elapsed = time.monotonic() - closed_at
    assert (msg.topic, msg.payload) == ("will/delayed", b"late news")
    assert 1.7 <= elapsed <= 4.0, f"will published {elapsed:.2f}s after close, delay was 2s"


def test_v5_will_delay_cancelled_by_reconnect(broker, paho, raw):
    watcher = connected(paho, broker, v5=True, client_id="watcher")
    watcher.subscribe("will/#", 1)
    dev = _connect_with_delayed_will(raw, broker, delay=2)
    dev.close()
    back = raw(broker)
    ack = back.connect("delayed", v5=True, clean=False, properties=props((PROP_SESSION_EXPIRY, 30)))
    assert ack.body[0] & 1, "session present after reconnecting within the session expiry"
    watcher.assert_no_message(3.0)  # past the 2 s delay: the will must have been cancelled


# ------------------------------------------------------------------------------------------
# Keep-alive
# ------------------------------------------------------------------------------------------


@VERSIONS
def test_keepalive_enforced(broker, paho, raw, v5):
    watcher = connected(paho, broker, v5=True, client_id="watcher")
    watcher.subscribe("ka/#", 1)
    dev = raw(broker, timeout=6)
    dev.connect("silent", v5=v5, keepalive=1, will=Will("ka/silent", b"timed out", qos=1))
    start = time.monotonic()
    before_close = dev.read_until_closed(timeout=5)
    elapsed = time.monotonic() - start
    assert 1.2 <= elapsed <= 2.7, f"silent client with keep-alive 1 s closed after {elapsed:.2f}s"
    if v5:
        assert all(p.type == DISCONNECT for p in before_close), before_close
        if before_close:
            assert before_close[0].reason_code() == 0x8D, "v5 DISCONNECT reason Keep Alive timeout"
    else:
        assert before_close == []
    msg = watcher.get()
    assert (msg.topic, msg.payload) == ("ka/silent", b"timed out")


@VERSIONS
def test_keepalive_active_client_stays_connected(broker, raw, v5):
    dev = raw(broker)
    dev.connect("pinger", v5=v5, keepalive=1)
    for _ in range(6):  # 3 s, twice the 1.5 s limit
        time.sleep(0.5)
        dev.send(packet(PINGREQ << 4, b""))
        dev.expect(PINGRESP, timeout=2)


@VERSIONS
def test_max_keepalive_from_config(gateway_factory, paho, raw, v5):
    gw = gateway_factory(config="[mqtt]\nmax_keepalive = 2\n")
    if v5:
        c = paho(gw, v5=True, client_id="asks-60", keepalive=60)
        ack = c.connect()
        assert getattr(ack.properties, "ServerKeepAlive", None) == 2
        c.disconnect()
    dev = raw(gw, timeout=8)
    dev.connect("silent", v5=v5, keepalive=60)
    start = time.monotonic()
    dev.read_until_closed(timeout=7)
    elapsed = time.monotonic() - start
    assert 2.5 <= elapsed <= 4.5, f"closed after {elapsed:.2f}s; capped keep-alive 2 s x 1.5 = 3 s"


# ------------------------------------------------------------------------------------------
# Sessions
# ------------------------------------------------------------------------------------------


@VERSIONS
def test_persistent_session_queues_messages(broker, paho, v5):
    expiry = 60 if v5 else None
    sub = paho(broker, v5=v5, client_id="persist", clean=False)
    assert sub.connect(session_expiry=expiry).session_present is False
    assert sub.subscribe("ps/#", 2) == [2]
    sub.disconnect()

    pub = connected(paho, broker, v5=v5, client_id="pub")
    sent = []
    for i in range(5):
        pub.publish(f"ps/{i}", f"queued {i}".encode(), 1)
        sent.append((f"ps/{i}", f"queued {i}".encode(), 1))
    pub.publish("ps/q2", b"queued qos2", 2)
    sent.append(("ps/q2", b"queued qos2", 2))

    back = paho(broker, v5=v5, client_id="persist", clean=False)
    assert back.connect(session_expiry=expiry).session_present is True
    got = back.get_n(len(sent))
    assert [(m.topic, m.payload, m.qos) for m in got] == sent
    # The subscription itself survived too.
    pub.publish("ps/live", b"after reconnect", 1)
    m = back.get()
    assert (m.topic, m.payload) == ("ps/live", b"after reconnect")
    back.disconnect()

    fresh = paho(broker, v5=v5, client_id="persist", clean=True)
    assert fresh.connect().session_present is False, "clean session/start discards the session"


def test_v5_session_expiry(broker, paho):
    sub = paho(broker, v5=True, client_id="short", clean=True)
    sub.connect(session_expiry=1)
    sub.subscribe("se/#", 1)
    sub.disconnect()
    pub = connected(paho, broker, v5=True, client_id="pub")
    pub.publish("se/x", b"for a dead session", 1)
    time.sleep(2.0)  # beyond the 1 s session expiry
    back = paho(broker, v5=True, client_id="short", clean=False)
    assert back.connect(session_expiry=1).session_present is False, "session should have expired"
    back.assert_no_message(0.5)


def test_v5_session_expiry_zero_ends_session_with_connection(broker, paho):
    sub = paho(broker, v5=True, client_id="zero", clean=True)
    sub.connect()  # no Session Expiry Interval property: 0
    sub.subscribe("sz/#", 1)
    sub.disconnect()
    back = paho(broker, v5=True, client_id="zero", clean=False)
    assert back.connect().session_present is False


@VERSIONS
def test_takeover_disconnects_first_client(broker, paho, v5):
    first = connected(paho, broker, v5=v5, client_id="same-id")
    second = connected(paho, broker, v5=v5, client_id="same-id")
    rc = first.wait_disconnected()
    if v5:
        assert rc == 0x8E, f"v5 DISCONNECT reason {rc:#x}, expected 0x8E session taken over"
    second.subscribe("to/x", 1)
    second.publish("to/x", b"second works", 1)
    assert second.get().payload == b"second works"


# ------------------------------------------------------------------------------------------
# Topics and subscriptions
# ------------------------------------------------------------------------------------------


@VERSIONS
def test_wildcards(broker, paho, v5):
    filters = {"w/+/c": "plus", "w/#": "hash", "+/a/#": "mixed"}
    subs = {}
    for f, name in filters.items():
        subs[f] = connected(paho, broker, v5=v5, client_id=name)
        subs[f].subscribe(f, 1)
    pub = connected(paho, broker, v5=v5, client_id="pub")
    topics = ["w/a/c", "w/b/c", "w/a/d", "w", "w/a/c/d", "x/a/c", "w//c", "wx/a/c"]
    for t in topics:
        pub.publish(t, t.encode(), 1)
    pub.publish("w/a/c", b"END", 1)  # matches every filter
    expected = {
        "w/+/c": ["w/a/c", "w/b/c", "w//c"],
        "w/#": ["w/a/c", "w/b/c", "w/a/d", "w", "w/a/c/d", "w//c"],
        "+/a/#": ["w/a/c", "w/a/d", "w/a/c/d", "x/a/c", "wx/a/c"],
    }
    for f, client in subs.items():
        got = []
        while True:
            m = client.get()
            if m.payload == b"END":
                break
            got.append(m.topic)
        assert got == expected[f], f"filter {f!r}"


@VERSIONS
def test_dollar_topics_not_matched_by_leading_wildcards(broker, paho, v5):
    hash_all = connected(paho, broker, v5=v5, client_id="hash")
    hash_all.subscribe("#", 1)
    plus = connected(paho, broker, v5=v5, client_id="plus")
    plus.subscribe("+/x", 1)
    explicit = connected(paho, broker, v5=v5, client_id="explicit")
    explicit.subscribe("$test/#", 1)
    pub = connected(paho, broker, v5=v5, client_id="pub")
    pub.publish("$test/x", b"dollar", 1)
    pub.publish("n/x", b"normal", 1)
    for c in (hash_all, plus):
        m = c.get()
        assert (m.topic, m.payload) == ("n/x", b"normal"), "`$` topic matched a leading wildcard"
    m = explicit.get()
    assert (m.topic, m.payload) == ("$test/x", b"dollar")


def test_shared_subscription_one_member_each(broker, paho):
    members = [
        connected(paho, broker, v5=False, client_id="m311"),
        connected(paho, broker, v5=True, client_id="m5a"),
        connected(paho, broker, v5=True, client_id="m5b"),
    ]
    for m in members:
        assert m.subscribe("$share/grp/sh/#", 1) == [1]
    normal = connected(paho, broker, v5=True, client_id="normal")
    normal.subscribe("sh/#", 1)
    pub = connected(paho, broker, v5=True, client_id="pub")
    n = 30
    for i in range(n):
        pub.publish(f"sh/{i}", str(i).encode(), 1)
    assert sorted(int(m.payload) for m in normal.get_n(n)) == list(range(n))

    received: dict[str, list[int]] = {m.client_id: [] for m in members}
    deadline = time.monotonic() + 5
    while sum(map(len, received.values())) < n and time.monotonic() < deadline:
        for m in members:
            while not m.messages.empty():
                received[m.client_id].append(int(m.messages.get().payload))
        time.sleep(0.02)
    time.sleep(0.3)  # let any duplicate arrive before counting
    for m in members:
        while not m.messages.empty():
            received[m.client_id].append(int(m.messages.get().payload))
    everything = sorted(x for got in received.values() for x in got)
    assert everything == list(range(n)), f"each message to exactly one member; got {received}"


def test_shared_subscription_gets_no_retained_on_subscribe(broker, paho):
    pub = connected(paho, broker, v5=True, client_id="pub")
    pub.publish("shr/x", b"retained", 1, retain=True)
    member = connected(paho, broker, v5=True, client_id="member")
    member.subscribe("$share/g/shr/#", 1)
    pub.publish("shr/sentinel", b"end", 1)
    assert [m.topic for m in member.get_until("shr/sentinel")] == ["shr/sentinel"], (
        "MQTT 5 section 4.8.2: retained messages are not sent to a shared subscription"
    )


# ------------------------------------------------------------------------------------------
# MQTT 5 features
# ------------------------------------------------------------------------------------------


def test_v5_publish_properties_end_to_end(broker, paho):
    user_props = [("a", "1"), ("b", "2"), ("a", "3"), ("a", "1"), ("ü", "ß")]
    responder = connected(paho, broker, v5=True, client_id="responder")
    responder.subscribe("req/svc", 1)
    requester = connected(paho, broker, v5=True, client_id="requester")
    requester.subscribe("resp/requester", 1)
    properties = v5_props(
        PacketTypes.PUBLISH,
        UserProperty=user_props,
        ContentType="application/json",
        ResponseTopic="resp/requester",
        CorrelationData=b"\x00\x01corr\xff",
        PayloadFormatIndicator=1,
        MessageExpiryInterval=60,
    )
    requester.publish("req/svc", b'{"q": 1}', 1, properties=properties)
    req = responder.get()
    p = req.properties
    assert req.payload == b'{"q": 1}'
    assert p.UserProperty == user_props, "user properties keep order and duplicates"
    assert p.ContentType == "application/json"
    assert p.ResponseTopic == "resp/requester"
    assert p.CorrelationData == b"\x00\x01corr\xff"
    assert p.PayloadFormatIndicator == 1
    assert 55 <= p.MessageExpiryInterval <= 60
    # Request/response round trip using the received properties.
    reply = v5_props(PacketTypes.PUBLISH, CorrelationData=p.CorrelationData)
    responder.publish(p.ResponseTopic, b"answer", 1, properties=reply)
    resp = requester.get()
    assert (resp.topic, resp.payload) == ("resp/requester", b"answer")
    assert resp.properties.CorrelationData == b"\x00\x01corr\xff"


def test_v5_message_expiry_for_offline_session(broker, paho):
    sub = paho(broker, v5=True, client_id="offline", clean=True)
    sub.connect(session_expiry=60)
    sub.subscribe("exp/#", 1)
    sub.disconnect()
    pub = connected(paho, broker, v5=True, client_id="pub")
    short = v5_props(PacketTypes.PUBLISH, MessageExpiryInterval=1)
    long = v5_props(PacketTypes.PUBLISH, MessageExpiryInterval=60)
    pub.publish("exp/short", b"expires", 1, properties=short)
    pub.publish("exp/long", b"survives", 1, properties=long)
    pub.publish("exp/none", b"no expiry", 1)
    time.sleep(2.0)  # the short message's 1 s lifetime passes while the session is offline
    back = paho(broker, v5=True, client_id="offline", clean=False)
    assert back.connect(session_expiry=60).session_present is True
    back.publish("exp/sentinel", b"end", 1)
    got = back.get_until("exp/sentinel")
    assert [m.topic for m in got] == ["exp/long", "exp/none", "exp/sentinel"], (
        "a queued message whose expiry passed must not be delivered"
    )
    remaining = got[0].properties.MessageExpiryInterval
    assert remaining <= 59, f"expiry interval must be reduced by the time queued, got {remaining}"


def test_v5_subscription_identifiers(broker, paho):
    c = connected(paho, broker, v5=True, client_id="sid")
    c.subscribe("si/a/#", 1, properties=v5_props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=7))
    c.subscribe("si/+/b", 1, properties=v5_props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=9))
    pub = connected(paho, broker, v5=True, client_id="pub")
    pub.publish("si/a/x", b"1", 1)
    pub.publish("si/z/b", b"2", 1)
    pub.publish("si/a/b", b"3", 1)  # matches both subscriptions
    pub.publish("si/a/end", b"end", 1)
    got = c.get_until("si/a/end")
    ids = {}
    for m in got:
        ids.setdefault(m.topic, []).extend(m.properties.SubscriptionIdentifier)
    assert ids["si/a/x"] == [7]
    assert ids["si/z/b"] == [9]
    assert sorted(ids["si/a/b"]) == [7, 9], "overlapping subscriptions: both identifiers"
    assert ids["si/a/end"] == [7]


def test_v5_no_local(broker, paho):
    me = connected(paho, broker, v5=True, client_id="me")
    me.subscribe("nl/a", 1, no_local=True)
    me.subscribe("nl/b", 1, no_local=False)
    other = connected(paho, broker, v5=True, client_id="other")
    me.publish("nl/a", b"own", 1)
    other.publish("nl/a", b"other", 1)
    me.publish("nl/b", b"end", 1)
    payloads = [m.payload for m in me.get_n(2)]
    assert sorted(payloads) == [b"end", b"other"], f"no-local violated: {payloads}"
    me.assert_no_message(0.3)


@pytest.mark.parametrize("sub_v5", [False, True], ids=["sub311", "sub5"])
def test_v5_inbound_topic_alias(broker, paho, sub_v5):
    sub = connected(paho, broker, v5=sub_v5, client_id="sub")
    sub.subscribe("ta/#", 1)
    pub = connected(paho, broker, v5=True, client_id="pub")
    alias = v5_props(PacketTypes.PUBLISH, TopicAlias=1)
    assert pub.publish("ta/a/rather/long/topic/name", b"one", 1, properties=alias) == 0
    assert pub.publish("", b"two", 1, properties=v5_props(PacketTypes.PUBLISH, TopicAlias=1)) == 0
    assert (
        pub.publish("ta/other", b"three", 1, properties=v5_props(PacketTypes.PUBLISH, TopicAlias=1))
        == 0
    )
    assert pub.publish("", b"four", 1, properties=v5_props(PacketTypes.PUBLISH, TopicAlias=1)) == 0
    got = sub.get_n(4)
    assert [(m.topic, m.payload) for m in got] == [
        ("ta/a/rather/long/topic/name", b"one"),
        ("ta/a/rather/long/topic/name", b"two"),
        ("ta/other", b"three"),
        ("ta/other", b"four"),
    ]


def test_v5_payload_format_invalid_utf8(broker, paho):
    sub = connected(paho, broker, v5=True, client_id="sub")
    sub.subscribe("pfi/#", 1)
    pub = connected(paho, broker, v5=True, client_id="pub")
    utf8 = v5_props(PacketTypes.PUBLISH, PayloadFormatIndicator=1)
    code = pub.publish("pfi/bad", b"\xff\xfe not utf-8", 1, properties=utf8)
    assert code == 0x99, f"PUBACK reason {code:#x}, expected 0x99 payload format invalid"
    assert pub.publish("pfi/good", "gültig".encode(), 1, properties=utf8) == 0
    got = sub.get()
    assert (got.topic, got.payload) == ("pfi/good", "gültig".encode())
    assert got.properties.PayloadFormatIndicator == 1
    sub.assert_no_message(0.3)


def test_v5_assigned_client_identifier(broker, paho):
    c = paho(broker, v5=True, client_id="")
    ack = c.connect()
    assigned = getattr(ack.properties, "AssignedClientIdentifier", None)
    assert assigned, "v5 CONNACK must carry an Assigned Client Identifier for an empty id"
    c.subscribe("aci/x", 1)
    c.publish("aci/x", b"hi", 1)
    assert c.get().payload == b"hi"
    other = paho(broker, v5=True, client_id="")
    assert getattr(other.connect().properties, "AssignedClientIdentifier", None) not in (
        None,
        assigned,
    )


def test_v311_empty_client_id(broker, paho, raw):
    c = paho(broker, v5=False, client_id="", clean=True)
    c.connect()
    c.subscribe("eid/x", 1)
    c.publish("eid/x", b"ok", 1)
    assert c.get().payload == b"ok"
    # Empty id with clean session 0 must be refused with return code 2 [MQTT-3.1.3-8].
    dev = raw(broker)
    dev.send(connect_packet("", v5=False, clean=False))
    got = dev.read_until_closed()
    assert got and got[0].type == CONNACK and got[0].body == b"\x00\x02", got


# ------------------------------------------------------------------------------------------
# Malformed input over raw sockets
# ------------------------------------------------------------------------------------------


def test_unsupported_protocol_level(broker, paho, raw):
    dev = raw(broker)
    dev.send(connect_packet("lvl6", v5=False, protocol_level=6))
    got = dev.read_until_closed()
    assert len(got) == 1 and got[0].type == CONNACK, got
    assert got[0].body == b"\x00\x01", f"expected 3.1.1 CONNACK code 1, got {got[0]!r}"
    assert_broker_healthy(broker, paho)


@pytest.mark.parametrize(
    "first",
    [
        packet(PINGREQ << 4, b""),
        publish_packet("a/b", b"x", v5=False),
        subscribe_packet(1, [("a/b", 0)], v5=False),
    ],
    ids=["pingreq", "publish", "subscribe"],
)
def test_first_packet_not_connect(broker, paho, raw, first):
    dev = raw(broker)
    dev.send(first)
    assert dev.read_until_closed() == [], "no answer, just a close"
    assert_broker_healthy(broker, paho)


def _bad_publish_closes(broker, paho, raw, v5, bad: bytes, v5_reasons: set[int]):
    spy = connected(paho, broker, v5=True, client_id="spy")
    spy.subscribe("#", 1)
    dev = raw(broker)
    dev.connect("bad", v5=v5)
    dev.send(bad)
    got = dev.read_until_closed()
    if v5:
        assert len(got) <= 1 and all(p.type == DISCONNECT for p in got), got
        if v5_reasons and len(v5_reasons) == 1:
            assert got, f"v5 client must be told why with DISCONNECT {v5_reasons}"
        if got:
            assert got[0].reason_code() in v5_reasons, (
                f"DISCONNECT reason {got[0].reason_code():#x}"
            )
    else:
        assert got == [], got
    spy.publish("after/bad", b"sentinel", 1)
    assert [m.topic for m in spy.get_until("after/bad")] == ["after/bad"], (
        "the malformed PUBLISH must not be routed"
    )
    assert_broker_healthy(broker, paho)


@VERSIONS
@pytest.mark.parametrize("topic", ["a/+/b", "a/#", "#"])
def test_publish_with_wildcard_topic(broker, paho, raw, v5, topic):
    bad = publish_packet(topic, b"x", v5=v5, qos=1)
    _bad_publish_closes(broker, paho, raw, v5, bad, {0x90})


@VERSIONS
def test_publish_qos3(broker, paho, raw, v5):
    bad = publish_packet("a/b", b"x", v5=v5, qos=3)
    _bad_publish_closes(broker, paho, raw, v5, bad, {0x81})


@VERSIONS
@pytest.mark.parametrize(
    "topic", [b"a/\xff\xfe", b"a/\xc0\xaf", b"a/\x00b"], ids=["ff", "overlong", "nul"]
)
def test_publish_invalid_utf8_topic(broker, paho, raw, v5, topic):
    bad = publish_packet(topic, b"x", v5=v5, qos=0)
    _bad_publish_closes(broker, paho, raw, v5, bad, {0x81, 0x90})


@pytest.mark.parametrize("alias", [0, 65], ids=["zero", "above-max"])
def test_v5_invalid_topic_alias(broker, paho, raw, alias):
    bad = publish_packet("ta/x", b"x", v5=True, qos=0, properties=props((PROP_TOPIC_ALIAS, alias)))
    _bad_publish_closes(broker, paho, raw, True, bad, {0x94})


def test_v5_unknown_topic_alias(broker, paho, raw):
    bad = publish_packet("", b"x", v5=True, qos=0, properties=props((PROP_TOPIC_ALIAS, 5)))
    _bad_publish_closes(broker, paho, raw, True, bad, {0x82, 0x94})


def test_raw_v5_properties_round_trip(broker, raw):
    """Bytes-level check that the gateway forwards user properties and expiry verbatim."""
    sub = raw(broker)
    sub.connect("raw-sub", v5=True)
    sub.send(subscribe_packet(1, [("raw/#", 1)], v5=True))
    ack = sub.expect(SUBACK)
    assert ack.body[-1] == 1
    pub = raw(broker)
    pub.connect("raw-pub", v5=True)
    pp = props(
        (PROP_USER_PROPERTY, ("z", "1")),
        (PROP_USER_PROPERTY, ("a", "2")),
        (PROP_USER_PROPERTY, ("z", "1")),
        (PROP_MESSAGE_EXPIRY, 100),
    )
    pub.send(publish_packet("raw/t", b"data", v5=True, qos=1, packet_id=7, properties=pp))
    puback = pub.expect(PUBACK)
    assert puback.body[:2] == b"\x00\x07"
    assert len(puback.body) == 2 or puback.body[2] in (0x00, 0x10), puback
    got = sub.expect(3)
    topic, qos, payload, properties = parse_publish(got, v5=True)
    assert (topic, qos, payload) == ("raw/t", 1, b"data")
    assert properties[PROP_USER_PROPERTY] == [("z", "1"), ("a", "2"), ("z", "1")]
    assert 98 <= properties[PROP_MESSAGE_EXPIRY][0] <= 100
    pub.send(disconnect_packet(v5=True))
    assert pub.read_until_closed() == []


# ------------------------------------------------------------------------------------------
# Process lifecycle
# ------------------------------------------------------------------------------------------


def test_sigterm_with_connected_clients_exits_zero(gateway_factory, paho, raw):
    gw = gateway_factory()
    c311 = connected(paho, gw, v5=False, client_id="c311")
    c5 = connected(paho, gw, v5=True, client_id="c5")
    c5.subscribe("any/#", 1)
    dev = raw(gw)
    dev.connect("rawdev", v5=True)
    code = gw.stop()
    assert code == 0, f"exit code {code} after SIGTERM with clients connected:\n{gw.log_tail()}"
    c311.wait_disconnected()
    c5.wait_disconnected()
    dev.read_until_closed()


def test_config_file_is_applied(gateway_factory, paho):
    """A --config file written by the test changes behaviour (here: the retained limit)."""
    gw = gateway_factory(config="[mqtt]\nretained_max = 0\n")
    pub = connected(paho, gw, v5=True, client_id="pub")
    pub.publish("cfg/x", b"not stored", 1, retain=True)
    sub = connected(paho, gw, v5=True, client_id="sub")
    sub.subscribe("cfg/#", 1)
    sub.publish("cfg/sentinel", b"end", 1)
    assert [m.topic for m in sub.get_until("cfg/sentinel")] == ["cfg/sentinel"]


# ------------------------------------------------------------------------------------------
# QoS flows at the byte level
# ------------------------------------------------------------------------------------------


def _ack(ptype: int, packet_id: int) -> bytes:
    flags = 0x02 if ptype == PUBREL else 0
    return packet((ptype << 4) | flags, struct.pack("!H", packet_id))


@VERSIONS
def test_qos2_duplicate_publish_delivered_once(broker, paho, raw, v5):
    sub = connected(paho, broker, v5=v5, client_id="sub")
    # QoS 1 on the subscriber side: paho hands an inbound QoS 2 message to the application only
    # at PUBREL, which could let the (QoS 1) sentinel overtake it inside paho.
    sub.subscribe("eo/#", 1)
    dev = raw(broker)
    dev.connect("qos2-pub", v5=v5)
    first = publish_packet("eo/x", b"exactly once", v5=v5, qos=2, packet_id=11)
    dev.send(first)
    rec = dev.expect(PUBREC)
    assert rec.body[:2] == b"\x00\x0b"
    # Resend with DUP=1 before releasing, as after a lost PUBREC.
    dev.send(bytes([first[0] | 0x08]) + first[1:])
    rec = dev.expect(PUBREC)
    assert rec.body[:2] == b"\x00\x0b"
    dev.send(_ack(PUBREL, 11))
    comp = dev.expect(PUBCOMP)
    assert comp.body[:2] == b"\x00\x0b"
    sub.publish("eo/sentinel", b"end", 1)
    got = sub.get_until("eo/sentinel")
    assert [(m.topic, m.payload) for m in got] == [
        ("eo/x", b"exactly once"),
        ("eo/sentinel", b"end"),
    ]


@VERSIONS
def test_unacknowledged_qos1_redelivered_with_dup_on_resume(broker, paho, raw, v5):
    session_props = props((PROP_SESSION_EXPIRY, 60)) if v5 else b"\x00"
    dev = raw(broker)
    dev.connect("forgetful", v5=v5, clean=False, properties=session_props)
    dev.send(subscribe_packet(1, [("rd/#", 1)], v5=v5))
    dev.expect(SUBACK)
    pub = connected(paho, broker, v5=v5, client_id="pub")
    pub.publish("rd/x", b"ack me", 1)
    first = dev.expect(PUBLISH)
    topic, qos, payload, _ = parse_publish(first, v5=v5)
    assert (topic, qos, payload) == ("rd/x", 1, b"ack me")
    assert not first.flags & 0x08
    dev.close()  # no PUBACK

    back = raw(broker)
    ack = back.connect("forgetful", v5=v5, clean=False, properties=session_props)
    assert ack.body[0] & 1, "session present"
    again = back.expect(PUBLISH)
    topic, qos, payload, _ = parse_publish(again, v5=v5)
    assert (topic, qos, payload) == ("rd/x", 1, b"ack me")
    assert again.flags & 0x08, "a redelivered PUBLISH has DUP=1 [MQTT-4.4.0-1 / -3.3.1-1]"
    packet_id = again.body[2 + len(b"rd/x") : 4 + len(b"rd/x")]
    back.send(packet(PUBACK << 4, packet_id))
    back.send(disconnect_packet(v5=v5))
    assert back.read_until_closed() == []


@VERSIONS
def test_unsubscribe_stops_delivery(broker, paho, v5):
    c = connected(paho, broker, v5=v5, client_id="unsub")
    c.subscribe("us/a", 1)
    c.subscribe("us/b", 1)
    c.publish("us/a", b"1", 1)
    assert c.get().payload == b"1"
    c.unsubscribe("us/a")
    c.publish("us/a", b"2", 1)
    c.publish("us/b", b"end", 1)
    assert [(m.topic, m.payload) for m in c.get_until("us/b")] == [("us/b", b"end")]


def test_v5_receive_maximum_respected(broker, paho, raw):
    dev = raw(broker)
    dev.connect("slow", v5=True, properties=props((PROP_RECEIVE_MAXIMUM, 1)))
    dev.send(subscribe_packet(1, [("rm/#", 1)], v5=True))
    dev.expect(SUBACK)
    pub = connected(paho, broker, v5=True, client_id="pub")
    for i in range(3):
        pub.publish(f"rm/{i}", str(i).encode(), 1)
    received = []
    for i in range(3):
        pkt = dev.expect(PUBLISH)
        topic, qos, payload, _ = parse_publish(pkt, v5=True)
        received.append(payload)
        packet_id = pkt.body[2 + len(topic) : 4 + len(topic)]
        if i < 2:
            with pytest.raises(TimeoutError):
                extra = dev.read_packet(timeout=0.5)
                raise AssertionError(f"second in-flight PUBLISH with Receive Maximum 1: {extra!r}")
        dev.send(packet(PUBACK << 4, packet_id))
    assert received == [b"0", b"1", b"2"]


@VERSIONS
def test_oversized_packet_closes_connection(gateway_factory, paho, raw, v5):
    gw = gateway_factory(config="[mqtt]\nmax_packet_size = 1024\n")
    spy = connected(paho, gw, v5=True, client_id="spy")
    spy.subscribe("big/#", 1)
    dev = raw(gw)
    ack = dev.connect("big", v5=v5)
    if v5:
        properties, _ = parse_props(ack.body[2:])
        assert properties.get(PROP_MAXIMUM_PACKET_SIZE) == [1024]
    dev.send(publish_packet("big/x", b"x" * 2000, v5=v5, qos=1))
    got = dev.read_until_closed()
    if v5:
        assert [p.type for p in got] in ([], [DISCONNECT]), got
        if got:
            assert got[0].reason_code() == 0x95, f"reason {got[0].reason_code():#x}"
    else:
        assert got == []
    spy.publish("big/sentinel", b"end", 1)
    assert [m.topic for m in spy.get_until("big/sentinel")] == ["big/sentinel"]
    # Just under the limit still passes.
    ok = connected(paho, gw, v5=v5, client_id="fits")
    ok.publish("big/fits", b"y" * 900, 1)
    m = spy.get()
    assert (m.topic, len(m.payload)) == ("big/fits", 900)


@VERSIONS
def test_takeover_keeps_persistent_session(broker, paho, v5):
    expiry = 60 if v5 else None
    first = paho(broker, v5=v5, client_id="roaming", clean=False)
    first.connect(session_expiry=expiry)
    first.subscribe("roam/#", 1)
    second = paho(broker, v5=v5, client_id="roaming", clean=False)
    assert second.connect(session_expiry=expiry).session_present is True
    first.wait_disconnected()
    pub = connected(paho, broker, v5=v5, client_id="pub")
    pub.publish("roam/x", b"follows the session", 1)
    m = second.get()
    assert (m.topic, m.payload) == ("roam/x", b"follows the session")


@VERSIONS
@pytest.mark.parametrize("bad_filter", ["a/#/b", "a/b#", "a/+b", "$share/g"])
def test_invalid_subscription_filter_refused(broker, paho, raw, v5, bad_filter):
    """Never granted: refused in the SUBACK (the valid filter beside it still granted), or the
    connection is closed as for a protocol error (v5: DISCONNECT with an error reason)."""
    dev = raw(broker)
    dev.connect("filters", v5=v5)
    dev.send(subscribe_packet(3, [(bad_filter, 1), ("ok/#", 1)], v5=v5))
    pkt = dev.read_packet()
    if pkt is not None and pkt.type == SUBACK:
        codes = pkt.body[2:]
        if v5:
            _, codes = parse_props(codes)
        assert len(codes) == 2 and codes[0] >= 0x80, f"{bad_filter!r} granted: {list(codes)}"
        assert codes[1] == 1, f"valid filter beside it: {list(codes)}"
        dev.send(packet(PINGREQ << 4, b""))
        dev.expect(PINGRESP)
    else:
        rest = [] if pkt is None else [pkt, *dev.read_until_closed()]
        if v5:
            assert [p.type for p in rest] in ([], [DISCONNECT]), rest
            assert not rest or rest[0].reason_code() >= 0x80, rest
        else:
            assert rest == [], rest
    assert_broker_healthy(broker, paho)
