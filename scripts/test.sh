#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests use besides Rust
# (ps, ip, systemd-analyze, script; openssl and curl for the TLS tests' certificates and
# client; Python's websockets and prometheus_client, which are the independent WebSocket
# client and Prometheus parser; Node and its `ws` package, the main servers' WebSocket
# client, under target/test-node), then `cargo test --workspace`.
# Nothing here reaches beyond loopback: tests set DISCOVERY_ADDRESSES=127.255.255.255 or
# DISCOVERY_ENABLED=false.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "test.sh: need root to run: $*" >&2; return 1; fi
}

missing=()
command -v ps >/dev/null || missing+=(procps)
command -v ip >/dev/null || missing+=(iproute2)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v script >/dev/null || missing+=(bsdutils)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
    echo "test.sh: installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! python3 -c 'import websockets, prometheus_client' 2>/dev/null; then
    echo "test.sh: installing Python packages websockets and prometheus_client"
    python3 -m pip install -q --disable-pip-version-check websockets prometheus_client 2>/dev/null \
        || python3 -m pip install -q --disable-pip-version-check --break-system-packages websockets prometheus_client
fi

if ! NODE_PATH=target/test-node/node_modules node -e 'require("ws")' 2>/dev/null; then
    echo "test.sh: installing the npm package ws into target/test-node"
    npm install --silent --no-audit --no-fund --prefix target/test-node ws@8 >/dev/null
fi

# --no-fail-fast: one failing test binary must not hide what the others would report.
exec cargo test --workspace --no-fail-fast "$@"
