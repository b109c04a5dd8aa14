#!/usr/bin/env python3
"""Gateway RSS per idle session by transport: plain TCP, TLS, WebSocket (ws) and WebSocket on TLS
(wss), each on a fresh gateway process, measured the same way.

For each transport: start the gateway (the harness's configuration, hibernation after
`--hibernate-after` s, the measured listener a `[[listeners]]` entry for tls/ws/wss, an openssl-made
P-256 CA and server certificate for `localhost`), read its VmRSS, connect `--count` clean 3.1.1
clients with `examples/idle_connections` (100-200 handshakes in flight; TLS clients verify and
never resume), wait `--settle` s (sessions hibernate), read VmRSS and the hibernating gauge
(`/metrics`), stop both. Prints one JSON object: per transport, RSS growth per session in bytes.

  cargo build --release -p gateway --bin gateway --example idle_connections
  python3 bench/idle_transports.py --gateway target/release/gateway \
      --client target/release/examples/idle_connections --count 3000

Python 3 standard library only. Every process it starts is stopped by PID; runs are bounded.
"""

import argparse
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import gateway_config  # noqa: E402


def limits():
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024


def wait_port(port, within=20.0):
    end = time.time() + within
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def certificates(d):
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    openssl("req", "-x509", *ec, "-nodes", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem",
            "-days", "2", "-subj", "/CN=idle transports CA")
    with open(f"{d}/ext.cnf", "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("req", *ec, "-nodes", "-keyout", f"{d}/server.key", "-out", f"{d}/server.csr",
            "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.pem", "-CAkey",
            f"{d}/ca.key", "-CAcreateserial", "-out", f"{d}/server.pem", "-days", "2",
            "-extfile", f"{d}/ext.cnf")


def hibernating(http_port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read()
    m = re.search(rb"^gateway_sessions_hibernating (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else None


def measure(args, d, transport):
    plain, port, http_port = free_port(), free_port(), free_port()
    conf = gateway_config(plain, f"{d}/store-{transport}").replace(
        'listen = "off"', f'listen = "127.0.0.1:{http_port}"')
    conf = conf.replace("[mqtt]\n", f"[mqtt]\nhibernate_after = {args.hibernate_after}\n")
    conf += "[auth]\nallow_anonymous = true\n"
    if transport == "tcp":
        port = plain
    else:
        conf += f'[[listeners]]\nkind = "{transport}"\nbind = "127.0.0.1:{port}"\n'
        if transport in ("tls", "wss"):
            conf += f'cert = "{d}/server.pem"\nkey = "{d}/server.key"\n'
        if transport in ("ws", "wss"):
            conf += 'path = "/mqtt"\n'
    with open(f"{d}/gateway-{transport}.toml", "w") as f:
        f.write(conf)
    gw = subprocess.Popen([args.gateway, "--config", f"{d}/gateway-{transport}.toml"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          preexec_fn=limits)
    client = None
    try:
        wait_port(port)
        wait_port(http_port)
        time.sleep(1.0)
        before = rss(gw.pid)
        cmd = [args.client, f"127.0.0.1:{port}", str(args.count), str(args.hold), "clean",
               transport]
        if transport in ("tls", "wss"):
            cmd.append(f"{d}/ca.pem")
        client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  preexec_fn=limits)
        line = client.stdout.readline()
        if not line.startswith("connected"):
            raise RuntimeError(f"{transport}: {line} {client.stderr.read()}")
        time.sleep(args.settle)
        after = rss(gw.pid)
        parked = hibernating(http_port)
        return {
            "rss_per_session": round((after - before) / args.count),
            "hibernating": parked,
            "connect": line.strip(),
        }
    finally:
        for p in (client, gw):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--client", required=True)
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--transports", default="tcp,tls,ws,wss")
    ap.add_argument("--hibernate-after", type=float, default=2.0)
    ap.add_argument("--settle", type=float, default=6.0, help="seconds after all connected")
    ap.add_argument("--hold", type=int, default=60, help="the client's own bound, seconds")
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory(prefix="idle-transports-") as d:
        certificates(d)
        for t in args.transports.split(","):
            out[t] = measure(args, d, t)
            print(f"{t}: {out[t]}", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
