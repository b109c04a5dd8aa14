#!/bin/sh
# Ingestion into JetStream against nats-server's own MQTT ingest (issue 15, "Performance").
#
# One workload, three brokers: device-sim with 100 QoS 1 publishers (MQTT 3.1.1, clean
# sessions) in a closed loop (window 10, no pause), 64-byte payloads, for DURATION (default 20s),
# against
#   stream     the release gateway with an `[[ingest]]` rule, `ack = "stream"` (PUBACK once
#              JetStream has the message), writing to nats-server 2.9 (JetStream, file store);
#   nats-mqtt  nats-server 2.9's own MQTT listener (it writes QoS 1 messages into JetStream
#              itself before its PUBACK);
#   none       the gateway without a rule (plain QoS 1 fan-in, no subscriber);
#   local      (only when named) the gateway with the rule's weaker `ack = "local"`.
# Each broker is started fresh (nats-server's store in a temporary directory). Broker CPU is
# utime + stime from /proc over the load only: gateway + nats-server for `stream`, nats-server
# for `nats-mqtt`, the gateway for `none`.
#
# Usage (from the repository root, after `cargo build --release -p gateway -p device-sim`):
#   bench/ingest.sh [MODE...]          default: stream nats-mqtt none, then a table
# Environment: DURATION (20s), TARGET (target/release).
set -eu
DURATION=${DURATION:-20s}
BIN=${TARGET:-target/release}
MODES=${*:-stream nats-mqtt none}
OUT=$(mktemp -d)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }

run() {
  MODE=$1
  T=$(mktemp -d)
  NPORT=$(port); JPORT=$(port); MPORT=$(port); NMPORT=$(port)
  {
    echo "listen: 127.0.0.1:$NPORT"; echo "http: 127.0.0.1:$JPORT"; echo "server_name: bench"
    echo "jetstream { store_dir: \"$T/js\" }"
    if [ "$MODE" = nats-mqtt ]; then echo "mqtt { listen: 127.0.0.1:$NMPORT }"; fi
  } > $T/nats.conf
  /usr/sbin/nats-server -c $T/nats.conf >$T/nats.log 2>&1 &
  NATS=$!
  sleep 1
  GW=
  if [ "$MODE" = nats-mqtt ]; then
    TARGET_ADDR=127.0.0.1:$NMPORT
  else
    {
      echo "[nats]"; echo "servers = [\"nats://127.0.0.1:$NPORT\"]"
      echo "[storage]"; echo "dir = \"$T/data\""
      if [ "$MODE" = stream ] || [ "$MODE" = local ]; then
        echo "[[ingest]]"; echo 'filter = "bench/#"'; echo 'stream = "BENCH"'
        echo 'subject = "bench.{client_id}"'; echo "ack = \"$MODE\""
      fi
    } > $T/gateway.toml
    $BIN/gateway --config $T/gateway.toml --mqtt-listen 127.0.0.1:$MPORT --http-listen off \
      --log-level warn >$T/gw.log 2>&1 &
    GW=$!
    TARGET_ADDR=127.0.0.1:$MPORT
    sleep 2
  fi
  N0=$(cpu $NATS); G0=0; [ -n "$GW" ] && G0=$(cpu $GW)
  $BIN/device-sim run --target $TARGET_ADDR --devices 100 --qos 1 --protocol 3.1.1 \
    --payload 64 --publish-interval 0 --window 10 --duration $DURATION --subscribers 0 \
    --topic 'bench/{id}' --report $OUT/$MODE.json >$OUT/$MODE.txt 2>&1 || true
  N1=$(cpu $NATS); G1=0; [ -n "$GW" ] && G1=$(cpu $GW)
  case $MODE in
    stream|local) TICKS=$((G1 - G0 + N1 - N0)) ;;
    nats-mqtt) TICKS=$((N1 - N0)) ;;
    none) TICKS=$((G1 - G0)) ;;
  esac
  STORED=$(curl -s "http://127.0.0.1:$JPORT/jsz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"])')
  echo "$TICKS $STORED $((N1 - N0))" > $OUT/$MODE.cpu
  [ -n "$GW" ] && { kill $GW; wait $GW 2>/dev/null || true; }
  kill $NATS; wait $NATS 2>/dev/null || true
  rm -rf $T
}

for m in $MODES; do run $m; done
python3 - "$OUT" $MODES <<'PY'
import json, sys
out, modes = sys.argv[1], sys.argv[2:]
name = {"stream": "(a) gateway, ack = \"stream\" (gateway + nats-server CPU)",
        "nats-mqtt": "(b) nats-server 2.9.10 MQTT -> JetStream",
        "none": "(c) gateway, plain QoS 1 fan-in, no rule",
        "local": "gateway, ack = \"local\" (gateway + nats-server CPU)"}
rows = {}
for m in modes:
    r = json.load(open(f"{out}/{m}.json"))
    ticks, stored, nats_ticks = open(f"{out}/{m}.cpu").read().split()
    acked = r["messages_acked"]
    rate = acked / r["duration_s"]
    cpu = int(ticks) / 100
    per_m = lambda t: int(t) / 100 / acked * 1e6 if acked else float("nan")
    rows[m] = (rate, per_m(ticks), per_m(nats_ticks), r["puback_ms"]["p50"],
               r["puback_ms"]["p99"], acked, int(stored), r["messages_unacked"])
print("| broker | acked msg/s | broker CPU s per 1M | of which nats-server | PUBACK p50 ms | p99 ms | acked | in JetStream | unacked at end |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for m, (rate, cpu, nats_cpu, p50, p99, acked, stored, unacked) in rows.items():
    nats_cpu = f"{nats_cpu:.1f}" if m != "none" else "-"
    print(f"| {name.get(m, m)} | {rate:,.0f} | {cpu:.1f} | {nats_cpu} | {p50:.2f} | {p99:.2f} | {acked} | {stored} | {unacked} |")
if "stream" in rows and "nats-mqtt" in rows:
    a, b = rows["stream"], rows["nats-mqtt"]
    print(f"\n(a)/(b): {a[0]/b[0]:.2f}x msg/s, {a[1]/b[1]:.2f}x CPU per message")
if "stream" in rows and "none" in rows:
    a, c = rows["stream"], rows["none"]
    print(f"(a)/(c): {a[0]/c[0]:.2f}x msg/s, {a[1]/c[1]:.2f}x CPU per message")
PY
rm -rf $OUT
