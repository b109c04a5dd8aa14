#!/usr/bin/env python3
"""Resident memory per retained message of one gateway binary, through a real socket.

    bench/retained_rss.py BIN short|long [N]

Starts BIN on a scratch configuration (loopback port, storage off, no $SYS, retained_max above
N), publishes N retained QoS 0 messages with a 16-byte payload from one raw MQTT 3.1.1 client
(topics `s/00042/t`, or 8 levels of 24 characters each unique to the topic: the shapes of
BENCHMARKS.md "Memory per topic"), waits for the PINGRESP that follows them (the gateway has
handled them all) and prints the growth of VmRSS over the CONNACK's, per message. Stops the
gateway it started, by PID, and removes its directory.
"""
import os
import socket
import subprocess
import sys
import tempfile
import time


def short(i):
    return f"s/{i:05}/t"


def long(i):
    return "/".join(f"level{lv}-{(i << 8 | lv):017x}" for lv in range(8))


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def remaining(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first, body):
    return bytes([first]) + remaining(len(body)) + body


def string(s):
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def read_packet(sock):
    head = sock.recv(1)
    if not head:
        raise RuntimeError("connection closed")
    n, shift = 0, 0
    while True:
        b = sock.recv(1)[0]
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    body = b""
    while len(body) < n:
        body += sock.recv(n - len(body))
    return head[0], body


def main():
    bin_, shape = sys.argv[1], {"short": short, "long": long}[sys.argv[2]]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 100_000
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "gw.toml")
        with open(conf, "w") as f:
            f.write(
                f'[storage]\nenabled = false\n[mqtt]\nlisten = "127.0.0.1:{port}"\n'
                f"retained_max = {n + 1000}\n[http]\nlisten = \"off\"\n[sys]\ninterval = 0\n"
                '[log]\nlevel = "error"\n[limits]\nconnect_rate = 0\n'
            )
        gw = subprocess.Popen([bin_, "--config", conf], stdout=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    sock = socket.create_connection(("127.0.0.1", port))
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                raise RuntimeError("gateway did not listen")
            sock.sendall(packet(0x10, string("MQTT") + bytes([4, 2, 0, 0]) + string("rss")))
            assert read_packet(sock)[0] == 0x20, "CONNACK"
            time.sleep(0.5)
            before = rss(gw.pid)
            batch = bytearray()
            for i in range(n):
                batch += packet(0x31, string(shape(i)) + b"0123456789abcdef")
                if len(batch) > 1 << 16:
                    sock.sendall(batch)
                    batch.clear()
            sock.sendall(bytes(batch) + packet(0xC0, b""))
            assert read_packet(sock)[0] == 0xD0, "PINGRESP"
            time.sleep(0.5)
            after = rss(gw.pid)
            print(
                f"{sys.argv[2]} ({len(shape(n - 1))} bytes) x {n}: RSS {before >> 20} -> "
                f"{after >> 20} MiB, {(after - before) // n} B per retained message"
            )
            sock.close()
        finally:
            gw.terminate()
            gw.wait(10)


if __name__ == "__main__":
    main()
