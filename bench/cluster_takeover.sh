#!/bin/bash
# Connect rates with cluster-wide sessions (README, Cluster): N persistent 3.1.1 devices, 100
# handshakes in flight, connect to a standalone node (the baseline); then, in a cluster of two
# nodes on one nats-server, to node a (first claims: owner records created), disconnect, and
# connect to node b (each CONNECT takes its session over from a: CAS, take request, hand-over).
# Prints device-sim's connect rate and each gateway's CPU (ticks of 10 ms) per phase, and the
# owner bucket's record count and last revision. Uses target/release/{gateway,device-sim} and
# nats-server on PATH; every process started here is stopped by its PID.
# Usage: bench/cluster_takeover.sh [DEVICES]
set -u
N=${1:-5000}
BIN=$(cd "$(dirname "$0")/.." && pwd)/target/release
HERE=$(mktemp -d)
trap 'rm -rf "$HERE"' EXIT
NATS_PORT=14222
mk() { # $1 node name ("standalone": no [cluster]), $2 port
cat > "$HERE/gw-$1.toml" <<T
[mqtt]
listen = "127.0.0.1:$2"
[http]
listen = "off"
[sys]
interval = 0
[log]
level = "error"
[limits]
connect_rate = 0
max_handshakes = 0
[storage]
enabled = false

[nats]
servers = ["nats://127.0.0.1:$NATS_PORT"]
[cluster]
enabled = true
node_name = "$1"
T
[ "$1" = standalone ] && sed -i '/^\[nats\]/,$d' "$HERE/gw-$1.toml"
}
nats-server -a 127.0.0.1 -p $NATS_PORT -m 18222 -js -sd "$HERE/js" >/dev/null 2>&1 & NATS=$!
sleep 1
mk standalone 11885
"$BIN/gateway" --config "$HERE/gw-standalone.toml" & S=$!
sleep 1
s0=$(awk '{print $14+$15}' /proc/$S/stat)
"$BIN/device-sim" run --target 127.0.0.1:11885 --devices $N --connect-rate 1000000 --connect-window 100 \
  --publish-interval 0 --keep-alive 300s --client-id "roam-{id}" --clean-session=false --duration 3s --drain 0s \
  --subscribers 0 --report "$HERE/standalone.json" >/dev/null 2>&1
python3 -c "import json;r=json.load(open('$HERE/standalone.json'));print('standalone connected', r['devices_connected'], 'connect_rate_per_s', round(r['connect_rate_per_s']))"
echo "cpu ticks standalone=$(( $(awk '{print $14+$15}' /proc/$S/stat)-s0 ))"
kill $S; wait $S 2>/dev/null
mk a 11883; mk b 11884
"$BIN/gateway" --config "$HERE/gw-a.toml" & A=$!
"$BIN/gateway" --config "$HERE/gw-b.toml" & B=$!
sleep 2
sim() { "$BIN/device-sim" run --target 127.0.0.1:$1 --devices $N --connect-rate 1000000 --connect-window 100 \
     --publish-interval 0 --keep-alive 300s --client-id "roam-{id}" --clean-session=false --duration 3s --drain 0s \
     --subscribers 0 --report "$HERE/$2.json" >/dev/null 2>&1; }
show() { python3 -c "import json;r=json.load(open('$HERE/$1.json'));print('$1', 'connected', r['devices_connected'], 'connect_rate_per_s', round(r['connect_rate_per_s']), 'all_connected_ms', r['all_connected_ms'])"; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
a0=$(cpu $A); b0=$(cpu $B)
sim 11883 to-a; show to-a; echo "cpu ticks a=$(( $(cpu $A)-a0 )) b=$(( $(cpu $B)-b0 ))"
a0=$(cpu $A); b0=$(cpu $B)
sim 11884 to-b; show to-b; echo "cpu ticks a=$(( $(cpu $A)-a0 )) b=$(( $(cpu $B)-b0 ))"
curl -s "http://127.0.0.1:18222/jsz?streams=true" | python3 -c "import json,sys;j=json.load(sys.stdin);[print(s['name'],s['state']['messages'],'msgs, last_seq',s['state']['last_seq']) for a in j.get('account_details',[]) for s in a.get('stream_detail',[])]"
kill $A $B; wait $A $B 2>/dev/null
kill $NATS; wait $NATS 2>/dev/null
