#!/usr/bin/env python3
"""The soak and hostile-load run of issue 18 (scripted, not in CI; figures go to BENCHMARKS.md).

    scripts/soak.py [--minutes 60] [--devices 10000] [--out bench/results/soak]
                    [--gateway target/release/gateway] [--device-sim target/release/device-sim]

Starts the gateway (release build, storage on, a password file) on free loopback ports, then for
the whole run, all at once:
  - the fleet: 95% of --devices publishing QoS 1 every 10 s (device-sim, one verifying wildcard
    subscriber), for the whole run: its report must say 0 lost;
  - churn: the other 5% connect for a minute, leave, and come back as the next minute's (one
    device-sim run per minute): 5% of the devices reconnect every minute, each run verified too;
  - 100 slow consumers subscribed to the fleet's topics at QoS 1, reading 1 KiB per second
    (reopened when the gateway closes them, counted);
  - 1,000 sockets that never send CONNECT (reopened when the gateway closes them);
  - 100 clients trickling one byte of a PUBLISH per second (reopened when closed);
  - a client subscribed to `#`, reading everything;
  - a wrong-password flood, 20 logins per second.
Every 10 s it samples the gateway's RSS, open fds, threads, and from /metrics its connections,
sessions, hibernating sessions, runtime tasks, the distinct messages the sessions hold (and their
heap), messages dropped (all, and at full queues), and
the fleet's end-to-end p99 over those 10 s (device-sim's histogram); from the admin API, what the
full queues of the verifying subscribers dropped (the fleet's since the start, the running churn
run's), so a verifier's loss is told apart from the slow consumers', which drop by design. At the
end: OUT.csv (the samples), OUT.svg (RSS and p99 over the run), OUT.json (the summary and both
device-sim verdicts). It stops everything it started, by PID.
"""

import argparse
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile import connect_packet, free_port, string, varint  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
STOP = threading.Event()
PROCS = []


def start(cmd, **kw):
    p = subprocess.Popen(cmd, **kw)
    PROCS.append(p)
    return p


def stop_all(*_):
    STOP.set()
    for p in PROCS:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in PROCS:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def metrics(port):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                pass
    return out


ADMIN_TOKEN = "soak-admin-token-" + os.urandom(8).hex()


def dropped_by(port, prefix):
    """What the full queues of the sessions whose client ids start with `prefix` dropped (the
    admin API's per-session `dropped_messages`); None when the API did not answer."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/clients?prefix={prefix}&limit=1000",
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    try:
        page = json.load(urllib.request.urlopen(req, timeout=5))
    except (OSError, ValueError):
        return None
    return sum(c.get("dropped_messages", 0) for c in page.get("clients", []))


def total(m, prefix):
    return sum(v for k, v in m.items() if k == prefix or k.startswith(prefix + "{"))


def p99_between(before, after):
    """p99 (ms) of device-sim's latency histogram over the samples between two scrapes."""
    buckets = []
    for k, v in after.items():
        hit = re.match(r'device_sim_latency_seconds_bucket\{le="([^"]+)"\}', k)
        if hit and hit.group(1) != "+Inf":
            buckets.append((float(hit.group(1)), v - before.get(k, 0.0)))
    buckets.sort()
    n = after.get("device_sim_latency_seconds_count", 0) - before.get("device_sim_latency_seconds_count", 0)
    if n <= 0 or not buckets:
        return None
    for le, count in buckets:
        if count >= 0.99 * n:
            return le * 1000
    return buckets[-1][0] * 1000


def proc_sample(pid):
    """RSS, open fds and threads of `pid`; None once it is gone (a zombie has no VmRSS)."""
    try:
        status = open(f"/proc/{pid}/status").read()
        rss = re.search(r"VmRSS:\s+(\d+)", status)
        threads = re.search(r"Threads:\s+(\d+)", status)
        if not (rss and threads):
            return None
        return int(rss.group(1)) * 1024, len(os.listdir(f"/proc/{pid}/fd")), int(threads.group(1))
    except OSError:
        return None


def subscribe_packet(filter_, qos):
    body = struct_pack_id(1) + string(filter_) + bytes([qos])
    return bytes([0x82]) + varint(len(body)) + body


def struct_pack_id(pid):
    return pid.to_bytes(2, "big")


def keep_open(port, count, opener, pace):
    """Keeps `count` sockets made by `opener` open, reopening those the gateway closes; each
    gets `pace(sock, step)` once a second."""
    socks = []
    step = 0
    while not STOP.is_set():
        while len(socks) < count and not STOP.is_set():
            try:
                socks.append(opener(port))
            except OSError:
                time.sleep(0.1)
                break
        deadline = time.time() + 1.0
        # poll, not select: these are more sockets than select's 1,024 descriptors.
        poller = select.poll()
        by_fd = {s.fileno(): s for s in socks}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        while time.time() < deadline and by_fd:
            for fd, _ in poller.poll(max(0.0, deadline - time.time()) * 1000):
                s = by_fd.get(fd)
                if s is None:
                    continue
                try:
                    if not s.recv(4096):
                        raise OSError("closed")
                except BlockingIOError:
                    continue
                except OSError:
                    poller.unregister(fd)
                    del by_fd[fd]
                    socks.remove(s)
                    s.close()
        step += 1
        for s in list(socks):
            try:
                pace(s, step)
            except OSError:
                socks.remove(s)
                s.close()
    for s in socks:
        s.close()


def plain(port):
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def trickler(port):
    s = plain(port)
    s.sendall(connect_packet(f"trickle-{os.urandom(4).hex()}", "soak", "soak-pass"))
    s.setblocking(False)
    return s


TRICKLE = bytes([0x32]) + varint(2 + 10 + 2 + 1000) + string("trickle/t1") + b"\x00\x01" + b"x" * 1000


def trickle_byte(s, step):
    s.send(TRICKLE[step % len(TRICKLE):step % len(TRICKLE) + 1])


def open_slow(port, i, filter_):
    s = plain(port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(connect_packet(f"slow-{i}", "soak", "soak-pass"))
    s.sendall(subscribe_packet(filter_, 1))
    s.setblocking(False)
    return s


# How many times the gateway closed a slow consumer (its bounds at work) and it came back.
SLOW = {"reopened": 0}


def slow_consumers(port, count, filter_):
    """Subscribers that read 1 KiB per second: the gateway's bounds for slow clients at work. One
    the gateway closes is reopened (counted), so that `count` of them are there all along."""
    socks = {}
    while not STOP.is_set():
        for i in range(count):
            s = socks.get(i)
            if s is None:
                try:
                    socks[i] = open_slow(port, i, filter_)
                except OSError:
                    pass
                continue
            try:
                if not s.recv(1024):
                    raise OSError("closed")
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                del socks[i]
                SLOW["reopened"] += 1
        time.sleep(1.0)
    for s in socks.values():
        s.close()


def everything(port):
    """A `#` subscriber that reads all it gets (QoS 0: nothing to acknowledge)."""
    s = plain(port)
    s.sendall(connect_packet("soak-everything", "soak", "soak-pass"))
    s.sendall(subscribe_packet("#", 0))
    s.settimeout(1.0)
    while not STOP.is_set():
        try:
            if not s.recv(1 << 16):
                return
        except socket.timeout:
            pass
        except OSError:
            return


def flood(port, per_second):
    while not STOP.is_set():
        started = time.time()
        for _ in range(per_second):
            try:
                s = plain(port)
                s.sendall(connect_packet(f"flood-{os.urandom(4).hex()}", "soak", "wrong"))
                s.close()
            except OSError:
                pass
        time.sleep(max(0.0, 1.0 - (time.time() - started)))


def svg(samples, path):
    """RSS (MiB) and p99 (ms) over the run, two polylines on one time axis."""
    w, h, pad = 900, 420, 60
    t_max = max(s["t"] for s in samples) or 1

    def series(key, color, label, row):
        values = [(s["t"], s[key]) for s in samples if s[key] is not None]
        if not values:
            return ""
        top = max(v for _, v in values) * 1.1 or 1
        pts = " ".join(f"{pad + t / t_max * (w - 2 * pad):.1f},{h - pad - v / top * (h - 2 * pad):.1f}"
                       for t, v in values)
        return (f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>'
                f'<text x="{pad}" y="{20 + 16 * row}" fill="{color}" font-size="13">{label} '
                f'(max {top / 1.1:.1f})</text>')

    body = (series("rss_mib", "#1f77b4", "gateway RSS, MiB", 0)
            + series("p99_ms", "#d62728", "fleet end-to-end p99 over 10 s, ms", 1))
    axis = (f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>'
            f'<text x="{w - pad}" y="{h - pad + 20}" font-size="12" text-anchor="end">'
            f'{t_max / 60:.0f} min</text>')
    with open(path, "w") as f:
        f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">'
                f'<rect width="100%" height="100%" fill="white"/>{axis}{body}</svg>\n')


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=int, default=60)
    ap.add_argument("--devices", type=int, default=10000)
    ap.add_argument("--gateway", default="target/release/gateway")
    ap.add_argument("--device-sim", default="target/release/device-sim")
    ap.add_argument("--out", default="bench/results/soak")
    ap.add_argument("--without", default="", help="comma-separated parts left out, to see what "
                    "each costs: idle, trickle, slow, everything, flood, churn")
    args = ap.parse_args()
    args.gateway, args.device_sim = map(os.path.abspath, (args.gateway, args.device_sim))
    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    work = tempfile.mkdtemp(prefix="soak-")
    mqtt, http = free_port(), free_port()
    passwd = os.path.join(work, "passwd")
    subprocess.run([args.gateway, "passwd", passwd, "soak"], input=b"soak-pass\n", check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = os.path.join(work, "gateway.toml")
    with open(config, "w") as f:
        f.write(f'[auth]\npassword_file = "{passwd}"\n[storage]\ndir = "{work}/data"\n'
                f'[http]\nadmin_token = "{ADMIN_TOKEN}"\n')
    gw = start([args.gateway, "--config", config, "--mqtt-listen", f"127.0.0.1:{mqtt}",
                "--http-listen", f"127.0.0.1:{http}", "--log-level", "warn"], cwd=work,
               stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "gateway.log"), "w"))
    for _ in range(100):
        if metrics(http):
            break
        time.sleep(0.1)
    else:
        stop_all()
        raise SystemExit("the gateway did not start")

    seconds = args.minutes * 60
    churn = max(1, args.devices // 20)
    fleet = args.devices - churn
    sim_http = free_port()
    common = ["--target", f"127.0.0.1:{mqtt}", "--username", "soak", "--password", "soak-pass",
              "--qos", "1", "--payload", "64", "--subscribers", "1", "--drain", "10s"]

    def named(role):
        # Each simulator's verifying subscriber needs a client id of its own (flags have none).
        path = os.path.join(work, f"{role}.toml")
        with open(path, "w") as f:
            f.write(f'subscriber_client_id = "{role}-verifier-{{id}}"\n')
        return ["--scenario", path]

    fleet_report = os.path.join(work, "fleet.json")
    fleet_sim = start([args.device_sim, "run", *named("fleet"), *common, "--devices", str(fleet),
                       "--connect-rate", "1000", "--client-id", "fleet-{id}", "--topic", "fleet/{id}",
                       "--publish-interval", "10s", "--jitter", "2s", "--duration", f"{seconds}s",
                       "--http-listen", f"127.0.0.1:{sim_http}", "--report", fleet_report],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(5)
    without = set(filter(None, args.without.split(",")))
    parts = {
        "idle": (keep_open, (mqtt, 1000, plain, lambda s, i: None)),
        "trickle": (keep_open, (mqtt, 100, trickler, trickle_byte)),
        "slow": (slow_consumers, (mqtt, 100, "fleet/+")),
        "everything": (everything, (mqtt,)),
        "flood": (flood, (mqtt, 20)),
    }
    for name, (target, targs) in parts.items():
        if name not in without:
            threading.Thread(target=target, args=targs, daemon=True).start()

    churn_reports = []
    began = time.time()

    def churner():
        # From when the fleet is in: during its first login storm a churn run's verifier may
        # not get in before its devices publish, which would count as loss.
        while not STOP.is_set() and total(metrics(sim_http), "device_sim_devices_connected") < fleet:
            time.sleep(5)
        minute = 0
        while not STOP.is_set() and time.time() - began < seconds - 60:
            report = os.path.join(work, f"churn-{minute}.json")
            p = start([args.device_sim, "run", *named("churn"), *common, "--devices", str(churn),
                       "--connect-rate", "500", "--client-id", "churn-{id}",
                       "--topic", "churn/{id}", "--publish-interval", "10s", "--duration", "45s",
                       "--report", report],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            p.wait()
            churn_reports.append(report)
            minute += 1

    if "churn" not in without:
        threading.Thread(target=churner, daemon=True).start()

    samples = []
    before = metrics(sim_http)
    while time.time() - began < seconds and gw.poll() is None and not STOP.is_set():
        time.sleep(10)
        m, now = metrics(http), metrics(sim_http)
        sampled = proc_sample(gw.pid)
        if sampled is None:
            break
        rss, fds, nthreads = sampled
        samples.append({
            "t": round(time.time() - began, 1), "rss_mib": round(rss / 2**20, 1), "fds": fds,
            "threads": nthreads, "connections": total(m, "gateway_connections"),
            "sessions": total(m, "gateway_sessions"),
            "hibernating": total(m, "gateway_sessions_hibernating"),
            "tasks": total(m, "gateway_runtime_tasks"),
            "held_messages": total(m, "gateway_held_messages"),
            "held_mib": round(total(m, "gateway_held_message_bytes") / 2**20, 2),
            "p99_ms": p99_between(before, now),
            "dropped": total(m, "gateway_messages_dropped_total"),
            "dropped_queue_full": m.get('gateway_messages_dropped_total{reason="queue_full"}', 0.0),
            "fleet_verifier_dropped": dropped_by(http, "fleet-verifier"),
            "churn_verifier_dropped": dropped_by(http, "churn-verifier"),
        })
        before = now
        print(json.dumps(samples[-1]), flush=True)
    try:
        fleet_sim.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pass  # the gateway died before the fleet's end: stop_all ends the fleet below
    STOP.set()
    time.sleep(2)
    gateway_alive = gw.poll() is None
    stop_all()

    def verdict(path):
        try:
            r = json.load(open(path))
        except (OSError, ValueError):
            return {"report": path, "missing": True}
        keys = ("devices_connected", "messages_acked", "messages_received", "lost",
                "lost_acknowledged", "duplicates", "connect_failures_by_reason")
        return {k: r.get(k) for k in keys} | {
            "p99_ms": (r.get("latency_ms") or {}).get("p99")}

    warm = [s for s in samples if s["t"] >= min(600, seconds / 4)]
    summary = {
        "minutes": args.minutes, "devices": args.devices, "without": sorted(without),
        "gateway_alive_at_end": gateway_alive,
        "fleet": verdict(fleet_report),
        "churn_runs": len(churn_reports),
        "slow_consumers_reopened": SLOW["reopened"],
        "churn_lost": sum((verdict(p).get("lost") or 0) for p in churn_reports),
        "churn_lost_acknowledged": sum((verdict(p).get("lost_acknowledged") or 0)
                                       for p in churn_reports),
        "rss_mib_after_warmup": [min(s["rss_mib"] for s in warm), max(s["rss_mib"] for s in warm)]
        if warm else None,
        "fds_after_warmup": [min(s["fds"] for s in warm), max(s["fds"] for s in warm)] if warm else None,
        "p99_ms_max_10s_window": max((s["p99_ms"] for s in samples if s["p99_ms"]), default=None),
        "fleet_verifier_dropped": samples[-1]["fleet_verifier_dropped"] if samples else None,
        # A churn verifier's session ends with its run, so its count is sampled while it lives.
        "churn_verifier_dropped_max_sample": max((s["churn_verifier_dropped"] or 0 for s in samples),
                                                 default=None),
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".csv", "w") as f:
        keys = list(samples[0]) if samples else []
        f.write(",".join(keys) + "\n")
        for s in samples:
            f.write(",".join("" if s[k] is None else str(s[k]) for k in keys) + "\n")
    if samples:
        svg(samples, args.out + ".svg")
    with open(args.out + ".json", "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
