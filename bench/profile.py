#!/usr/bin/env python3
"""Where a broker's CPU goes on one harness workload: perf call graphs and syscalls per message.

Starts the broker as bench/harness.py does (same configuration, fresh directory), runs device-sim
with the workload's arguments for long enough, and, once the load is steady, samples the broker:
`perf record --call-graph dwarf` for `--seconds` (then `perf report`: the top symbols, and the share of the
kernel, libc and the broker's own code), and `strace -c -f` for `--seconds` (syscalls per
delivered message and per published message, from device-sim's counters over the same window;
strace slows the broker, so the rates are lower than unprofiled, the ratios are what matter).
Writes everything under --out DIR and prints the summary.

    python3 bench/profile.py --broker gateway --workload k --out bench/results/profile-k-gateway
    python3 bench/profile.py --broker gateway --workload a --out DIR   # (a)'s connect storm
    FLASHMQ=/path/to/flashmq python3 bench/profile.py --broker flashmq --workload k ...
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# The device-sim arguments of the fan-in workloads ((b)/(c)/(j)/(k) in harness.py).
FANIN = {"b": (0, 10), "c": (1, 10), "j": (0, 100), "k": (1, 100)}


def counters():
    return {k: harness.sim_metric(f"device_sim_messages_{k}_total") or 0.0
            for k in ("received", "published")}


def steady(sim, seconds):
    """Waits until device-sim has delivered for `seconds` (or gave up)."""
    deadline = time.time() + 60
    while time.time() < deadline and sim.poll() is None:
        if counters()["received"] > 0:
            time.sleep(seconds)
            return True
        time.sleep(0.25)
    return False


def perf(pid, seconds, out, during=None):
    """Samples `pid` for `seconds`, or while `during()` runs when given (then at a higher rate:
    a connect storm lasts about a second)."""
    data = os.path.join(out, "perf.data")
    if during is None:
        subprocess.run(["perf", "record", "--call-graph", "dwarf,16384", "-F", "499", "-o", data,
                        "-p", str(pid), "--",
                        "sleep", str(seconds)], capture_output=True, check=True)
    else:
        rec = subprocess.Popen(["perf", "record", "--call-graph", "dwarf,16384", "-F", "1999",
                                "-o", data, "-p", str(pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)  # perf attached before the storm starts
        during()
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=120)
    report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio",
                             "--sort", "dso,sym", "-g", "none", "--percent-limit", "0.7"],
                            capture_output=True, text=True).stdout
    by_dso = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio",
                             "--sort", "dso", "-g", "none"], capture_output=True, text=True).stdout
    with open(os.path.join(out, "perf-symbols.txt"), "w") as f:
        f.write(report)
    with open(os.path.join(out, "perf-dso.txt"), "w") as f:
        f.write(by_dso)
    lines = [line for line in by_dso.splitlines() if re.match(r"\s+\d+\.\d+%", line)]
    top = [line for line in report.splitlines() if re.match(r"\s+\d+\.\d+%", line)][:25]
    return lines, top, data


FRAME = re.compile(r"[0-9a-f]+ (.*?)\+0x[0-9a-f]+ \((.*)\)$")


def leaf_callers(data, own):
    """Shares of the samples by leaf (the first frame outside the kernel, so a syscall counts
    under the libc wrapper that made it), each with the broker's own function nearest above it
    (`own`: the prefix of the broker's symbols): where libc's and the kernel's time is asked for."""
    text = subprocess.run(["perf", "script", "-i", data], capture_output=True, text=True).stdout
    samples = [s for s in text.split("\n\n") if s.strip()]
    leaves, callers = {}, {}
    for sample in samples:
        frames = [m.groups() for m in (FRAME.match(line.strip())
                                       for line in sample.split("\n")[1:]) if m]
        if not frames:
            continue
        user = [f for f in frames if "kernel" not in f[1]]
        leaf = ("kernel: " if "kernel" in frames[0][1] else "") + (user or frames)[0][0][:70]
        caller = next((f[0][:100] for f in user if f[0].startswith(own)), "?")
        leaves[leaf] = leaves.get(leaf, 0) + 1
        callers.setdefault(leaf, {}).setdefault(caller, 0)
        callers[leaf][caller] += 1
    lines = []
    for leaf, n in sorted(leaves.items(), key=lambda kv: -kv[1])[:15]:
        lines.append(f"  {100 * n / len(samples):5.1f}% {leaf}")
        for caller, m in sorted(callers[leaf].items(), key=lambda kv: -kv[1])[:2]:
            lines.append(f"          {100 * m / len(samples):5.1f}% from {caller}")
    return lines


def strace(pid, seconds, out):
    path = os.path.join(out, "strace-c.txt")
    before = counters()
    proc = subprocess.Popen(["strace", "-c", "-f", "-o", path, "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    after = counters()
    delivered = after["received"] - before["received"]
    published = after["published"] - before["published"]
    calls = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            # % time, seconds, usecs/call, calls, [errors], syscall
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                calls[parts[-1]] = int(parts[3])
    return delivered, published, calls


def connect_storm(broker, opts):
    """(a)'s unpaced storm: `--devices` idle 3.1.1 devices, 100 handshakes in flight, the broker
    sampled from before the first CONNECT until every device is connected; CPU of the broker and
    of device-sim per 1,000 connects over the same span."""
    n = opts.devices
    summary = []

    def storm():
        cmd = [harness.SIM, "run", "--target", f"127.0.0.1:{broker.port}",
               "--source-ips", harness.SOURCE_IPS, "--http-listen", harness.SIM_HTTP[0],
               "--devices", str(n), "--subscribers", "0", "--publish-interval", "0",
               "--keep-alive", "300s", "--connect-rate", "1000000", "--connect-window", "100",
               "--duration", "60s", "--drain", "0s", "--connect-timeout", "30s",
               "--client-id", "storm-{id}"]
        cpu0, t0 = broker.cpu(), time.time()
        sim = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=open(os.path.join(opts.out, "sim.log"), "w"),
                               preexec_fn=harness.set_limits)
        harness.CHILDREN.append(sim)
        deadline = time.time() + 60
        while time.time() < deadline and sim.poll() is None:
            if (harness.sim_metric("device_sim_devices_connected") or 0) >= n:
                break
            time.sleep(0.05)
        wall, gw, dev = time.time() - t0, broker.cpu() - cpu0, harness.proc_cpu(sim.pid)
        # Stopped only once perf has stopped: its 19,000 disconnections are not the storm's.
        running.append(sim)
        summary.append(f"# {opts.broker}, workload (a): {n} idle devices connected unpaced, "
                       f"100 in flight, in {wall:.2f} s (polled every 50 ms)")
        summary.append(f"CPU ms per 1,000 connects: broker {1000 * gw / (n / 1000):.1f}, "
                       f"device-sim {1000 * dev / (n / 1000):.1f} (both on the same 2 cores)")

    running = []
    dsos, top, data = perf(broker.proc.pid, 0, opts.out, during=storm)
    for sim in running:
        sim.send_signal(signal.SIGINT)
        sim.wait(timeout=60)
    summary.append("perf record --call-graph dwarf -F 1999 over the storm: by object")
    summary += dsos
    summary.append("top symbols (self):")
    summary += top
    own = {"gateway": "gateway::"}.get(broker.kind, "")
    if own:
        summary.append(f"by leaf, with the nearest {own} caller (perf script):")
        summary += leaf_callers(data, own)
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--broker", default="gateway")
    ap.add_argument("--workload", default="k", choices=sorted(FANIN) + ["a"])
    ap.add_argument("--devices", type=int, default=19000, help="devices of (a)'s storm")
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--out", required=True)
    opts = ap.parse_args()
    os.makedirs(opts.out, exist_ok=True)
    if not harness.available_brokers([opts.broker]):
        sys.exit(f"{opts.broker} is not available")
    workdir = tempfile.mkdtemp(prefix="mqtt-profile-")
    broker = harness.Broker(opts.broker, workdir)
    summary = []
    try:
        broker.start()
        port = harness.SIM_HTTP_PORT
        while not harness.port_free(port):
            port += 1
        harness.SIM_HTTP[0] = f"127.0.0.1:{port}"
        if opts.workload == "a":
            summary = connect_storm(broker, opts)
            return
        qos, window = FANIN[opts.workload]
        duration = 3 * opts.seconds + 20
        cmd = [harness.SIM, "run", "--target", f"127.0.0.1:{broker.port}",
               "--source-ips", harness.SOURCE_IPS, "--http-listen", harness.SIM_HTTP[0],
               "--report", os.path.join(workdir, "report.json"),
               "--devices", "100", "--subscribers", "1", "--qos", str(qos), "--payload", "64",
               "--publish-interval", "0", "--window", str(window), "--connect-rate", "1000",
               "--duration", f"{duration}s", "--drain", "3s",
               "--client-id", "prof-{id}", "--topic", "prof/{id}/t"]
        sim = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=open(os.path.join(opts.out, "sim.log"), "w"),
                               preexec_fn=harness.set_limits)
        harness.CHILDREN.append(sim)
        if not steady(sim, 3):
            sys.exit("device-sim delivered nothing; see sim.log")
        pid = broker.proc.pid
        dsos, top, data = perf(pid, opts.seconds, opts.out)
        own = {"gateway": "gateway::"}.get(broker.kind, "")
        delivered, published, calls = strace(pid, opts.seconds, opts.out)
        sim.send_signal(signal.SIGINT)
        sim.wait(timeout=60)
        summary.append(f"# {opts.broker}, workload ({opts.workload}): QoS {qos}, 100 publishers x "
                       f"{window} in flight -> 1 subscriber, 64 B")
        summary.append(f"perf record --call-graph dwarf -F 499 -p PID -- sleep {opts.seconds}: by object")
        summary += dsos
        summary.append("top symbols (self):")
        summary += top
        if own:
            summary.append(f"by leaf, with the nearest {own} caller (perf script):")
            summary += leaf_callers(data, own)
        summary.append(f"strace -c -f for {opts.seconds} s: {delivered:.0f} delivered, "
                       f"{published:.0f} published in that window")
        for name, n in sorted(calls.items(), key=lambda kv: -kv[1])[:12]:
            per_d = n / delivered if delivered else float("nan")
            per_p = n / published if published else float("nan")
            summary.append(f"  {name:<16} {n:>10}  {per_d:.3f} per delivered  "
                           f"{per_p:.3f} per published")
    finally:
        broker.stop()
        harness.cleanup()
        text = "\n".join(summary) + "\n"
        with open(os.path.join(opts.out, "summary.txt"), "w") as f:
            f.write(text)
        print(text)


if __name__ == "__main__":
    main()
