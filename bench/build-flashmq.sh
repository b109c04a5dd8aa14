#!/usr/bin/env bash
# Builds FlashMQ, the peer the harness runs when FLASHMQ names its binary (it is not packaged).
# Usage: bench/build-flashmq.sh CHECKOUT   (a clone of https://github.com/halfgaar/FlashMQ)
# Installs the build tools with apt when missing, builds tag v1.26.2 (the version BENCHMARKS.md
# records) with the project's own `./build.sh Release`, and prints the line to export.
set -euo pipefail
src=${1:?usage: bench/build-flashmq.sh CHECKOUT}
tag=v1.26.2
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
[ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2
fi
git -C "$src" checkout -q "$tag"
(cd "$src" && ./build.sh Release >&2)
bin=$(cd "$src" && pwd)/FlashMQBuildRelease/flashmq
"$bin" --version | head -1 >&2
echo "export FLASHMQ=$bin"
