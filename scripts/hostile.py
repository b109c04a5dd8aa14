#!/usr/bin/env python3
"""Measures what hostile clients cost a gateway binary (issue 18, items 2 and 5 to 7); not in CI.

    scripts/hostile.py trickle GATEWAY SEGMENT PAUSE_US SIZE   one SIZE-byte QoS 1 PUBLISH sent
                                                               SEGMENT bytes at a time, PAUSE_US apart
    scripts/hostile.py backlog GATEWAY CLIENTS                 CLIENTS that flood PINGREQs and never
                                                               read: what the gateway holds for them
    scripts/hostile.py logins GATEWAY COUNT wait|leave         COUNT wrong-password logins at once
                                                               (connect_timeout 0.5 s), waiting for
                                                               the answer or leaving at once
    scripts/hostile.py subscribe GATEWAY RETAINED REPEATS      RETAINED small retained messages, then
                                                               one SUBSCRIBE repeating `#` REPEATS
                                                               times from a client that does not read;
                                                               two others ping meanwhile, one every
                                                               5 ms, one every 300 ms (hibernating
                                                               in between): their slowest PINGRESP

Each run starts GATEWAY (any build, old or new: only keys both know are set) on free loopback
ports in a temporary directory, with storage off, and prints one line: the gateway's CPU time
(utime + stime from /proc), its RSS growth, and counts read from its /metrics. The password file
for `logins` is written by `gateway passwd` of the same binary.
"""

import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter

CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    def __init__(self, binary, config):
        self.dir = tempfile.mkdtemp(prefix="hostile-")
        self.mqtt, self.http = free_port(), free_port()
        path = os.path.join(self.dir, "gateway.toml")
        with open(path, "w") as f:
            f.write("[storage]\nenabled = false\n" + config)
        self.proc = subprocess.Popen(
            [binary, "--config", path, "--mqtt-listen", f"127.0.0.1:{self.mqtt}",
             "--http-listen", f"127.0.0.1:{self.http}", "--log-level", "warn"],
            cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.mqtt), timeout=0.1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"{binary} did not start")

    def cpu(self):
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK

    def rss(self):
        return int(open(f"/proc/{self.proc.pid}/statm").read().split()[1]) * PAGE

    def metric(self, name, label=""):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics").read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and label in line)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def varint(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id, user=None, password=None):
    flags = 0x02 | (0xC0 if user else 0)
    body = string("MQTT") + bytes([4, flags]) + struct.pack("!H", 60) + string(client_id)
    if user:
        body += string(user) + string(password)
    return bytes([0x10]) + varint(len(body)) + body


def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def name(binary):
    return os.path.basename(binary)


def trickle(binary, segment, pause_us, size):
    g = Gateway(binary, f"[mqtt]\nmax_packet_size = {size + 1024}\n")
    s = socket.create_connection(("127.0.0.1", g.mqtt))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(connect_packet("trickler"))
    read_exact(s, 4)
    body = string("t") + struct.pack("!H", 1) + b"x" * (size - 64)
    packet = bytes([0x32]) + varint(len(body)) + body
    cpu, started = g.cpu(), time.time()
    for i in range(0, len(packet), segment):
        s.send(packet[i:i + segment])
        if pause_us:
            time.sleep(pause_us / 1e6)
    assert read_exact(s, 4) == b"\x40\x02\x00\x01", "no PUBACK"
    print(f"{name(binary)}: {len(packet)} bytes in {segment}-byte segments {pause_us} us apart: "
          f"gateway CPU {g.cpu() - cpu:.2f} s, wall {time.time() - started:.2f} s")
    g.stop()


def small_window_socket(port):
    """Small kernel buffers on both sides (the gateway sizes its send buffer by our MSS)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    s.connect(("127.0.0.1", port))
    return s


def backlog(binary, clients):
    g = Gateway(binary, "")
    socks = []
    for i in range(clients):
        s = small_window_socket(g.mqtt)
        s.sendall(connect_packet(f"never-reads-{i}"))
        read_exact(s, 4)
        s.setblocking(False)
        socks.append(s)
    time.sleep(0.5)
    rss = g.rss()
    pings = b"\xc0\x00" * 500_000
    sent = [0] * clients
    taken, unchanged = -1.0, 0
    while unchanged < 10:
        for i, s in enumerate(socks):
            try:
                sent[i] += s.send(pings[sent[i]:])
            except BlockingIOError:
                pass
        time.sleep(0.05)
        now = g.metric("gateway_packets_received_total", 'type="pingreq"')
        unchanged = unchanged + 1 if now == taken else 0
        taken = now
    answered = g.metric("gateway_packets_sent_total", 'type="pingresp"')
    queued = answered - (g.metric("gateway_sent_bytes_total") - 4 * clients) / 2
    grown = g.rss() - rss
    print(f"{name(binary)}: {clients} clients never reading: {int(taken)} PINGREQs taken, "
          f"{int(queued / clients)} answers queued per client, RSS +{grown / 2**20:.2f} MiB "
          f"({grown / clients / 2**20:.2f} MiB per client)")
    g.stop()


def logins(binary, count, mode):
    passwd = os.path.join(tempfile.mkdtemp(prefix="hostile-pw-"), "passwd")
    subprocess.run([binary, "passwd", passwd, "bob"], input=b"bob-pw\n", check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    g = Gateway(binary, f"[mqtt]\nconnect_timeout = 0.5\n[auth]\npassword_file = \"{passwd}\"\n")
    cpu = g.cpu()
    answers, lock = [], threading.Lock()

    def login(i):
        s = socket.create_connection(("127.0.0.1", g.mqtt))
        started = time.time()
        s.sendall(connect_packet(f"flood-{i}", "bob", "wrong"))
        if mode == "leave":
            s.close()
            return
        try:
            code = read_exact(s, 4)[3]
        except (EOFError, ConnectionResetError):
            code = None
        with lock:
            answers.append((time.time() - started, code))

    threads = [threading.Thread(target=login, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if mode == "leave":
        # Until the gateway's CPU time stops moving: the hashes it still does for clients gone.
        last = -1.0
        while g.cpu() != last:
            last = g.cpu()
            time.sleep(0.5)
        rejected = "gateway_connections_rejected_total"
        print(f"{name(binary)}: {count} wrong logins whose clients left at once: gateway CPU "
              f"{g.cpu() - cpu:.2f} s, hashed {int(g.metric(rejected, 'bad_credentials'))}, "
              f"not {int(g.metric(rejected, 'client_gone'))}")
    else:
        codes = dict(Counter(code for _, code in answers))
        print(f"{name(binary)}: {count} wrong logins at once: slowest answer "
              f"{max(t for t, _ in answers):.2f} s, CONNACK codes {codes}, "
              f"gateway CPU {g.cpu() - cpu:.2f} s")
    g.stop()


def subscribe(binary, retained, repeats):
    g = Gateway(binary, "[mqtt]\nhibernate_after = 0.1\n")
    pub = socket.create_connection(("127.0.0.1", g.mqtt))
    pub.sendall(connect_packet("retainer"))
    read_exact(pub, 4)
    burst = b""
    for i in range(retained):
        body = string(f"r/{i}") + b"0123456789abcdef"
        burst += bytes([0x31]) + varint(len(body)) + body
    pub.sendall(burst + b"\xc0\x00")
    assert read_exact(pub, 2) == b"\xd0\x00", "no PINGRESP after the retained messages"
    slowest = {}
    stop = threading.Event()

    def pinger(tag, every):
        s = socket.create_connection(("127.0.0.1", g.mqtt))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(connect_packet(f"pinger-{tag}"))
        read_exact(s, 4)
        worst = 0.0
        while not stop.is_set():
            started = time.time()
            s.sendall(b"\xc0\x00")
            read_exact(s, 2)
            worst = max(worst, time.time() - started)
            time.sleep(every)
        slowest[tag] = worst

    threads = [threading.Thread(target=pinger, args=(tag, every))
               for tag, every in (("busy", 0.005), ("hibernating", 0.3))]
    for t in threads:
        t.start()
    time.sleep(1)
    atk = socket.create_connection(("127.0.0.1", g.mqtt))
    atk.sendall(connect_packet("attacker"))
    read_exact(atk, 4)
    body = b"\x00\x09" + (string("#") + b"\x00") * repeats
    rss, cpu, peak = g.rss(), g.cpu(), 0
    atk.sendall(bytes([0x82]) + varint(len(body)) + body)
    for _ in range(100):
        peak = max(peak, g.rss())
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    print(f"{name(binary)}: {retained} retained, SUBSCRIBE of {len(body)} bytes repeating '#' "
          f"{repeats} times: RSS +{(peak - rss) / 2**20:.1f} MiB at most in 5 s, gateway CPU "
          f"{g.cpu() - cpu:.2f} s, slowest PINGRESP busy {slowest['busy'] * 1000:.1f} ms, "
          f"hibernating {slowest['hibernating'] * 1000:.1f} ms")
    g.stop()


if __name__ == "__main__":
    match sys.argv[1:]:
        case ["trickle", binary, segment, pause_us, size]:
            trickle(binary, int(segment), int(pause_us), int(size))
        case ["backlog", binary, clients]:
            backlog(binary, int(clients))
        case ["logins", binary, count, ("wait" | "leave") as mode]:
            logins(binary, int(count), mode)
        case ["subscribe", binary, retained, repeats]:
            subscribe(binary, int(retained), int(repeats))
        case _:
            raise SystemExit(__doc__)
