#!/bin/bash
# Cross-node QoS 1 fan-in to a persistent subscriber, for A/Bs of the acknowledgements across
# nodes: nats-server (JetStream), nodes A and B of GATEWAY_BINARY with the harness's gateway
# configuration plus [nats]/[cluster], 100 publishers on A (window 10, 64 B), the subscriber on B
# on a persistent session, 10 s. Prints CPU s per 1M delivered per part, rate and p99. Fixed ports
# 14444, 18444, 19201, 19202; stops what it started by PID (bench/cluster_nodes.sh starts it).
set -u
GW=${1:?usage: bench/cluster_persistent.sh GATEWAY_BINARY}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SIM=${SIM:-target/release/device-sim}
D=$(mktemp -d /tmp/cluster-persistent.XXXXXX)
. bench/cluster_nodes.sh
start_cluster 14444 19201 19202
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
a0=$(cpu $Pa); b0=$(cpu $Pb); n0=$(cpu $NP)
$SIM run --target 127.0.0.1:19201 --subscriber-target 127.0.0.1:19202 --cluster --source-ips 127.0.0.2-127.0.0.11 \
  --devices 100 --subscribers 1 --qos 1 --payload 64 --publish-interval 0 --window 10 --connect-rate 1000 \
  --subscriber-clean-session=false --duration 10s --drain 3s --client-id abp-{id} --report $D/report.json > $D/sim.log 2>&1
a1=$(cpu $Pa); b1=$(cpu $Pb); n1=$(cpu $NP)
python3 - $D/report.json $a0 $a1 $b0 $b1 $n0 $n1 <<'P'
import json,sys
d=json.load(open(sys.argv[1])); hz=100.0
a=(float(sys.argv[3])-float(sys.argv[2]))/hz; b=(float(sys.argv[5])-float(sys.argv[4]))/hz; n=(float(sys.argv[7])-float(sys.argv[6]))/hz
rec=d['messages_received']; m=rec/1e6
print(f"cpu/1M total {(a+b+n)/m:.2f} a {a/m:.2f} b {b/m:.2f} nats {n/m:.2f} rate {d['receive_rate']:.0f} p99 {d['latency_ms']['p99']} lost {d['lost']} lost_ack {d.get('lost_acknowledged')} refused {d.get('messages_refused')}")
P
kill $Pa $Pb $NP; wait 2>/dev/null
rm -rf "$D"
