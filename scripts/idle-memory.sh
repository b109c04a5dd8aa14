#!/usr/bin/env bash
# Measures the gateway's resident memory per idle MQTT session: RSS growth / connections.
#   scripts/idle-memory.sh [COUNT]    (default 19000; needs COUNT + ~100 open files per process)
#   SESSIONS=persistent scripts/idle-memory.sh   clean session off, one QoS 1 subscription each
#   STORAGE=off ...                              [storage] enabled = false (default: on)
# Starts a release gateway on a free port (its store in a temporary directory, removed at the
# end), opens COUNT idle 3.1.1 connections from a second process, reads VmRSS of the gateway
# before and after, prints bytes per session, stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-19000}
PORT=${PORT:-18883}
SESSIONS=${SESSIONS:-clean}
case "${STORAGE:-on}" in on) ENABLED=true ;; off) ENABLED=false ;; *) echo "STORAGE: on or off" >&2; exit 2 ;; esac
cargo build --release -q -p gateway --bin gateway --example idle_connections
DIR=$(mktemp -d)
printf '[storage]\nenabled = %s\ndir = "%s"\n' "$ENABLED" "$DIR" > "$DIR/gateway.toml"
./target/release/gateway --config "$DIR/gateway.toml" --mqtt-listen 127.0.0.1:$PORT \
    --http-listen off --log-level warn &
GW=$!
trap 'kill $GW 2>/dev/null || true; wait $GW 2>/dev/null || true; rm -rf "$DIR"' EXIT
sleep 1
rss() { awk '/VmRSS/ {print $2}' /proc/$GW/status; }
BEFORE=$(rss)
./target/release/examples/idle_connections 127.0.0.1:$PORT "$COUNT" 15 "$SESSIONS" &
CL=$!
# Wait until the broker holds every connection, then let it settle.
for _ in $(seq 120); do
  [ "$(ls /proc/$GW/fd | wc -l)" -ge "$COUNT" ] && break
  sleep 0.5
done
sleep 2
AFTER=$(rss)
wait $CL
echo "gateway VmRSS before: ${BEFORE} KiB, with $COUNT idle $SESSIONS sessions (storage ${STORAGE:-on}): ${AFTER} KiB"
echo "per idle session: $(( (AFTER - BEFORE) * 1024 / COUNT )) bytes"
