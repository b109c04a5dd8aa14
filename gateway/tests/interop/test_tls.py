"""TLS with Python's `ssl` (OpenSSL): paho-mqtt and plain `ssl` sockets against the gateway's `tls`
listeners, by IP literal and by name, TLS 1.2 and 1.3, without and with a client certificate.

* `test_paho_over_tls`: paho-mqtt on an `ssl.SSLContext` pinned to one TLS version connects,
  subscribes and receives its own QoS 1 message; the negotiated version is checked on the socket.
  With a client certificate (the mutual TLS listener) the topic is under `dev/device-8/`, which
  the ACL grants only to the username taken from the certificate's CN.
* `test_python_ssl_session_resumption`: a second connection offering the session the first one
  got (`SSLContext.wrap_socket(..., session=)`) is resumed (`SSLSocket.session_reused`): TLS 1.3
  tickets, TLS 1.2 tickets, TLS 1.2 session ids (`OP_NO_TICKET`); on the mutual TLS listener the
  resumed session keeps the client's identity (its SUBACK under `dev/device-8/` is a grant).

The PKI (P-256, server certificate for `DNS:localhost, IP:127.0.0.1`) comes from the `openssl`
CLI, see `tls_helpers.py`.
"""

from __future__ import annotations

import queue
import socket
import ssl
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqtt_helpers import (
    CONNACK,
    SUBACK,
    connect_packet,
    disconnect_packet,
    subscribe_packet,
)
from tls_helpers import DEVICE, HOSTS

WAIT = 10.0
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def client_context(pki, version: str, client_cert: bool, *, tickets: bool = True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    ctx.minimum_version = ctx.maximum_version = VERSIONS[version]
    if client_cert:
        ctx.load_cert_chain(pki.client_cert, pki.client_key)
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def target(tls_gateway, client_cert: bool) -> tuple[int, str]:
    """The listener port and a topic filter the client may use there."""
    _pki, tls_port, mutual_port = tls_gateway
    if client_cert:
        return mutual_port, f"dev/{DEVICE}/#"
    return tls_port, "open/#"


CERT = pytest.mark.parametrize("client_cert", [False, True], ids=["no-client-cert", "client-cert"])
HOST = pytest.mark.parametrize("host", HOSTS)


@HOST
@pytest.mark.parametrize("version", list(VERSIONS))
@CERT
def test_paho_over_tls(tls_gateway, host, version, client_cert):
    pki = tls_gateway[0]
    port, topic_filter = target(tls_gateway, client_cert)
    topic = topic_filter.replace("#", "paho")
    messages: queue.Queue = queue.Queue()
    connacks: queue.Queue = queue.Queue()
    subacks: queue.Queue = queue.Queue()
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"tls-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
        reconnect_on_failure=False,
    )
    c.tls_set_context(client_context(pki, version, client_cert))
    c.on_connect = lambda _c, _u, _f, rc, _p: connacks.put(rc.value)
    c.on_message = lambda _c, _u, msg: messages.put(msg)
    c.on_subscribe = lambda _c, _u, _mid, rcs, _p: subacks.put([r.value for r in rcs])
    c.connect(host, port, keepalive=30)
    c.loop_start()
    try:
        assert connacks.get(timeout=WAIT) == 0
        negotiated = c.socket().version()
        assert negotiated == f"TLSv{version}", negotiated
        c.subscribe(topic, qos=1)
        assert subacks.get(timeout=WAIT) == [1], "subscription not granted"
        payload = f"{host} TLS {version} client_cert={client_cert}".encode()
        c.publish(topic, payload, qos=1).wait_for_publish(timeout=WAIT)
        assert messages.get(timeout=WAIT).payload == payload
    finally:
        c.disconnect()
        c.loop_stop()


def subscribe_once(host: str, port: int, ctx: ssl.SSLContext, topic_filter: str, session=None):
    """One TLS connection: CONNECT, SUBSCRIBE and DISCONNECT in one write, read to the end.
    Returns (session_reused, the session to offer next time, SUBACK return code)."""
    with socket.create_connection((host, port), timeout=WAIT) as tcp:
        with ctx.wrap_socket(tcp, server_hostname=host, session=session) as s:
            reused = s.session_reused
            s.sendall(
                connect_packet(f"resume-{uuid.uuid4().hex[:8]}", v5=False)
                + subscribe_packet(1, [(topic_filter, 1)], v5=False)
                + disconnect_packet(v5=False)
            )
            data = b""
            # The gateway closes after DISCONNECT (with close_notify); a TLS 1.3 ticket arrives
            # on the way.
            while chunk := s.recv(4096):
                data += chunk
            kept = s.session
    # CONNACK (4 bytes) then SUBACK (5 bytes: header, length 3, packet id, return code).
    assert data[0] >> 4 == CONNACK and data[3] == 0, data
    assert data[4] >> 4 == SUBACK and len(data) == 9, data
    return reused, kept, data[8]


@HOST
@pytest.mark.parametrize(
    "version,tickets",
    [("1.3", True), ("1.2", True), ("1.2", False)],
    ids=["tls13-ticket", "tls12-ticket", "tls12-session-id"],
)
@CERT
def test_python_ssl_session_resumption(tls_gateway, host, version, tickets, client_cert):
    pki = tls_gateway[0]
    port, topic_filter = target(tls_gateway, client_cert)
    ctx = client_context(pki, version, client_cert, tickets=tickets)
    reused, session, code = subscribe_once(host, port, ctx, topic_filter)
    assert not reused and code == 1
    assert session is not None, "the server offered no session to resume"
    if version == "1.2":
        assert session.has_ticket == tickets, "ticket / session id not as asked"
    reused, _, code = subscribe_once(host, port, ctx, topic_filter, session=session)
    assert reused, "the second connection did a full handshake"
    assert code == 1, "the resumed session lost the client's identity"
