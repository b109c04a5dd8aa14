#!/usr/bin/env bash
# The one benchmark command: builds the gateway and device-sim (release), checks the peer brokers
# are installed, and runs bench/harness.py (gateway vs Mosquitto, nats-server, rumqttd).
# Usage: bench/run.sh [harness options]   e.g. bench/run.sh --workloads bc --runs 3
# Peers: apt-get install -y mosquitto nats-server; cargo install rumqttd --version 0.20.0
# (without --locked). Results: table on stdout, JSON in bench/results/latest.json.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p gateway -p device-sim >&2
for tool in /usr/sbin/mosquitto nats-server; do
    command -v "$tool" >/dev/null || echo "bench: $tool not found; that broker is skipped" >&2
done
command -v rumqttd >/dev/null || [ -x "$HOME/.cargo/bin/rumqttd" ] ||
    echo "bench: rumqttd not found (cargo install rumqttd --version 0.20.0); skipped" >&2

harness_pid=""
cleanup() {
    # The harness kills its brokers and simulators by PID on SIGTERM; only it is signalled here.
    if [ -n "$harness_pid" ] && kill -0 "$harness_pid" 2>/dev/null; then
        kill -TERM "$harness_pid" 2>/dev/null || true
        wait "$harness_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT INT TERM

python3 bench/harness.py "$@" &
harness_pid=$!
status=0
wait "$harness_pid" || status=$?
harness_pid=""
exit "$status"
