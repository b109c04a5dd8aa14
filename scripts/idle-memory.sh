#!/usr/bin/env bash
# Measures the gateway's resident memory per idle MQTT session: RSS growth / connections.
#   scripts/idle-memory.sh [COUNT]    (default 19000; needs COUNT + ~100 open files per process)
# Starts a release gateway on a free port, opens COUNT idle 3.1.1 connections from a second
# process, reads VmRSS of the gateway before and after, prints bytes per session, stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-19000}
PORT=${PORT:-18883}
cargo build --release -q -p gateway --bin gateway --example idle_connections
./target/release/gateway --mqtt-listen 127.0.0.1:$PORT --http-listen off --log-level warn &
GW=$!
trap 'kill $GW 2>/dev/null || true' EXIT
sleep 1
rss() { awk '/VmRSS/ {print $2}' /proc/$GW/status; }
BEFORE=$(rss)
./target/release/examples/idle_connections 127.0.0.1:$PORT "$COUNT" 15 &
CL=$!
# Wait until the broker holds every connection, then let it settle.
for _ in $(seq 120); do
  [ "$(ls /proc/$GW/fd | wc -l)" -ge "$COUNT" ] && break
  sleep 0.5
done
sleep 2
AFTER=$(rss)
wait $CL
echo "gateway VmRSS before: ${BEFORE} KiB, with $COUNT idle sessions: ${AFTER} KiB"
echo "per idle session: $(( (AFTER - BEFORE) * 1024 / COUNT )) bytes"
