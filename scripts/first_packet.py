#!/usr/bin/env python3
"""Issue 18, item 10, measured on a gateway binary (not in CI): Paho's `test_subscribe_options`
by hand, TRIALS times.

    scripts/first_packet.py GATEWAY TRIALS [GAP_US]

Per trial clients a and b connect; a subscribes and waits for its SUBACK (a round trip, during
which b sits idle after its CONNACK); b subscribes and, without waiting for b's SUBACK, a
publishes at QoS 1 to b's topic (GAP_US microseconds after b's SUBSCRIBE left, default 0). Nothing in MQTT orders the two connections, but a broker that
handles packets in the order they reached it delivers the message. Prints how many trials lost
it and b's SUBSCRIBE-to-SUBACK times. Starts GATEWAY as scripts/hostile.py does (storage off).
"""

import os
import socket
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile import Gateway, connect_packet, name, read_exact, string, varint  # noqa: E402


def client(port, client_id):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(connect_packet(client_id))
    assert read_exact(s, 4)[3] == 0, "CONNACK refused"
    return s


def subscribe(topic, qos):
    body = struct.pack("!H", 7) + string(topic) + bytes([qos])
    return bytes([0x82]) + varint(len(body)) + body


def trials(binary, count, gap_us):
    g = Gateway(binary, "")
    missed, times = 0, []
    for i in range(count):
        a, b = client(g.mqtt, f"fp-a-{i}"), client(g.mqtt, f"fp-b-{i}")
        a.sendall(subscribe(f"fp/a/{i}", 0))
        read_exact(a, 5)
        started = time.time()
        b.sendall(subscribe(f"fp/b/{i}", 1))
        while time.time() - started < gap_us / 1e6:
            pass
        body = string(f"fp/b/{i}") + struct.pack("!H", 1) + b"m"
        a.sendall(bytes([0x32]) + varint(len(body)) + body)
        assert read_exact(b, 5)[0] == 0x90, "no SUBACK"
        times.append(time.time() - started)
        b.settimeout(0.5)
        try:
            got = read_exact(b, 1)[0] & 0xF0 == 0x30
        except (socket.timeout, EOFError):
            got = False
        missed += not got
        a.close()
        b.close()
    times.sort()
    print(f"{name(binary)}: {missed} of {count} messages published {gap_us} us after another "
          f"client's SUBSCRIBE missed it; that SUBSCRIBE to its SUBACK: median "
          f"{statistics.median(times) * 1e3:.2f} ms, p99 {times[int(count * 0.99) - 1] * 1e3:.2f} ms")
    g.stop()


if __name__ == "__main__":
    match sys.argv[1:]:
        case [binary, count]:
            trials(binary, int(count), 0)
        case [binary, count, gap_us]:
            trials(binary, int(count), int(gap_us))
        case _:
            raise SystemExit(__doc__)
