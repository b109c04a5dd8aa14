#!/bin/bash
# A persistent subscriber on a node that is killed: what it loses. nats-server (JetStream) and
# nodes a and b of GW (default target/release/gateway), started by bench/cluster_nodes.sh;
# device-sim with 20 persistent v5 QoS 1 devices at 10 messages/s over both and one persistent
# subscriber on a; a is SIGKILLed KILL_AT seconds (default 8) into a run of SECS (default 30).
# Prints the report's counts (lost_acknowledged: acknowledged messages the subscriber never
# got). Fixed ports 14333, 18333, 19101, 19102; stops what it started by PID.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
GW=${GW:-target/release/gateway}; SIM=${SIM:-target/release/device-sim}
D=$(mktemp -d /tmp/cluster-kill.XXXXXX)
. bench/cluster_nodes.sh
start_cluster 14333 19101 19102
cat > $D/fleet.toml <<T
targets = ["127.0.0.1:19101", "127.0.0.1:19102"]
cluster = true
devices = 20
connect_rate = 400
client_id = "gp-{id}"
topic = "gp/{id}"
payload = 32
publish_interval = "100ms"
qos = 1
protocol = "5"
subscribers = 1
subscriber_client_id = "gp-sub-{id}"
clean_session = false
session_expiry = "300s"
keep_alive = "5s"
connect_timeout = "2s"
duration = "${SECS:-30}s"
drain = "5s"
T
$SIM run --scenario $D/fleet.toml --report $D/report.json > $D/sim.log 2>&1 & SP=$!
sleep ${KILL_AT:-8}
kill -9 $Pa; echo "killed a at $(date +%T.%N)"
wait $SP
python3 -c "import json;d=json.load(open('$D/report.json'));print({k:d.get(k) for k in ('messages_published','messages_acked','messages_refused','messages_received','lost','lost_acknowledged','duplicates','devices_connected','subscribers_connected')})"
grep -i "adopt" $D/b.log | head -3
kill $Pb $NP; wait 2>/dev/null
rm -rf "$D"
