# Sourced by the two-node cluster scripts (cluster_persistent.sh, cluster_kill_subscriber.sh):
# `start_cluster NATS_PORT PORT_A PORT_B` starts nats-server with JetStream (monitoring on
# NATS_PORT + 4000) and gateway nodes a and b of $GW in $D, each with the harness's gateway
# configuration (bench/harness.py, gateway_config) plus [nats] and [cluster], and sets NP, Pa and
# Pb to their PIDs for the caller to stop.
start_cluster() {
    local nats_port=$1 port_a=$2 port_b=$3 n port
    mkdir -p "$D/js"
    nats-server -a 127.0.0.1 -p "$nats_port" -m $((nats_port + 4000)) -js -sd "$D/js" \
        > "$D/nats.log" 2>&1 &
    NP=$!
    sleep 1
    for n in a b; do
        port=$([ $n = a ] && echo "$port_a" || echo "$port_b")
        mkdir -p "$D/store-$n"
        # The harness's own gateway configuration, written by it, then the cluster's tables.
        python3 -c 'import sys; sys.path.insert(0, "bench"); import harness
print(harness.gateway_config(int(sys.argv[1]), sys.argv[2]), end="")' "$port" "$D/store-$n" \
            > "$D/$n.toml"
        cat >> "$D/$n.toml" <<T
[nats]
servers = ["nats://127.0.0.1:$nats_port"]
[cluster]
enabled = true
node_name = "$n"
T
        "$GW" --config "$D/$n.toml" > "$D/$n.log" 2>&1 &
        eval "P$n=$!"
    done
    sleep 2
}
