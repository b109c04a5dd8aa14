#!/usr/bin/env bash
# Runs every test of the repository; the one command for developers and CI (.ci/run).
#
# On a fresh Debian 12 machine with Rust it first installs what the tests need:
#   - mosquitto + mosquitto-clients (apt, only when mosquitto_sub, mosquitto_pub or
#     mosquitto_passwd is missing; needs root or sudo; the auth tests write password files with
#     the real mosquitto_passwd),
#   - prometheus (apt, only when prometheus or promtool is missing): the dashboard tests (gateway's
#     and device-sim's) run a real Prometheus on its own loopback port, and promtool checks the
#     /metrics outputs; without it these tests skip loudly, or fail when CI is set,
#   - python3-venv (apt) when `python3 -m venv` is unavailable,
#   - paho-mqtt and pytest into a virtualenv at .venv/ (pip, gateway/tests/interop/requirements.txt),
#   - nodejs + npm (apt, only when node or npm is missing) and MQTT.js into target/interop-node/
#     (npm ci from gateway/tests/interop/node/package-lock.json, only when the pinned version is not
#     there yet) for the MQTT.js TLS tests; without node they skip loudly, or fail when CI is set.
# Then, stopping at the first failure:
#   cargo fmt --check, cargo clippy -D warnings, cargo build, cargo test, and the pytest interop
#   suite in gateway/tests/interop against the debug `gateway` binary.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export PYTHONDONTWRITEBYTECODE=1

stage() {
    printf '\n===== %s =====\n' "$*"
}

# Runs a command as root: directly when we are root, through non-interactive sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        echo "error: '$*' needs root (run as root or with passwordless sudo)" >&2
        return 1
    fi
}

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" </dev/null
}

stage "Installing test dependencies"
if ! command -v mosquitto_sub >/dev/null 2>&1 || ! command -v mosquitto_pub >/dev/null 2>&1 \
    || ! command -v mosquitto_passwd >/dev/null 2>&1; then
    apt_install mosquitto mosquitto-clients
fi
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    apt_install --no-install-recommends prometheus
fi
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt_install python3-venv
fi
VENV="$ROOT/.venv"
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r gateway/tests/interop/requirements.txt
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install --no-install-recommends nodejs npm
fi
NODE_DIR="$ROOT/target/interop-node"
MQTTJS_PINNED="$(node -p 'require(process.argv[1]).dependencies.mqtt' \
    "$ROOT/gateway/tests/interop/node/package.json")"
MQTTJS_HAVE="$(node -p 'try { require(process.argv[1]).version } catch (e) { "" }' \
    "$NODE_DIR/node_modules/mqtt/package.json")"
if [ "$MQTTJS_HAVE" != "$MQTTJS_PINNED" ]; then
    mkdir -p "$NODE_DIR"
    cp gateway/tests/interop/node/package.json gateway/tests/interop/node/package-lock.json "$NODE_DIR/"
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "mosquitto_sub: $(command -v mosquitto_sub)"
echo "node: $(command -v node) $(node --version), MQTT.js $(node -p 'require(process.argv[1]).version' "$NODE_DIR/node_modules/mqtt/package.json")"
echo "prometheus: $(command -v prometheus), promtool: $(command -v promtool)"
"$VENV/bin/python" -c 'import paho.mqtt, pytest; print("paho-mqtt", paho.mqtt.__version__, "/ pytest", pytest.__version__)'

stage "cargo fmt --all -- --check"
cargo fmt --all -- --check

stage "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

stage "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

stage "cargo test --workspace"
cargo test --workspace

# `--all-targets` / `cargo test` may link the binary with the test-only features that
# dev-dependencies enable; the interop suite tests the binary as shipped.
stage "cargo build -p gateway --bin gateway (binary for the interop tests)"
cargo build -p gateway --bin gateway

stage "pytest gateway/tests/interop"
status=0
GATEWAY_BIN="$ROOT/target/debug/gateway" "$VENV/bin/python" -m pytest gateway/tests/interop \
    -p no:cacheprovider -ra || status=$?
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests in gateway/tests/interop" >&2
    exit 1
fi
exit "$status"
