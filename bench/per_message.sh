#!/usr/bin/env bash
# Work per delivered message of one gateway binary at a fixed, light offered load, counted rather
# than timed (this VM has no hardware counters, and CPU time at a fixed load spreads by tens of
# percent between runs of the same binary): an A/B of two builds that tells "same code path" from
# "slower code".
#
#   bench/per_message.sh instructions BIN [QOS]   # callgrind instructions per message (apt: valgrind)
#   bench/per_message.sh calls BIN [QOS]          # malloc calls and system calls per message (perf, root)
#
# The gateway runs on the harness's configuration (bench/harness.py gateway_config; its store in
# the temporary directory, removed at the end; clean sessions store nothing). Load: 100
# publishers of 64-byte messages to one wildcard subscriber (device-sim, release build),
# every 100 ms for 8 s (instructions: the gateway runs ~50x slower under valgrind) or every 10 ms
# for 6 s (calls). The whole process is counted, start-up included. Stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?instructions|calls}; bin=${2:?gateway binary}; qos=${3:-0}
. bench/gateway_scratch.sh
case "$mode" in
    instructions)
        valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "$bin" --config "$dir/gw.toml" \
            > "$dir/gw.log" 2>&1 &
        gw=$!; interval=100ms; duration=8s ;;
    calls)
        perf probe -q -x "$(ldconfig -p | awk '/libc.so.6 .*x86-64/ {print $NF; exit}')" malloc 2>/dev/null || true
        "$bin" --config "$dir/gw.toml" > "$dir/gw.log" 2>&1 &
        gw=$!; interval=10ms; duration=6s ;;
    *) echo "usage: $0 instructions|calls BIN [QOS]" >&2; exit 2 ;;
esac
for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
if [ "$mode" = calls ]; then
    perf stat -e probe_libc:malloc,raw_syscalls:sys_enter -x, -o "$dir/perf.txt" -p "$gw" &
    perf_pid=$!
fi
"$sim" run --target "127.0.0.1:$port" --devices 100 --subscribers 1 --qos "$qos" --payload 64 \
    --publish-interval "$interval" --connect-rate 1000 --duration "$duration" --drain 3s \
    --connect-timeout 30s --client-id "pm-{id}" --topic "pm/{id}/t" --report "$dir/report.json" \
    > "$dir/sim.log" 2>&1
if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; perf_pid=""; fi
kill -INT "$gw"; wait "$gw" 2>/dev/null || true; gw=""
python3 - "$mode" "$dir" "$(basename "$bin")" "$qos" <<'P'
import json, sys
mode, d, name, qos = sys.argv[1:]
rx = json.load(open(f"{d}/report.json"))["messages_received"]
if mode == "instructions":
    ir = next(int(l.split()[1]) for l in open(f"{d}/cg.out") if l.startswith(("summary:", "totals:")))
    print(f"{name} QoS {qos}: {rx} delivered, {ir / rx:,.0f} instructions per message")
else:
    v = {p[2]: float(p[0]) for p in (l.strip().split(",") for l in open(f"{d}/perf.txt"))
         if len(p) > 2 and p[0][:1].isdigit()}
    print(f"{name} QoS {qos}: {rx} delivered, {v['probe_libc:malloc'] / rx:.2f} mallocs and "
          f"{v['raw_syscalls:sys_enter'] / rx:.2f} system calls per message")
P
