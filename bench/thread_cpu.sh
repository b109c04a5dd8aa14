#!/usr/bin/env bash
# Where a gateway binary spends its CPU on workload (g) (100 QoS 1 publishers of 64-byte
# messages, closed loop with 10 in flight each, one `+` subscriber on a persistent session,
# 10 s + 3 s drain), split by thread (tokio workers, store-writer; user and system time from
# /proc), per million delivered. A quicker, rougher tool than bench/run.sh for A/B work on the
# store: one run per call, no peers; compare binaries by alternating calls.
#
#   bench/thread_cpu.sh BIN [MODE] [perf]
#     MODE: on (default: [storage] defaults), off (enabled = false), batched (sync = "batched"),
#           dN (commit_delay_ms = N)
#     perf: also `perf record` the gateway (call graphs) into /tmp/thread_cpu-MODE.data
#
# The gateway runs on the harness's configuration (bench/harness.py gateway_config), its store
# in a temporary directory removed at the end. Stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:?gateway binary}; mode=${2:-on}; profile=${3:-}
. bench/gateway_scratch.sh
case "$mode" in
    on) ;;
    off) sed -i 's|^\[storage\]|[storage]\nenabled = false|' "$dir/gw.toml" ;;
    batched) sed -i 's|^\[storage\]|[storage]\nsync = "batched"|' "$dir/gw.toml" ;;
    d[0-9]*) sed -i "s|^\[storage\]|[storage]\ncommit_delay_ms = ${mode#d}|" "$dir/gw.toml" ;;
    *) echo "MODE: on, off, batched or dN" >&2; exit 2 ;;
esac
"$bin" --config "$dir/gw.toml" > "$dir/gw.log" 2>&1 &
gw=$!
for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
if [ "$profile" = perf ]; then
    perf record -F 1999 -g --call-graph dwarf,16384 -o "/tmp/thread_cpu-$mode.data" -p "$gw" 2>/dev/null &
    perf_pid=$!
fi
threads() {
    for t in /proc/"$gw"/task/*; do
        printf '%s %s\n' "$(cat "$t/comm")" "$(cut -d' ' -f14,15 "$t/stat")"
    done
}
threads > "$dir/before"
"$sim" run --target "127.0.0.1:$port" --devices 100 --subscribers 1 --qos 1 --payload 64 \
    --publish-interval 0 --window 10 --subscriber-clean-session=false --connect-rate 1000 \
    --duration 10s --drain 3s --client-id "tc-{id}" --topic "tc/{id}/t" \
    --report "$dir/report.json" > "$dir/sim.log" 2>&1
threads > "$dir/after"
if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; perf_pid=""; fi
python3 - "$dir" "$mode" "$(basename "$bin")" <<'P'
import json, os, sys, collections
d, mode, name = sys.argv[1:]
hz = os.sysconf("SC_CLK_TCK")
def read(f):
    t = collections.defaultdict(lambda: [0, 0])
    for line in open(f"{d}/{f}"):
        comm, u, s = line.rsplit(None, 2)
        t[comm][0] += int(u); t[comm][1] += int(s)
    return t
a, b = read("before"), read("after")
r = json.load(open(f"{d}/report.json"))
m = r["messages_received"] / 1e6
parts, total = [], 0.0
for comm in sorted(b):
    u = (b[comm][0] - a[comm][0]) / hz; s = (b[comm][1] - a[comm][1]) / hz
    if u + s == 0:
        continue
    total += u + s
    parts.append(f"{comm} {(u + s) / m:.2f} (user {u / m:.2f}, sys {s / m:.2f})")
print(f"{name} {mode}: {r['messages_received']} delivered, {r['receive_rate']:.0f}/s, lost {r['lost']}; "
      f"CPU s per 1M delivered {total / m:.2f}: " + "; ".join(parts))
P
