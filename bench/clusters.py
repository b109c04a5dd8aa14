"""Two-node brokers for the harness's cross-node workloads (l)/(m): the publishers on node A,
the subscriber on node B.

- `gateway-cluster`: one nats-server (JetStream on, store in the broker's directory) and two
  gateway nodes in cluster mode, each with the harness's gateway configuration plus `[nats]` and
  `[cluster]`.
- `nats-cluster`: two nats-servers routed to each other (JetStream clustered over both), MQTT on
  each.

Each looks to the harness like a Broker (start, stop, restart, cpu, rss, sim_targets) and also
gives its CPU per part (`cpu_parts`), so the table can say where a cross-node message costs.
The harness hands in what it owns (its gateway configuration, the list of processes it kills on
exit, the open-file limit), so this file imports nothing from it. Python 3 standard library only.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
CLUSTER_KINDS = ("gateway-cluster", "nats-cluster")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(proc):
    with open(f"/proc/{proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss(proc):
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class TwoNodes:
    """The processes of one two-node broker; `parts` names them for `cpu_parts`."""

    def __init__(self, name, workdir, env):
        self.name = name
        self.kind = name
        self.env = env  # {"gateway_bin", "gateway_config", "children", "preexec"}
        self.dir = tempfile.mkdtemp(prefix=f"{name}-", dir=workdir)
        self.procs = {}  # part name -> Popen
        self.tls = None
        self.persistent = False
        self.port = None  # node A's MQTT port, where the publishers go
        self.port_b = None  # node B's, where the subscriber goes

    def spawn(self, part, cmd):
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(f"{self.dir}/{part}.log", "w"),
                                preexec_fn=self.env["preexec"], cwd=self.dir)
        self.env["children"].append(proc)
        self.procs[part] = proc
        return proc

    def wait_tcp(self, part, port, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.procs[part].poll() is not None:
                with open(f"{self.dir}/{part}.log") as f:
                    raise RuntimeError(f"{self.name} {part} exited at start: {f.read()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} {part} did not listen on {port}")

    def wait_http(self, url, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: {url} not ready in {timeout} s")

    def sim_targets(self):
        return ["--target", f"127.0.0.1:{self.port}",
                "--subscriber-target", f"127.0.0.1:{self.port_b}", "--cluster"]

    def cpu_parts(self):
        return {part: proc_cpu(p) for part, p in self.procs.items()}

    def cpu(self):
        return sum(self.cpu_parts().values())

    def rss(self):
        return sum(proc_rss(p) for p in self.procs.values())

    def written(self):
        return None

    def store_bytes(self):
        return 0

    def stop(self, keep_dir=False):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc in self.env["children"]:
                self.env["children"].remove(proc)
        self.procs = {}
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def restart(self):
        self.stop(keep_dir=True)
        for entry in os.listdir(self.dir):
            path = os.path.join(self.dir, entry)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
        time.sleep(0.5)
        self.start()


class GatewayCluster(TwoNodes):
    """Parts: `node_a` (publishers), `node_b` (subscriber), `nats`."""

    def start(self):
        nats_port, mon = free_port(), free_port()
        self.spawn("nats", ["nats-server", "-a", "127.0.0.1", "-p", str(nats_port),
                            "-m", str(mon), "-js", "-sd", f"{self.dir}/js"])
        self.wait_tcp("nats", nats_port)
        self.wait_http(f"http://127.0.0.1:{mon}/healthz")
        self.port, self.port_b = free_port(), free_port()
        for node, port in (("a", self.port), ("b", self.port_b)):
            store = os.path.join(self.dir, f"store-{node}")
            os.makedirs(store, exist_ok=True)
            conf = self.env["gateway_config"](port, store) + f"""[nats]
servers = ["nats://127.0.0.1:{nats_port}"]
[cluster]
enabled = true
node_name = "{node}"
"""
            path = os.path.join(self.dir, f"gateway-{node}.toml")
            with open(path, "w") as f:
                f.write(conf)
            self.spawn(f"node_{node}", [self.env["gateway_bin"], "--config", path])
        for node, port in (("a", self.port), ("b", self.port_b)):
            self.wait_tcp(f"node_{node}", port)
        # Interest travels between the nodes by announcements; device-sim subscribes before
        # any device publishes, and the announcement takes milliseconds, so a short settle
        # is enough (a message before it would count as lost, not hide).
        time.sleep(1.0)


class NatsCluster(TwoNodes):
    """Two routed nats-servers with MQTT; parts `node_a` and `node_b` (no separate NATS)."""

    def start(self):
        routes = {n: free_port() for n in ("a", "b")}
        mqtt = {n: free_port() for n in ("a", "b")}
        mon = {n: free_port() for n in ("a", "b")}
        for n in ("a", "b"):
            other = "b" if n == "a" else "a"
            conf = f"""# written by bench/clusters.py
server_name: bench_{n}
listen: 127.0.0.1:{free_port()}
http: 127.0.0.1:{mon[n]}
max_connections: 100000
jetstream {{
  store_dir: "{self.dir}/js-{n}"
  max_memory_store: 1GB
  max_file_store: 10GB
}}
cluster {{
  name: bench
  listen: 127.0.0.1:{routes[n]}
  routes: [nats-route://127.0.0.1:{routes[other]}]
}}
mqtt {{
  listen: 127.0.0.1:{mqtt[n]}
  max_ack_pending: 65535
}}
"""
            path = os.path.join(self.dir, f"nats-{n}.conf")
            with open(path, "w") as f:
                f.write(conf)
            self.spawn(f"node_{n}", ["nats-server", "-c", path])
        self.port, self.port_b = mqtt["a"], mqtt["b"]
        for n in ("a", "b"):
            self.wait_tcp(f"node_{n}", mqtt[n])
        # JetStream clustered needs its meta leader before MQTT sessions can be created.
        for n in ("a", "b"):
            self.wait_http(f"http://127.0.0.1:{mon[n]}/healthz", timeout=60)


def make(name, workdir, env):
    return {"gateway-cluster": GatewayCluster, "nats-cluster": NatsCluster}[name](
        name, workdir, env)
