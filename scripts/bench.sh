#!/usr/bin/env bash
# Runs the codara-agent performance benchmark (scripts/bench/agent.rs) and writes
# target/bench-report.md. Loopback only: every agent it starts binds 127.0.0.1 and
# broadcasts discovery to 127.255.255.255 on a private port. Takes about 3-4 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1,000 WebSocket clients need ~1,100 descriptors in the bench and in the agent it starts
# (the agent inherits this limit).
want=8192
hard=$(ulimit -Hn)
if [ "$hard" != "unlimited" ] && [ "$hard" -lt "$want" ]; then want=$hard; fi
ulimit -n "$want" 2>/dev/null || echo "bench.sh: could not raise the open-file limit (now $(ulimit -n))" >&2

cargo build --release --bin codara-agent
exec cargo bench --bench agent -- "$@"
