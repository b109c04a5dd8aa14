# Sourced by the single-gateway measurement scripts (per_message.sh, thread_cpu.sh): a release
# device-sim, a free loopback port ($port), a temporary directory ($dir, removed at exit) holding
# the harness's gateway configuration ($dir/gw.toml, its store in $dir), and an exit trap that
# stops what the script started: the gateway ($gw) and a perf process ($perf_pid), by PID.
sim=target/release/device-sim
[ -x "$sim" ] || cargo build --release -p device-sim >&2
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
gw=""; perf_pid=""
cleanup() {
    [ -n "$perf_pid" ] && kill -INT "$perf_pid" 2>/dev/null || true
    [ -n "$gw" ] && kill -INT "$gw" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
python3 -c "import sys; sys.path.insert(0, 'bench'); import harness; print(harness.gateway_config($port, '$dir'))" \
    > "$dir/gw.toml"
