#!/usr/bin/env python3
"""Benchmark harness: the gateway against Mosquitto, nats-server (MQTT), rumqttd and FlashMQ.

Runs each workload against every broker, alternating brokers, each run on a fresh broker process
in its own temporary directory, started with the same open-file limit, logging off and raised
queue limits, with device-sim as the load generator. Stores live in that directory: the gateway's
(`[storage]`, on by default) always, and for the persistent-session workload (g) Mosquitto's
persistence file too (nats-server's JetStream store is there for every workload). Reads broker
CPU (utime+stime from /proc/PID/stat) and RSS (/proc/PID/status) around each run, takes the
median of the runs, prints a table with ratios gateway / peer and writes everything as JSON.
Two-node brokers for the cross-node workloads (l)/(m) are in bench/clusters.py.
Started by bench/run.sh (see BENCHMARKS.md). Python 3 standard library only.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import clusters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM = os.path.join(ROOT, "target", "release", "device-sim")
GATEWAY = os.path.join(ROOT, "target", "release", "gateway")
# Gateway binaries under test, by broker name: "gateway" alone, or "gateway:LABEL" per
# --gateway-bin (A/B runs of two builds, alternated like peers).
GATEWAYS = {"gateway": GATEWAY}
NOFILE = 20000
CLK_TCK = os.sysconf("SC_CLK_TCK")
SIM_HTTP_PORT = 29890
SIM_HTTP = [f"127.0.0.1:{SIM_HTTP_PORT}"]  # the running simulator's metrics address
SOURCE_IPS = "127.0.0.2-127.0.0.11"

PORTS = {"gateway": 21883, "mosquitto": 21884, "nats": 21885, "rumqttd": 21887, "flashmq": 21889}
# FlashMQ is built from source (BENCHMARKS.md, "Peers"); it cannot be installed on a fresh
# machine, so the harness runs it only when this variable names its binary.
FLASHMQ_ENV = "FLASHMQ"
# Every broker process gets a port no earlier process used: the connections a stopped broker
# closed linger in TIME_WAIT on its port, and a new client reusing such a 4-tuple waits 1 s for
# a SYN retry, which would distort connect figures.
PORT_STEP = [0]


# Gateway configuration variants, run as broker "gateway-VARIANT" (or "gateway:LABEL-VARIANT"
# with --gateway-bin): the same binary with these `[storage]` keys on top of gateway_config's.
GATEWAY_VARIANTS = {
    "storage-off": {"enabled": "false"},
    "storage-batched": {"sync": '"batched"'},
}


def gateway_config(port, storage_dir, storage=None):
    """The gateway's configuration under test (also used by bench/per_message.sh).

    `storage_dir` is the broker's own directory (never the repository): storage stays on, as by
    default, with the default `sync = "always"` unless `storage` (extra `[storage]` keys, TOML
    values as text, e.g. {"enabled": "false"}) says otherwise. Clean sessions store nothing.
    """
    extra = "".join(f"{k} = {v}\n" for k, v in (storage or {}).items())
    return f"""# written by bench/harness.py
[storage]
dir = "{storage_dir}"
{extra}[mqtt]
listen = "127.0.0.1:{port}"
max_queued_messages = 100000
max_queued_bytes = 0
max_inflight = 65535
[http]
listen = "off"
[sys]
interval = 0
[log]
level = "error"
[limits]
# The gateway paces connects (2,000/s) and caps handshakes by default; peers do neither.
connect_rate = 0
max_handshakes = 0
max_subscriptions_per_client = 0
"""


CHILDREN = []  # Popen objects this harness started, killed by PID on exit


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def set_limits():
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def stop(proc, sig=signal.SIGTERM, grace=5.0):
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, sig)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def forget(proc):
    if proc in CHILDREN:
        CHILDREN.remove(proc)


def cleanup(*_):
    for p in CHILDREN:
        stop(p, signal.SIGKILL, 2.0)
    CHILDREN.clear()


# ---------------------------------------------------------------- brokers


def gateway_variant(name):
    """(binary name in GATEWAYS, variant or None) for a gateway broker name, else None."""
    if name in GATEWAYS:
        return name, None
    for v in GATEWAY_VARIANTS:
        base = name[:-len(v) - 1]
        if name.endswith("-" + v) and base in GATEWAYS:
            return base, v
    return None


# Files and directories a broker keeps its store in (inside its own directory), removed when a
# workload restarts it between sizes.
STORE_FILES = ("js", "store.redb", "mosquitto.db")


class Broker:
    def __init__(self, name, workdir, persistent=False):
        """`persistent`: the workload uses persistent sessions, so peers that can persist them
        get their store (Mosquitto `persistence true`); the gateway's storage is on either way
        unless its variant turns it off."""
        self.name = name
        gw = gateway_variant(name)
        self.kind = "gateway" if gw else name.split(":", 1)[0]
        self.bin, self.variant = gw if gw else (None, None)
        self.persistent = persistent
        # {"cert", "key", "ca"}: the broker's listener speaks TLS with these files (the TLS
        # workloads set it, then restart the broker).
        self.tls = None
        self.port = PORTS[self.kind]
        self.dir = tempfile.mkdtemp(prefix=f"{name.replace(':', '-')}-", dir=workdir)
        self.proc = None

    def command(self):
        d, port = self.dir, self.port
        if self.kind == "gateway" and self.tls:
            # The plain listener moves to a free port; the measured one is a [[listeners]] TLS
            # listener, which admits anonymous clients only with allow_anonymous.
            conf = gateway_config(os_port(), d, GATEWAY_VARIANTS.get(self.variant)) + f"""[auth]
allow_anonymous = true
[[listeners]]
kind = "tls"
bind = "127.0.0.1:{port}"
cert = "{self.tls['cert']}"
key = "{self.tls['key']}"
"""
            cmd = [GATEWAYS[self.bin], "--config", f"{d}/gateway.toml"]
            path = f"{d}/gateway.toml"
        elif self.kind == "gateway":
            conf = gateway_config(port, d, GATEWAY_VARIANTS.get(self.variant))
            cmd = [GATEWAYS[self.bin], "--config", f"{d}/gateway.toml"]
            path = f"{d}/gateway.toml"
        elif self.name == "mosquitto":
            # Persistent sessions (g): the in-memory state is saved to mosquitto.db in the
            # broker's directory at the default autosave_interval (1800 s) and at shutdown.
            persistence = (f"persistence true\npersistence_location {d}/" if self.persistent
                           else "persistence false")
            tls = (f"cafile {self.tls['ca']}\ncertfile {self.tls['cert']}\n"
                   f"keyfile {self.tls['key']}\n" if self.tls else "")
            conf = f"""# written by bench/harness.py
listener {port} 127.0.0.1
{tls}allow_anonymous true
{persistence}
log_dest none
max_queued_messages 100000
max_queued_bytes 0
max_inflight_messages 0
max_connections -1
sys_interval 0
"""
            path = f"{d}/mosquitto.conf"
            cmd = ["/usr/sbin/mosquitto", "-c", path]
        elif self.name == "nats":
            conf = f"""# written by bench/harness.py
server_name: bench_nats
listen: 127.0.0.1:{port + 5}
max_connections: 100000
jetstream {{
  store_dir: "{d}/js"
  max_memory_store: 1GB
  max_file_store: 10GB
}}
mqtt {{
  listen: 127.0.0.1:{port}
  max_ack_pending: 65535
}}
"""
            path = f"{d}/nats.conf"
            cmd = ["nats-server", "-c", path]
        elif self.name == "rumqttd":
            conf = f"""# written by bench/harness.py
id = 0
[router]
id = 0
max_connections = 30000
max_outgoing_packet_count = 100000
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 65535
    dynamic_filters = true
"""
            path = f"{d}/rumqttd.toml"
            cmd = [rumqttd_bin(), "-q", "-c", path]
        elif self.name == "flashmq":
            # No storage_dir: nothing persisted. Its per-client QoS queue bounds (512 messages,
            # 64 KiB by default) are raised like the others' so that no bound drops messages.
            conf = f"""# written by bench/harness.py
log_level none
quiet true
allow_anonymous true
rlimit_nofile {NOFILE}
max_qos_msg_pending_per_client 65535
max_qos_bytes_pending_per_client 1073741824
listen {{
  protocol mqtt
  inet_protocol ip4
  inet4_bind_address 127.0.0.1
  port {port}
}}
"""
            path = f"{d}/flashmq.conf"
            cmd = [os.environ[FLASHMQ_ENV], "--config-file", path]
        else:
            raise ValueError(self.name)
        with open(path, "w") as f:
            f.write(conf)
        return cmd

    def start(self):
        PORT_STEP[0] += 1
        self.port = PORTS[self.kind] + 10 * PORT_STEP[0]
        # nats also listens on port + 5 (its client port).
        if (self.port + 5 > 65535 or not port_free(self.port)
                or (self.kind == "nats" and not port_free(self.port + 5))):
            # Something else holds it (on a shared machine, other clients' ephemeral ports land
            # anywhere in 1024-65535): a port the kernel picks is free and not in TIME_WAIT.
            self.port = os_port()
        cmd = self.command()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(f"{self.dir}/stderr.log", "w"),
            preexec_fn=set_limits,
            cwd=self.dir,
        )
        CHILDREN.append(self.proc)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                with open(f"{self.dir}/stderr.log") as f:
                    tail = f.read()[-500:]
                raise RuntimeError(f"{self.name} exited at start: {tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                time.sleep(0.3)  # let it settle (nats starts JetStream)
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {self.port}")

    def stop(self, keep_dir=False):
        if self.proc is not None:
            stop(self.proc)
            forget(self.proc)
            self.proc = None
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def restart(self):
        """A fresh process (same configuration), e.g. between the sizes of one workload."""
        self.stop(keep_dir=True)
        for sub in STORE_FILES:
            path = os.path.join(self.dir, sub)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.remove(path)
        time.sleep(0.5)
        self.start()

    def sim_targets(self):
        """device-sim's flags saying where its clients connect."""
        return ["--target", f"127.0.0.1:{self.port}"]

    def cpu(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state): utime is field 14, stime field 15
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def written(self):
        """Bytes this process caused to be written to storage so far (/proc/PID/io)."""
        try:
            with open(f"/proc/{self.proc.pid}/io") as f:
                for line in f:
                    if line.startswith("write_bytes:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def store_bytes(self):
        """Size of the broker's store files in its directory now."""
        total = 0
        for sub in STORE_FILES:
            path = os.path.join(self.dir, sub)
            if os.path.isfile(path):
                total += os.path.getsize(path)
            for root, _, files in os.walk(path):
                total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        return total

    def rss(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


def port_free(port):
    """Whether a broker could listen on 127.0.0.1:`port` now (SO_REUSEADDR, as brokers bind)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def os_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rumqttd_bin():
    found = shutil.which("rumqttd") or os.path.expanduser("~/.cargo/bin/rumqttd")
    return found


def make_broker(name, workdir, persistent=False):
    """A Broker, or for gateway-cluster / nats-cluster two nodes (bench/clusters.py)."""
    if name in clusters.CLUSTER_KINDS:
        return clusters.make(name, workdir, {
            "gateway_bin": next(iter(GATEWAYS.values())),
            "gateway_config": gateway_config,
            "children": CHILDREN,
            "preexec": set_limits,
        })
    return Broker(name, workdir, persistent)


def available_brokers(wanted):
    ok = []
    for b in wanted:
        gw = gateway_variant(b)
        if b in clusters.CLUSTER_KINDS and not shutil.which("nats-server"):
            log(f"{b}: nats-server missing (apt-get install -y nats-server); skipped")
        elif b == "gateway-cluster" and not os.path.exists(next(iter(GATEWAYS.values()))):
            log(f"{b}: gateway binary missing; run cargo build --release -p gateway")
        elif gw and not os.path.exists(GATEWAYS[gw[0]]):
            log(f"{b} binary {GATEWAYS[gw[0]]} missing; run cargo build --release -p gateway")
        elif b == "mosquitto" and not os.path.exists("/usr/sbin/mosquitto"):
            log("mosquitto missing (apt-get install -y mosquitto); skipped")
        elif b == "nats" and not shutil.which("nats-server"):
            log("nats-server missing (apt-get install -y nats-server); skipped")
        elif b == "rumqttd" and not os.path.exists(rumqttd_bin()):
            log("rumqttd missing (cargo install rumqttd --version 0.20.0); skipped")
        elif b == "flashmq" and not os.access(os.environ.get(FLASHMQ_ENV, ""), os.X_OK):
            log(f"FLASHMQ SKIPPED: set {FLASHMQ_ENV}=/path/to/flashmq (built from source, see "
                "BENCHMARKS.md 'Peers'); it is not packaged")
        else:
            ok.append(b)
    return ok


# ---------------------------------------------------------------- device-sim


def sim_metric(name, labels=None):
    """The running simulator's figure `name` (its first series, or the one with `labels`, e.g.
    'reason="disconnect_event"')."""
    heads = (f"{name}{{{labels}}} ",) if labels else (name + " ", name + "{")
    try:
        with urllib.request.urlopen(f"http://{SIM_HTTP[0]}/metrics", timeout=1) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(heads):
                    return float(line.rsplit(" ", 1)[1])
    except OSError:
        return None
    return None


class BackAfterEvent:
    """Tells when a storm's fleet is back: every device dropped by the disconnect event
    (device-sim's counter), then the connected gauge at `n` in a sample taken after the drops
    (it is updated once a second: a sample from before the event ended runs at once)."""

    def __init__(self, n):
        self.n, self.dropped_at = n, None

    def back(self):
        if self.dropped_at is None:
            dropped = sim_metric("device_sim_disconnects_total", 'reason="disconnect_event"')
            if dropped is not None and dropped >= self.n:
                self.dropped_at = time.time()
            return False
        c = sim_metric("device_sim_devices_connected")
        return time.time() - self.dropped_at > 1.2 and c is not None and c >= self.n


def run_sim(broker, workdir, args, watch=None):
    """Runs device-sim against `broker` with `args`; returns (report, broker cpu s, extra).

    `watch(sim_proc, broker)` (optional) runs while the simulator runs and returns extra figures.
    """
    report_path = os.path.join(workdir, "report.json")
    if os.path.exists(report_path):
        os.remove(report_path)
    port = SIM_HTTP_PORT
    while not port_free(port):
        port += 1
    SIM_HTTP[0] = f"127.0.0.1:{port}"
    cmd = [SIM, "run", *broker.sim_targets(), "--source-ips", SOURCE_IPS,
           "--report", report_path, "--http-listen", SIM_HTTP[0]] + args
    parts0 = broker.cpu_parts() if hasattr(broker, "cpu_parts") else None
    cpu0 = broker.cpu()
    load0 = os.getloadavg()[0]
    sim = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=open(os.path.join(workdir, "sim.log"), "w"),
                           preexec_fn=set_limits)
    CHILDREN.append(sim)
    extra = watch(sim, broker) if watch else {}
    try:
        sim.wait(timeout=600)
    finally:
        stop(sim, signal.SIGKILL)
        forget(sim)
    cpu = broker.cpu() - cpu0
    if parts0 is not None:
        extra["cpu_parts"] = {k: v - parts0[k] for k, v in broker.cpu_parts().items()}
    if not os.path.exists(report_path):
        raise RuntimeError(f"device-sim wrote no report; see {workdir}/sim.log")
    with open(report_path) as f:
        report = json.load(f)
    extra["loadavg_1m"] = round(max(load0, os.getloadavg()[0]), 2)
    return report, cpu, extra


# ---------------------------------------------------------------- workloads
# Each returns {figure name: value}; figure names carry the unit.


def wl_idle(broker, workdir, opts):
    out = {}
    for i, n in enumerate(opts.idle_sizes):
        if i > 0:
            broker.restart()
        rss0 = broker.rss()
        cpu0 = broker.cpu()

        def watch(sim, b, n=n):
            # Wait until the simulator reports every device connected (its gauge, polled every
            # 0.25 s), note the broker's CPU (the connects' cost), let the broker settle, read
            # its RSS, then stop the simulator (SIGINT: it reports).
            deadline = time.time() + opts.idle_timeout
            while time.time() < deadline and sim.poll() is None:
                got = sim_metric("device_sim_devices_connected")
                if got is not None and got >= n:
                    break
                time.sleep(0.25)
            cpu = b.cpu()
            # The load generator's own cost: on 2 cores it and the broker share the storm.
            sim_cpu = proc_cpu(sim.pid) if sim.poll() is None else None
            time.sleep(1.5)
            rss = b.rss()
            if sim.poll() is None:
                os.kill(sim.pid, signal.SIGINT)
            return {"rss": rss, "cpu": cpu, "sim_cpu": sim_cpu}

        # Unpaced: as fast as the broker completes handshakes, 100 in flight.
        report, _, extra = run_sim(broker, workdir, [
            "--devices", str(n), "--subscribers", "0", "--publish-interval", "0",
            "--keep-alive", "300s", "--connect-rate", "1000000", "--connect-window", "100",
            "--duration", f"{opts.idle_timeout + 5}s", "--drain", "0s",
            "--connect-timeout", "30s", "--client-id", "idle-{id}",
        ], watch)
        connected = report["devices_connected"]
        out[f"a_rss_per_session_B@{n}"] = (extra["rss"] - rss0) / max(connected, 1)
        out[f"a_connected@{n}"] = connected
        if n == max(opts.idle_sizes):
            out[f"a_connect_rate_window100_per_s@{n}"] = report["connect_rate_per_s"]
            out[f"a_connect_p99_ms_window100@{n}"] = report["connect_ms"]["p99"]
            out[f"a_cpu_ms_per_1k_connects@{n}"] = (
                1000 * (extra["cpu"] - cpu0) / (connected / 1000) if connected else None)
            out[f"a_sim_cpu_ms_per_1k_connects@{n}"] = (
                1000 * extra["sim_cpu"] / (connected / 1000)
                if connected and extra["sim_cpu"] is not None else None)
        out["loadavg_1m"] = max(out.get("loadavg_1m", 0), extra["loadavg_1m"])
    broker.restart()
    out.update(connect_paced(broker, workdir, opts))
    return out


def connect_paced(broker, workdir, opts):
    """The largest fleet connecting at a fixed rate: whether the broker keeps the pace, and the
    handshake latency it gives meanwhile."""
    n, rate = max(opts.idle_sizes), opts.paced_rate
    report, _, extra = run_sim(broker, workdir, [
        "--devices", str(n), "--subscribers", "0", "--publish-interval", "0",
        "--keep-alive", "300s", "--connect-rate", str(rate),
        "--duration", f"{n / rate + 3:.0f}s", "--drain", "0s",
        "--connect-timeout", "30s", "--client-id", "paced-{id}",
    ])
    return {
        f"a_connect_rate_paced{rate}_per_s@{n}": report["connect_rate_per_s"],
        f"a_connect_p99_ms_paced{rate}@{n}": report["connect_ms"]["p99"],
    }


def wl_fanin(qos, persistent=False, deep=False):
    """(b)/(c), with `persistent` (g): (c) with every client on a persistent session, and with
    `deep` (j)/(k): (b)/(c) with `--deep-window` messages in flight per publisher (an ingest
    burst) instead of `--fanin-window`."""
    key = "g" if persistent else ("jk" if deep else "bc")[qos]
    name = "pfanin" if persistent else f"{'deep' if deep else ''}fanin{qos}"

    def run(broker, workdir, opts):
        # Closed loop by default: each publisher keeps `fanin_window` messages outstanding
        # (unacknowledged at QoS 1, not yet seen by the subscriber at QoS 0), so the rate is
        # what the broker sustains; `--fanin-interval` gives a fixed offered load instead.
        window = opts.deep_window if deep else opts.fanin_window
        pace = (["--publish-interval", opts.fanin_interval] if opts.fanin_interval and not deep
                else ["--publish-interval", "0", "--window", str(window)])
        # (g): the subscriber alone on a persistent session, the 100 publishers clean.
        session = ["--subscriber-clean-session=false"] if persistent else []
        written0 = broker.written()
        report, cpu, extra = run_sim(broker, workdir, [
            "--devices", "100", "--subscribers", "1", "--qos", str(qos), "--payload", "64",
            *pace, *session, "--connect-rate", "1000",
            "--duration", opts.duration, "--drain", "3s", "--client-id", f"{name}-{{id}}",
            "--topic", f"{name}/{{id}}/t",
        ])
        rx = report["messages_received"]
        figs = {
            f"{key}_cpu_s_per_1M_delivered": cpu / (rx / 1e6) if rx else None,
            f"{key}_delivered_per_s": report["receive_rate"],
            f"{key}_published_per_s": report["publish_rate"],
            f"{key}_lost": report["lost"],
            f"{key}_latency_p99_ms": report["latency_ms"]["p99"],
        }
        if persistent:
            written = broker.written()
            figs.update({
                f"{key}_duplicates": report["duplicates"],
                f"{key}_puback_p50_ms": report["puback_ms"]["p50"],
                f"{key}_puback_p99_ms": report["puback_ms"]["p99"],
                # Bytes the broker had written to storage (/proc/PID/io write_bytes: what it
                # dirtied, as the kernel counts it) per delivered message, and its store's size
                # at the end (Mosquitto saves only at autosave or shutdown: ~0 here).
                f"{key}_disk_written_B_per_delivered":
                    (written - written0) / rx if rx and written is not None
                    and written0 is not None else None,
                f"{key}_store_size_MB_at_end": broker.store_bytes() / 1e6,
            })
        figs["loadavg_1m"] = extra["loadavg_1m"]
        return figs
    return run


# Brokers that run the cross-node workloads: one node of each (the local baseline) and two.
CROSS_KINDS = ("gateway", "nats") + clusters.CLUSTER_KINDS


def wl_cross(qos):
    """(l)/(m): (b)/(c) with the 100 publishers on node A and the subscriber on node B of a
    two-node broker (gateway-cluster, nats-cluster), against one node (gateway, nats) in the
    same run. Broker CPU is every process of the broker (both nodes and nats-server), and per
    part: node A, node B, nats (a one-node broker is all node A)."""
    key = "lm"[qos]

    def run(broker, workdir, opts):
        if broker.kind not in CROSS_KINDS:
            return {}
        report, cpu, extra = run_sim(broker, workdir, [
            "--devices", "100", "--subscribers", "1", "--qos", str(qos), "--payload", "64",
            "--publish-interval", "0", "--window", str(opts.fanin_window),
            "--connect-rate", "1000", "--duration", opts.duration, "--drain", "3s",
            "--client-id", f"cross{qos}-{{id}}", "--topic", f"cross{qos}/{{id}}/t",
        ])
        rx = report["messages_received"]
        per_1m = (lambda s: s / (rx / 1e6) if rx else None)
        parts = extra.get("cpu_parts") or {"node_a": cpu}
        figs = {
            f"{key}_cpu_s_per_1M_delivered": per_1m(cpu),
            **{f"{key}_cpu_{part}_s_per_1M": per_1m(c) for part, c in parts.items()},
            f"{key}_delivered_per_s": report["receive_rate"],
            f"{key}_lost": report["lost"],
            f"{key}_duplicates": report["duplicates"],
            f"{key}_latency_p99_ms": report["latency_ms"]["p99"],
            "loadavg_1m": extra["loadavg_1m"],
        }
        return figs
    return run


def cross_ratios(summary):
    """Cross-node over one-node broker CPU per 1M delivered, per workload: the issue's target
    is below 2 for the gateway."""
    out = {}
    for key in "lm":
        row = summary.get(f"{key}_cpu_s_per_1M_delivered", {})
        for one, two in (("gateway", "gateway-cluster"), ("nats", "nats-cluster")):
            a, b = row.get(one, {}).get("median"), row.get(two, {}).get("median")
            if a and b:
                out[f"{key}_{two}_over_{one}"] = round(b / a, 2)
    return out


def wl_fanout(broker, workdir, opts):
    report, cpu, extra = run_sim(broker, workdir, [
        "--devices", "1", "--subscribers", str(opts.fanout_subscribers), "--qos", "0",
        "--payload", "64", "--publish-interval", "1ms", "--connect-rate", "1000",
        "--duration", opts.duration, "--drain", "3s", "--client-id", "fanout-{id}",
        "--topic", "fanout/{id}/t",
    ])
    rx = report["messages_received"]
    expected = report["messages_expected"]
    return {
        "d_cpu_s_per_1M_delivered": cpu / (rx / 1e6) if rx else None,
        "d_delivered_pct": 100.0 * rx / expected if expected else None,
        "d_delivered_per_s": report["receive_rate"],
        "d_published_per_s": report["publish_rate"],
        "loadavg_1m": extra["loadavg_1m"],
    }


def wl_latency(broker, workdir, opts):
    report, cpu, extra = run_sim(broker, workdir, [
        "--devices", "1000", "--subscribers", "1", "--qos", "1", "--payload", "64",
        "--publish-interval", "100ms", "--connect-rate", "2000",
        "--duration", opts.duration, "--drain", "3s", "--client-id", "lat-{id}",
        "--topic", "lat/{id}/t",
    ])
    lat = report["latency_ms"]
    rx = report["messages_received"]
    return {
        "e_p50_ms": lat["p50"], "e_p99_ms": lat["p99"], "e_p999_ms": lat["p999"],
        "e_lost": report["lost"],
        "e_cpu_s_per_1M_delivered": cpu / (rx / 1e6) if rx else None,
        "loadavg_1m": extra["loadavg_1m"],
    }


def wl_storm(broker, workdir, opts):
    n = opts.storm_devices
    at = 8.0
    scen = os.path.join(workdir, "storm.toml")
    with open(scen, "w") as f:
        f.write(f"""# written by bench/harness.py: every device drops at once and reconnects
devices = {n}
connect_rate = 5000
client_id = "storm-{{id}}"
topic = "storm/{{id}}/t"
payload = 64
publish_interval = "0s"
keep_alive = "300s"
subscribers = 0
duration = "{int(at) + opts.storm_window}s"
drain = "0s"
connect_timeout = "30s"
[disconnect]
at = "{int(at)}s"
share = 1.0
who = "devices"
offline_for = "0s"
backoff_min = "10ms"
backoff_max = "1s"
""")

    def watch(sim, b):
        # Ends the run once the fleet is back after the event; the figure itself is
        # device-sim's own, to the millisecond.
        t0 = time.time()
        fleet = BackAfterEvent(n)
        while sim.poll() is None and time.time() - t0 < at + opts.storm_window + 10:
            if fleet.back():
                break
            time.sleep(0.1)
        time.sleep(0.5)
        if sim.poll() is None:
            os.kill(sim.pid, signal.SIGINT)
        return {}

    report, _, extra = run_sim(broker, workdir, ["--scenario", scen], watch)
    # device-sim's own figure (from the event until the last device was back) is exact; the
    # gauge watch above only ends the run early.
    back_ms = report.get("reconnect_all_back_ms")
    storm_s = back_ms / 1000 if back_ms is not None else None
    dropped = (report.get("disconnects_by_reason") or {}).get("disconnect_event", 0)
    return {
        "f_all_back_s": storm_s,
        "f_dropped": dropped,
        "f_connected_at_end": report["devices_connected"],
        "loadavg_1m": extra["loadavg_1m"],
    }


# ---------------------------------------------------------------- TLS (issue 16)
# Gateway and Mosquitto only (the peers in this harness have no TLS listener configured).
TLS_KINDS = ("gateway", "mosquitto")


def tls_pki(workdir):
    """A CA and two server certificates for IP:127.0.0.1 and DNS:localhost, one with an ECDSA
    P-256 key and one with an RSA 2048 key, made with the openssl CLI once per harness run.
    Returns {"ecdsa": {cert, key, ca}, "rsa": {...}}."""
    d = os.path.join(workdir, "pki")
    ca_key, ca = os.path.join(d, "ca.key"), os.path.join(d, "ca.pem")
    out = {k: {"cert": os.path.join(d, f"{k}.pem"), "key": os.path.join(d, f"{k}.key"),
               "ca": ca} for k in ("ecdsa", "rsa")}
    if os.path.exists(os.path.join(d, "done")):
        return out
    os.makedirs(d, exist_ok=True)

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    openssl("req", "-x509", *ec, "-nodes", "-keyout", ca_key, "-out", ca, "-days", "3",
            "-subj", "/CN=bench CA")
    ext = os.path.join(d, "server.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                "extendedKeyUsage=serverAuth\n")
    for kind, newkey in (("ecdsa", ec), ("rsa", ["-newkey", "rsa:2048"])):
        csr = os.path.join(d, f"{kind}.csr")
        openssl("req", *newkey, "-nodes", "-keyout", out[kind]["key"], "-out", csr,
                "-subj", "/CN=localhost")
        openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                "-days", "3", "-out", out[kind]["cert"], "-extfile", ext)
    # Mosquitto started as root drops to its own user before it reads its certificate and key:
    # they must be readable to it (bench-only keys), and the run's directory traversable.
    os.chmod(workdir, 0o711)
    os.chmod(d, 0o755)
    for kind in out:
        os.chmod(out[kind]["key"], 0o644)
    open(os.path.join(d, "done"), "w").close()
    return out


def proc_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tls_args(tls):
    return ["--tls", "--cafile", tls["ca"]] if tls else []


def wl_tls_idle(broker, workdir, opts):
    """(h) N idle devices connected unpaced with 100 handshakes in flight, in the clear, then
    over TLS with the ECDSA P-256 and with the RSA 2048 server key, a fresh broker each: full
    TLS 1.3 handshakes per second, broker CPU per 1,000, RSS per idle session (broker and
    device-sim)."""
    if broker.kind not in TLS_KINDS:
        return {}
    pki = tls_pki(workdir)
    n = opts.tls_devices
    out = {}
    for label, tls in (("plain", None), ("ecdsa", pki["ecdsa"]), ("rsa", pki["rsa"])):
        broker.tls = tls
        broker.restart()
        rss0 = broker.rss()
        cpu0 = broker.cpu()

        def watch(sim, b):
            # As (a): wait for the connected gauge, note CPU (broker and simulator: the
            # handshakes' cost on each side), let both settle, read RSS, stop the simulator.
            deadline = time.time() + opts.idle_timeout
            while time.time() < deadline and sim.poll() is None:
                got = sim_metric("device_sim_devices_connected")
                if got is not None and got >= n:
                    break
                time.sleep(0.25)
            cpu, sim_cpu = b.cpu(), proc_cpu(sim.pid)
            time.sleep(1.5)
            rss, sim_rss = b.rss(), proc_rss(sim.pid)
            if sim.poll() is None:
                os.kill(sim.pid, signal.SIGINT)
            return {"rss": rss, "cpu": cpu, "sim_rss": sim_rss, "sim_cpu": sim_cpu}

        report, _, extra = run_sim(broker, workdir, [
            "--devices", str(n), "--subscribers", "0", "--publish-interval", "0",
            "--keep-alive", "300s", "--connect-rate", "1000000", "--connect-window", "100",
            "--duration", f"{opts.idle_timeout + 5}s", "--drain", "0s",
            "--connect-timeout", "30s", "--client-id", f"tls-{label}-{{id}}", *tls_args(tls),
        ], watch)
        connected = report["devices_connected"]
        k = connected / 1000 if connected else None
        out[f"h_{label}_connected@{n}"] = connected
        out[f"h_{label}_connects_per_s@{n}"] = report["connect_rate_per_s"]
        out[f"h_{label}_cpu_ms_per_1k_connects"] = 1000 * (extra["cpu"] - cpu0) / k if k else None
        out[f"h_{label}_rss_per_session_B"] = (extra["rss"] - rss0) / max(connected, 1)
        out[f"h_{label}_sim_cpu_ms_per_1k_connects"] = 1000 * extra["sim_cpu"] / k if k else None
        out[f"h_{label}_sim_rss_B@{n}"] = extra["sim_rss"]
        if tls:
            out[f"h_{label}_tls_full"] = report.get("tls_full")
        out["loadavg_1m"] = max(out.get("loadavg_1m", 0), extra["loadavg_1m"])
    # What a TLS device costs device-sim beyond a plain one (same N, one process each time).
    plain_sim = out[f"h_plain_sim_rss_B@{n}"]
    for label in ("ecdsa", "rsa"):
        out[f"h_{label}_sim_extra_B_per_tls_device"] = (
            (out[f"h_{label}_sim_rss_B@{n}"] - plain_sim) / n)
    return out


def wl_tls_storm(broker, workdir, opts):
    """(i) N idle TLS devices all dropped at once and reconnecting, with device-sim resuming
    its TLS 1.3 sessions and without, for each server key of --tls-storm-keys: all-back time,
    broker CPU from just before the event until all are back, per 1,000 reconnections."""
    if broker.kind not in TLS_KINDS:
        return {}
    out = {}
    for key in opts.tls_storm_keys.split(","):
        for name, value in tls_storm(broker, workdir, opts, key).items():
            out[name if name == "loadavg_1m" else f"i_{key}_{name}"] = value
    return out


def tls_storm(broker, workdir, opts, key):
    tls = tls_pki(workdir)[key]
    n, at = opts.tls_storm_devices, opts.tls_storm_at
    out = {}
    for resumption in ("resumed", "full"):
        broker.tls = tls
        broker.restart()
        scen = os.path.join(workdir, "tls-storm.toml")
        with open(scen, "w") as f:
            f.write(f"""# written by bench/harness.py: every TLS device drops at once and reconnects
devices = {n}
connect_rate = 1000000
connect_window = 100
client_id = "tls-storm-{{id}}"
topic = "tls-storm/{{id}}/t"
publish_interval = "0s"
keep_alive = "300s"
subscribers = 0
duration = "{at + opts.storm_window}s"
drain = "0s"
connect_timeout = "30s"
tls = true
cafile = "{tls['ca']}"
tls_resumption = {"true" if resumption == "resumed" else "false"}
[disconnect]
at = "{at}s"
share = 1.0
who = "devices"
offline_for = "0s"
backoff_min = "10ms"
backoff_max = "1s"
""")

        def watch(sim, b):
            # Broker CPU just before the event (the fleet idle since it connected) and once the
            # connected gauge shows everyone back; then the run is ended.
            t0 = time.time()
            cpu_before = None
            connected_before = None
            fleet = None
            while sim.poll() is None and time.time() - t0 < at + opts.storm_window + 10:
                if cpu_before is None and time.time() - t0 >= at - 1:
                    cpu_before = b.cpu()
                    connected_before = sim_metric("device_sim_devices_connected")
                    fleet = BackAfterEvent(int(connected_before or n))
                if fleet is not None and fleet.back():
                    break
                time.sleep(0.1)
            cpu_after = b.cpu()
            time.sleep(0.5)
            if sim.poll() is None:
                os.kill(sim.pid, signal.SIGINT)
            return {"storm_cpu": cpu_after - cpu_before if cpu_before is not None else None,
                    "connected_before": connected_before}

        report, _, extra = run_sim(broker, workdir, ["--scenario", scen], watch)
        back_ms = report.get("reconnect_all_back_ms")
        dropped = (report.get("disconnects_by_reason") or {}).get("disconnect_event", 0)
        cpu = extra.get("storm_cpu")
        out[f"{resumption}_all_back_s"] = back_ms / 1000 if back_ms is not None else None
        out[f"{resumption}_cpu_ms_per_1k_reconnects"] = (
            1000 * cpu / (dropped / 1000) if cpu is not None and dropped else None)
        out[f"{resumption}_dropped"] = dropped
        out[f"{resumption}_connected_before_event"] = extra.get("connected_before")
        out[f"{resumption}_connected_at_end"] = report["devices_connected"]
        out[f"{resumption}_tls_resumed"] = report.get("tls_resumed")
        out[f"{resumption}_tls_full"] = report.get("tls_full")
        out["loadavg_1m"] = max(out.get("loadavg_1m", 0), extra["loadavg_1m"])
    return out


def probe_limits():
    """The latency probe of (n) runs ahead of the storm's generator (nice -5, when allowed):
    on a real network the storming devices are other machines, and here the probe's own
    threads waiting for a core would count as the broker's latency."""
    set_limits()
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -5)
    except OSError:
        pass


def wl_tls_storm_latency(broker, workdir, opts):
    """(n) QoS 1 latency of established TLS clients while --tls-storm-devices new TLS devices
    connect unpaced (100 handshakes in flight): a probe of 100 TLS publishers at 10 msg/s each
    to one wildcard subscriber runs --tls-latency-seconds, alone on a fresh broker ("quiet"),
    then again with the storm starting 3 s in ("storm"), for each key of --tls-storm-keys.
    The probe's p99 covers its whole run; the storm's span is reported beside it."""
    if broker.kind not in TLS_KINDS:
        return {}
    pki = tls_pki(workdir)
    secs, n = opts.tls_latency_seconds, opts.tls_storm_devices
    out = {}
    for key in opts.tls_storm_keys.split(","):
        tls = pki[key]
        for phase in ("quiet", "storm"):
            broker.tls = tls
            broker.restart()
            probe_report = os.path.join(workdir, "probe.json")
            if os.path.exists(probe_report):
                os.remove(probe_report)
            port = SIM_HTTP_PORT + 50
            while not port_free(port):
                port += 1
            probe = subprocess.Popen(
                [SIM, "run", *broker.sim_targets(), "--source-ips", SOURCE_IPS,
                 "--report", probe_report, "--http-listen", f"127.0.0.1:{port}",
                 "--devices", "100", "--subscribers", "1", "--qos", "1", "--payload", "64",
                 "--publish-interval", "100ms", "--connect-rate", "1000",
                 "--duration", f"{secs}s", "--drain", "3s", "--client-id", "probe-{id}",
                 "--topic", "probe/{id}/t", *tls_args(tls)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=open(os.path.join(workdir, "probe.log"), "w"), preexec_fn=probe_limits)
            CHILDREN.append(probe)
            try:
                time.sleep(3)
                if phase == "storm":
                    def watch(sim, b):
                        t0 = time.time()
                        while sim.poll() is None and time.time() - t0 < secs:
                            c = sim_metric("device_sim_devices_connected")
                            if c is not None and c >= n:
                                break
                            time.sleep(0.1)
                        span = time.time() - t0
                        # The storm's devices stay connected (idle) until the probe ends.
                        remaining = secs - 3 - span
                        if remaining > 0:
                            time.sleep(remaining)
                        if sim.poll() is None:
                            os.kill(sim.pid, signal.SIGINT)
                        return {"span": span}

                    report, _, extra = run_sim(broker, workdir, [
                        "--devices", str(n), "--subscribers", "0", "--publish-interval", "0",
                        "--keep-alive", "300s", "--connect-rate", "1000000",
                        "--connect-window", "100", "--duration", f"{secs}s", "--drain", "0s",
                        "--connect-timeout", "30s", "--client-id", "tls-storm-{id}",
                        *tls_args(tls)], watch)
                    out[f"n_{key}_storm_connected"] = report["devices_connected"]
                    out[f"n_{key}_storm_span_s"] = round(extra["span"], 2)
                    out[f"n_{key}_storm_connects_per_s"] = report["connect_rate_per_s"]
                    out["loadavg_1m"] = max(out.get("loadavg_1m", 0), extra["loadavg_1m"])
                probe.wait(timeout=secs + 60)
            finally:
                stop(probe, signal.SIGKILL)
                forget(probe)
            with open(probe_report) as f:
                r = json.load(f)
            out[f"n_{key}_{phase}_latency_p50_ms"] = r["latency_ms"]["p50"]
            out[f"n_{key}_{phase}_latency_p99_ms"] = r["latency_ms"]["p99"]
            out[f"n_{key}_{phase}_puback_p99_ms"] = r["puback_ms"]["p99"]
            out[f"n_{key}_{phase}_lost"] = r["lost"]
            out["loadavg_1m"] = max(out.get("loadavg_1m", 0), round(os.getloadavg()[0], 2))
    return out


WORKLOADS = {
    "a": ("idle connections: RSS per session, connect rate", wl_idle),
    "b": ("QoS 0 fan-in: 100 publishers -> 1 wildcard subscriber, 64 B", wl_fanin(0)),
    "c": ("QoS 1 fan-in: 100 publishers -> 1 wildcard subscriber, 64 B", wl_fanin(1)),
    "d": ("fan-out: 1 publisher at 1,000 msg/s -> N subscribers", wl_fanout),
    "e": ("latency: 1,000 QoS 1 publishers at 10 msg/s -> 1 wildcard subscriber", wl_latency),
    "f": ("reconnect storm: every session dropped at once", wl_storm),
    "g": ("QoS 1 fan-in to a persistent subscriber: (c) with the subscriber's clean session off", wl_fanin(1, True)),
    "h": ("TLS: full handshakes per second and CPU (ECDSA P-256, RSA 2048), idle RSS per TLS session", wl_tls_idle),
    "i": ("TLS reconnect storm: every TLS device dropped at once, with and without resumption", wl_tls_storm),
    "j": ("QoS 0 fan-in, deep window: (b) with 100 publishers x --deep-window in flight", wl_fanin(0, deep=True)),
    "k": ("QoS 1 fan-in, deep window: (c) with 100 publishers x --deep-window in flight", wl_fanin(1, deep=True)),
    "l": ("cross-node QoS 0 fan-in: (b) with publishers on node A, the subscriber on node B", wl_cross(0)),
    "m": ("cross-node QoS 1 fan-in: (c) with publishers on node A, the subscriber on node B", wl_cross(1)),
    "n": ("QoS 1 latency of 100 established TLS publishers during a TLS connect storm", wl_tls_storm_latency),
}
# Workloads on persistent sessions: their brokers get a store where they have one to turn on.
PERSISTENT_WORKLOADS = {"g"}

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default="abcdef",
                    help="letters of the workloads to run ((g)-(n) only when named; "
                    "(h), (i) and (n) run against the gateway and Mosquitto only, (l) and (m) "
                    "against gateway, gateway-cluster, nats and nats-cluster only)")
    ap.add_argument("--brokers", default="gateway,mosquitto,nats,rumqttd",
                    help="brokers, in the order of the table; gateway-VARIANT runs the gateway "
                    f"with a configuration variant ({', '.join(GATEWAY_VARIANTS)}), e.g. "
                    "--brokers gateway,gateway-storage-off,mosquitto,nats; gateway-cluster (two "
                    "nodes on one nats-server) and nats-cluster (two routed nats-servers with "
                    "MQTT) for (l)/(m)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", default="10s", help="publishing time of (b)-(e) and (g)")
    ap.add_argument("--fanin-window", type=int, default=10,
                    help="messages each publisher keeps outstanding in (b)/(c)/(g) (closed loop)")
    ap.add_argument("--deep-window", type=int, default=100,
                    help="messages each publisher keeps outstanding in (j)/(k)")
    ap.add_argument("--fanin-interval", default="",
                    help="a fixed per-publisher interval in (b)/(c)/(g) instead of the closed loop "
                         "(2ms: ~30-40k msg/s offered)")
    ap.add_argument("--fanout-subscribers", type=int, default=1000)
    ap.add_argument("--idle-sizes", default="1000,10000,19000")
    ap.add_argument("--idle-timeout", type=int, default=40)
    ap.add_argument("--paced-rate", type=int, default=5000,
                    help="connects per second of the paced run in (a)")
    ap.add_argument("--storm-devices", type=int, default=10000)
    ap.add_argument("--storm-window", type=int, default=20)
    ap.add_argument("--tls-devices", type=int, default=4000,
                    help="idle devices of (h), connected in the clear and over TLS")
    ap.add_argument("--tls-storm-devices", type=int, default=10000)
    ap.add_argument("--tls-storm-keys", default="ecdsa,rsa",
                    help="server keys of (i), comma-separated: ecdsa (P-256), rsa (2048)")
    ap.add_argument("--tls-latency-seconds", type=int, default=20,
                    help="(n): the probe's publishing time; the storm starts 3 s in")
    ap.add_argument("--tls-storm-at", type=int, default=20,
                    help="seconds into (i) when the devices are dropped (all must be connected)")
    ap.add_argument("--gateway-bin", action="append", default=[], metavar="LABEL=PATH",
                    help="run this gateway binary as broker gateway:LABEL in place of "
                    "target/release/gateway; repeat for an A/B comparison of builds (the first "
                    "is the reference of the ratio columns), e.g. --brokers gateway "
                    "--gateway-bin base=/tmp/gw-base --gateway-bin new=target/release/gateway")
    ap.add_argument("--port-offset", type=int, default=0,
                    help="added to every broker port and to device-sim's HTTP port, so two "
                    "harness runs on one machine do not collide")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "latest.json"))
    opts = ap.parse_args()
    opts.idle_sizes = [int(x) for x in opts.idle_sizes.split(",")]
    global SIM, SIM_HTTP_PORT
    for k in PORTS:
        PORTS[k] += opts.port_offset
    SIM_HTTP_PORT += opts.port_offset
    wanted = opts.brokers.split(",")
    if opts.gateway_bin:
        GATEWAYS.clear()
        for spec in opts.gateway_bin:
            label, sep, path = spec.partition("=")
            if not sep or not label or not path:
                ap.error(f"--gateway-bin {spec!r}: expected LABEL=PATH")
            GATEWAYS[f"gateway:{label}"] = os.path.abspath(path)
        # "gateway" stands for every --gateway-bin build, "gateway-VARIANT" for each with it.
        labels = list(GATEWAYS)
        expanded = []
        for b in wanted:
            variant = b[len("gateway-"):]
            if b == "gateway":
                expanded += labels
            elif b.startswith("gateway-") and variant in GATEWAY_VARIANTS:
                expanded += [f"{g}-{variant}" for g in labels]
            else:
                expanded.append(b)
        if not any(b in GATEWAYS for b in expanded):
            expanded = labels + expanded
        wanted = expanded

    signal.signal(signal.SIGTERM, lambda *_: (cleanup(), sys.exit(143)))
    brokers = available_brokers(wanted)
    workdir = tempfile.mkdtemp(prefix="mqtt-bench-")
    # Private copies of the binaries: a build in the shared target directory during the run must
    # not swap the code under test between runs.
    copy = os.path.join(workdir, os.path.basename(SIM))
    shutil.copy2(SIM, copy)
    SIM = copy
    for i, (name, path) in enumerate(GATEWAYS.items()):
        copy = os.path.join(workdir, f"gateway-{i}")
        shutil.copy2(path, copy)
        GATEWAYS[name] = copy
    results = {}  # workload -> broker -> list of figure dicts
    started = time.time()
    try:
        for wl in opts.workloads:
            title, fn = WORKLOADS[wl]
            results[wl] = {b: [] for b in brokers}
            for r in range(opts.runs):
                # Alternate the order so no broker always runs first (warm caches, load).
                order = brokers[r % len(brokers):] + brokers[:r % len(brokers)]
                for name in order:
                    broker = make_broker(name, workdir, persistent=wl in PERSISTENT_WORKLOADS)
                    try:
                        broker.start()
                        log(f"({wl}) {title}: run {r + 1}/{opts.runs} {name}")
                        figs = fn(broker, workdir, opts)
                        log(f"({wl}) {name}: {figs}")
                        results[wl][name].append(figs)
                    except Exception as e:  # one failed run must not lose the others
                        log(f"({wl}) {name} failed: {e}")
                        results[wl][name].append({"error": str(e)})
                    finally:
                        broker.stop()
                    time.sleep(1)
    finally:
        cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summarize(results, brokers)
    doc = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "options": {k: v for k, v in vars(opts).items()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "summary": summary,
        "cross_node_over_one_node_cpu": cross_ratios(summary),
        "runs": results,
    }
    os.makedirs(os.path.dirname(opts.out), exist_ok=True)
    with open(opts.out, "w") as f:
        json.dump(doc, f, indent=2)
    print_table(summary, brokers)
    if doc["cross_node_over_one_node_cpu"]:
        log(f"cross-node / one-node broker CPU per 1M: {doc['cross_node_over_one_node_cpu']}")
    log(f"wrote {opts.out}")


def summarize(results, brokers):
    summary = {}
    for wl, per_broker in results.items():
        names = []
        for runs in per_broker.values():
            for figs in runs:
                for k in figs:
                    if k not in names and k != "error":
                        names.append(k)
        for k in names:
            row = {}
            for b in brokers:
                vals = [f[k] for f in per_broker.get(b, []) if f.get(k) is not None]
                row[b] = {
                    "median": statistics.median(vals) if vals else None,
                    "runs": vals,
                    "max_loadavg_1m": max((f.get("loadavg_1m", 0) for f in per_broker[b]),
                                          default=None),
                }
            summary[k] = row
    return summary


def fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def print_table(summary, brokers):
    ref = next((b for b in brokers if b in GATEWAYS), "gateway")
    peers = [b for b in brokers if b != ref]
    head = ["figure (median)"] + brokers + [f"{ref}/{p}" for p in peers]
    rows = []
    for k, row in summary.items():
        if k == "loadavg_1m":
            continue
        cells = [k] + [fmt(row[b]["median"]) for b in brokers]
        g = row.get(ref, {}).get("median")
        for p in peers:
            pv = row[p]["median"]
            cells.append(f"{g / pv:.2f}" if g is not None and pv else "-")
        rows.append(cells)
    if "loadavg_1m" in summary:
        row = summary["loadavg_1m"]
        rows.append(["1-min load avg (median of runs)"] + [fmt(row[b]["median"]) for b in brokers]
                    + [""] * len(peers))
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def machine():
    info = {"cpus": os.cpu_count(), "kernel": os.uname().release}
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_kB"] = int(f.readline().split()[1])
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for name, cmd in [("mosquitto", ["/usr/sbin/mosquitto", "-h"]),
                      ("nats", ["nats-server", "--version"])]:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            versions[name] = (r.stdout + r.stderr).splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            pass
    versions["rumqttd"] = "0.20.0 (cargo install rumqttd --version 0.20.0)"
    if os.environ.get(FLASHMQ_ENV):
        try:
            r = subprocess.run([os.environ[FLASHMQ_ENV], "--version"], capture_output=True,
                               text=True, timeout=5)
            versions["flashmq"] = " ".join((r.stdout + r.stderr).split()[:6])
        except (OSError, subprocess.TimeoutExpired):
            pass
    info["versions"] = versions
    return info


if __name__ == "__main__":
    main()
