#!/bin/sh
# One measurement: nats-server 2.9 (JetStream, file store in a temp dir), the release gateway with
# MODE (stream | local | none), device-sim with 100 QoS 1 publishers in a closed loop (window 10).
# Usage: bench/ingest.sh MODE (from the repository root, after
# `cargo build --release -p gateway -p device-sim`); prints device-sim's report, the gateway's CPU
# seconds and how many messages the stream holds.
set -eu
MODE=$1
T=$(mktemp -d)
NPORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
JPORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
MPORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
/usr/sbin/nats-server -a 127.0.0.1 -p $NPORT -m $JPORT -js -sd $T/js >$T/nats.log 2>&1 &
NATS=$!
sleep 1
{
  echo "[nats]"; echo "servers = [\"nats://127.0.0.1:$NPORT\"]"
  echo "[storage]"; echo "dir = \"$T/data\""
  if [ "$MODE" != none ]; then
    echo "[[ingest]]"; echo 'filter = "bench/#"'; echo 'stream = "BENCH"'; echo 'subject = "bench.{client_id}"'
    echo "ack = \"$MODE\""
  fi
} > $T/gateway.toml
${TARGET:-target/release}/gateway --config $T/gateway.toml --mqtt-listen 127.0.0.1:$MPORT --http-listen off --log-level warn >$T/gw.log 2>&1 &
GW=$!
sleep 2
${TARGET:-target/release}/device-sim run --target 127.0.0.1:$MPORT --devices 100 --qos 1 \
  --payload 64 --publish-interval 0 --window 10 --duration 10s --subscribers 0 --topic 'bench/{id}' 2>&1 | tail -25
CPU=$(awk '{print ($14+$15)/100}' /proc/$GW/stat)
echo "gateway CPU seconds: $CPU"
kill $GW; wait $GW 2>/dev/null || true
if [ "$MODE" != none ]; then
  echo "stream messages: $(curl -s "http://127.0.0.1:$JPORT/jsz?streams=true" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["messages"])')"
fi
kill $NATS; wait $NATS 2>/dev/null || true
rm -rf $T
