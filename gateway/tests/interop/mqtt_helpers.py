"""Helpers shared by the interop tests (no test lives here).

* A minimal hand-written MQTT 3.1.1 / 5.0 packet encoder and decoder plus `RawClient`, a
  blocking socket wrapper, so tests can send exactly the bytes they mean (including malformed
  ones) and observe exactly what the gateway answers or whether it closes the connection.
* `PahoClient`, a thin synchronous wrapper around a paho-mqtt 2.x client running its network
  loop in a background thread: every wait is bounded and fails with a message saying what was
  awaited.

Everything is written for these tests; nothing is copied from another project.
"""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

DEFAULT_TIMEOUT = 5.0

# MQTT control packet types (high nibble of the first byte).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

# MQTT 5 property identifiers used by the raw tests.
PROP_PAYLOAD_FORMAT = 0x01
PROP_MESSAGE_EXPIRY = 0x02
PROP_SESSION_EXPIRY = 0x11
PROP_ASSIGNED_CLIENT_ID = 0x12
PROP_REASON_STRING = 0x1F
PROP_WILL_DELAY = 0x18
PROP_TOPIC_ALIAS = 0x23
PROP_USER_PROPERTY = 0x26
PROP_RECEIVE_MAXIMUM = 0x21
PROP_MAXIMUM_PACKET_SIZE = 0x27


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on host:port or the port cannot be bound."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


# --------------------------------------------------------------------------------------------
# Raw packet encoding
# --------------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """Variable byte integer (remaining length, property lengths)."""
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def mqtt_str(s: str | bytes) -> bytes:
    """Two-byte length prefixed string; bytes are sent verbatim (for invalid UTF-8 tests)."""
    data = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(data)) + data


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def props(*items: tuple[int, object]) -> bytes:
    """Encodes a v5 property block (length prefix included) from (identifier, value) pairs.

    The value's encoding follows the identifier: byte, four-byte int, two-byte int, string,
    binary or string pair, per the MQTT 5 property table (only the ones tests use).
    """
    one_byte = {PROP_PAYLOAD_FORMAT}
    four_byte = {
        PROP_MESSAGE_EXPIRY,
        PROP_SESSION_EXPIRY,
        PROP_WILL_DELAY,
        PROP_MAXIMUM_PACKET_SIZE,
    }
    two_byte = {PROP_TOPIC_ALIAS, PROP_RECEIVE_MAXIMUM}
    body = bytearray()
    for ident, value in items:
        body.append(ident)
        if ident in one_byte:
            body.append(int(value))  # type: ignore[arg-type]
        elif ident in four_byte:
            body += struct.pack("!I", int(value))  # type: ignore[arg-type]
        elif ident in two_byte:
            body += struct.pack("!H", int(value))  # type: ignore[arg-type]
        elif ident == PROP_USER_PROPERTY:
            k, v = value  # type: ignore[misc]
            body += mqtt_str(k) + mqtt_str(v)
        else:
            body += mqtt_str(value)  # type: ignore[arg-type]
    return varint(len(body)) + bytes(body)


@dataclass
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: bytes = b"\x00"  # v5 only: encoded property block


def connect_packet(
    client_id: str,
    *,
    v5: bool,
    keepalive: int = 60,
    clean: bool = True,
    will: Will | None = None,
    properties: bytes = b"\x00",
    protocol_level: int | None = None,
) -> bytes:
    level = protocol_level if protocol_level is not None else (5 if v5 else 4)
    flags = 0x02 if clean else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    body = mqtt_str("MQTT") + bytes([level, flags]) + struct.pack("!H", keepalive)
    if v5:
        body += properties
    body += mqtt_str(client_id)
    if will is not None:
        if v5:
            body += will.properties
        body += mqtt_str(will.topic) + mqtt_str(will.payload)
    return packet(CONNECT << 4, body)


def publish_packet(
    topic: str | bytes,
    payload: bytes,
    *,
    v5: bool,
    qos: int = 0,
    retain: bool = False,
    packet_id: int = 1,
    properties: bytes = b"\x00",
) -> bytes:
    """PUBLISH; `qos` is written into the flags as given, so 3 produces an illegal packet."""
    first = (PUBLISH << 4) | ((qos & 0x3) << 1) | (1 if retain else 0)
    body = mqtt_str(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    if v5:
        body += properties
    return packet(first, body + payload)


def subscribe_packet(packet_id: int, filters: list[tuple[str, int]], *, v5: bool) -> bytes:
    body = struct.pack("!H", packet_id)
    if v5:
        body += b"\x00"
    for topic_filter, options in filters:
        body += mqtt_str(topic_filter) + bytes([options])
    return packet((SUBSCRIBE << 4) | 0x02, body)


def disconnect_packet(*, v5: bool, reason: int = 0) -> bytes:
    if v5 and reason:
        return packet(DISCONNECT << 4, bytes([reason, 0]))
    return packet(DISCONNECT << 4, b"")


# --------------------------------------------------------------------------------------------
# Raw socket client
# --------------------------------------------------------------------------------------------


@dataclass
class Packet:
    type: int
    flags: int
    body: bytes

    def reason_code(self) -> int:
        """Reason code of a v5 DISCONNECT (0 when the body is empty) or of a CONNACK."""
        if self.type == CONNACK:
            return self.body[1]
        return self.body[0] if self.body else 0

    def __repr__(self) -> str:
        return f"Packet(type={self.type}, flags={self.flags:#x}, body={self.body!r})"


class RawClient:
    """A blocking TCP connection speaking raw MQTT bytes."""

    def __init__(self, host: str, port: int, timeout: float = DEFAULT_TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""
        self.closed_by_peer = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Reads more bytes; False on EOF/reset. Raises TimeoutError at the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout as e:
            raise TimeoutError from e
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.closed_by_peer = True
            return False
        self._buf += chunk
        return True

    def read_packet(self, timeout: float = DEFAULT_TIMEOUT) -> Packet | None:
        """Next packet, or None when the peer closed the connection. TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            parsed = self._try_parse()
            if parsed is not None:
                return parsed
            if not self._fill(deadline):
                return None

    def _try_parse(self) -> Packet | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        length, mult, i = 0, 1, 1
        while True:
            if i >= len(buf):
                return None
            b = buf[i]
            length += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
        if len(buf) < i + length:
            return None
        pkt = Packet(buf[0] >> 4, buf[0] & 0x0F, buf[i : i + length])
        self._buf = buf[i + length :]
        return pkt

    def expect(self, ptype: int, timeout: float = DEFAULT_TIMEOUT) -> Packet:
        try:
            pkt = self.read_packet(timeout)
        except TimeoutError:
            raise AssertionError(f"no packet of type {ptype} within {timeout}s") from None
        assert pkt is not None, f"connection closed while waiting for packet type {ptype}"
        assert pkt.type == ptype, f"expected packet type {ptype}, got {pkt!r}"
        return pkt

    def read_until_closed(self, timeout: float = DEFAULT_TIMEOUT) -> list[Packet]:
        """Collects packets until the peer closes; fails if it is still open at the timeout."""
        got: list[Packet] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                pkt = self.read_packet(max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                raise AssertionError(
                    f"connection still open after {timeout}s; packets received: {got!r}"
                ) from None
            if pkt is None:
                return got
            got.append(pkt)

    def connect(self, client_id: str, *, v5: bool, **kw) -> Packet:
        """Sends CONNECT and returns the CONNACK, asserting it is a success."""
        self.send(connect_packet(client_id, v5=v5, **kw))
        ack = self.expect(CONNACK)
        assert ack.reason_code() == 0, f"CONNACK refused: {ack!r}"
        return ack

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# paho-mqtt wrapper
# --------------------------------------------------------------------------------------------


def v5_props(packet_type: int, **values) -> Properties:
    """`v5_props(PacketTypes.PUBLISH, ContentType="x", UserProperty=[("k", "v")])`."""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def reason(packet_type: int, code: int) -> ReasonCode:
    return ReasonCode(packet_type, identifier=code)


@dataclass
class Connack:
    session_present: bool
    reason_code: int
    properties: Properties | None


@dataclass
class _Waiters:
    cond: threading.Condition = field(default_factory=threading.Condition)
    subacks: dict = field(default_factory=dict)
    pubacks: dict = field(default_factory=dict)


class PahoClient:
    """Synchronous façade over a paho-mqtt 2.x client (network loop in a background thread).

    Automatic reconnection is disabled so that a disconnect the gateway causes stays visible.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        v5: bool,
        client_id: str = "",
        clean: bool = True,
        keepalive: int = 30,
    ):
        self.host, self.port, self.v5, self.clean = host, port, v5, clean
        self.client_id = client_id
        self.keepalive = keepalive
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else clean,
            reconnect_on_failure=False,
        )
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connacks: queue.Queue[Connack] = queue.Queue()
        self.disconnects: queue.Queue[int] = queue.Queue()
        self._w = _Waiters()
        self.connected = False
        self._loop_running = False
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        c.on_unsubscribe = self._on_unsubscribe

    # callbacks (paho network thread)
    def _on_connect(self, _c, _u, flags, rc, properties):
        self.connected = rc.value == 0
        self.connacks.put(Connack(bool(flags.session_present), rc.value, properties))

    def _on_disconnect(self, _c, _u, _flags, rc, _properties):
        self.connected = False
        self.disconnects.put(rc.value)

    def _on_message(self, _c, _u, msg):
        self.messages.put(msg)

    def _on_subscribe(self, _c, _u, mid, rcs, _properties):
        with self._w.cond:
            self._w.subacks[mid] = [r.value for r in rcs]
            self._w.cond.notify_all()

    def _on_unsubscribe(self, _c, _u, mid, rcs, _properties):
        with self._w.cond:
            self._w.subacks[mid] = [r.value for r in rcs]
            self._w.cond.notify_all()

    def _on_publish(self, _c, _u, mid, rc, _properties):
        with self._w.cond:
            self._w.pubacks[mid] = rc.value
            self._w.cond.notify_all()

    def _wait_for(self, table: dict, mid: int, what: str, timeout: float):
        with self._w.cond:
            ok = self._w.cond.wait_for(lambda: mid in table, timeout)
            if not ok:
                raise AssertionError(f"{self.client_id or 'client'}: no {what} within {timeout}s")
            return table.pop(mid)

    # operations
    def will_set(self, topic, payload=b"", qos=0, retain=False, properties=None) -> None:
        self.client.will_set(topic, payload, qos, retain, properties)

    def connect(
        self,
        *,
        session_expiry: int | None = None,
        properties: Properties | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        expect_success: bool = True,
    ) -> Connack:
        kwargs = {}
        if self.v5:
            kwargs["clean_start"] = self.clean
            if session_expiry is not None:
                properties = properties or Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = session_expiry
            if properties is not None:
                kwargs["properties"] = properties
        self.client.connect(self.host, self.port, self.keepalive, **kwargs)
        self.client.loop_start()
        self._loop_running = True
        try:
            ack = self.connacks.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"{self.client_id or 'client'}: no CONNACK within {timeout}s"
            ) from None
        if expect_success:
            assert ack.reason_code == 0, f"CONNACK refused with reason {ack.reason_code:#x}"
        return ack

    def subscribe(
        self,
        topic: str,
        qos: int = 0,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        properties: Properties | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[int]:
        """Subscribes and waits for the SUBACK; returns its reason codes (granted QoS)."""
        if self.v5:
            opts = SubscribeOptions(
                qos=qos,
                noLocal=no_local,
                retainAsPublished=retain_as_published,
                retainHandling=retain_handling,
            )
            rc, mid = self.client.subscribe(topic, options=opts, properties=properties)
        else:
            rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe({topic!r}) not sent: {rc}"
        codes = self._wait_for(self._w.subacks, mid, f"SUBACK for {topic!r}", timeout)
        return codes

    def unsubscribe(self, topic: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        rc, mid = self.client.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        self._wait_for(self._w.subacks, mid, f"UNSUBACK for {topic!r}", timeout)

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> int:
        """Publishes; for QoS 1/2 waits for the flow to complete and returns the v5 reason code
        of the PUBACK / PUBREC (0 for 3.1.1 and QoS 0)."""
        info = self.client.publish(topic, payload, qos, retain, properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish({topic!r}) not sent: {info.rc}"
        code = self._wait_for(
            self._w.pubacks, info.mid, f"publish completion for {topic!r}", timeout
        )
        return code

    def get(self, timeout: float = DEFAULT_TIMEOUT) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"{self.client_id or 'client'}: no message received within {timeout}s"
            ) from None

    def get_n(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < n:
            try:
                got.append(self.messages.get(timeout=max(deadline - time.monotonic(), 0.001)))
            except queue.Empty:
                raise AssertionError(
                    f"{self.client_id or 'client'}: received {len(got)} of {n} messages within "
                    f"{timeout}s: {[(m.topic, m.payload) for m in got]}"
                ) from None
        return got

    def get_until(self, topic: str, timeout: float = DEFAULT_TIMEOUT) -> list[mqtt.MQTTMessage]:
        """Collects messages up to and including the first one on `topic` (a sentinel)."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            try:
                msg = self.messages.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(
                    f"{self.client_id or 'client'}: sentinel on {topic!r} not received within "
                    f"{timeout}s; got {[(m.topic, m.payload) for m in got]}"
                ) from None
            got.append(msg)
            if msg.topic == topic:
                return got

    def assert_no_message(self, duration: float) -> None:
        try:
            msg = self.messages.get(timeout=duration)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {msg.topic!r}: {msg.payload!r}")

    def wait_disconnected(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Waits until the connection is lost; returns paho's reason code value."""
        try:
            return self.disconnects.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"{self.client_id or 'client'}: still connected after {timeout}s"
            ) from None

    def disconnect(
        self,
        reasoncode: ReasonCode | None = None,
        properties: Properties | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Sends DISCONNECT and waits until paho has closed the socket."""
        if self.v5:
            self.client.disconnect(reasoncode, properties)
        else:
            self.client.disconnect()
        self.wait_disconnected(timeout)
        self.stop()

    def drop(self) -> None:
        """Ends the TCP connection without DISCONNECT, as a crashed device would."""
        sock = self.client.socket()
        assert sock is not None, "not connected"
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.wait_disconnected(DEFAULT_TIMEOUT)
        finally:
            self.stop()

    def stop(self) -> None:
        if self._loop_running:
            self._loop_running = False
            self.client.loop_stop()

    def close(self) -> None:
        """Best-effort cleanup used by fixtures."""
        try:
            if self.connected:
                self.client.disconnect()
                try:
                    self.disconnects.get(timeout=2)
                except queue.Empty:
                    pass
        finally:
            self.stop()
            sock = self.client.socket()
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass


_BYTE_PROPS = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_TWO_BYTE_PROPS = {0x13, 0x21, 0x22, 0x23}
_FOUR_BYTE_PROPS = {0x02, 0x11, 0x18, 0x27}
_VARINT_PROPS = {0x0B}
_BINARY_PROPS = {0x09, 0x16}


def parse_props(data: bytes) -> tuple[dict[int, list], bytes]:
    """Decodes a v5 property block at the start of `data`; returns ({id: [values]}, rest)."""

    def read_varint(buf: bytes, i: int) -> tuple[int, int]:
        value, mult = 0, 1
        while True:
            b = buf[i]
            i += 1
            value += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                return value, i

    def read_bin(buf: bytes, i: int) -> tuple[bytes, int]:
        (n,) = struct.unpack_from("!H", buf, i)
        return buf[i + 2 : i + 2 + n], i + 2 + n

    length, i = read_varint(data, 0)
    end = i + length
    out: dict[int, list] = {}
    while i < end:
        ident = data[i]
        i += 1
        if ident in _BYTE_PROPS:
            value, i = data[i], i + 1
        elif ident in _TWO_BYTE_PROPS:
            (value,), i = struct.unpack_from("!H", data, i), i + 2
        elif ident in _FOUR_BYTE_PROPS:
            (value,), i = struct.unpack_from("!I", data, i), i + 4
        elif ident in _VARINT_PROPS:
            value, i = read_varint(data, i)
        elif ident in _BINARY_PROPS:
            value, i = read_bin(data, i)
        elif ident == PROP_USER_PROPERTY:
            k, i = read_bin(data, i)
            v, i = read_bin(data, i)
            value = (k.decode(), v.decode())
        else:
            raw_value, i = read_bin(data, i)
            value = raw_value.decode()
        out.setdefault(ident, []).append(value)
    return out, data[end:]


def parse_publish(pkt: Packet, *, v5: bool) -> tuple[str, int, bytes, dict[int, list]]:
    """(topic, qos, payload, properties) of a PUBLISH read by RawClient."""
    (n,) = struct.unpack_from("!H", pkt.body, 0)
    topic = pkt.body[2 : 2 + n].decode()
    rest = pkt.body[2 + n :]
    qos = (pkt.flags >> 1) & 3
    if qos:
        rest = rest[2:]
    properties: dict[int, list] = {}
    if v5:
        properties, rest = parse_props(rest)
    return topic, qos, rest, properties
