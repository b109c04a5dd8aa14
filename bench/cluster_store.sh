#!/usr/bin/env bash
# What keeping persistent sessions in JetStream costs (README, "Cluster"): the harness's (g)
# workload, QoS 1 fan-in to a persistent subscriber (100 clean QoS 1 publishers of 64-byte
# messages, one `+` wildcard subscriber on a persistent 3.1.1 session, closed loop with 10 in
# flight per publisher, 10 s + 3 s drain), against one release gateway three ways:
#   disk      standalone, [storage] sync = "always" (PUBACK after the group commit's fsync)
#   off       standalone, [storage] enabled = false (the reference)
#   jetstream one cluster node on a local nats-server -js (Debian's 2.9): the subscriber's
#             session in the state stream, a PUBACK once JetStream acked its record
# Prints delivered msg/s, gateway CPU seconds per 1M delivered, and nats-server's CPU for the
# jetstream run. Loopback; stops everything it started, by PID.
#
#   bench/cluster_store.sh [SECONDS]
#   GATEWAY=/path/to/gateway MODES=jetstream bench/cluster_store.sh 10   # another build, one mode
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
bin=${GATEWAY:-target/release/gateway}
sim=target/release/device-sim
[ -x "$bin" ] && [ -x "$sim" ] || cargo build --release -p gateway -p device-sim >&2
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d)
gw=""; nats=""
cleanup() {
    [ -n "$gw" ] && kill -INT "$gw" 2>/dev/null || true
    [ -n "$nats" ] && kill -TERM "$nats" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

run() {
    local mode=$1 port; port=$(free_port)
    local work="$dir/$mode"; mkdir -p "$work"
    python3 -c "import sys; sys.path.insert(0, 'bench'); import harness; print(harness.gateway_config($port, '$work'))" \
        > "$work/gw.toml"
    case "$mode" in
        off) printf '[storage]\nenabled = false\n' > "$work/extra.toml" ;;
        disk) : > "$work/extra.toml" ;;
        jetstream)
            local np; np=$(free_port)
            nats-server -js -p "$np" -sd "$work/nats" -a 127.0.0.1 > "$work/nats.log" 2>&1 &
            nats=$!
            for _ in $(seq 1 50); do (echo > "/dev/tcp/127.0.0.1/$np") 2>/dev/null && break; sleep 0.1; done
            printf '[nats]\nservers = ["nats://127.0.0.1:%s"]\n[cluster]\nenabled = true\nnode_name = "a"\n' "$np" \
                > "$work/extra.toml" ;;
    esac
    # The harness's file has [storage] first: the mode's keys merge into one file.
    python3 - "$work/gw.toml" "$work/extra.toml" <<'P'
import sys, tomllib
base = tomllib.load(open(sys.argv[1], "rb"))
for k, v in tomllib.load(open(sys.argv[2], "rb")).items():
    base.setdefault(k, {}).update(v)
def val(v):
    return str(v).lower() if isinstance(v, bool) else (f'"{v}"' if isinstance(v, str) else
           ("[" + ", ".join(val(x) for x in v) + "]" if isinstance(v, list) else str(v)))
with open(sys.argv[1], "w") as f:
    for t, kv in base.items():
        f.write(f"[{t}]\n" + "".join(f"{k} = {val(v)}\n" for k, v in kv.items()))
P
    "$bin" --config "$work/gw.toml" > "$work/gw.log" 2>&1 &
    gw=$!
    for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    sleep 1   # (cluster mode: its NATS connection up before the first claim)
    local g0 n0=0; g0=$(ticks "$gw"); [ -n "$nats" ] && n0=$(ticks "$nats")
    "$sim" run --target "127.0.0.1:$port" --devices 100 --subscribers 1 --qos 1 --payload 64 \
        --publish-interval 0 --window 10 --subscriber-clean-session=false \
        --connect-rate 1000 --duration "${secs}s" --drain 3s --connect-timeout 30s \
        --client-id "cs-{id}" --topic "cs/{id}/t" --report "$work/report.json" > "$work/sim.log" 2>&1 || true
    local g1 n1=0; g1=$(ticks "$gw"); [ -n "$nats" ] && n1=$(ticks "$nats")
    kill -INT "$gw"; wait "$gw" 2>/dev/null || true; gw=""
    if [ -n "$nats" ]; then kill -TERM "$nats"; wait "$nats" 2>/dev/null || true; nats=""; fi
    python3 - "$mode" "$work/report.json" "$((g1 - g0))" "$((n1 - n0))" "$hz" <<'P'
import json, sys
mode, path, g, n, hz = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
r = json.load(open(path))
rx = r["messages_received"]
per = lambda t: f"{t / hz / (rx / 1e6):.1f}" if rx else "-"
print(f"{mode:9} {r['receive_rate']:>9,.0f} msg/s delivered  gateway {per(g)} CPU-s/1M"
      + (f"  nats-server {per(n)} CPU-s/1M" if n else "")
      + f"  PUBACK p50/p99 {r['puback_ms']['p50']}/{r['puback_ms']['p99']} ms"
      + f"  lost {r['lost']}")
P
}

for mode in ${MODES:-off disk jetstream}; do run "$mode"; done
