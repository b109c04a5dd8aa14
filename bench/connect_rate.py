#!/usr/bin/env python3
"""Connect-rate client for bench/harness.py: MQTT 3.1.1 handshakes with a bounded window.

device-sim paces connections by rate only; the benchmark's unpaced figure is "as fast as the broker
accepts, with WINDOW handshakes in flight". This opens COUNT connections (TCP connect, CONNECT,
wait for a successful CONNACK) keeping at most WINDOW handshakes outstanding, starting at the Unix
time given by --start-at so several processes start together, keeps the connections open until
its stdin closes, and prints one JSON line: {"ok", "failed", "start", "end"}.
Python 3 standard library only.
"""

import argparse
import errno
import ipaddress
import json
import selectors
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = 24


def connect_packet(client_id):
    cid = client_id.encode()
    var = b"\x00\x04MQTT\x04\x02\x01\x2c"  # level 4, clean session, keep-alive 300 s
    body = var + len(cid).to_bytes(2, "big") + cid
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


def source_ips(spec):
    if not spec:
        return [None]
    lo, hi = spec.split("-")
    a, b = int(ipaddress.ip_address(lo)), int(ipaddress.ip_address(hi))
    return [str(ipaddress.ip_address(i)) for i in range(a, b + 1)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--prefix", default="cr")
    ap.add_argument("--source-ips", default="")
    ap.add_argument("--start-at", type=float, default=0.0)
    ap.add_argument("--timeout", type=float, default=60.0)
    a = ap.parse_args()
    host, port = a.target.rsplit(":", 1)
    target = (host, int(port))
    sources = source_ips(a.source_ips)

    sel = selectors.DefaultSelector()
    opened = []
    started = ok = failed = inflight = 0
    while time.time() < a.start_at:
        time.sleep(min(0.01, max(0.0, a.start_at - time.time())))
    start = time.time()
    deadline = start + a.timeout
    while ok + failed < a.count and time.time() < deadline:
        while inflight < a.window and started < a.count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            src = sources[started % len(sources)]
            if src:
                s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((src, 0))
            err = s.connect_ex(target)
            if err not in (0, errno.EINPROGRESS):
                s.close()
                failed += 1
            else:
                sel.register(s, selectors.EVENT_WRITE, [False, f"{a.prefix}-{started}"])
                inflight += 1
            started += 1
        for key, _ in sel.select(timeout=0.5):
            s, st = key.fileobj, key.data
            if not st[0]:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                    sel.unregister(s)
                    s.close()
                    failed += 1
                    inflight -= 1
                    continue
                s.send(connect_packet(st[1]))
                st[0] = True
                sel.modify(s, selectors.EVENT_READ, st)
                continue
            try:
                data = s.recv(64)
            except OSError:
                data = b""
            sel.unregister(s)
            inflight -= 1
            if data[:2] == b"\x20\x02" and data[3:4] == b"\x00":
                ok += 1
                opened.append(s)
            else:
                failed += 1
                s.close()
    end = time.time()
    failed += a.count - ok - failed
    print(json.dumps({"ok": ok, "failed": failed, "start": start, "end": end}), flush=True)
    sys.stdin.read()  # hold the connections until the harness closes stdin
    for s in opened:
        s.close()


if __name__ == "__main__":
    main()
